"""``stcal-dask ingest``: a JWST FITS ramp and its gain/readnoise references -> a zarr ramp
store."""

from __future__ import annotations

import argparse
from pathlib import Path

from stcal_dask.cli.common import (
    add_command,
    compute,
    execution_options,
    io_options,
    is_fits,
    open_client,
    parse_tile,
    say,
)
from stcal_dask.errors import UserInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ingest``."""
    p = add_command(
        subparsers,
        "ingest",
        summary="convert a JWST _ramp.fits + gain/readnoise references into a zarr ramp store",
        description=(
            "Read a JWST _ramp.fits (SCI, PIXELDQ, GROUPDQ, optional ZEROFRAME/AVDRKCUR, timing\n"
            "keywords) and its GAIN / READNOISE reference files (cut to the data's subarray)\n"
            "lazily and store them as one chunked zarr ramp store (chunks: all integrations,\n"
            "all groups, tile_y, tile_x)."
        ),
        examples=(
            "stcal-dask ingest expo_ramp.fits --gain expo_gain.fits "
            "--readnoise expo_readnoise.fits --output expo_ramp.zarr --tile 512",
        ),
        func=run,
    )
    p.add_argument("input", metavar="INPUT", help="X_ramp.fits")
    io_options(p, outputs=False)
    p.add_argument(
        "--output",
        metavar="OUT.zarr",
        default=None,
        help="store to create (default: X_ramp.zarr in the current directory)",
    )
    execution_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Write the zarr ramp store; returns 0."""
    from stcal_dask.cli.steps import input_paths, open_input, tile_of
    from stcal_dask.io import output_name, write_ramp
    from stcal_dask.io.atomic import atomic_outputs

    if not is_fits(args.input):
        raise UserInputError(f"ingest reads a JWST FITS ramp (.fits), got {args.input!r}")
    out_name = args.output or output_name(Path(args.input).name, "ramp", ext=".zarr",
                                          output_dir=".")
    if not str(out_name).rstrip("/").lower().endswith(".zarr"):
        raise UserInputError(f"ingest --output must name a zarr store (ending in .zarr), got "
                             f"{str(out_name)!r}")
    tile = parse_tile(args.tile)
    with atomic_outputs(inputs=input_paths(args)) as out:
        out.claim(out_name, overwrite=args.overwrite)
        ramp = open_input(args, args.input, tile)
        pending = out.add(write_ramp(ramp, out_name, overwrite=args.overwrite,
                                     tile=tile or tile_of(ramp), compute=False))
        with open_client(args):
            compute(args, *out.writes)
    say(args, f"wrote {pending.path}")
    return 0
