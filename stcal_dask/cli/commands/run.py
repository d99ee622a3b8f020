"""``stcal-dask run``: jump detection and ramp fitting in one graph (each tile read once)."""

from __future__ import annotations

import argparse

from stcal_dask.cli.steps import add_step_command, process

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``run``."""
    return add_step_command(
        subparsers,
        "run",
        steps=("jump", "rampfit"),
        summary="jump detection + ramp fitting in one pass: writes X_rate, X_rateints",
        description=(
            "Jump detection followed by OLS ramp fitting, in one dask graph (each tile is read\n"
            "once). INPUT is a zarr ramp store or a JWST _ramp.fits with --gain/--readnoise\n"
            "(default: X_gain.fits / X_readnoise.fits beside it, as 'simulate' writes them).\n"
            "Outputs X_rate, X_rateints (X_fitopt with --save-opt, X_jump with --save-jump)."
        ),
        examples=(
            "stcal-dask run expo_ramp.fits --gain expo_gain.fits --readnoise expo_readnoise.fits"
            " -o out/",
            "stcal-dask run expo.zarr -o out/ --format both --save-opt --scheduler tcp://host:8786",
            "stcal-dask run expo.zarr --n-workers 4 --memory-limit 2GB "
            "--rampfit.suppress_one_group false",
        ),
        func=run,
        extra_outputs={
            "--save-opt": "also write the per-segment fit product X_fitopt",
            "--save-jump": "also write the flagged ramp X_jump",
        },
    )


def run(args: argparse.Namespace) -> int:
    """Detect jumps, fit the ramps, write the products; returns 0."""
    return process(args, "run")
