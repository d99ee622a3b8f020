"""Own tests of stcal_dask.mosaic.alignment: stcal's alignment test cases (pixel-scaled tolerances),
RA wrap, poles, a 100-exposure mosaic, FITS WCS inputs, deliberate fixes, and every bad input."""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace

import astropy.units as u
import gwcs
import numpy as np
import pytest
from astropy import wcs as fitswcs
from astropy.modeling import models as m
from gwcs import coordinate_frames as cf
from hypothesis import given, settings
from hypothesis import strategies as st

from stcal_dask.errors import UserInputError
from stcal_dask.mosaic import alignment as al
from stcal_dask.sim.wcs import (
    dither_pattern,
    imaging_wcs,
    offset_pointing,
    simple_imaging_wcs,
)

PIX = 1e-6  # pixel tolerance
TEST_INFO = {"ra_ref": 10.0, "dec_ref": 0.0, "roll_ref": 0.0, "v3yangle": 0.0, "vparity": -1}


def _pair():
    w1 = simple_imaging_wcs((10.0, 0.0), (3, 3), (2.8e-5, 2.8e-5))
    w2 = simple_imaging_wcs((10.0 - 2.8e-5, -2.8e-5), (3, 3), (2.8e-5, 2.8e-5))
    return w1, w2


def _model(w, info):
    """A datamodel-like object: meta.wcs and meta.wcsinfo with attributes."""
    return SimpleNamespace(meta=SimpleNamespace(wcs=w, wcsinfo=SimpleNamespace(**info)))


def _pix(w, world):
    return np.array(w.invert(*world, with_bounding_box=False))


def _corners_px(out, w):
    """Output-pixel coordinates (2, 4) of the bbox corners of input w."""
    return np.array(al.reproject(w, out)(*al._bbox_vertices(al._resolve_bbox(w), True)))


def _position_angle(ra0, dec0, ra1, dec1):
    """Position angle (deg, East of North) of point 1 seen from point 0."""
    from astropy.coordinates import position_angle

    return float(position_angle(*np.deg2rad([ra0, dec0, ra1, dec1])).to_value(u.deg))


def _fits_wcs(cdelt, shape, crval=(0.0, 0.0)):
    w = fitswcs.WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [1.0, 1.0]
    w.wcs.crval = list(crval)
    w.wcs.cdelt = [-cdelt, cdelt]
    w.pixel_shape = shape[::-1]
    return w


# ----------------------------------------------------------------- stcal's test cases (spec §4)


def test_compute_fiducial_is_centre_pixel_across_ra_zero():
    w = simple_imaging_wcs((0.0, 0.0), (3, 3), (1.4e-5, 1.4e-5))
    fid = al.compute_fiducial([w])
    # the footprint straddles RA = 0: the centre must be near 0, not 180
    ra, dec = w(1, 1)
    assert abs(((fid[0] - ra + 180) % 360) - 180) < 1e-4 * 1.4e-5
    assert abs(fid[1] - dec) < 1e-4 * 1.4e-5
    fp = al.footprint(w)
    assert fp[:, 0].max() > 359.0 and fp[:, 0].min() < 1.0


@pytest.mark.parametrize("scale", [(1.4e-5, 1.4e-5), (2.8e-5, 1.4e-5)])
def test_compute_scale_is_geometric_mean(scale):
    w = simple_imaging_wcs((0.0, 0.0), (3, 3), scale)
    assert al.compute_scale(w, (0.0, 0.0)) == pytest.approx(math.sqrt(scale[0] * scale[1]), 1e-6)
    assert al.compute_scale(w, (0.0, 0.0), pscale_ratio=2) == pytest.approx(
        2 * math.sqrt(scale[0] * scale[1]), 1e-6
    )
    assert isinstance(al.compute_scale(w, (0.0, 0.0)), float)


