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
"""

from __future__ import annotations

import argparse
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
        "--local-directory", default="$TMPDIR", help="spill directory on the compute nodes"
    )
    p.add_argument(
        "stcal_dask_args",
        nargs=argparse.REMAINDER,
        help="arguments for stcal-dask after '--' (omit to keep the cluster up)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        print(
            "slurm_cluster.py: error: needs dask-jobqueue (pip install dask-jobqueue)",
            file=sys.stderr,
        )
        return 2
    from distributed import Client

    cluster = SLURMCluster(
        queue=args.partition,
        account=args.account,
        cores=args.cores,
        processes=args.cores,  # one single-threaded worker process per core
        memory=args.memory,
        walltime=args.walltime,
        interface=args.interface,
        local_directory=args.local_directory,
        job_script_prologue=[
            "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1",
            "export NUMBA_NUM_THREADS=1",
        ],
    )
    try:
        cluster.scale(jobs=args.jobs)
        client = Client(cluster)
        print("job script:\n" + cluster.job_script())
        print(f"waiting for workers of {args.jobs} job(s)...")
        client.wait_for_workers(1)
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
