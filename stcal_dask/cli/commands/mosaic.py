"""``stcal-dask mosaic``: drizzle many rate/cal products into one mosaic over output tiles on a
cluster (the library is :mod:`stcal_dask.mosaic.i2d` and :mod:`stcal_dask.mosaic.resample`)."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from stcal_dask.cli.common import (
    add_command,
    add_step_options,
    check_execution_options,
    execution_options,
    open_client,
    parse_tile,
    say,
    step_params,
)
from stcal_dask.errors import UserInputError

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mosaic``."""
    p = add_command(
        subparsers,
        "mosaic",
        summary="drizzle rate products into one mosaic (X_i2d.zarr / .fits, quicklook PNGs)",
        description=(
            "Drizzle many rate or cal products onto one output WCS, as stcal 1.20.0's Resample\n"
            "(jwst's ResampleStep) does, but as one dask task per OUTPUT tile: each tile adds,\n"
            "in the order the inputs are given, only the input pixels that land on it, so a\n"
            "mosaic larger than any worker's memory is written tile by tile into a zarr store.\n"
            "The output WCS comes from --wcs (written by 'mosaic-wcs') or is computed from the\n"
            "inputs with the --resample.pixel_scale/pixel_scale_ratio/rotation/crpix/crval/\n"
            "output_shape parameters. Outputs: X_i2d.zarr (sci, err, wht, con, var_rnoise,\n"
            "var_poisson), X_i2d.fits with --format fits|both, and quicklook PNGs of the mosaic\n"
            "and of its weight map. A LocalCluster's workers default to one thread each (much of\n"
            "a tile task, the WCS evaluation, holds Python's GIL: threads would take turns)."
        ),
        examples=(
            "stcal-dask mosaic a_rate.fits b_rate.fits -o field_i2d.zarr",
            "stcal-dask mosaic exp*_rate.zarr --wcs mosaic_wcs.asdf -o field_i2d.zarr "
            "--format both",
            "stcal-dask mosaic exp*_rate.fits -o f_i2d.zarr --resample.pixfrac 0.5 "
            "--resample.pixel_scale 0.03 --n-workers 2 --memory-limit 2GB",
        ),
        func=run,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="rate/cal products with a gwcs (JWST FITS or zarr), in drizzle order")
    g = p.add_argument_group("input and output")
    g.add_argument("--output", "-o", required=True, metavar="X_i2d.zarr",
                   help="the mosaic store (the FITS product and PNGs take its name)")
    g.add_argument("--wcs", metavar="FILE", default=None,
                   help="output WCS (ASDF from 'mosaic-wcs'; default: computed from the inputs)")
    g.add_argument("--format", choices=("zarr", "fits", "both"), default="zarr",
                   help="products: X_i2d.zarr, X_i2d.fits or both (default: zarr)")
    g.add_argument("--stretch", choices=("asinh", "zscale"), default="asinh",
                   help="quicklook stretch of the mosaic (default: asinh)")
    g.add_argument("--no-quicklook", action="store_true",
                   help="do not write X_i2d_sci.png and X_i2d_wht.png")
    add_step_options(p, "resample")
    execution_options(p)
    return p