@pytest.mark.parametrize("form", ["model", "instance", "pair", "dict-model"])
def test_wcs_from_footprints_two_exposures(form):
    w1, w2 = _pair()
    if form == "model":
        items = [_model(w1, TEST_INFO), _model(w2, TEST_INFO)]
    elif form == "instance":  # stdatamodels nodes expose .instance dicts
        items = [
            SimpleNamespace(
                meta=SimpleNamespace(wcs=w, wcsinfo=SimpleNamespace(instance=TEST_INFO))
            )
            for w in (w1, w2)
        ]
    elif form == "pair":
        items = [(w1, TEST_INFO), (w2, TEST_INFO)]
    else:
        items = [SimpleNamespace(meta=SimpleNamespace(wcs=w, wcsinfo=TEST_INFO)) for w in (w1, w2)]
    nw = al.wcs_from_footprints(items)
    assert nw.array_shape == (4, 4)
    assert nw.bounding_box.bounding_box(order="F") == ((-0.5, 3.5), (-0.5, 3.5))
    np.testing.assert_allclose(_pix(nw, w1(0, 0)), (2.5, 1.5), atol=PIX)
    np.testing.assert_allclose(_pix(nw, w2(0, 0)), (3.5, 0.5), atol=PIX)
    # the footprint of the output WCS is its own box corners
    fp = al.footprint(nw)
    corners = [(-0.5, -0.5), (-0.5, 3.5), (3.5, 3.5), (3.5, -0.5)]
    for vertex, corner in zip(fp, corners, strict=True):
        np.testing.assert_allclose(_pix(nw, vertex), corner, atol=PIX)
    # named sub-model parameters downstream code reads
    np.testing.assert_allclose(nw.forward_transform.cdelt.value, [2.8e-5, 2.8e-5], rtol=1e-8)
    np.testing.assert_allclose(nw.forward_transform.pc.value, [[-1, 0], [0, 1]], atol=1e-15)


@pytest.mark.parametrize(
    "options, shape, crpix",
    [
        ({"rotation": 45.0}, (6, 4), (2.12132034, 2.82842712)),
        ({"pscale_ratio": 0.5}, (8, 8), None),
        ({"pscale": 1.4e-5}, (8, 8), None),
        ({"crpix": (10.0, 10.0)}, (12, 12), (10.0, 10.0)),
        ({"crval": (10.0, 0.0)}, (4, 4), (2.5, 1.5)),
        ({"shape": (2, 3)}, (2, 3), None),
    ],
)
def test_wcs_from_footprints_options(options, shape, crpix):
    w1, w2 = _pair()
    nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], **options)
    assert nw.array_shape == shape
    if crpix is not None:
        np.testing.assert_allclose(nw.forward_transform.crpix.value, crpix, atol=1e-6)
        np.testing.assert_allclose(_pix(nw, nw.forward_transform.crval.value), crpix, atol=PIX)


def test_wcs_from_footprints_rotation_sets_position_angle():
    w1, w2 = _pair()
    for rotation in (0.0, 30.0, -75.0):
        nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], rotation=rotation)
        (ra0, dec0), (ra1, dec1) = nw(1.0, 1.0), nw(1.0, 2.0)
        # position angle of +y, East of North
        pa = _position_angle(ra0, dec0, ra1, dec1)
        assert ((pa - rotation + 180) % 360) - 180 == pytest.approx(0.0, abs=1e-6)


def test_wcs_from_footprints_refmodel_and_bounding_box():
    w1, w2 = _pair()
    info2 = dict(TEST_INFO, vparity=1, ra_ref=10.0 - 2.8e-5, dec_ref=-2.8e-5)
    nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], refmodel=(w2, info2))
    np.testing.assert_allclose(nw.forward_transform.pc.value, [[1, 0], [0, 1]], atol=1e-15)
    bb = ((0.0, 2.5), (-0.5, 1.5))
    nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], bounding_box=bb)
    assert nw.bounding_box.bounding_box(order="F") == bb
    assert nw.array_shape == (2, 3)


