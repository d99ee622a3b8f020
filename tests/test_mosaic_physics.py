"""Physics of the tiled drizzle: flux conservation (square kernel), constant surface brightness,
and point-source photometry of a seeded star field observed in N dithered exposures."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from resample_field import PSCALE, tiled

from stcal_dask.mosaic import alignment as al
from stcal_dask.mosaic import resample as rs
from stcal_dask.sim.starfield import observe, star_field
from stcal_dask.sim.wcs import dither_pattern, imaging_wcs

SHAPE = (140, 150)
CENTER = (150.1, 2.2)


def _exposures(n, stars=(), value=None, seed=0):
    """n dithered exposures (WCS, wcsinfo, arrays): ``value`` everywhere or the star field."""
    pts = dither_pattern(n, center=CENTER, roll=30.0, tile=5.0, dither=1.5, roll_step=6.0,
                         seed=seed)
    out = []
    for p in pts:
        e = imaging_wcs(p.ra, p.dec, p.roll, shape=SHAPE)
        sci = (np.full(SHAPE, value, np.float32) if value is not None
               else observe(stars, e.wcs, SHAPE, psf_sigma=1.3))
        ones = np.full(SHAPE, 1.0, np.float32)
        out.append((e.wcs, e.wcsinfo, {"sci": sci, "dq": np.zeros(SHAPE, np.uint32),
                                        "var_rnoise": ones, "var_poisson": ones * 0.1,
                                        "err": ones}))
    return out


def _mosaic(exps, ratio=1.0, **kw):
    return al.wcs_from_footprints([(w, i) for w, i, _ in exps], pscale_ratio=ratio, **kw)


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_square_kernel_conserves_flux(ratio):
    """One exposure, one star well inside: sum(sci * output/input pixel area) = the star's flux
    (drizzle's own tolerance: float32 sums, the TAN projection's pixel-area variation)."""
    stars = star_field(1, CENTER, 0.5, flux_range=(1000.0, 1000.0), seed=1)
    exps = _exposures(1, stars)
    input_flux = float(np.sum(exps[0][2]["sci"], dtype=np.float64))
    out = _mosaic(exps, ratio, rotation=17.0)
    params = rs.ResampleParams(kernel="square", pixfrac=1.0, fillval="0")
    res, plan = tiled(exps, out, params, (40, 40), None)
    area_ratio = plan.pixel_scale_ratio**2
    out_flux = float(np.nansum(res["sci"], dtype=np.float64)) * area_ratio
    assert out_flux == pytest.approx(input_flux, rel=2e-4)
    assert input_flux == pytest.approx(1000.0, rel=1e-6)


@pytest.mark.parametrize("kernel", ["square", "point", "turbo", "gaussian"])
def test_constant_surface_brightness_is_preserved(kernel):
    exps = _exposures(4, value=7.25)
    out = _mosaic(exps, 0.8)
    params = rs.ResampleParams(kernel=kernel, pixfrac=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res, _ = tiled(exps, out, params, (37, 45), None)
    covered = res["wht"] > 0
    assert covered.mean() > 0.5
    np.testing.assert_allclose(res["sci"][covered], 7.25, rtol=2e-6)
    assert np.isnan(res["sci"][~covered]).all()


def test_point_source_photometry_matches_the_truth():
    """A seeded field of 20 stars of known flux in 5 dithered, rotated exposures: aperture sums
    on the mosaic recover each isolated star's flux within 1 % (the aperture holds > 99.9 % of
    the PSF)."""
    stars = star_field(20, CENTER, 4.5, flux_range=(200.0, 5000.0), seed=7)
    exps = _exposures(5, stars, seed=2)
    out = _mosaic(exps, 0.75)
    params = rs.ResampleParams(kernel="square", pixfrac=0.8, fillval="0")
    res, plan = tiled(exps, out, params, (64, 64), None)
    sci = np.nan_to_num(res["sci"])
    xs, ys = out.invert([s.ra for s in stars], [s.dec for s in stars])
    yy, xx = np.indices(sci.shape)
    r_ap = 6.0 * 1.3 / plan.pixel_scale_ratio  # 6 sigma of the PSF, in output pixels
    measured, truth = [], []
    for x, y, s in zip(xs, ys, stars, strict=True):
        # isolated stars only (no other star's PSF inside the aperture)
        d = np.hypot(np.asarray(xs) - x, np.asarray(ys) - y)
        if np.sort(d)[1] < 2.2 * r_ap:
            continue
        ap = (xx - x) ** 2 + (yy - y) ** 2 <= r_ap**2
        # only stars whose aperture every exposure covers fully
        if not ap.any() or res["wht"][ap].min() <= 0:
            continue
        if (x - r_ap < 0 or y - r_ap < 0 or x + r_ap > sci.shape[1] - 1
                or y + r_ap > sci.shape[0] - 1):
            continue
        measured.append(float(sci[ap].sum()) * plan.pixel_scale_ratio**2)
        truth.append(s.flux)
    assert len(measured) >= 5
    np.testing.assert_allclose(measured, truth, rtol=0.01)


def test_pixel_scale_ratio_follows_the_output_scale():
    exps = _exposures(2, value=1.0)
    out = _mosaic(exps, 0.5)
    plan = rs.plan_mosaic(
        [rs.InputExposure(k, f"e{k}", w, SHAPE, a, None, 10.0, None, None)
         for k, (w, _, a) in enumerate(exps)], out, rs.ResampleParams())
    assert plan.pixel_scale_ratio == pytest.approx(0.5, rel=1e-3)
    assert plan.output_pixel_scale == pytest.approx(0.5 * PSCALE, rel=1e-3)
    assert math.isfinite(plan.halo) and plan.halo >= 3
