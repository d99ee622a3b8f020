#!/usr/bin/env python
"""Time the mosaic-WCS pieces next to stcal 1.20.0.

1. N synthetic full-frame NIRCam-like exposures (2048 x 2048, dithered mosaic with roll drift):
   footprints (ours vs gwcs' ``WCS.footprint``) and the output WCS (our ``wcs_from_sregions`` vs
   stcal's), with the largest CRPIX difference.
2. The workflow's footprint step on a ``LocalCluster`` (``--workers`` processes, one task per
   exposure) against a serial loop in this process, inputs being sidecar ASDF files.

Usage: ``python workflows/mosaic/bench_mosaic_wcs.py [--n 100 1000] [--files 64] [--workers 2]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _best(fn, repeat=3):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    import asdf
    import numpy as np
    from stcal.alignment import util as stcal_util

    from stcal_dask.mosaic import alignment as al
    from stcal_dask.mosaic import wcs as mosaic
    from stcal_dask.sim.wcs import dither_pattern, imaging_wcs

    print("part 1: in-process, best of 3")
    for n in args.n:
        pts = dither_pattern(n, center=(150.1, 2.2), roll=40.0, tile=100.0, roll_step=0.01)
        exps = [imaging_wcs(q.ra, q.dec, q.roll, shape=(2048, 2048)) for q in pts]
        t_fp_ours, fps = _best(lambda exps=exps: [al.footprint(e.wcs) for e in exps])
        t_fp_gwcs, _ = _best(lambda exps=exps: [e.wcs.footprint() for e in exps])
        t_ours, a = _best(lambda fps=fps, exps=exps: al.wcs_from_sregions(fps, *exps[0]))
        t_stcal, b = _best(lambda fps=fps, exps=exps: stcal_util.wcs_from_sregions(fps, *exps[0]))
        diff = np.abs(a.forward_transform.crpix.value - b.forward_transform.crpix.value).max()
        print(
            f"  N={n:5d}: footprints ours {t_fp_ours:.3f} s, gwcs {t_fp_gwcs:.3f} s | "
            f"wcs_from_sregions ours {t_ours:.3f} s, stcal {t_stcal:.3f} s "
            f"(ratio {t_ours / t_stcal:.2f}) | output {a.array_shape}, max CRPIX diff {diff:.1e} px"
        )

    print(f"part 2: footprints of {args.files} ASDF inputs")
    from stcal_dask.engine.cluster import get_client

    with tempfile.TemporaryDirectory() as d:
        pts = dither_pattern(args.files, center=(53.16, -27.79), roll=70.0, tile=100.0)
        paths = []
        for i, q in enumerate(pts):
            e = imaging_wcs(q.ra, q.dec, q.roll, shape=(2048, 2048))
            path = Path(d) / f"exp{i:04d}.asdf"
            asdf.AsdfFile({"wcs": e.wcs, "wcsinfo": e.wcsinfo}).write_to(path)
            paths.append(str(path))
        t_serial, _ = _best(lambda: [mosaic.exposure_footprint(x) for x in paths], repeat=1)
        t0 = time.perf_counter()
        with get_client(n_workers=args.workers) as client:
            t_start = time.perf_counter() - t0
            mosaic.compute_footprints(paths[: args.workers], client=client)  # warm the workers
            t_cluster, _ = _best(lambda: mosaic.compute_footprints(paths, client=client))
            t_build, res = _best(lambda: mosaic.build_mosaic_wcs(paths, client=client), repeat=1)
        print(
            f"  serial {t_serial:.2f} s | cluster ({args.workers} workers, warm) {t_cluster:.2f} s"
            f" | build_mosaic_wcs {t_build:.2f} s -> {res.wcs.array_shape} "
            f"| cluster start {t_start:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