def test_wcs_from_footprints_user_transform_is_used():
    """stcal 1.20.0 sizes the grid with a user transform but then ignores it; we use it."""
    w1, w2 = _pair()
    lin = m.Scale(-1e-5) & m.Scale(1e-5)
    nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], transform=lin)
    # the union is 4 x 2.8e-5 deg = 11.2 new pixels wide: stcal's rounding gives 11 pixels
    assert nw.array_shape == (11, 11)
    a, b = nw(3.0, 4.0), nw(4.0, 4.0)
    assert abs(a[0] - b[0]) == pytest.approx(1e-5, rel=1e-6)
    corners = np.hstack([_corners_px(nw, w) for w in (w1, w2)])
    np.testing.assert_allclose((corners.min(), corners.max()), (0.0, 11.2), atol=PIX)
    nw = al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)], transform=lin, align_edges=True)
    assert nw.array_shape == (12, 12)
    corners = np.hstack([_corners_px(nw, w) for w in (w1, w2)])
    np.testing.assert_allclose((corners.min(), corners.max()), (-0.5, 10.7), atol=PIX)


def test_validate_wcs_list():
    w1, w2 = _pair()
    assert al._validate_wcs_list([w1, w2]) == [w1, w2]


@pytest.mark.parametrize("bad", [[], [1, 2, 3], ["1", "2", "3"], ["1", None, []], "1", 1, None])
def test_validate_wcs_list_invalid(bad):
    with pytest.raises(UserInputError):
        al._validate_wcs_list(bad)


def test_reproject_fits_pair():
    w1, w2 = _fits_wcs(0.1, (4, 4)), _fits_wcs(0.05, (5, 5))
    f = al.reproject(w1, w2)
    np.testing.assert_allclose(f(1000, 2000), (2000, 4000), rtol=1e-5)
    x, y = f([1000], [2000])
    assert x.shape == (1,)
    np.testing.assert_allclose((x[0], y[0]), (2000, 4000), rtol=1e-5)
    # 0-based pixels: crpix 1 (FITS) is pixel 0, so (1, 2) -> (2, 4)
    np.testing.assert_allclose(f(1, 2), (2, 4), atol=PIX)


def test_reproject_gwcs_fits_and_bare_transforms():
    g = simple_imaging_wcs((0.0, 0.0), (4, 4), (0.1, 0.1))
    fw = fitswcs.WCS(naxis=2)
    fw.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    fw.wcs.crpix = [1.0, 1.0]
    fw.wcs.cdelt = [0.05, 0.05]
    tan = m.Scale(0.05) & m.Scale(0.05) | m.Pix2Sky_TAN() | m.RotateNative2Celestial(0, 0, 180)
    pts = (np.array([[0.0, 1.0], [2.0, 30.0]]), np.array([[0.0, 2.0], [-3.0, 7.0]]))
    for target in (fw, tan):
        x, y = al.reproject(g, target)(*pts)
        assert x.shape == (2, 2)
        np.testing.assert_allclose(x, 2 * pts[0], atol=PIX)
        np.testing.assert_allclose(y, 2 * pts[1], atol=PIX)
    # points outside both bounding boxes still map (no bounding box on either side)
    x, y = al.reproject(tan, g)(np.array([500.0]), np.array([-400.0]))
    np.testing.assert_allclose((x[0], y[0]), (250.0, -200.0), atol=PIX)
    with pytest.raises(TypeError):
        al.reproject(g, "not a wcs")
    with pytest.raises(UserInputError):
        al.reproject(g, g)([1, 2], [1, 2, 3])


def test_calc_pixmap_shapes():
    g1 = simple_imaging_wcs((0.0, 0.0), (3, 6), (0.1, 0.1))
    g2 = simple_imaging_wcs((0.0, 0.0), (5, 5), (0.05, 0.05))
    pm = al.calc_pixmap(g1, g2)
    assert pm.shape == (3, 6, 2)  # numpy order, not transposed
    yy, xx = np.indices((3, 6))
    np.testing.assert_allclose(pm[..., 0], 2 * xx, atol=PIX)
    np.testing.assert_allclose(pm[..., 1], 2 * yy, atol=PIX)
    assert al.calc_pixmap(g1, g2, shape=(100, 200)).shape == (100, 200, 2)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((512, 2048), ((-0.5, 2047.5), (-0.5, 511.5))),
        ((3, 32, 2048), ((-0.5, 2047.5), (-0.5, 31.5))),
        ((750, 45, 50), ((-0.5, 49.5), (-0.5, 44.5))),
        ((1, 1), ((-0.5, 0.5), (-0.5, 0.5))),
        ((0, 0), ((-0.5, -0.5), (-0.5, -0.5))),
    ],
)
def test_wcs_bbox_from_shape(shape, expected):
    assert al.wcs_bbox_from_shape(shape) == expected


