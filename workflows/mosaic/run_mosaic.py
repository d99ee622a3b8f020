#!/usr/bin/env python
"""Recipe: N dithered synthetic ramps -> rates (jump + ramp fit) -> mosaic WCS -> mosaic -> PNG.

1. ``stcal_dask.sim.wcs.dither_pattern`` lays N pointings out on a mosaic grid (with roll);
   each exposure gets a JWST-like imaging gwcs (``SimulationConfig.pointing`` +
   ``stcal_dask.sim.ramp.exposure_wcs``).
2. Rate products: with ``--rates engine`` the ramps are simulated lazily and run through the
   dataflow engine (jump detection + OLS ramp fit, ``stcal_dask.engine.dataflow``); with
   ``--rates truth`` the rate is the simulator's true count rate (fast, no engine). ``auto`` uses
   the engine when it is importable. Each rate is written as a zarr store with the gwcs attached
   (``stcal_dask.mosaic.wcs.wcs_attrs``), or as a JWST ``_rate.fits`` with ``--format fits``.
3. ``stcal_dask.mosaic.wcs.build_mosaic_wcs`` computes the footprints on the cluster (one task per
   exposure) and the output WCS; ``write_mosaic_wcs`` writes it atomically as ASDF. This is what
   ``stcal-dask mosaic-wcs RATES... --output mosaic_wcs.asdf`` does.
4. ``stcal_dask.mosaic.i2d.build_mosaic`` drizzles the rates onto that WCS, one task per output
   tile (stcal's ``Resample``, tile by tile), into ``mosaic_i2d.zarr``; ``quicklook_png`` writes
   ``mosaic_i2d_sci.png`` (asinh stretch) and ``mosaic_i2d_wht.png``. This is what
   ``stcal-dask mosaic RATES... --wcs mosaic_wcs.asdf -o mosaic_i2d.zarr`` does.

Example (a local cluster of 2 worker processes)::

    python workflows/mosaic/run_mosaic.py --n-exposures 9 --outdir /tmp/mosaic --n-workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--n-exposures", type=int, default=6)
    p.add_argument("--ny", type=int, default=128, help="detector rows per exposure")
    p.add_argument("--nx", type=int, default=128, help="detector columns per exposure")
    p.add_argument("--ngroups", type=int, default=5)
    p.add_argument("--center", type=float, nargs=2, default=(53.16, -27.79), metavar=("RA", "DEC"))
    p.add_argument("--roll", type=float, default=70.0, help="telescope roll of exposure 0 (deg)")
    p.add_argument("--roll-step", type=float, default=0.5, help="roll change per exposure (deg)")
    p.add_argument(
        "--tile",
        type=float,
        default=None,
        help="grid spacing in arcsec (default: 85%% of a detector)",
    )
    p.add_argument("--rates", choices=("auto", "engine", "truth"), default="auto")
    p.add_argument("--format", choices=("zarr", "fits"), default="zarr")
    p.add_argument("--outdir", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--scheduler", default=None, help="tcp://HOST:PORT (default: local cluster)")
    p.add_argument("--n-workers", type=int, default=2)
    p.add_argument("--pscale-ratio", type=float, default=None)
    p.add_argument("--rotation", type=float, default=None)
    p.add_argument("--pixfrac", type=float, default=1.0, help="drizzle pixfrac of the mosaic")
    p.add_argument("--kernel", default="square", help="drizzle kernel of the mosaic")
    return p.parse_args(argv)


def _engine_available() -> bool:
    try:
        from stcal_dask.engine import dataflow  # noqa: F401
        from stcal_dask.sim.lazy import simulate_ramp_lazy  # noqa: F401
    except ImportError:
        return False
    return hasattr(dataflow, "detect_jumps") and hasattr(dataflow, "fit_ramps")


def _truth_rate(cfg):
    """Noise-free rate product: the simulator's true count rate (DN/s)."""
    import numpy as np

    from stcal_dask.engine.datamodel import rate_dataset
    from stcal_dask.sim.ramp import simulate_exposure

    flux = simulate_exposure(cfg).flux
    err = np.sqrt(np.maximum(flux, 0) / cfg.group_time / max(cfg.ngroups - 1, 1)).astype("f4")
    return rate_dataset(flux, err, np.zeros(flux.shape, "u4"), err**2, np.zeros_like(err))


def _engine_rate(cfg):
    """Lazy rate product from the dataflow engine (jump detection + OLS ramp fitting)."""
    from stcal_dask.engine import dataflow
    from stcal_dask.sim.lazy import simulate_ramp_lazy

    ramp = simulate_ramp_lazy(cfg)
    rate = dataflow.fit_ramps(dataflow.detect_jumps(ramp)).rate
    return rate


