"""``stcal-dask run``: jump detection and ramp fitting in one graph (each tile read once), on one
exposure or on a batch of them (:mod:`stcal_dask.cli.batch`)."""

from __future__ import annotations

import argparse

from stcal_dask.cli.steps import add_step_command, process

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``run``."""
    p = add_step_command(
        subparsers,
        "run",
        steps=("jump", "rampfit"),
        summary="jump detection + ramp fitting in one pass: writes X_rate, X_rateints",
        description=(
            "Jump detection followed by OLS ramp fitting, in one dask graph (each tile is read\n"
            "once). INPUT is a zarr ramp store or a JWST _ramp.fits with --gain/--readnoise\n"
            "(default: X_gain.fits / X_readnoise.fits beside it, as 'simulate' writes them).\n"
            "Outputs X_rate, X_rateints (X_fitopt with --save-opt, X_jump with --save-jump).\n\n"
            "Several inputs (paths, glob patterns, a directory of *_ramp.fits / *.zarr, or\n"
            "--inputs-from FILE) run as one batch on one cluster, up to --max-in-flight at a\n"
            "time: an input that fails is reported and the others go on (exit status 1 if any\n"
            "failed; summary table at the end, --report FILE as JSON); each exposure's products\n"
            "get a completion record X_complete.json, written last, so re-running the same\n"
            "command skips what is complete and redoes what changed (input or parameters) or\n"
            "was interrupted; --overwrite redoes all."
        ),
        examples=(
            "stcal-dask run expo_ramp.fits --gain expo_gain.fits --readnoise expo_readnoise.fits"
            " -o out/",
            "stcal-dask run expo.zarr -o out/ --format both --save-opt --scheduler tcp://host:8786",
            "stcal-dask run expo.zarr --n-workers 4 --memory-limit 2GB "
            "--rampfit.suppress_one_group false",
            "stcal-dask run 'visit1/*_ramp.fits' visit2/ -o out/ --report out/report.json",
            "stcal-dask run --inputs-from list.txt --gain g.fits --readnoise r.fits -o out/",
        ),
        func=run,
        many=True,
        extra_outputs={
            "--save-opt": "also write the per-segment fit product X_fitopt",
            "--save-jump": "also write the flagged ramp X_jump",
        },
    )


    g = p.add_argument_group("batch (several inputs)")
    g.add_argument("--inputs-from", metavar="FILE", default=None,
                   help="read more inputs from FILE, one path per line ('#' comments; relative "
                   "paths are relative to FILE's folder)")
    g.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="exposures computed at once (default: the embedded cluster's threads "
                   "+ 1, each exposure then one whole-frame tile where it fits its memory "
                   "share; 2 with --scheduler; memory grows with N)")
    g.add_argument("--report", metavar="FILE", default=None,
                   help="write the batch's outcome per input (status, reason, primary jumps, "
                   "seconds, products) as JSON")
    g.add_argument("--checksum", action="store_true",
                   help="completion records compare the inputs' SHA-256 (default: size and "
                   "modification time)")
    return p


def run(args: argparse.Namespace) -> int:
    """Detect jumps, fit the ramps, write the products of one input or a batch; returns the
    exit status."""
    from stcal_dask.cli.batch import is_batch, run_batch

    if is_batch(args):
        return run_batch(args)
    args.input = args.inputs[0]
    return process(args, "run")