def test_compute_s_region_keyword(caplog):
    caplog.set_level(logging.INFO, logger="stcal_dask.mosaic.alignment")
    s = al.compute_s_region_keyword(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]))
    assert s == (
        "POLYGON ICRS  1.000000000 2.000000000 3.000000000 4.000000000 "
        "5.000000000 6.000000000 7.000000000 8.000000000"
    )
    assert "Update S_REGION to POLYGON ICRS  1.000000000" in caplog.text
    assert al.compute_s_region_keyword([[1, 2], [3, np.nan], [5, 6], [7, 8]]) is None
    assert "There are NaNs in s_region, S_REGION not updated." in caplog.text
    assert al.compute_s_region_keyword([[1, 2], [3, np.inf], [5, 6]]) is None
    # all vertices are written (stcal drops all but the first 4)
    assert len(al.compute_s_region_keyword(np.arange(12.0).reshape(6, 2)).split()) == 2 + 12


@pytest.mark.parametrize("with_bbox", [True, False])
def test_compute_s_region_imaging(with_bbox):
    w = simple_imaging_wcs((10.0, 0.0), (3, 3), (2.8e-5, 2.8e-5))
    if not with_bbox:
        w.bounding_box = None
    s = al.compute_s_region_imaging(w, shape=(3, 3), center=False)
    fp = al.sregion_to_footprint(s)
    expect = np.array([w(-0.5, -0.5), w(-0.5, 2.5), w(2.5, 2.5), w(2.5, -0.5)])
    np.testing.assert_allclose(fp, expect, rtol=0, atol=1e-9)
    if not with_bbox:
        assert w.bounding_box is None  # not mutated (stcal sets it)
    # center=True: outermost pixel centres (stcal shifts the polygon by +0.5 px instead)
    fpc = al.sregion_to_footprint(al.compute_s_region_imaging(w, shape=(3, 3), center=True))
    np.testing.assert_allclose(
        fpc, np.array([w(0, 0), w(0, 2), w(2, 2), w(2, 0)]), rtol=0, atol=1e-9
    )


def test_sregion_to_footprint():
    fp = al.sregion_to_footprint("POLYGON ICRS  1.0 2.0 3.0 4.0 5.0 6.0 7.0 8.0")
    np.testing.assert_array_equal(fp, [[1, 2], [3, 4], [5, 6], [7, 8]])
    # exponent notation (stcal strips the 'e' and fails) and lower case
    fp = al.sregion_to_footprint("polygon fk5 1.0e-05 -2E+01 3 4 5 6")
    np.testing.assert_array_equal(fp, [[1e-5, -20.0], [3, 4], [5, 6]])
    two = "POLYGON ICRS  1 2 3 4 5 6  POLYGON ICRS  7 8 9 10 11 12 13 14"
    parts = al.sregion_to_footprints(two)
    assert [p.shape for p in parts] == [(3, 2), (4, 2)]
    assert al.sregion_to_footprint(two).shape == (7, 2)
    with pytest.raises(UserInputError, match="even"):
        al.sregion_to_footprint("POLYGON ICRS 1 2 3")


# ----------------------------------------------------------------- FITS WCS inputs


def test_fits_wcs_equals_equivalent_gwcs():
    scale = 2e-4
    fw = _fits_wcs(scale, (20, 30), crval=(45.0, 30.0))
    tan = (
        (m.Shift(0.0) & m.Shift(0.0))
        | (m.Scale(-scale) & m.Scale(scale))
        | m.Pix2Sky_TAN()
        | m.RotateNative2Celestial(45.0, 30.0, 180.0)
    )
    det = cf.Frame2D(name="detector", unit=(u.pix, u.pix))
    from astropy.coordinates import ICRS

    sky = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg))
    gw = gwcs.WCS([(det, tan), (sky, None)])
    gw.bounding_box = ((-0.5, 29.5), (-0.5, 19.5))
    np.testing.assert_allclose(al.footprint(fw), al.footprint(gw), rtol=0, atol=1e-10)
    np.testing.assert_allclose(al.compute_fiducial([fw]), al.compute_fiducial([gw]), atol=1e-10)
    assert al.compute_scale(fw, (45.0, 30.0)) == pytest.approx(
        al.compute_scale(gw, (45.0, 30.0)), rel=1e-10
    )
    info = {"ra_ref": 45.0, "dec_ref": 30.0, "roll_ref": 0.0, "v3yangle": 0.0, "vparity": -1}
    a = al.wcs_from_footprints([(fw, info)])
    b = al.wcs_from_footprints([(gw, info)])
    assert a.array_shape == b.array_shape == (20, 30)
    np.testing.assert_allclose(
        a.forward_transform.crpix.value, b.forward_transform.crpix.value, atol=PIX
    )


