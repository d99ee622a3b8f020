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
            "X_gain.fits and X_readnoise.fits reference files beside it."
        ),
        examples=(
            "stcal-dask simulate expo.zarr --shape 2x6x1024x1024 --seed 3",
            "stcal-dask simulate expo_ramp.fits --shape 1x10x2048x2048 --seed 0",
            "  (writes expo_ramp.fits, expo_gain.fits, expo_readnoise.fits)",
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
    execution_options(p)
    return p


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
