"""Run ``stcal-dask`` on a SLURM cluster through dask-jobqueue.

Needs ``pip install dask-jobqueue`` (not a dependency of stcal_dask).

Examples
--------
Start 4 SLURM jobs of 8 single-threaded workers (32 GB per job), run one exposure, then cancel the
jobs::

    python deploy/slurm_cluster.py --jobs 4 --cores 8 --memory 32GB --partition normal \\
        -- run /shared/exposure.zarr --output-dir /shared/out

Keep a cluster up and submit several runs from another shell::

    python deploy/slurm_cluster.py --jobs 4
    # prints: scheduler at tcp://10.0.0.5:41234 -- use: stcal-dask ... --scheduler tcp://...

Input and output paths must be on a file system every compute node sees at the same path.

Each job first compiles the numba kernels into the node's cache (``stcal-dask warmup``: a no-op
when that node already has them, once per node otherwise; several jobs starting together on a
node wait for one compile), then starts its workers. The workers retire themselves before the
job's wall time runs out (dask's ``--lifetime``, staggered), so their tasks move to other workers
instead of being killed mid-tile, and the cluster adapts to keep ``--jobs`` jobs running.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=2, help="SLURM jobs (default 2)")
    p.add_argument("--cores", type=int, default=8, help="cores = worker processes per job")
    p.add_argument("--memory", default="32GB", help="memory per job, shared by its workers")
    p.add_argument("--partition", default=None, help="SLURM partition (queue)")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--walltime", default="01:00:00", help="job wall time")
    p.add_argument("--interface", default=None, help="network interface, e.g. ib0")
    p.add_argument(
        "--local-directory", default="${TMPDIR:-/tmp}",
        help="spill directory on the compute nodes (a shell expression expanded there; default "
             "$TMPDIR, else /tmp)",
    )
    p.add_argument(
        "--cache-dir", default=None,
        help="compiled-kernel cache on the nodes (STCAL_DASK_CACHE_DIR; default: a per-user "
             "directory under /var/tmp on each node)",
    )
    p.add_argument(
        "--wait", type=float, default=600.0,
        help="seconds to wait for the first worker before giving up (default 600)",
    )
    p.add_argument(
        "stcal_dask_args",
        nargs=argparse.REMAINDER,
        help="arguments for stcal-dask after '--' (omit to keep the cluster up)",
    )
    return p


def _seconds(walltime: str) -> int:
    """SLURM wall time ``[D-]HH:MM:SS``, ``HH:MM`` or ``MM`` in seconds."""
    days, _, clock = walltime.rpartition("-")
    parts = [int(x) for x in clock.split(":")]
    if len(parts) == 2:
        parts = [0, *parts]
    elif len(parts) == 1:
        parts = [0, parts[0], 0]
    h, m, s = parts
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def lifetime_args(walltime: str) -> list[str]:
    """``dask worker`` arguments that retire a worker before the job's wall time: 10 % (at least
    2 and at most 10 minutes) ahead, staggered by a fifth of that so the workers do not all leave
    together."""
    total = _seconds(walltime)
    margin = min(600, max(120, total // 10))
    life = max(60, total - margin)
    return ["--lifetime", f"{life}s", "--lifetime-stagger", f"{margin // 5}s"]


def make_cluster(args):
    """The SLURMCluster for the parsed ``args`` (its scheduler starts here; no job is submitted
    until it is scaled). ``cluster.job_script()`` is the script each job runs."""
    from dask_jobqueue import SLURMCluster

    prologue = [
        "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1",
        "export NUMBA_NUM_THREADS=1",
    ]
    if args.cache_dir:
        prologue.append(f"export STCAL_DASK_CACHE_DIR={shlex.quote(args.cache_dir)}")
    # compile (or load) the kernels before the workers start; stops the job if that fails
    prologue.append("stcal-dask warmup || exit 1")
    return SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=args.cores,
        processes=args.cores,  # one single-threaded worker process per core
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        worker_extra_args=[
            "--local-directory", args.local_directory, *lifetime_args(args.walltime),
        ],
        job_script_prologue=prologue,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        print(
            "slurm_cluster.py: error: needs dask-jobqueue (pip install dask-jobqueue)",
            file=sys.stderr,
        )
        return 2
    from distributed import Client

    cluster = make_cluster(args)
    try:
        # adapt, not scale: workers that retired at their --lifetime are replaced by new jobs
        cluster.adapt(minimum_jobs=args.jobs, maximum_jobs=args.jobs)
        client = Client(cluster)
        print("job script:\n" + cluster.job_script())
        print(f"waiting for workers of {args.jobs} job(s)...")
        try:
            client.wait_for_workers(1, timeout=args.wait)
        except TimeoutError:
            print(
                f"slurm_cluster.py: error: no worker joined within {args.wait:g} s; check the "
                "jobs' output files (squeue, the job's slurm-*.out)",
                file=sys.stderr,
            )
            return 1
        address = cluster.scheduler_address
        rest = [a for a in args.stcal_dask_args if a != "--"]
        if not rest:
            print(f"scheduler at {address} -- use: stcal-dask ... --scheduler {address}")
            print("Ctrl-C to stop the cluster")
            while True:
                time.sleep(60)
        from stcal_dask.cli import main as stcal_dask_main

        return stcal_dask_main([*rest, "--scheduler", address])
    except KeyboardInterrupt:
        return 130
    finally:
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