# ----------------------------------------------------------------- geometry: wrap, poles, size


def _mosaic_checks(exposures, **options):
    out = al.wcs_from_footprints(
        [(e.wcs, e.wcsinfo) for e in exposures], align_edges=True, **options
    )
    ny, nx = out.array_shape
    lo, hi = np.inf, -np.inf
    for e in exposures:
        c = _corners_px(out, e.wcs)
        lo, hi = min(lo, c.min()), max(hi, c.max())
        assert np.all(c[0] >= -0.5 - PIX) and np.all(c[0] <= nx - 0.5 + PIX)
        assert np.all(c[1] >= -0.5 - PIX) and np.all(c[1] <= ny - 0.5 + PIX)
    assert lo == pytest.approx(-0.5, abs=PIX)  # the union touches the low edges exactly
    return out


def test_ra_wraparound_mosaic():
    center = (0.0005, -30.0)
    pts = dither_pattern(9, center=center, roll=15.0, tile=30.0, dither=1.0)
    exposures = [imaging_wcs(p.ra, p.dec, p.roll, shape=(40, 40)) for p in pts]
    ras = np.concatenate([al.footprint(e.wcs)[:, 0] for e in exposures])
    assert ras.min() < 0.01 and ras.max() > 359.99
    out = _mosaic_checks(exposures)
    fid = out.forward_transform.crval.value
    assert min(fid[0], 360 - fid[0]) < 0.01  # near RA 0, not 180
    # about 3 tiles of 30" plus a 2.5" detector at 0.063"/px
    assert max(out.array_shape) < (3 * 30 + 2.6 + 4) / 0.063


@pytest.mark.parametrize("dec", [89.999, -89.9995, 90.0])
def test_near_pole_mosaic(dec):
    pts = dither_pattern(4, center=(200.0, dec), roll=0.0, tile=5.0, dither=0.5, roll_step=20.0)
    exposures = [imaging_wcs(p.ra, p.dec, p.roll, shape=(48, 48)) for p in pts]
    out = _mosaic_checks(exposures)
    assert max(out.array_shape) < 2 * (5.0 + 48 * 0.063 * 1.5) / 0.063
    fid = al.compute_fiducial([e.wcs for e in exposures])
    assert abs(fid[1]) > 89.99


def test_fiducial_across_pole_is_pole():
    a = simple_imaging_wcs((0.0, 89.9999), (5, 5), (2.8e-5, 2.8e-5))
    b = simple_imaging_wcs((180.0, 89.9999), (5, 5), (2.8e-5, 2.8e-5))
    assert al.compute_fiducial([a, b])[1] == pytest.approx(90.0, abs=1e-9)


def test_hundred_exposure_mosaic():
    t0 = time.perf_counter()
    pts = dither_pattern(100, center=(150.1, 2.2), roll=40.0, tile=3.0, dither=0.4, roll_step=0.1)
    exposures = [imaging_wcs(p.ra, p.dec, p.roll, shape=(32, 32)) for p in pts]
    out = _mosaic_checks(exposures)
    assert time.perf_counter() - t0 < 20
    # 10 x 10 tiles of 3" (47.6 px) plus a detector of 32 px, at most ~45 deg of roll drift
    ny, nx = out.array_shape
    assert 9 * 47 + 32 <= max(ny, nx) <= 1.5 * (10 * 48 + 32)
    # every exposure's centre lands at a finite, in-grid pixel
    for e in exposures[::17]:
        x, y = al.reproject(e.wcs, out)(15.5, 15.5)
        assert 0 <= x < nx and 0 <= y < ny


