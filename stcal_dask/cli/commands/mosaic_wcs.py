"""``stcal-dask mosaic-wcs``: the output WCS of a mosaic of rate products (the library functions
are in :mod:`stcal_dask.mosaic.wcs`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from stcal_dask.cli.common import add_command, execution_options, open_client, say
from stcal_dask.errors import UserInputError

__all__ = ["MAX_PIXELS", "add_parser", "run"]

MAX_PIXELS = 10**9
"""The largest output grid (pixels) planned without ``--shape``: 4 GB per float32 plane, beyond
any JWST mosaic at native scale; a larger one is most likely a --pscale in the wrong unit."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mosaic-wcs``."""
    p = add_command(
        subparsers,
        "mosaic-wcs",
        summary="compute the output WCS of a mosaic of rate products",
        description=(
            "Compute the footprints of many rate products on a dask cluster (one task per\n"
            "exposure) and write the mosaic's output WCS (gwcs with shape and bounding box) as\n"
            "ASDF. Inputs: JWST FITS files with a gwcs in their ASDF extension, zarr rate stores\n"
            "with a 'wcs_asdf' attribute, or .asdf files with a 'wcs'. The first input is the\n"
            "reference (pixel scale and orientation); numbers match stcal 1.20.0's\n"
            "wcs_from_sregions."
        ),
        examples=(
            "stcal-dask mosaic-wcs a_rate.fits b_rate.fits -o mosaic_wcs.asdf",
            "stcal-dask mosaic-wcs exp*_rate.zarr -o mosaic_wcs.asdf --pscale 0.05 --rotation 0",
        ),
        func=run,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="rate products (the first is the reference)"
    )
    p.add_argument("--output", "-o", required=True, help="output ASDF file (e.g. mosaic_wcs.asdf)")
    p.add_argument(
        "--pscale",
        type=float,
        default=None,
        metavar="ARCSEC",
        help="output pixel scale in arcsec/pixel (default: the reference's, times --pscale-ratio)",
    )
    p.add_argument(
        "--pscale-ratio",
        type=float,
        default=None,
        metavar="R",
        help="output/input pixel-scale ratio (ignored with --pscale)",
    )
    p.add_argument(
        "--rotation",
        type=float,
        default=None,
        metavar="DEG",
        help="position angle of the output +y axis East of North (default: reference detector)",
    )
    p.add_argument(
        "--crval",
        type=float,
        nargs=2,
        metavar=("RA", "DEC"),
        default=None,
        help="world coordinates (deg) of the reference pixel (default: centre)",
    )
    p.add_argument(
        "--crpix",
        type=float,
        nargs=2,
        metavar=("X", "Y"),
        default=None,
        help="0-based pixel of CRVAL (default: from the footprints)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("NY", "NX"),
        default=None,
        help="output array shape (default: from the footprints; a grid of more than 1e9 pixels "
        "is refused unless given)",
    )
    p.add_argument(
        "--align-edges",
        action="store_true",
        help="put the union of footprints exactly on pixel edges (no half-pixel loss; "
        "differs from stcal by 0.5 px in CRPIX)",
    )
    execution_options(p, tile=False)
    return p


def run(args: argparse.Namespace) -> int:
    """Compute and write the mosaic WCS; returns 0. User mistakes raise
    :class:`UserInputError` (one line)."""
    from stcal_dask.io.atomic import atomic_outputs
    from stcal_dask.mosaic import alignment as al
    from stcal_dask.mosaic.wcs import build_mosaic_wcs, write_mosaic_wcs

    for p in args.inputs:
        if not Path(p).expanduser().exists():
            raise UserInputError(f"input {p} does not exist")
    pscale = args.pscale
    if pscale is not None and not (math.isfinite(pscale) and pscale > 0):
        raise UserInputError(f"--pscale must be > 0 arcsec, got {pscale}")
    options = {
        "pscale": None if pscale is None else pscale / 3600.0,
        "pscale_ratio": args.pscale_ratio,
        "rotation": args.rotation,
        "crval": args.crval,
        "crpix": args.crpix,
        "shape": args.shape,
        "align_edges": bool(args.align_edges),
    }
    # the output is claimed (and checked) before a cluster starts
    with atomic_outputs(inputs=args.inputs) as out:
        out.claim(args.output, overwrite=args.overwrite, what="output WCS")
        # warm=False: footprints need none of the numba kernels (never compiled for this)
        with open_client(args, warm=False, fork=True) as client:
            mosaic = build_mosaic_wcs(args.inputs, client=client, **options)
        ny, nx = mosaic.wcs.array_shape
        if args.shape is None and ny * nx > MAX_PIXELS:
            raise UserInputError(
                f"the mosaic grid would be {ny} x {nx} pixels ({ny * nx:.2g}, more than "
                f"{MAX_PIXELS:.0e}); check --pscale/--pscale-ratio, or give --shape NY NX to "
                "accept a grid this large"
            )
        written = write_mosaic_wcs(mosaic, args.output, overwrite=args.overwrite,
                                   parameters=options)
    centre = [(lo + hi) / 2 for lo, hi in mosaic.wcs.bounding_box.bounding_box(order="F")]
    scale = float(al.compute_scale(mosaic.wcs, mosaic.wcs.forward_transform(*centre))) * 3600.0
    say(args, f"mosaic-wcs: {len(mosaic.exposures)} exposures -> {ny} x {nx} pixels "
              f"at {scale:.6f} arcsec/pixel; wrote {written}")
    return 0
