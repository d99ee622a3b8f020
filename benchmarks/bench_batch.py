"""Batch benchmark: N exposures through one ``stcal-dask run`` vs stcal 1.20.0 one after another.

* inputs: N seeded ``_ramp.fits`` exposures (default 8 x 1x10x2048x2048), one in four with ten
  times the cosmic-ray rate (many more flags), with their gain/readnoise references;
* **ours**: ``stcal-dask run DIR -o OUT --report R`` (default LocalCluster, pipelined: up to
  ``--max-in-flight`` exposures at once, the oldest first; by default the command's own default);
  the report gives each exposure's start and end; the **steady-state wall per exposure** is the
  mean interval between completions after the first, ``(last end - first end) / (N - 1)`` (the
  batch's throughput once the pipeline is full: the start-up and the first exposure's latency are
  left out, every later exposure, heavy ones included, counts);
* **stcal**: one Python process running the jump + OLS ramp-fit script of
  ``bench_pipeline.py`` (stcal 1.20.0: ``detect_jumps_data``, ``ramp_fit_data`` OLS_C, FITS in
  and out) on every exposure in turn, as the JWST pipeline processes an association;
* **I/O floor**: one process reading every input array in full (native byte order, as the stcal
  script reads them) and writing rate and rateints files of the products' layout and sizes
  (the ``bench_pipeline.py`` floor script per exposure), its per-exposure time (median after the
  first, which pays the imports);
* **ours, worker killed**: the batch again, one LocalCluster worker process SIGKILLed once the
  second exposure is committed; total wall and whether the products are bit-identical.

``--repeat R`` runs the floor, ours and stcal R times interleaved (A B C A B C ...) and quotes
medians. For each job: wall, peak RSS of the process tree (summed, ``bench_pipeline.run_tree``),
CPU seconds of the tree (``getrusage`` of the reaped children: on a shared machine CPU seconds
move less than wall) and the machine's load average before and after. Ours also gets a
per-exposure timeline (start, end, own seconds) and its average number of busy cores. The last
exposure's products of ours and stcal are compared (DQ exact, floats 1e-5).

Targets (issue 13): total >= 6x faster than stcal; steady-state wall per exposure <= 2.5x the
per-exposure I/O floor; peak memory <= 1/2 of stcal's; with a worker killed the total grows by
< 50 % and the products are identical.

    python benchmarks/bench_batch.py [--n 8] [--shape 1x10x2048x2048] [--repeat 1]
                                     [--max-in-flight N] [--workdir DIR] [--keep] [--no-kill]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _job(cmd: list[str], cwd: Path) -> dict:
    """Run ``cmd`` (``bench_pipeline.run_tree``); wall s, peak tree RSS MiB, CPU s of the tree,
    the machine's busy cores on average, stdout, load average before."""
    load = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = psutil.cpu_times()
    wall, peak, out = run_tree(cmd, cwd=cwd)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu1 = psutil.cpu_times()
    idle = (cpu1.idle + cpu1.iowait) - (cpu0.idle + cpu0.iowait)
    busy = sum(cpu1) - sum(cpu0) - idle
    return {"wall": wall, "peak": peak, "out": out, "load": load,
            "cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "machine": psutil.cpu_count() * busy / max(busy + idle, 1e-9)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="exposures (default 8)")
    ap.add_argument("--shape", default="1x10x2048x2048")
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="passed to stcal-dask run (default: not passed, the command's default)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved runs of the floor, ours and stcal (medians quoted)")
    ap.add_argument("--no-kill", action="store_true", help="skip the worker-killed run")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if args.workdir is not None or args.keep:
        work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_batch_"))
        work.mkdir(parents=True, exist_ok=True)
        return bench(args, work)
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        return bench(args, Path(tmp))


def _times(out: str) -> list[float]:
    return [float(ln.split()[-1]) for ln in out.splitlines() if ln.startswith("exposure")]


