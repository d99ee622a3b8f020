"""End-to-end benchmark: JWST ``_ramp.fits`` -> rate/rateints FITS, ours vs stcal 1.20.0.

Three jobs run one after the other, each in its own process tree, on the same input:

* **ours**: ``stcal-dask run X_ramp.fits --format fits`` on its default LocalCluster (on a
  2-core machine one worker process with 2 threads: the kernels release the GIL; jump detection
  + OLS ramp fitting in one dask graph); ``--n-workers N`` selects N single-threaded worker
  processes instead;
* **stcal**: a script doing the same with stcal 1.20.0 (read the FITS files with astropy,
  ``detect_jumps_data``, ``ramp_fit_data`` OLS_C, write rate and rateints FITS), one process,
  ``max_cores`` none, as the JWST pipeline runs it by default;
* **I/O floor**: read the same inputs fully (every array converted to native byte order, as
  the stcal script reads them) and write outputs of the same layout and sizes, no compute;
* for information: only importing the libraries our CLI loads (distributed, dask.array,
  xarray + pandas, astropy.io.fits: a fixed cost of any run; the workers are forked after
  distributed and load the kernels meanwhile), ours
  with 2 single-threaded worker processes, with the LocalCluster's workers as threads of the CLI
  process (``--in-process``), with ``--scheduler`` on an already running and warmed-up cluster
  (``dask scheduler`` + ``dask worker``, their RSS included: the steady state of a pipeline
  submitting exposure after exposure) and on dask's threaded scheduler (``--scheduler threads``,
  no cluster).

Peak memory is the peak of the **summed RSS of the whole process tree** (the command, its
children, the dask workers and nannies), polled every 50 ms with psutil. The outputs of ours and
stcal are compared (DQ bit for bit, slopes/variances to 1e-5 relative).

Targets (issue 4): >= 4x faster than stcal end to end, <= 1/4 of its peak memory, wall <= 2x the
I/O floor.

Usage::

    python benchmarks/bench_pipeline.py                       # 1x10x2048x2048, 3 runs each
    python benchmarks/bench_pipeline.py --shape 1x10x1024x1024 --workdir /tmp/bench
    python benchmarks/bench_pipeline.py --snowballs           # expand_large_events on in both
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

STCAL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from astropy.io import fits
    from stcal.jump.jump import detect_jumps_data
    from stcal.jump.jump_class import JumpData
    from stcal.ramp_fitting import ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    ramp_path, gain_path, rn_path, out_dir = sys.argv[1:5]
    flags = {"GOOD": 0, "DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4, "DROPOUT": 8,
             "PERSISTENCE": 32, "CHARGELOSS": 128, "NO_GAIN_VALUE": 524288,
             "UNRELIABLE_SLOPE": 16777216, "REFERENCE_PIXEL": 2147483648}
    with fits.open(ramp_path) as hdul:
        hdr = hdul[0].header
        data = np.asarray(hdul["SCI"].data, dtype=np.float32)
        gdq = np.asarray(hdul["GROUPDQ"].data, dtype=np.uint8)
        pdq = np.asarray(hdul["PIXELDQ"].data, dtype=np.uint32)
    gain = np.asarray(fits.getdata(gain_path, "SCI"), dtype=np.float32)
    rnoise = np.asarray(fits.getdata(rn_path, "SCI"), dtype=np.float32)
    nframes, groupgap = int(hdr["NFRAMES"]), int(hdr["GROUPGAP"])
    tframe, tgroup = float(hdr["TFRAME"]), float(hdr["TGROUP"])
    drop1 = int(hdr.get("DRPFRMS1", 0))

    jd = JumpData(gain2d=gain.copy(), rnoise2d=rnoise.copy(), dqflags=flags)
    jd.init_arrays_from_arrays(data, gdq, pdq)
    jd.nframes = nframes
    jd.dt_group = np.ones(1)
    jd.n_reads_groupdiff = np.ones(1) * 2 * nframes
    jd.set_detection_settings(4.0, 6.0, 5.0, 1000.0, 10.0, True)
    jd.set_after_jump(0.0, 0, 0.0, 0)
    jd.set_sigma_clipping_info(3, 100, True)
    jd.min_diffs_single_pass = 10
    jd.max_cores = "none"
    if len(sys.argv) > 5 and sys.argv[5] == "snowballs":
        # expand_large_events with the JWST JumpStep defaults, as the step passes them
        jd.set_snowball_info(True, 5.0, 1.0, 2.0, True, 2.5, 4, 25)
        jd.max_extended_width = 400
        jd.mask_persist_grps_next_int = True
        jd.persist_grps_flagged = int(4000.0 // tgroup)
    gdq, pdq, ncr, _ = detect_jumps_data(jd)

    rd = RampData()
    ny, nx = data.shape[2:]
    rd.set_arrays(data, gdq, pdq, np.zeros((ny, nx), np.float32))
    rd.set_meta("NIRCAM", tframe, tgroup, groupgap, nframes, drop1)
    rd.algorithm = "OLS_C"
    rd.set_dqflags(flags)
    rd.start_row, rd.num_rows = 0, ny
    rd.suppress_one_group_ramps = True
    image, integ, _opt = ramp_fit.ramp_fit_data(rd, False, rnoise, gain, "OLS_C", "optimal", "none")

    def write(path, d):
        hdus = [fits.PrimaryHDU(header=hdr)]
        for ext, key in (("SCI", "slope"), ("ERR", "err"), ("DQ", "dq"),
                         ("VAR_POISSON", "var_poisson"), ("VAR_RNOISE", "var_rnoise")):
            hdus.append(fits.ImageHDU(d[key], name=ext))
        fits.HDUList(hdus).writeto(path, overwrite=True)

    write(f"{out_dir}/stcal_rate.fits", image)
    write(f"{out_dir}/stcal_rateints.fits", integ)
    print("primary jumps", ncr)
    """
)

