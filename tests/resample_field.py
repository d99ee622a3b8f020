"""Seeded small exposures, stcal's ``Resample`` as the oracle and our tiles run serially.

Shared by the resampling tests (not a test module itself).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import gwcs
import numpy as np
from astropy.modeling import models as m

from stcal_dask.mosaic import alignment as al
from stcal_dask.mosaic import resample as rs
from stcal_dask.sim.wcs import NIRCAM_LW_SCALE, imaging_wcs, offset_pointing

PSCALE = NIRCAM_LW_SCALE
AREA = math.radians(PSCALE / 3600.0) ** 2


def distorted(w: gwcs.WCS, strength: float = 2e-4) -> gwcs.WCS:
    """``w`` with a quadratic field distortion (a few pixels at the corners) before v2v3."""
    det2v = w.get_transform("detector", "v2v3")
    ny, nx = w.array_shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    px = m.Polynomial2D(2, c1_0=1.0, c2_0=strength, c0_2=-0.5 * strength, c1_1=0.3 * strength)
    py = m.Polynomial2D(2, c0_1=1.0, c0_2=strength, c1_1=-0.4 * strength, c2_0=0.2 * strength)
    dist = (
        (m.Shift(-cx) & m.Shift(-cy))
        | m.Mapping((0, 1, 0, 1))
        | (px & py)
        | (m.Shift(cx) & m.Shift(cy))
    )
    # an approximate (first-order) inverse, so footprints and scales need no numerical inversion
    qx = m.Polynomial2D(2, c1_0=1.0, c2_0=-strength, c0_2=0.5 * strength, c1_1=-0.3 * strength)
    qy = m.Polynomial2D(2, c0_1=1.0, c0_2=-strength, c1_1=0.4 * strength, c2_0=-0.2 * strength)
    dist.inverse = (
        (m.Shift(-cx) & m.Shift(-cy))
        | m.Mapping((0, 1, 0, 1))
        | (qx & qy)
        | (m.Shift(cx) & m.Shift(cy))
    )
    steps = [(step.frame, step.transform) for step in w.pipeline]
    steps[0] = (steps[0][0], dist | det2v)
    out = gwcs.WCS(steps)
    out.bounding_box = w.bounding_box
    out.pixel_shape = w.pixel_shape
    return out


def make_field(n=4, shape=(120, 100), seed=0, roll_step=0.0, distortion=0.0, small_bbox=False,
               nan_frac=0.01):
    """n dithered exposures (WCS, arrays dict) with NaNs, flagged pixels and variances."""
    rng = np.random.default_rng(seed)
    exps = []
    for k in range(n):
        ra, dec = offset_pointing(
            34.46, -5.24, (k % 2) * 3.1 + rng.uniform(-1, 1), (k // 2) * 2.7 + rng.uniform(-1, 1),
            70.0,
        )
        e = imaging_wcs(ra, dec, 70.0 + roll_step * k, shape=shape)
        w = distorted(e.wcs, distortion) if distortion else e.wcs
        if small_bbox and k == 1:
            ny, nx = shape
            w.bounding_box = ((4.5, nx - 7.5), (2.5, ny - 0.5))
        sci = rng.normal(10, 2, shape).astype(np.float32)
        dq = np.zeros(shape, np.uint32)
        dq[rng.random(shape) < 0.02] = 1  # DO_NOT_USE
        dq[rng.random(shape) < 0.02] = 4  # JUMP_DET: good under the default good_bits
        dq[rng.random(shape) < 0.01] = 512  # NON_SCIENCE
        sci[rng.random(shape) < nan_frac] = np.nan
        vr = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        vp = rng.uniform(0.1, 0.5, shape).astype(np.float32)
        vp[rng.random(shape) < 0.005] = np.nan
        err = np.sqrt(vr + vp).astype(np.float32)
        exps.append((w, e.wcsinfo, {"sci": sci, "dq": dq, "var_rnoise": vr,
                                     "var_poisson": vp, "err": err}))
    return exps


def mosaic_wcs(exps, **kwargs):
    return al.wcs_from_footprints([(w, info) for w, info, _ in exps], **kwargs)


def exposures(exps):
    return [
        rs.InputExposure(k, f"in{k}", w, a["sci"].shape, a, "MJy/sr", 100.0 + k, None, AREA)
        for k, (w, _, a) in enumerate(exps)
    ]


def oracle(exps, out_wcs, params: rs.ResampleParams):
    """stcal 1.20.0's Resample, serially in memory, on the same inputs and output WCS."""
    from stcal.resample import Resample

    logging.getLogger("stcal.resample").setLevel(logging.WARNING)
    r = Resample(
        output_wcs={"wcs": out_wcs, "pixel_scale": PSCALE},
        n_input_models=len(exps),
        pixfrac=params.pixfrac,
        kernel=params.kernel,
        fillval=params.fillval,
        weight_type=params.weight_type,
        good_bits=params.good_bits_int,
        enable_ctx=params.enable_ctx,
        enable_var=params.enable_var,
        compute_err=params.compute_err,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, (w, _, a) in enumerate(exps):
            r.add_model({
                "data": a["sci"], "dq": a["dq"], "var_rnoise": a["var_rnoise"],
                "var_poisson": a["var_poisson"], "var_flat": None, "err": a["err"],
                "filename": f"in{k}", "group_id": str(k), "wcs": w,
                "exposure_time": 100.0 + k, "start_time": 0.0, "end_time": 1.0,
                "duration": 1.0, "measurement_time": None, "pixelarea_steradians": AREA,
                "level": None, "subtracted": True,
            })
        r.finalize()
    return r.output_model


def pixmap_files(exps, out_wcs, folder) -> dict:
    """Every input's whole pixel map written once into ``folder`` (:func:`rs.write_pixmap`, as
    the mosaic command does before its tiles run): input index -> its file, for
    :func:`tiled`'s ``pixmaps``. They depend on the inputs and the output WCS only, so one set
    serves every kernel, weight type and tiling of a field."""
    plan = rs.plan_mosaic(exposures(exps), out_wcs, rs.ResampleParams(),
                          output_pixel_scale=PSCALE)
    return {e.index: rs.write_pixmap(e, out_wcs, Path(folder) / f"{e.index}.npy")
            for e in plan.exposures}


def tiled(exps, out_wcs, params, tile, output_pixel_scale=PSCALE, pixmaps=None):
    """Our tile tasks run one after the other, assembled into full arrays (tests only).

    ``output_pixel_scale`` (arcsec) is the oracle's by default; None measures the output WCS.
    ``pixmaps`` (:func:`pixmap_files`): the tiles read the inputs' pixel maps (and the values
    drizzle's clip of a whole input reads) from those files, as the mosaic command's tiles do;
    None: each tile evaluates the WCSs itself.
    """
    ins = exposures(exps)
    plan = rs.plan_mosaic(ins, out_wcs, params, tile=tile,
                          output_pixel_scale=output_pixel_scale)
    ny, nx = plan.out_shape
    res = {}
    for job in plan.jobs:
        out = rs.drizzle_tile(job, plan.exposures, out_wcs, params, plan.pixel_scale_ratio,
                              plan.variances, pixmaps=pixmaps)
        y0, y1, x0, x1 = job.tile
        for name, v in out.items():
            if name not in res:
                shape = (v.shape[0], ny, nx) if v.ndim == 3 else (ny, nx)
                res[name] = np.zeros(shape, v.dtype)
            res[name][..., y0:y1, x0:x1] = v
    return res, plan


def ulp_diff(a, b) -> np.ndarray:
    """|a - b| in float32 units in the last place (NaN == NaN counts as equal)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    both_nan = np.isnan(a) & np.isnan(b)
    one_nan = np.isnan(a) ^ np.isnan(b)

    def ordered(x):
        i = x.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    d = np.abs(ordered(a) - ordered(b))
    d[both_nan] = 0
    d[one_nan] = np.iinfo(np.int64).max
    return d
