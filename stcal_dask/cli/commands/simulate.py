"""``stcal-dask simulate``: a seeded synthetic exposure (zarr store, or JWST FITS + references)."""

from __future__ import annotations

import argparse
import time

from stcal_dask.cli.common import (
    add_command,
    compute,
    execution_options,
    is_fits,
    open_client,
    parse_shape,
    parse_tile,
    say,
)
from stcal_dask.errors import UserInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``simulate``."""
    p = add_command(
        subparsers,
        "simulate",
        summary="write a seeded synthetic exposure (zarr store or JWST _ramp.fits + references)",
        description=(
            "Generate a seeded synthetic up-the-ramp exposure (sources, cosmic rays, saturation,\n"
            "bad gains; see stcal_dask.sim.ramp) tile by tile. OUT ending in .zarr: a zarr ramp\n"
            "store (gain/readnoise inside). OUT ending in .fits: a JWST RampModel file plus\n"
            "X_gain.fits and X_readnoise.fits reference files beside it.\n\n"
            "--pointing RA DEC ROLL gives the exposure a JWST-like imaging gwcs (NIRCam\n"
            "long-wavelength pixels, 0.063\"; reference pixel at the detector centre), stored\n"
            "in the ASDF extension of the FITS file (stdatamodels' meta.wcs) or in the zarr\n"
            "store's wcs_asdf/wcsinfo attributes; 'run' keeps it on its rate products, which\n"
            "then feed 'mosaic-wcs' and 'mosaic'. --dither DX DY moves that pointing by DX, DY\n"
            "arcsec in the sky plane (+DY along position angle ROLL, +DX 90 deg clockwise from\n"
            "it, as stcal_dask.sim.wcs.offset_pointing), for dithered exposures of one field.\n"
            "The simulated pixels do not depend on the pointing."
        ),
        examples=(
            "stcal-dask simulate expo.zarr --shape 2x6x1024x1024 --seed 3",
            "stcal-dask simulate expo_ramp.fits --shape 1x10x2048x2048 --seed 0",
            "  (writes expo_ramp.fits, expo_gain.fits, expo_readnoise.fits)",
            "stcal-dask simulate a_ramp.fits --shape 1x10x1024x1024 --pointing 53.16 -27.79 45",
            "stcal-dask simulate b_ramp.fits --shape 1x10x1024x1024 --seed 1 "
            "--pointing 53.16 -27.79 45 --dither 20 5",
        ),
        func=run,
    )
    p.add_argument("output", metavar="OUT", help="OUT.zarr or OUT_ramp.fits")
    p.add_argument(
        "--shape",
        required=True,
        metavar="NINTSxNGROUPSxNYxNX",
        help="exposure shape, e.g. 1x10x2048x2048",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--cr-rate",
        type=float,
        default=None,
        metavar="P",
        help="probability of a cosmic ray per pixel and group (default 0.02)",
    )
    p.add_argument("--zeroframe", action="store_true", help="also write a ZEROFRAME")
    p.add_argument("--pointing", nargs=3, type=float, default=None,
                   metavar=("RA", "DEC", "ROLL"),
                   help="write a JWST-like gwcs: reference pixel (detector centre) at RA, DEC "
                   "(deg), telescope roll ROLL (deg)")
    p.add_argument("--dither", nargs=2, type=float, default=None, metavar=("DX", "DY"),
                   help="offset of the pointing in arcsec (needs --pointing): +DY along "
                   "position angle ROLL, +DX 90 deg clockwise from it")
    execution_options(p)
    return p


def _pointing(pointing, dither) -> tuple[float, float, float]:
    """(ra, dec, roll) degrees of --pointing moved by --dither (arcsec), checked."""
    import math

    from stcal_dask.sim.wcs import offset_pointing

    ra, dec, roll = pointing
    if not all(math.isfinite(v) for v in (ra, dec, roll, *(dither or ()))):
        raise UserInputError("--pointing and --dither take finite numbers")
    if not -90.0 <= dec <= 90.0:
        raise UserInputError(f"--pointing DEC must be within [-90, 90] degrees, got {dec}")
    if dither is not None:
        ra, dec = offset_pointing(ra, dec, dither[0], dither[1], pa=roll)
    return (ra % 360.0, dec, roll)


def run(args: argparse.Namespace) -> int:
    """Simulate the exposure and write it; returns 0."""
    from stcal_dask.io import reference_paths, write_dataset_atomic, write_ramp_fits
    from stcal_dask.io.atomic import atomic_outputs
    from stcal_dask.sim.lazy import simulate_ramp_lazy
    from stcal_dask.sim.ramp import SimulationConfig

    nints, ngroups, ny, nx = parse_shape(args.shape)
    overrides = {"zeroframe": bool(args.zeroframe)}
    if args.cr_rate is not None:
        if not 0 <= args.cr_rate <= 1:
            raise UserInputError(f"--cr-rate must be in [0, 1], got {args.cr_rate}")
        overrides["cr_rate"] = float(args.cr_rate)
    if args.dither is not None and args.pointing is None:
        raise UserInputError("--dither moves the --pointing: give --pointing RA DEC ROLL too")
    if args.pointing is not None:
        overrides["pointing"] = _pointing(args.pointing, args.dither)
    cfg = SimulationConfig(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=args.seed,
                           **overrides)
    out_name = args.output
    tile = parse_tile(args.tile)
    if not (is_fits(out_name) or str(out_name).rstrip("/").lower().endswith(".zarr")):
        raise UserInputError(f"simulate output must end in .zarr or .fits, got {out_name!r}")
    t0 = time.perf_counter()
    with atomic_outputs() as out:
        for name in (out_name, *(reference_paths(out_name) if is_fits(out_name) else ())):
            out.claim(name, overwrite=args.overwrite)  # before any work
        ds = simulate_ramp_lazy(cfg, tile=tile)
        if is_fits(out_name):
            writer = write_ramp_fits(ds, out_name, overwrite=args.overwrite, references=True,
                                     compute=False)
        else:
            writer = write_dataset_atomic(ds, out_name, overwrite=args.overwrite, compute=False)
        pending = out.add(writer)
        with open_client(args):
            compute(args, *out.writes)
    say(args, *(f"wrote {m.path}" for m in pending.members),
        f"simulated {nints}x{ngroups}x{ny}x{nx} (seed {args.seed}) in "
        f"{time.perf_counter() - t0:.1f} s")
    return 0