@settings(max_examples=25, deadline=None)
@given(
    ra=st.floats(0, 360, exclude_max=True),
    dec=st.floats(-89.99, 89.99),
    roll=st.floats(-180, 180),
    n=st.integers(1, 5),
    ratio=st.sampled_from([0.5, 1.0, 1.7]),
)
def test_mosaic_property(ra, dec, roll, n, ratio):
    pts = dither_pattern(n, center=(ra, dec), roll=roll, tile=1.0, dither=0.2, roll_step=7.0)
    exposures = [imaging_wcs(p.ra, p.dec, p.roll, shape=(16, 20)) for p in pts]
    out = _mosaic_checks(exposures, pscale_ratio=ratio)
    crval = out.forward_transform.crval.value
    np.testing.assert_allclose(_pix(out, crval), out.forward_transform.crpix.value, atol=PIX)


def test_align_edges_differs_from_stcal_by_half_pixel():
    w1, w2 = _pair()
    items = [(w1, TEST_INFO), (w2, TEST_INFO)]
    a, b = al.wcs_from_footprints(items), al.wcs_from_footprints(items, align_edges=True)
    np.testing.assert_allclose(
        a.forward_transform.crpix.value - b.forward_transform.crpix.value, (0.5, 0.5), atol=PIX
    )
    assert a.array_shape == b.array_shape == (4, 4)
    # stcal convention: the union spans 0 .. 4 (half a pixel lost); ours spans -0.5 .. 3.5
    ca = np.hstack([_corners_px(a, w) for w in (w1, w2)])
    cb = np.hstack([_corners_px(b, w) for w in (w1, w2)])
    np.testing.assert_allclose((ca.min(), ca.max()), (0.0, 4.0), atol=PIX)
    np.testing.assert_allclose((cb.min(), cb.max()), (-0.5, 3.5), atol=PIX)


# ----------------------------------------------------------------- bad input


def _one_line(exc):
    assert "\n" not in str(exc.value) and str(exc.value)


def test_bad_input_empty_list():
    for call in (
        lambda: al.compute_fiducial([]),
        lambda: al.wcs_from_footprints([]),
        lambda: al.wcs_from_sregions([], *_pair()[:1], TEST_INFO),
    ):
        with pytest.raises(UserInputError, match="empty") as exc:
            call()
        _one_line(exc)


def test_bad_input_no_bounding_box_no_shape():
    w1, w2 = _pair()
    w2.bounding_box = None
    with pytest.raises(UserInputError, match=r"dmodels\[1\] wcs has neither a bounding box") as exc:
        al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)])
    _one_line(exc)
    with pytest.raises(UserInputError):
        al.compute_fiducial([w2])
    # a datamodel's data array is enough (as in jwst's resample) and the WCS is not modified
    model = SimpleNamespace(
        meta=SimpleNamespace(wcs=w2, wcsinfo=TEST_INFO), data=np.zeros((3, 3), np.float32)
    )
    assert al.wcs_from_footprints([(w1, TEST_INFO), model]).array_shape == (4, 4)
    assert w2.bounding_box is None
    # and so is a pixel shape
    w2.pixel_shape = (3, 3)
    assert al.wcs_from_footprints([(w1, TEST_INFO), (w2, TEST_INFO)]).array_shape == (4, 4)


def test_bad_input_mixed_frames():
    fk5 = simple_imaging_wcs((10.0, 0.0), (3, 3), (2.8e-5, 2.8e-5), frame="fk5")
    icrs = simple_imaging_wcs((10.0, 0.0), (3, 3), (2.8e-5, 2.8e-5), frame="icrs")
    with pytest.raises(UserInputError, match="share one output frame") as exc:
        al.compute_fiducial([fk5, icrs])
    _one_line(exc)
    with pytest.raises(UserInputError, match="share one output frame"):
        al.wcs_from_footprints([(fk5, TEST_INFO), (icrs, TEST_INFO)])


