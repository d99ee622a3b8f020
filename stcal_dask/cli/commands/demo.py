"""``stcal-dask demo``: simulate a full-frame exposure and run it (the job itself is
:func:`stcal_dask.cli.demo.run_demo`)."""

from __future__ import annotations

import argparse

from stcal_dask.cli.common import add_command, execution_options, parse_tile

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``demo``."""
    p = add_command(
        subparsers,
        "demo",
        summary="simulate a full-frame exposure and run jump + ramp fit on a LocalCluster",
        description=(
            "The main job on an embedded default: simulates a 1x10x2048x2048 exposure into a\n"
            "zarr store, runs jump detection and ramp fitting on a LocalCluster with a progress\n"
            "bar, writes X_rate/X_rateints, prints how many injected jumps were found and how\n"
            "accurate the slopes are, and writes a quicklook PNG (rate image and jump map)."
        ),
        examples=("stcal-dask demo", "stcal-dask demo --size 512 -o /tmp/demo"),
        func=run,
    )
    p.add_argument(
        "--size", type=int, default=2048, help="detector side in pixels (default 2048)"
    )
    p.add_argument("--ngroups", type=int, default=10, help="groups per integration (default 10)")
    p.add_argument("--nints", type=int, default=1, help="integrations (default 1)")
    p.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    p.add_argument(
        "--output-dir",
        "-o",
        metavar="DIR",
        default="stcal-dask-demo",
        help="where to write the demo files (default ./stcal-dask-demo)",
    )
    p.add_argument(
        "--format",
        choices=("zarr", "fits", "both"),
        default="zarr",
        help="format of the rate products (default zarr)",
    )
    execution_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0."""
    from stcal_dask.cli.demo import run_demo
    from stcal_dask.engine.startup import worker_start_method

    return run_demo(
        size=args.size,
        nints=args.nints,
        ngroups=args.ngroups,
        seed=args.seed,
        output_dir=args.output_dir,
        formats=("zarr", "fits") if args.format == "both" else (args.format,),
        scheduler=args.scheduler,
        n_workers=args.n_workers,
        memory_limit=args.memory_limit,
        tile=parse_tile(args.tile),
        overwrite=args.overwrite,
        quiet=args.quiet,
        start_method=worker_start_method(),
    )