def _steady(report: dict) -> tuple[float, list[dict]]:
    """(mean interval between completions after the first, exposures in order of start)."""
    exps = sorted(report["exposures"], key=lambda e: e["started"])
    ends = sorted(e["finished"] for e in exps)
    steady = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else float("nan")
    return steady, exps


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
    subprocess.run([exe, "warmup", "-q"], check=True)  # the kernel cache, untimed

    def ours_cmd(out: Path, report: Path) -> list[str]:
        flight = [] if args.max_in_flight is None else ["--max-in-flight",
                                                         str(args.max_in_flight)]
        return [exe, "run", *ramps, "-o", str(out), "--report", str(report), *flight]

    jobs = {
        "floor": lambda: [sys.executable, str(loop), str(floor_script), str(dirs["floor"]),
                          *ramps],
        "ours": lambda: ours_cmd(dirs["ours"], work / "report.json"),
        "stcal": lambda: [sys.executable, str(loop), str(script), str(dirs["stcal"]), *ramps],
    }
    runs: dict[str, list[dict]] = {name: [] for name in jobs}
    load_start = os.getloadavg()
    for _ in range(args.repeat):
        for name, cmd in jobs.items():
            shutil.rmtree(dirs[name], ignore_errors=True)
            dirs[name].mkdir()
            r = _job(cmd(), work)
            if name == "ours":
                r["report"] = json.loads((work / "report.json").read_text())
            runs[name].append(r)
    w_kill = p_kill = float("nan")
    identical = None
    if not args.no_kill:
        shutil.rmtree(dirs["ours_killed"], ignore_errors=True)
        dirs["ours_killed"].mkdir()
        w_kill, p_kill = _ours_with_kill(ours_cmd(dirs["ours_killed"],
                                                  work / "report_killed.json"), work)
        identical = _products(dirs["ours"]) == _products(dirs["ours_killed"])
    load_end = os.getloadavg()

    def med(name, key):
        return float(np.median([r[key] for r in runs[name]]))

    floor_per = float(np.median([np.median(_times(r["out"])[1:] or _times(r["out"]))
                                 for r in runs["floor"]]))
    stcal_per = float(np.median([np.median(_times(r["out"])) for r in runs["stcal"]]))
    steadies = [_steady(r["report"])[0] for r in runs["ours"]]
    steady = float(np.median(steadies))
    w_ours, w_stcal = med("ours", "wall"), med("stcal", "wall")
    p_ours, p_stcal = max(r["peak"] for r in runs["ours"]), max(r["peak"] for r in runs["stcal"])
    # stcal writes stcal_rate.fits per exposure over the same name: compare the last one
    last = Path(ramps[-1]).name.replace("_ramp.fits", "")
    check = compare(dirs["ours"] / f"{last}_rate.fits", dirs["stcal"] / "stcal_rate.fits")

    print(f"\n{args.n} x {args.shape}, {psutil.cpu_count()} cores, ours: default "
          f"LocalCluster, --max-in-flight {args.max_in_flight or 'default'}; {args.repeat} "
          f"interleaved run(s) of each job; load average (1, 5, 15 min) at the start "
          f"{', '.join(f'{x:.2f}' for x in load_start)}, at the end "
          f"{', '.join(f'{x:.2f}' for x in load_end)}")
    print(f"{'job':<24}{'total s':>9}{'CPU s':>8}{'busy cores':>12}{'machine busy':>14}"
          f"{'peak RSS MiB':>14}  (median; per run: wall s)")
    for name, label in (("floor", "I/O floor (all)"), ("stcal", "stcal 1.20.0, in turn"),
                        ("ours", "ours, one batch")):
        rs = runs[name]
        peak = max(r["peak"] for r in rs)
        print(f"{label:<24}{med(name, 'wall'):>9.1f}{med(name, 'cpu'):>8.1f}"
              f"{med(name, 'cpu') / med(name, 'wall'):>12.2f}{med(name, 'machine'):>14.2f}"
              f"{peak:>14.0f}  " + " ".join(f"{r['wall']:.1f}" for r in rs))
    if not args.no_kill:
        print(f"{'ours, worker killed':<24}{w_kill:>9.1f}{'':>34}{p_kill:>14.0f}")
    steady_run, exps = _steady(runs["ours"][-1]["report"])
    print("ours, last run, per exposure (s from the batch's start): start, end, own seconds")
    for e in exps:
        print(f"  {Path(e['input']).name:<16}{e['started']:7.2f}{e['finished']:7.2f}"
              f"{e['seconds']:7.2f}")
    ends = sorted(e["finished"] for e in exps)
    print("  intervals between completions: " + " ".join(f"{g:.2f}" for g in np.diff(ends)))
    print(f"per exposure: I/O floor {floor_per:.2f} s (median after the first); stcal "
          f"{stcal_per:.1f} s (median); ours steady state {steady:.2f} s (mean interval "
          f"between completions after the first; per run: "
          f"{' '.join(f'{x:.2f}' for x in steadies)})")
    print(f"speed-up vs stcal           : {w_stcal / w_ours:5.2f}x   (target >= 6x; per run "
          + " ".join(f"{s_['wall'] / o['wall']:.2f}x"
                     for s_, o in zip(runs["stcal"], runs["ours"], strict=True)) + ")")
    print(f"steady state / I/O floor    : {steady / floor_per:5.2f}x   (target <= 2.5x)")
    print(f"peak memory ours / stcal    : {p_ours / p_stcal:5.2f}    (target <= 0.5)")
    if not args.no_kill:
        print(f"worker killed: total +{100 * (w_kill / w_ours - 1):.0f} % (target < 50 %), "
              f"products identical: {identical}")
    print(f"ours vs stcal ({last}_rate): {check}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