IO_FLOOR_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from astropy.io import fits

    # Read every input array in full, converted to native byte order, as a reader of the
    # exposure must (astropy memory-maps the data: an array only touched in part, e.g. one
    # group of SCI, would be read in part), and write rate and rateints files of the same
    # layout as the products (SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE; primary header copied).
    ramp_path, gain_path, rn_path, out_dir = sys.argv[1:5]
    with fits.open(ramp_path) as hdul:
        hdr = hdul[0].header
        sci = np.asarray(hdul["SCI"].data, dtype=np.float32)
        gdq = np.asarray(hdul["GROUPDQ"].data, dtype=np.uint8)
        pdq = np.asarray(hdul["PIXELDQ"].data, dtype=np.uint32)
    gain = np.asarray(fits.getdata(gain_path, "SCI"), dtype=np.float32)
    rn = np.asarray(fits.getdata(rn_path, "SCI"), dtype=np.float32)
    nints, _, ny, nx = sci.shape
    checksum = float(sci[:, -1, 0].sum()) + int(gdq[:, :, 0].sum()) + float(gain[0, 0] + rn[0, 0])
    plane = sci[:, -1] - sci[:, 0]
    for name, shape in (("rate", (ny, nx)), ("rateints", (nints, ny, nx))):
        value = plane[0] if len(shape) == 2 else plane
        hdus = [fits.PrimaryHDU(header=hdr)]
        for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE"):
            data = np.broadcast_to(pdq, shape).copy() if ext == "DQ" else value
            hdus.append(fits.ImageHDU(data, name=ext))
        fits.HDUList(hdus).writeto(f"{out_dir}/floor_{name}.fits", overwrite=True)
    print("checksum", checksum)
    """
)


PEAK_PARTS: dict[str, list[tuple[str, float]]] = {}
"""Per command (joined with spaces): each process's (name, RSS MiB) at the tree's peak."""


def tree_rss(roots, parts: list | None = None) -> int:
    """Summed RSS in bytes of the processes ``roots`` and all their descendants; ``parts``
    (when given) gets each process's (name, RSS MiB)."""
    procs = []
    for root in roots:
        try:
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            procs.append(root)
    total = 0
    for p in procs:
        try:
            rss = p.memory_info().rss
            if parts is not None:
                cmd = p.cmdline()
                parts.append((" ".join(cmd[1:3])[-48:] or p.name(), rss / 2**20))
        except psutil.Error:
            continue
        total += rss
    return total


def run_tree(cmd: list[str], *, cwd: Path, extra: tuple = ()) -> tuple[float, float, str]:
    """Run ``cmd``; return (wall seconds, peak summed RSS of its process tree in MiB, stdout).

    ``extra``: already running processes (e.g. a dask scheduler and worker the command uses)
    whose trees' RSS is added to the sum.
    """
    peak = 0
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        parts: list = []
        total = tree_rss((proc, *extra), parts)
        if total > peak:
            peak = total
            PEAK_PARTS[" ".join(cmd)] = parts
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    reader.join()
    out = "".join(out_chunks)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return wall, peak / 2**20, out