def main(argv=None) -> int:
    args = _parse(argv)
    import dask

    from stcal_dask.engine.cluster import compute, get_client
    from stcal_dask.io.atomic import atomic_outputs
    from stcal_dask.io.zarr_store import write_dataset_atomic
    from stcal_dask.mosaic import i2d
    from stcal_dask.mosaic.params import ResampleParams
    from stcal_dask.mosaic.wcs import (
        build_mosaic_wcs,
        wcs_attrs,
        write_mosaic_wcs,
        write_rate_fits_with_wcs,
    )
    from stcal_dask.sim.ramp import SimulationConfig, exposure_wcs
    from stcal_dask.sim.wcs import NIRCAM_LW_SCALE, dither_pattern

    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rates = args.rates
    if rates == "auto":
        rates = "engine" if _engine_available() else "truth"
    tile = args.tile or 0.85 * min(args.ny, args.nx) * NIRCAM_LW_SCALE
    pointings = dither_pattern(
        args.n_exposures,
        center=tuple(args.center),
        roll=args.roll,
        tile=tile,
        dither=0.5,
        roll_step=args.roll_step,
    )
    t0 = time.perf_counter()
    with get_client(scheduler=args.scheduler, n_workers=args.n_workers) as client:
        paths = []
        # the rates appear together (or none), before the mosaic WCS reads them
        with atomic_outputs() as rate_outputs:
            for i, pt in enumerate(pointings):
                cfg = SimulationConfig(
                    nints=1,
                    ngroups=args.ngroups,
                    ny=args.ny,
                    nx=args.nx,
                    seed=i,
                    pointing=(pt.ra, pt.dec, pt.roll),
                )
                wcs, wcsinfo = exposure_wcs(cfg)
                rate = _engine_rate(cfg) if rates == "engine" else _truth_rate(cfg)
                if args.format == "zarr":
                    path = outdir / f"exp{i:03d}_rate.zarr"
                    rate = rate.assign_attrs(**wcs_attrs(wcs, wcsinfo))
                    rate_outputs.add(
                        write_dataset_atomic(rate, path, overwrite=args.overwrite, compute=False)
                    )
                else:
                    path = outdir / f"exp{i:03d}_rate.fits"
                    (rate,) = dask.compute(rate)
                    write_rate_fits_with_wcs(
                        path,
                        rate["sci"].values,
                        wcs,
                        wcsinfo,
                        err=rate["err"].values,
                        dq=rate["dq"].values,
                        var_poisson=rate["var_poisson"].values,
                        var_rnoise=rate["var_rnoise"].values,
                        overwrite=args.overwrite,
                    )
                paths.append(str(path))
            if rate_outputs.writes:
                compute(*rate_outputs.writes, quiet=True, client=client)
        t1 = time.perf_counter()
        mosaic = build_mosaic_wcs(
            paths, client=client, pscale_ratio=args.pscale_ratio, rotation=args.rotation
        )
        out = write_mosaic_wcs(
            mosaic,
            outdir / "mosaic_wcs.asdf",
            overwrite=args.overwrite,
            parameters={"pscale_ratio": args.pscale_ratio, "rotation": args.rotation},
        )
        t2 = time.perf_counter()
        params = ResampleParams(pixfrac=args.pixfrac, kernel=args.kernel)
        result = i2d.build_mosaic(paths, mosaic.wcs, outdir / "mosaic_i2d.zarr", params,
                                  client=client, overwrite=args.overwrite)
    pngs = [i2d.quicklook_png(result.path, outdir / "mosaic_i2d_sci.png"),
            i2d.quicklook_png(result.path, outdir / "mosaic_i2d_wht.png", array="wht")]
    t3 = time.perf_counter()
    ny, nx = mosaic.wcs.array_shape
    ra, dec = (float(v) for v in mosaic.wcs.forward_transform.crval.value)
    print(
        f"rates ({rates}, {args.format}): {len(paths)} exposures of {args.ny}x{args.nx} "
        f"in {t1 - t0:.1f} s -> {outdir}"
    )
    print(
        f"mosaic WCS: {ny} x {nx} pixels, crval ({ra:.6f}, {dec:.6f}) deg, "
        f"in {t2 - t1:.1f} s -> {out}"
    )
    print(
        f"mosaic: {result.inputs_used} exposures -> {result.shape[0]} x {result.shape[1]} "
        f"pixels in {result.tiles} tiles, coverage {100 * result.coverage:.1f}%, "
        f"in {t3 - t2:.1f} s -> {result.path}, {pngs[0].name}, {pngs[1].name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