@pytest.mark.parametrize("vparity", [0, 2, -2, 0.5, True])
def test_bad_input_vparity(vparity):
    with pytest.raises(UserInputError, match="vparity") as exc:
        al.calc_rotation_matrix(0.1, 0.2, vparity)
    _one_line(exc)
    if vparity is not True:
        w1, w2 = _pair()
        with pytest.raises(UserInputError, match="vparity"):
            al.wcs_from_footprints([(w1, dict(TEST_INFO, vparity=vparity)), (w2, TEST_INFO)])


def test_bad_input_other():
    w1, w2 = _pair()
    fps = [al.footprint(w1), al.footprint(w2)]
    cases = [
        (lambda: al.wcs_from_sregions(fps, w1, TEST_INFO, pscale_ratio=4), "too small"),
        (lambda: al.wcs_from_sregions(fps, w1, {"ra_ref": 1}), "dec_ref"),
        (
            lambda: al.wcs_from_sregions(fps, w1, TEST_INFO, shape=(5, 5), crpix=(-50, -50)),
            "outside",
        ),
        (lambda: al.wcs_from_sregions([[[1, np.nan]]], w1, TEST_INFO), "non-finite"),
        (lambda: al.wcs_from_sregions([np.zeros(3)], w1, TEST_INFO), "(N, 2)"),
        (lambda: al.wcs_from_sregions(fps, w1, TEST_INFO, crval=(1, 2, 3)), "crval"),
        (lambda: al.wcs_from_footprints(["nope"]), "datamodel"),
        (lambda: al.wcs_from_footprints([(w1, None)]), "ref_wcsinfo is missing"),
        (lambda: al.compute_scale(w1, (0, 0), pscale_ratio=-1), "pscale_ratio"),
        (lambda: al.compute_scale(w1, (0, 0, 0)), "world axes"),
        (lambda: al.footprint(w1, bounding_box=((0, 1), (2, 1))), "high <= low"),
        (lambda: al.wcs_bbox_from_shape((5,)), "at least 2"),
    ]
    for call, match in cases:
        with pytest.raises(UserInputError, match=match) as exc:
            call()
        _one_line(exc)


def test_bad_input_spectral_without_disp_axis():
    sky = m.Scale(1e-4) & m.Scale(2e-4) | m.Pix2Sky_TAN() | m.RotateNative2Celestial(30, 10, 180)
    transform = m.Mapping((0, 1, 0)) | (sky & m.Scale(0.001))
    from astropy.coordinates import ICRS

    cel = cf.CelestialFrame(reference_frame=ICRS(), name="sky", axes_order=(0, 1))
    lam = cf.SpectralFrame(name="spec", unit=(u.micron,), axes_order=(2,), axes_names=("lam",))
    w = gwcs.WCS(
        [(cf.Frame2D(name="detector"), transform), (cf.CompositeFrame([cel, lam], name="w"), None)]
    )
    w.bounding_box = ((-0.5, 4.5), (-0.5, 4.5))
    with pytest.raises(UserInputError, match="disp_axis"):
        al.compute_scale(w, (30, 10, 0.001))
    # spectral fiducial = start of the range; a wavelength of exactly 0 is kept (no garbage)
    assert al.compute_fiducial([w])[2] == pytest.approx(-0.0005)
    with pytest.raises(UserInputError, match="2-D celestial"):
        al.wcs_from_footprints([(w, TEST_INFO)])


def test_legacy_gwcs_with_string_frames():
    """Old ASDF files store frames as strings (they load as None); stcal 1.20.0 fails on them."""
    w1, w2 = _pair()
    legacy = gwcs.WCS(
        forward_transform=w1.forward_transform, input_frame="detector", output_frame="fk5"
    )
    assert legacy.output_frame is None
    legacy.bounding_box = ((-0.5, 2.5), (-0.5, 2.5))
    fps = [al.footprint(w1), al.footprint(w2)]
    a = al.wcs_from_sregions(fps, legacy, TEST_INFO)
    b = al.wcs_from_sregions(fps, w1, TEST_INFO)
    assert a.array_shape == b.array_shape
    np.testing.assert_allclose(a.forward_transform.crpix.value, b.forward_transform.crpix.value)
    assert a.output_frame is not None  # default detector -> ICRS world frames
    np.testing.assert_allclose(al.compute_fiducial([legacy]), al.compute_fiducial([w1]), atol=1e-12)