def compare(ours: Path, stcal: Path) -> str:
    """Compare two rate-like FITS files: DQ exact, floats to 1e-5 relative, NaN where stcal."""
    worst = 0.0
    with fits.open(ours) as a, fits.open(stcal) as b:
        dq_equal = np.array_equal(a["DQ"].data, b["DQ"].data)
        for ext in ("SCI", "ERR", "VAR_POISSON", "VAR_RNOISE"):
            x = a[ext].data.astype(np.float64)
            y = b[ext].data.astype(np.float64)
            if not np.array_equal(np.isnan(x), np.isnan(y)):
                return f"{ext}: NaN pattern differs"
            ok = ~np.isnan(y) & (y != 0)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(x[ok] - y[ok]) / np.abs(y[ok]))))
    verdict = "MATCH" if dq_equal and worst <= 1e-5 else "MISMATCH"
    return f"DQ identical: {dq_equal}; max relative difference {worst:.2e} -> {verdict}"


def run_on_running_cluster(stcal_dask: list[str], ramp: Path, work: Path):
    """ours with ``--scheduler`` on an already running cluster (``dask scheduler`` + one
    ``dask worker`` process with a thread per core, started and warmed up by one untimed run
    first): what a pipeline submitting exposure after exposure to its cluster pays. The
    scheduler's and worker's RSS count in the peak."""
    dask_exe = Path(sys.executable).parent / "dask"
    sched_file = work / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": str(psutil.cpu_count())}
    sched = psutil.Popen([str(dask_exe), "scheduler", "--scheduler-file", str(sched_file),
                          "--port", "0", "--no-dashboard"], cwd=work, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        worker = psutil.Popen([str(dask_exe), "worker", address, "--nworkers", "1", "--nthreads",
                               str(psutil.cpu_count()), "--no-dashboard"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = [*stcal_dask, "run", str(ramp), "--format", "fits", "-o", str(work / "threads"),
               "--scheduler", address, "--quiet", "--overwrite"]
        for _ in range(100):  # wait for the worker to register, then warm it up once
            try:
                subprocess.run(cmd, cwd=work, check=True, capture_output=True, timeout=300)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.5)
        return run_tree(cmd, cwd=work, extra=(sched, worker))
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                try:
                    p.wait(10)
                except psutil.TimeoutExpired:
                    p.kill()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1x10x2048x2048", help="NINTSxNGROUPSxNYxNX")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--snowballs", action="store_true",
                    help="snowball flagging on in both (--jump.expand_large_events true)")
    ap.add_argument("--n-workers", type=int, default=None,
                    help="worker processes for the main 'stcal_dask' row (default: the CLI's "
                    "default layout, one worker process with a thread per core on <= 4 cores)")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of the I/O floor, stcal and ours, interleaved (floor, stcal, "
                    "ours, floor, ...); the table shows each one's median wall time and its "
                    "largest peak (default 3: a shared machine's speed drifts between runs)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    work.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "stcal-dask"
    stcal_dask = [str(exe)] if exe.exists() else [sys.executable, "-m", "stcal_dask.cli"]
    ramp = work / "bench_ramp.fits"
    gain, rnoise = work / "bench_gain.fits", work / "bench_readnoise.fits"
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [*stcal_dask, "simulate", str(ramp), "--shape", args.shape, "--seed", str(args.seed),
             "--scheduler", "threads", "--quiet", "--overwrite"],
            check=True,
        )
        print(f"simulated {args.shape} -> {ramp} in {time.perf_counter() - t0:.1f} s")
        in_mib = sum(p.stat().st_size for p in (ramp, gain, rnoise)) / 2**20

        for d in ("ours", "stcal", "floor", "threads"):
            (work / d).mkdir(exist_ok=True)
        layout = ["--n-workers", str(args.n_workers)] if args.n_workers else []
        if args.snowballs:
            layout += ["--jump.expand_large_events", "true"]
        # warm the OS page cache and numba's on-disk cache once, untimed
        subprocess.run(
            [*stcal_dask, "run", str(ramp), "--format", "fits", "-o", str(work / "ours"),
             *layout, "--quiet", "--overwrite"],
            check=True,
        )
        main_jobs = {
            "I/O floor": [sys.executable, "-c", IO_FLOOR_SCRIPT, str(ramp), str(gain),
                          str(rnoise), str(work / "floor")],
            "stcal 1.20.0": [sys.executable, "-c", STCAL_SCRIPT, str(ramp), str(gain),
                             str(rnoise), str(work / "stcal"),
                             "snowballs" if args.snowballs else "plain"],
            "stcal_dask": [*stcal_dask, "run", str(ramp), "--format", "fits", "-o",
                           str(work / "ours"), *layout, "--quiet", "--overwrite"],
        }
        runs: dict[str, list] = {name: [] for name in main_jobs}
        for _ in range(args.repeat):
            for name, cmd in main_jobs.items():
                runs[name].append(run_tree(cmd, cwd=work))
        results = {}
        for name, rs in runs.items():
            walls = sorted(r[0] for r in rs)
            results[name] = (float(np.median(walls)), max(r[1] for r in rs), rs[-1][2])
        # informational: only importing the libraries the CLI needs (a fixed cost, any size)
        results["imports only"] = run_tree(
            [sys.executable, "-c", "import stcal_dask.engine.startup as s; s.import_for_workers()"],
            cwd=work)
        # informational: other layouts of the same LocalCluster, and no cluster at all
        results["ours, 2 processes"] = run_tree(
            [*stcal_dask, "run", str(ramp), "--format", "fits", "-o", str(work / "threads"),
             "--n-workers", "2", "--quiet", "--overwrite"], cwd=work)
        results["ours, in-process"] = run_tree(
            [*stcal_dask, "run", str(ramp), "--format", "fits", "-o", str(work / "threads"),
             "--in-process", *layout, "--quiet", "--overwrite"], cwd=work)
        results["ours, warm cluster"] = run_on_running_cluster(stcal_dask, ramp, work)
        results["ours, threads"] = run_tree(
            [*stcal_dask, "run", str(ramp), "--format", "fits", "-o", str(work / "threads"),
             "--scheduler", "threads", "--quiet", "--overwrite"], cwd=work)

        from stcal_dask.engine.cluster import local_layout

        n, t = local_layout(args.n_workers, None)
        print(f"\ninput {args.shape}: {in_mib:.0f} MiB of FITS (ramp + gain + readnoise); "
              f"{psutil.cpu_count()} cores; stcal_dask = CLI on a LocalCluster of {n} worker "
              f"process(es) x {t} thread(s)")
        print(f"{'job':<18}{'wall s':>9}{'peak RSS MiB':>15}{'x stcal speed':>15}")
        for name, (wall, peak, _) in results.items():
            ratio = results["stcal 1.20.0"][0] / wall
            print(f"{name:<18}{wall:>9.2f}{peak:>15.0f}{ratio:>15.2f}")
        if args.repeat > 1:
            print(f"(median of {args.repeat} interleaved runs for the first three rows; "
                  "wall s of each run:)")
            for name, rs in runs.items():
                print(f"  {name:<16}" + "  ".join(f"{r[0]:6.2f}" for r in rs))
            pairs = [s_[0] / o[0] for s_, o in zip(runs["stcal 1.20.0"], runs["stcal_dask"],
                                                   strict=True)]
            print("  speed-up of each run pair: " + "  ".join(f"{p:.2f}x" for p in pairs))
        (w_o, p_o, _), (w_s, p_s, _), (w_f, _, _) = (
            results["stcal_dask"], results["stcal 1.20.0"], results["I/O floor"])
        speed = w_s / w_o
        mem = p_o / p_s
        floor = w_o / w_f
        parts = PEAK_PARTS.get(" ".join(main_jobs["stcal_dask"]), [])
        print("stcal_dask at its peak (RSS MiB per process): "
              + "; ".join(f"{name} {mib:.0f}" for name, mib in parts))
        print(f"speed-up vs stcal        : {speed:5.2f}x  (target >= 4x: "
              f"{'MET' if speed >= 4 else 'NOT MET'})")
        print(f"peak memory / stcal's    : {mem:5.2f}   (target <= 0.25: "
              f"{'MET' if mem <= 0.25 else 'NOT MET'})")
        print(f"wall / I/O floor         : {floor:5.2f}   (target <= 2: "
              f"{'MET' if floor <= 2 else 'NOT MET'})")
        stem = ramp.name.removesuffix("_ramp.fits")
        for prod in ("rate", "rateints"):
            verdict = compare(work / "ours" / f"{stem}_{prod}.fits",
                              work / "stcal" / f"stcal_{prod}.fits")
            print(f"{prod:<9} ours vs stcal: {verdict}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
