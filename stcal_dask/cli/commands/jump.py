"""``stcal-dask jump``: flag jumps (cosmic rays) in a ramp and write the flagged ramp ``X_jump``."""

from __future__ import annotations

import argparse

from stcal_dask.cli.steps import add_step_command, process

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``jump``."""
    return add_step_command(
        subparsers,
        "jump",
        steps=("jump",),
        summary="flag jumps (cosmic rays) in a ramp: writes X_jump",
        description=(
            "Two-point-difference jump detection (stcal 1.20.0 detect_jumps_data, single\n"
            "process, no snowballs/showers) on every tile. Writes the flagged ramp X_jump\n"
            "(.zarr store or JWST RampModel .fits) and prints the number of primary jumps."
        ),
        examples=("stcal-dask jump expo.zarr -o out/ --jump.rejection_threshold 5",),
        func=run,
        extra_outputs={},
    )


def run(args: argparse.Namespace) -> int:
    """Detect jumps and write ``X_jump``; returns 0."""
    return process(args, "jump")