def test_offset_pointing_round_trip():
    ra, dec = offset_pointing(10.0, 20.0, 0.0, 36.0, pa=0.0)
    assert ra == pytest.approx(10.0, abs=1e-12) and dec == pytest.approx(20.01, abs=1e-9)
    ra, dec = offset_pointing(10.0, 20.0, 0.0, 36.0, pa=90.0)  # +y East
    assert ra > 10.0 and dec == pytest.approx(20.0, abs=1e-6)


@pytest.mark.parametrize("vparity", [-1, 1])
def test_wcs_sim_orientation_and_mosaic_alignment(vparity):
    """+y of the synthetic detector points at PA roll_ref - vparity * v3yangle, the detector
    centre at (ra_ref, dec_ref), and a rotation=None mosaic keeps the detector axes."""
    roll, v3y = 37.0, 1.5
    e = imaging_wcs(210.0, -45.0, roll, shape=(41, 61), v3yangle=v3y, vparity=vparity)
    np.testing.assert_allclose(e.wcs(30.0, 20.0), (210.0, -45.0), atol=1e-10)
    (ra0, dec0), (ra1, dec1) = e.wcs(30.0, 20.0), e.wcs(30.0, 21.0)
    pa = _position_angle(ra0, dec0, ra1, dec1)
    assert ((pa - (roll - vparity * v3y) + 180) % 360) - 180 == pytest.approx(0.0, abs=1e-6)
    assert e.wcsinfo["vparity"] == vparity and e.wcsinfo["v3yangle"] == v3y
    out = al.wcs_from_footprints([(e.wcs, e.wcsinfo)])
    f = al.reproject(e.wcs, out)
    x0, y0 = f(30.0, 20.0)
    x1, y1 = f(31.0, 20.0)
    x2, y2 = f(30.0, 21.0)
    np.testing.assert_allclose((x1 - x0, y1 - y0, x2 - x0, y2 - y0), (1, 0, 0, 1), atol=1e-6)
    assert out.array_shape == (41, 61)


def test_simulation_config_pointing_gives_exposure_wcs():
    from stcal_dask.sim.ramp import SimulationConfig, exposure_wcs

    cfg = SimulationConfig(ny=30, nx=50, pointing=(12.0, -3.0, 100.0))
    wcs, info = exposure_wcs(cfg)
    assert wcs.pixel_shape == (50, 30)
    assert info["roll_ref"] == 100.0
    np.testing.assert_allclose(wcs(24.5, 14.5), (12.0, -3.0), atol=1e-10)
    with pytest.raises(UserInputError, match="pointing"):
        exposure_wcs(SimulationConfig())


def test_wcs_from_footprints_on_jwst_datamodels():
    """Real stdatamodels ImageModels (meta.wcs + meta.wcsinfo node) as stcal 1.7.1 took them."""
    from stdatamodels.jwst.datamodels import ImageModel

    pts = dither_pattern(3, center=(80.5, -69.5), roll=250.0, tile=2.0, dither=0.2)
    exposures = [imaging_wcs(p.ra, p.dec, p.roll, shape=(20, 24)) for p in pts]
    models = []
    for e in exposures:
        model = ImageModel(data=np.zeros((20, 24), np.float32))
        model.meta.wcs = e.wcs
        for key, value in e.wcsinfo.items():
            setattr(model.meta.wcsinfo, key, value)
        models.append(model)
    a = al.wcs_from_footprints(models, rotation=10.0)
    b = al.wcs_from_footprints([(e.wcs, e.wcsinfo) for e in exposures], rotation=10.0)
    assert a.array_shape == b.array_shape
    np.testing.assert_allclose(a.forward_transform.crpix.value, b.forward_transform.crpix.value)
    np.testing.assert_allclose(a.forward_transform.pc.value, b.forward_transform.pc.value)
    c = al.wcs_from_footprints(models, refmodel=models[2])
    assert c.forward_transform.crval.value[0] == pytest.approx(a.forward_transform.crval.value[0])
    for model in models:
        model.close()
