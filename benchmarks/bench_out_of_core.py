"""Out-of-core benchmark: a ramp cube at least 2x larger than the workers' total memory limit.

Issue 4 asks that memory be bounded by chunks, not by the exposure. This script

1. writes a seeded synthetic ramp store (``simulate_to_zarr``, tile by tile, default
   2x50x2048x2048: 2.1 GB of SCI + GROUPDQ on disk, never whole in memory; 128x128 tiles);
2. runs ``stcal-dask run STORE --n-workers 2 --memory-limit 500MB`` (a LocalCluster of two
   single-threaded worker processes limited to 500 MB each, 1 GB in all: the cube is 2.1x
   the total limit; a worker needs ~270 MiB for the libraries and compiled kernels alone) as a
   child process tree, jump detection + ramp fitting -> rate and rateints zarr stores;
3. polls every 50 ms, with psutil, the RSS of every process of that tree: the CLI process
   (client, scheduler, nannies), each worker process, and their sum;
4. checks that no worker was restarted (a worker killed for exceeding its limit shows up as a
   new worker process), that no worker exceeded its limit, and that the products are complete.

It prints the cube size, the limits, the wall time, the peak RSS per worker and of the whole
tree, and a verdict. This is a benchmark script, not a test (the small, fast version of the same
check is ``tests/test_cluster.py::test_memory_limited_cluster_streams_tiles``).

Usage::

    python benchmarks/bench_out_of_core.py                          # 2x50x2048x2048, 2 x 500MB
    python benchmarks/bench_out_of_core.py --shape 1x20x1024x1024 --tile 256
    python benchmarks/bench_out_of_core.py --workdir /scratch/ooc --keep
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) != 4 or min(parts) < 1:
        raise SystemExit(f"--shape must be NINTSxNGROUPSxNYxNX, got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def _is_worker(proc: psutil.Process, root_pid: int) -> bool:
    """Dask worker processes are the children of the CLI process (whose nannies start them,
    forked or spawned), except multiprocessing's resource tracker."""
    try:
        cmd = " ".join(proc.cmdline())
        return proc.ppid() == root_pid and "resource_tracker" not in cmd
    except psutil.Error:
        return False


class TreeMonitor:
    """Peak RSS of a process tree, per process and summed, polled in a background thread."""

    def __init__(self, root: psutil.Process, interval: float = 0.05):
        self.root = root
        self.interval = interval
        self.peak_total = 0
        self.peak_root = 0
        self.peak_worker: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                break
            total = 0
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if proc.pid == self.root.pid:
                    self.peak_root = max(self.peak_root, rss)
                elif proc.pid in self.peak_worker or _is_worker(proc, self.root.pid):
                    self.peak_worker[proc.pid] = max(self.peak_worker.get(proc.pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            time.sleep(self.interval)

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="2x50x2048x2048", help="NINTSxNGROUPSxNYxNX")
    ap.add_argument("--n-workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="500MB", help="per worker (default 500MB)")
    ap.add_argument("--tile", type=int, default=128, help="square tile size in pixels")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the stores afterwards")
    args = ap.parse_args(argv)

    import xarray as xr
    from dask.utils import format_bytes, parse_bytes

    from stcal_dask.sim.lazy import simulate_to_zarr
    from stcal_dask.sim.ramp import SimulationConfig

    nints, ngroups, ny, nx = _parse_shape(args.shape)
    limit = int(parse_bytes(args.memory_limit))
    total_limit = limit * args.n_workers
    cube = nints * ngroups * ny * nx * (4 + 1)  # SCI float32 + GROUPDQ uint8
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="stcal_dask_ooc_"))
    workdir.mkdir(parents=True, exist_ok=True)
    store = workdir / "ooc_ramp.zarr"
    outdir = workdir / "out"
    outdir.mkdir(exist_ok=True)

    print(f"cube {nints}x{ngroups}x{ny}x{nx}: SCI+GROUPDQ {format_bytes(cube)}; "
          f"{args.n_workers} workers x {format_bytes(limit)} = {format_bytes(total_limit)} "
          f"(cube / total limit = {cube / total_limit:.2f}x); tile {args.tile}x{args.tile}; "
          f"{psutil.cpu_count()} cores")
    try:
        t0 = time.perf_counter()
        cfg = SimulationConfig(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=args.seed)
        with __import__("dask").config.set(scheduler="threads"):
            simulate_to_zarr(cfg, store, tile=(args.tile, args.tile), overwrite=True)
        print(f"simulated store in {time.perf_counter() - t0:.1f} s -> {store}")

        cmd = [sys.executable, "-m", "stcal_dask.cli", "run", str(store), "--output-dir",
               str(outdir), "--n-workers", str(args.n_workers), "--memory-limit",
               args.memory_limit, "--quiet", "--overwrite"]
        t0 = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with TreeMonitor(proc) as mon:
            out, _ = proc.communicate()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(out)
            print(f"FAILED: stcal-dask run exited {proc.returncode}")
            return 1

        rate = xr.open_zarr(outdir / "ooc_rate.zarr", consolidated=False)
        rateints = xr.open_zarr(outdir / "ooc_rateints.zarr", consolidated=False)
        finite = float(np.isfinite(rate["sci"].values).mean())
        ok_shapes = rate["sci"].shape == (ny, nx) and rateints["sci"].shape == (nints, ny, nx)

        workers = sorted(mon.peak_worker.values(), reverse=True)
        restarted = len(workers) > args.n_workers
        seen = len(workers) >= args.n_workers  # every worker was really measured
        over = [w for w in workers if w > limit]
        print(f"wall (cluster start + jump + ramp fit + write): {wall:.1f} s")
        print("peak RSS per worker: " + ", ".join(format_bytes(w) for w in workers)
              + f" (limit {format_bytes(limit)} each)")
        print(f"peak RSS of the CLI process (client, scheduler, nannies): "
              f"{format_bytes(mon.peak_root)}")
        print(f"peak RSS of the whole process tree (summed): {format_bytes(mon.peak_total)} = "
              f"{mon.peak_total / cube:.2f}x the cube")
        print(f"rate {rate['sci'].shape}, rateints {rateints['sci'].shape}, "
              f"finite slopes {finite:.2%}")
        verdict = ok_shapes and seen and not restarted and not over and finite > 0.9
        print(f"{'PASS' if verdict else 'FAIL'}: cube {cube / total_limit:.2f}x the workers' "
              f"total limit; worker restarts: {'yes' if restarted else 'none'}; "
              f"workers over their limit: {len(over)}; workers measured: {len(workers)}")
        return 0 if verdict else 1
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