def _stem(output: Path) -> Path:
    name = output.name
    for suffix in (".zarr", ".fits"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return output.with_name(name)


def _output_wcs(args, params, client):
    """The output gwcs and its pixel scale (arcsec, or None to measure it)."""
    from stcal_dask.mosaic.wcs import build_mosaic_wcs, read_mosaic_wcs

    if args.wcs is not None:
        import asdf

        p = Path(args.wcs).expanduser()
        if not p.exists():
            raise UserInputError(f"--wcs {p} does not exist")
        import warnings

        with warnings.catch_warnings():
            # the tree's list of input paths warns about relative URLs; the WCS is unaffected
            warnings.simplefilter("ignore", asdf.exceptions.AsdfConversionWarning)
            wcs = read_mosaic_wcs(p)
            with asdf.open(p, lazy_load=False, memmap=False) as af:
                scale = af.tree.get("pixel_scale")
        scale = None if scale is None else float(scale) * 3600.0
        if params.output_shape is not None:
            wcs.array_shape = tuple(params.output_shape)
        return wcs, scale
    pscale = None if params.pixel_scale is None else params.pixel_scale / 3600.0
    mosaic = build_mosaic_wcs(
        args.inputs, client=client, pscale=pscale,
        pscale_ratio=None if pscale is not None else params.pixel_scale_ratio,
        rotation=params.rotation, crval=params.crval, crpix=params.crpix,
        shape=params.output_shape,
    )
    return mosaic.wcs, params.pixel_scale


def _import_for_workers() -> None:
    """Load what the index, pixel-map and tile tasks run (gwcs and astropy's models, asdf and its
    extensions, FITS headers, drizzle, zarr), in this thread, so that local workers forked from
    this process start with them. Nothing else: no xarray, pandas or dask.array, which those
    tasks never use (this process loads them only after the cluster is closed)."""
    import asdf
    import drizzle.resample  # noqa: F401
    import zarr  # noqa: F401

    from stcal_dask.io import fits_open  # noqa: F401
    from stcal_dask.mosaic import drizzle_clip, i2d, resample, wcs  # noqa: F401

    asdf.get_config().extensions  # noqa: B018 - loads the installed extensions once, here


def run(args: argparse.Namespace) -> int:
    """Build the mosaic and its products; returns 0."""
    from stcal_dask.io.atomic import atomic_outputs
    from stcal_dask.mosaic import i2d

    t0 = time.perf_counter()
    check_execution_options(args)
    params = step_params("resample", args)
    tile = parse_tile(getattr(args, "tile", None))
    output = Path(args.output).expanduser().absolute()
    stem = _stem(output)
    zarr_path = stem.with_name(stem.name + ".zarr")
    fits_path = stem.with_name(stem.name + ".fits")
    pngs = [] if args.no_quicklook else [stem.with_name(stem.name + "_sci.png"),
                                         stem.with_name(stem.name + "_wht.png")]
    want_zarr = args.format in ("zarr", "both")
    want_fits = args.format in ("fits", "both")
    for p in args.inputs:
        if not Path(p).expanduser().exists():
            raise UserInputError(f"input {p} does not exist")
    if args.threads_per_worker is None:
        args.threads_per_worker = 1

    # every product is claimed before a cluster starts and all are committed together at the
    # end of this block (a FITS-only run drizzles into a scratch store removed at the end,
    # named like every temporary, so a later run removes it if this one is killed)
    with atomic_outputs(inputs=args.inputs) as out:
        if want_zarr:
            out.claim(zarr_path, overwrite=args.overwrite)
        if want_fits:
            out.claim(fits_path, overwrite=args.overwrite)
        for png in pngs:
            out.claim(png, overwrite=True)  # quicklooks are always replaced
        # the output WCS file read and the tasks' modules loaded here, before the workers are
        # forked from this process: they start with them (no imports of their own)
        given = _output_wcs(args, params, None) if args.wcs is not None else None
        _import_for_workers()
        # warm=False: the workers need none of the numba kernels, so a mosaic never waits for
        # kernels to compile
        with open_client(args, warm=False, fork=True) as client:
            out_wcs, scale = given or _output_wcs(args, params, client)
            result = i2d.build_mosaic(
                args.inputs, out_wcs, zarr_path, params, client=client, tile=tile,
                overwrite=args.overwrite, output_pixel_scale=scale, quiet=args.quiet,
                outputs=out, temporary=not want_zarr,
            )
        store = result.written
        written = [zarr_path] if want_zarr else []
        if want_fits:
            written.append(i2d.write_i2d_fits(store, fits_path, overwrite=args.overwrite,
                                              outputs=out))
        if pngs:
            written.append(i2d.quicklook_png(store, pngs[0], stretch=args.stretch, outputs=out))
            written.append(i2d.quicklook_png(store, pngs[1], array="wht", outputs=out))
    ny, nx = result.shape
    skipped = f", {len(result.skipped)} skipped (no overlap)" if result.skipped else ""
    say(args, f"mosaic: {result.inputs_used} inputs{skipped} -> {ny} x {nx} pixels in "
              f"{result.tiles} tiles of {result.tile[0]} x {result.tile[1]}; coverage "
              f"{100.0 * result.coverage:.1f}%; {math.ceil(time.perf_counter() - t0)} s",
        *[f"  wrote {w}" for w in written])
    return 0
