"""Batch benchmark: N exposures through one ``stcal-dask run`` vs stcal 1.20.0 one after another.

* inputs: N seeded ``_ramp.fits`` exposures (default 8 x 1x10x2048x2048), one in four with ten
  times the cosmic-ray rate (many more flags), with their gain/readnoise references;
* **ours**: ``stcal-dask run DIR -o OUT --report R`` (default LocalCluster, pipelined: up to
  ``--max-in-flight`` exposures at once); the report gives each exposure's end time, whose
  successive gaps after the first are the **steady-state wall per exposure**;
* **stcal**: one Python process running the jump + OLS ramp-fit script of
  ``bench_pipeline.py`` (stcal 1.20.0: ``detect_jumps_data``, ``ramp_fit_data`` OLS_C, FITS in
  and out) on every exposure in turn, as the JWST pipeline processes an association;
* **I/O floor**: one process reading every input fully and writing outputs of the same sizes
  (the ``bench_pipeline.py`` floor script per exposure), its per-exposure time;
* **ours, worker killed**: the batch again, one LocalCluster worker process SIGKILLed once the
  second exposure is committed; total wall and whether the products are bit-identical.

Peak memory: the summed RSS of each command's whole process tree (``bench_pipeline.run_tree``).
The first exposure's products of ours and stcal are compared (DQ exact, floats 1e-5).

Targets (issue 13): total >= 6x faster than stcal; steady-state wall per exposure <= 2.5x the
per-exposure I/O floor; peak memory <= 1/2 of stcal's; with a worker killed the total grows by
< 50 % and the products are identical.

    python benchmarks/bench_batch.py [--n 8] [--shape 1x10x2048x2048] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from astropy.io import fits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import (  # noqa: E402
    IO_FLOOR_SCRIPT,
    STCAL_SCRIPT,
    compare,
    run_tree,
    tree_rss,
)

LOOP = textwrap.dedent(
    """
    import runpy, sys, time
    script, out_dir, *ramps = sys.argv[1:]
    for ramp in ramps:
        stem = ramp[: -len("_ramp.fits")]
        sys.argv = [script, ramp, stem + "_gain.fits", stem + "_readnoise.fits", out_dir]
        t0 = time.perf_counter()
        runpy.run_path(script, run_name="__main__")
        print("exposure", ramp, time.perf_counter() - t0, flush=True)
    """
)


def _products(out: Path) -> dict[str, list[bytes]]:
    found = {}
    for p in sorted(out.glob("*_rate*.fits")):
        with fits.open(p) as hdul:
            found[p.name] = [np.ascontiguousarray(h.data).tobytes() for h in hdul
                             if h.data is not None]
    return found


def _ours_with_kill(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd``, SIGKILL one LocalCluster worker after the second exposure is committed;
    return (wall s, peak tree RSS MiB)."""
    peak = 0
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        text=True)
    killed = threading.Event()

    def watch():
        for line in proc.stderr:
            if "[2/" in line and not killed.is_set():
                workers = [c for c in proc.children(recursive=True)
                           if "resource_tracker" not in " ".join(c.cmdline())]
                if workers:
                    workers[0].send_signal(signal.SIGKILL)
                    killed.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss((proc,)))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    reader.join(5)
    if proc.returncode != 0 or not killed.is_set():
        raise SystemExit(f"killed-worker run failed (rc {proc.returncode}, killed "
                         f"{killed.is_set()})")
    return wall, peak / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="exposures (default 8)")
    ap.add_argument("--shape", default="1x10x2048x2048")
    ap.add_argument("--max-in-flight", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.workdir is not None or args.keep:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_batch_"))
        work.mkdir(parents=True, exist_ok=True)
        return bench(args, work)
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        return bench(args, Path(tmp))


def bench(args, work: Path) -> int:
    """Run every job in ``work`` and print the table and the ratios."""
    exe = str(Path(sys.executable).parent / "stcal-dask")
    inputs = work / "in"
    inputs.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for i in range(args.n):
        ramp = inputs / f"b{i}_ramp.fits"
        if not ramp.exists():
            rate = ["--cr-rate", "0.2"] if i % 4 == 3 else []
            subprocess.run([exe, "simulate", str(ramp), "--shape", args.shape, "--seed",
                            str(100 + i), "--scheduler", "threads", "-q", *rate], check=True)
    print(f"simulated {args.n} x {args.shape} in {time.perf_counter() - t0:.0f} s "
          "(every 4th with cr-rate 0.2 instead of 0.02)")
    ramps = [str(p) for p in sorted(inputs.glob("*_ramp.fits"))][: args.n]
    script = work / "stcal_one.py"
    script.write_text(STCAL_SCRIPT)
    floor_script = work / "floor_one.py"
    floor_script.write_text(IO_FLOOR_SCRIPT)
    loop = work / "loop.py"
    loop.write_text(LOOP)
    dirs = {d: work / d for d in ("ours", "ours_killed", "stcal", "floor")}
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    subprocess.run([exe, "warmup", "-q"], check=True)  # the kernel cache, untimed

    ours_cmd = [exe, "run", str(inputs), "-o", str(dirs["ours"]), "--report",
                str(work / "report.json"), "--max-in-flight", str(args.max_in_flight)]
    w_floor, _p_floor, out_floor = run_tree(
        [sys.executable, str(loop), str(floor_script), str(dirs["floor"]), *ramps], cwd=work)
    w_ours, p_ours, _ = run_tree(ours_cmd, cwd=work)
    w_stcal, p_stcal, out_stcal = run_tree(
        [sys.executable, str(loop), str(script), str(dirs["stcal"]), *ramps], cwd=work)
    kill_cmd = [*ours_cmd[:3], "-o", str(dirs["ours_killed"]), *ours_cmd[5:]]
    kill_cmd[kill_cmd.index("--report") + 1] = str(work / "report_killed.json")
    w_kill, p_kill = _ours_with_kill(kill_cmd, work)

    floor_each = [float(ln.split()[-1]) for ln in out_floor.splitlines()
                  if ln.startswith("exposure")]
    stcal_each = [float(ln.split()[-1]) for ln in out_stcal.splitlines()
                  if ln.startswith("exposure")]
    report = json.loads((work / "report.json").read_text())
    ends = sorted(e["finished"] for e in report["exposures"])
    gaps = np.diff(ends)
    steady = float(np.median(gaps)) if len(gaps) else float("nan")
    floor_per = float(np.median(floor_each[1:] if len(floor_each) > 1 else floor_each))
    identical = _products(dirs["ours"]) == _products(dirs["ours_killed"])
    # stcal writes stcal_rate.fits per exposure over the same name: compare the last one
    last = Path(ramps[-1]).name.replace("_ramp.fits", "")
    check = compare(dirs["ours"] / f"{last}_rate.fits", dirs["stcal"] / "stcal_rate.fits")

    print(f"\n{args.n} x {args.shape}, {psutil.cpu_count()} cores, ours: default "
          f"LocalCluster, --max-in-flight {args.max_in_flight}")
    print(f"{'job':<24}{'total s':>9}{'peak RSS MiB':>14}")
    for name, w, p in (("I/O floor (all)", w_floor, float("nan")),
                       ("stcal 1.20.0, in turn", w_stcal, p_stcal),
                       ("ours, one batch", w_ours, p_ours),
                       ("ours, worker killed", w_kill, p_kill)):
        print(f"{name:<24}{w:>9.1f}{p:>14.0f}")
    print(f"per exposure: I/O floor {floor_per:.2f} s (median, after the first); stcal "
          f"{np.median(stcal_each):.1f} s; ours steady state {steady:.2f} s (median gap "
          f"between completions; first completion at {ends[0]:.1f} s)")
    print(f"speed-up vs stcal           : {w_stcal / w_ours:5.2f}x   (target >= 6x)")
    print(f"steady state / I/O floor    : {steady / floor_per:5.2f}x   (target <= 2.5x)")
    print(f"peak memory ours / stcal    : {p_ours / p_stcal:5.2f}    (target <= 0.5)")
    print(f"worker killed: total +{100 * (w_kill / w_ours - 1):.0f} % (target < 50 %), "
          f"products identical: {identical}")
    print(f"ours vs stcal ({last}_rate): {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
