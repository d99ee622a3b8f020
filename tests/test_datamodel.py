"""The xarray data model: schema, validation errors, tile sizing, product builders."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from stcal_dask import __version__
from stcal_dask.engine.datamodel import (
    FITOPT_VARIABLES,
    RAMP_VARIABLES,
    choose_tile_size,
    fitopt_dataset,
    make_ramp_dataset,
    ramp_bytes_per_pixel,
    ramp_from_exposure,
    rate_dataset,
    rateints_dataset,
    validate_ramp,
)
from stcal_dask.errors import UserInputError
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

TIMING = {"NINTS": 2, "NGROUPS": 3, "NFRAMES": 1, "GROUPGAP": 0, "TFRAME": 10.0,
          "TGROUP": 10.0, "DRPFRMS1": 0}


def _arrays(nints=2, ngroups=3, ny=5, nx=7):
    rng = np.random.default_rng(1)
    return dict(
        sci=rng.normal(1000, 10, (nints, ngroups, ny, nx)).astype(np.float32),
        groupdq=np.zeros((nints, ngroups, ny, nx), np.uint8),
        pixeldq=np.zeros((ny, nx), np.uint32),
        gain=np.full((ny, nx), 2.0, np.float32),
        readnoise=np.full((ny, nx), 10.0, np.float32),
    )


def _ramp(**kw):
    a = _arrays()
    a.update(kw)
    return make_ramp_dataset(**a, timing=TIMING)


def test_schema_of_built_ramp(small_exposure):
    ds = ramp_from_exposure(small_exposure)
    for name, spec in RAMP_VARIABLES.items():
        if name in ("zeroframe", "average_dark_current"):
            assert name not in ds
            continue
        assert ds[name].dims == spec.dims
        assert ds[name].dtype == spec.dtype
        assert ds[name].attrs["units"] == spec.units
    assert ds.sci.attrs["units"] == "DN" and ds.gain.attrs["units"] == "electron/DN"
    assert ds.attrs["NINTS"] == 2 and ds.attrs["NGROUPS"] == 6
    assert ds.attrs["TGROUP"] == pytest.approx(small_exposure.config.group_time)
    assert "simulate" in ds.attrs["source"]
    np.testing.assert_array_equal(ds.sci.values, small_exposure.data)


def test_zeroframe_and_dark_optional():
    a = _arrays()
    ds = make_ramp_dataset(**a, timing=TIMING, zeroframe=np.ones((2, 5, 7)),
                           average_dark_current=np.zeros((5, 7), np.float64))
    assert ds.zeroframe.dims == ("integration", "y", "x")
    assert ds.zeroframe.dtype == np.float32 and ds.average_dark_current.dtype == np.float32
    assert ds.average_dark_current.attrs["units"] == "DN/s"


def test_dask_inputs_stay_lazy_and_chunks():
    a = {k: da.from_array(v) for k, v in _arrays(ny=40, nx=30).items()}
    a["sci"] = a["sci"].astype(np.float64)  # cast is lazy
    ds = make_ramp_dataset(**a, timing=TIMING, chunks=(16, 10))
    assert isinstance(ds.sci.data, da.Array) and ds.sci.dtype == np.float32
    assert ds.sci.data.chunks == ((2,), (3,), (16, 16, 8), (10, 10, 10))
    assert ds.gain.data.chunks == ((16, 16, 8), (10, 10, 10))
    ds2 = make_ramp_dataset(**_arrays(ny=40, nx=30), timing=TIMING, chunks={"y": 20})
    assert ds2.sci.data.chunks[2] == (20, 20) and ds2.sci.data.chunks[0] == (2,)


def test_drpfrms1_defaults_to_zero():
    t = dict(TIMING)
    del t["DRPFRMS1"]
    assert make_ramp_dataset(**_arrays(), timing=t).attrs["DRPFRMS1"] == 0


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(sci=np.zeros((2, 3, 5), np.float32)), r"array sci has 3 dimensions"),
        (dict(groupdq=np.zeros((2, 3, 5, 6), np.uint8)), r"array groupdq has shape"),
        (dict(gain=np.zeros((5, 6), np.float32)), r"array gain has shape \(5, 6\).*\(5, 7\)"),
        (dict(pixeldq=np.zeros((5, 7), np.int32)), r"array pixeldq has dtype int32.*uint32"),
        (dict(groupdq=np.zeros((2, 3, 5, 7), np.uint16)), r"groupdq has dtype uint16.*uint8"),
        (dict(groupdq=np.zeros((2, 3, 5, 7), np.float32)), r"groupdq has dtype float32"),
        (dict(sci=np.zeros((2, 3, 5, 7), np.complex64)), r"sci has dtype complex64"),
        (dict(readnoise=np.array([["a"] * 7] * 5)), r"readnoise has dtype"),
    ],
)
def test_array_errors_name_the_array(change, match):
    with pytest.raises(UserInputError, match=match):
        _ramp(**change)


def test_safe_casts_accepted():
    ds = _ramp(pixeldq=np.zeros((5, 7), np.uint8), groupdq=np.zeros((2, 3, 5, 7), bool),
               sci=np.zeros((2, 3, 5, 7), np.int16), gain=np.ones((5, 7), np.float64))
    assert ds.pixeldq.dtype == np.uint32 and ds.groupdq.dtype == np.uint8
    assert ds.sci.dtype == np.float32 and ds.gain.dtype == np.float32


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("NINTS", None, "missing keyword NINTS"),
        ("TGROUP", None, "missing keyword TGROUP"),
        ("NGROUPS", 4, r"NINTS=2, NGROUPS=4 do not match array sci"),
        ("NFRAMES", 0, "keyword NFRAMES must be an integer >= 1"),
        ("GROUPGAP", 1.5, "keyword GROUPGAP must be an integer"),
        ("TFRAME", -1.0, "keyword TFRAME must be a time in seconds > 0"),
        ("TFRAME", "abc", "keyword TFRAME must be a time"),
        ("TGROUP", float("nan"), "keyword TGROUP must be a time"),
    ],
)
def test_keyword_errors(key, value, match):
    t = dict(TIMING)
    if value is None:
        del t[key]
    else:
        t[key] = value
    with pytest.raises(UserInputError, match=match):
        make_ramp_dataset(**_arrays(), timing=t, source="my_ramp")
    # and the message names the source, on one line
    try:
        make_ramp_dataset(**_arrays(), timing=t, source="my_ramp")
    except UserInputError as exc:
        assert str(exc).startswith("my_ramp: ") and "\n" not in str(exc)


def test_validate_missing_variable_and_dims():
    ds = _ramp()
    with pytest.raises(UserInputError, match="missing array readnoise"):
        validate_ramp(ds.drop_vars("readnoise"), source="store.zarr")
    bad = ds.copy()
    bad["gain"] = xr.Variable(("x", "y"), ds.gain.values.T)
    with pytest.raises(UserInputError, match=r"array gain has dims \('x', 'y'\)"):
        validate_ramp(bad)
    with pytest.raises(UserInputError, match="expected an xarray Dataset"):
        validate_ramp({"sci": 1})
    bad = ds.copy()
    bad.attrs["SUBSTRT1"] = 0
    with pytest.raises(UserInputError, match="keyword SUBSTRT1 must be an integer >= 1"):
        validate_ramp(bad)


def test_validate_returns_cast_copy_without_touching_input():
    ds = _ramp()
    raw = ds.copy()
    raw["pixeldq"] = raw.pixeldq.astype(np.uint16)
    out = validate_ramp(raw)
    assert out.pixeldq.dtype == np.uint32 and raw.pixeldq.dtype == np.uint16


def test_choose_tile_size_model():
    # whole frame fits
    assert choose_tile_size(1, 10, 64, 64, 2**30) == (64, 64)
    # full-width strips, multiple of 16, within budget
    ty, tx = choose_tile_size(1, 10, 2048, 2048, 256 * 2**20)
    assert tx == 2048 and ty % 16 == 0 and ty >= 32
    assert 3 * ramp_bytes_per_pixel(1, 10) * ty * tx <= 256 * 2**20
    # huge ramps -> square-ish tiles
    ty, tx = choose_tile_size(10, 100, 2048, 2048, 64 * 2**20)
    assert tx < 2048 and ty < 2048 and tx % 16 == 0
    assert 3 * ramp_bytes_per_pixel(10, 100) * ty * tx <= 64 * 2**20
    with pytest.raises(UserInputError, match="memory budget"):
        choose_tile_size(10, 100, 10, 10, 100)
    with pytest.raises(UserInputError, match="ny must be >= 1"):
        choose_tile_size(1, 1, 0, 10, 2**20)


@settings(max_examples=60, deadline=None)
@given(
    nints=st.integers(1, 8), ngroups=st.integers(1, 200), ny=st.integers(1, 4096),
    nx=st.integers(1, 4096), budget=st.integers(2**16, 2**32),
)
def test_choose_tile_size_fits_budget(nints, ngroups, ny, nx, budget):
    per_pixel = 3 * ramp_bytes_per_pixel(nints, ngroups)
    if per_pixel > budget:
        return
    ty, tx = choose_tile_size(nints, ngroups, ny, nx, budget)
    assert 1 <= ty <= ny and 1 <= tx <= nx
    assert per_pixel * ty * tx <= budget


def test_rate_products():
    ny, nx = 4, 6
    sl = np.arange(ny * nx, dtype=np.float64).reshape(ny, nx)
    rate = rate_dataset(sl, sl, np.ones((ny, nx), np.uint8), sl, sl,
                        parameters={"rampfit": {"save_opt": False}}, attrs={"NINTS": np.int64(2)})
    assert rate.sci.dims == ("y", "x") and rate.sci.dtype == np.float32
    assert rate.dq.dtype == np.uint32 and rate.sci.attrs["units"] == "DN/s"
    assert rate.var_poisson.attrs["units"] == "(DN/s)^2"
    assert json.loads(rate.attrs["parameters"]) == {"rampfit": {"save_opt": False}}
    assert rate.attrs["stcal_dask_version"] == __version__ and rate.attrs["product"] == "rate"
    assert rate.attrs["NINTS"] == 2 and type(rate.attrs["NINTS"]) is int
    ints = rateints_dataset(*(da.zeros((2, ny, nx)),) * 5)
    assert ints.sci.dims == ("integration", "y", "x") and isinstance(ints.sci.data, da.Array)
    with pytest.raises(ValueError, match="array err has y size 3"):
        rate_dataset(sl, sl[:3], sl, sl, sl)


def test_fitopt_product():
    seg = np.zeros((2, 3, 4, 5))
    fo = fitopt_dataset(seg, seg, seg, seg, seg, seg, seg, np.zeros((2, 4, 5)),
                        np.zeros((2, 1, 4, 5)))
    assert list(fo.data_vars) == list(FITOPT_VARIABLES)
    assert fo.slope.dims == ("integration", "segment", "y", "x")
    assert fo.crmag.dims == ("integration", "cr", "y", "x")
    assert fo.pedestal.dims == ("integration", "y", "x")
    assert all(fo[v].dtype == np.float32 for v in fo.data_vars)


def test_ramp_from_exposure_with_zeroframe():
    exp = simulate_exposure(SimulationConfig(nints=1, ngroups=3, ny=8, nx=9, zeroframe=True))
    ds = ramp_from_exposure(exp, chunks=(4, 4))
    np.testing.assert_array_equal(ds.zeroframe.values, exp.zeroframe)
    assert ds.sci.data.chunks[2:] == ((4, 4), (4, 4, 1))
