"""``stcal-dask rampfit``: OLS ramp fitting of a jump-flagged ramp (``X_rate``, ``X_rateints``,
optionally ``X_fitopt``)."""

from __future__ import annotations

import argparse

from stcal_dask.cli.steps import add_step_command, process

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``rampfit``."""
    return add_step_command(
        subparsers,
        "rampfit",
        steps=("rampfit",),
        summary="fit ramps (OLS): writes X_rate, X_rateints (and X_fitopt with --save-opt)",
        description=(
            "OLS ramp fitting with optimal weighting (stcal 1.20.0 ramp_fit_data, OLS_C) on\n"
            "every tile of an already jump-flagged ramp. Writes X_rate (y, x) and X_rateints\n"
            "(integration, y, x): SCI, ERR (DN/s), DQ, VAR_POISSON, VAR_RNOISE ((DN/s)^2)."
        ),
        examples=("stcal-dask rampfit expo_jump.fits --gain g.fits --readnoise r.fits -o out/",),
        func=run,
        extra_outputs={"--save-opt": "also write the per-segment fit product X_fitopt"},
    )


def run(args: argparse.Namespace) -> int:
    """Fit the ramps and write the rate products; returns 0."""
    return process(args, "rampfit")
