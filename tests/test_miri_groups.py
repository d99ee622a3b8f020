"""MIRI's first and last groups in ramp fitting (stcal's ``discard_miri_groups``), through the
kernel helpers, the dataflow and the CLI, against stcal 1.20.0 ``ramp_fit_data``."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_ramp import run_stcal

from stcal_dask import dqflags
from stcal_dask.kernels import miri_groups as mg
from stcal_dask.kernels.ramp_fit import RampFitParams, RampTiming

DATA10 = np.array([8888, 25, 35, 54, 55, 65, 75, 94, 95, 888], np.float32).reshape(1, 10, 1, 1)
TIMING10 = RampTiming(10.0, 10.0, 1, 0, 0)
RATE = {"slope": "sci", "dq": "dq", "var_poisson": "var_poisson", "var_rnoise": "var_rnoise",
        "err": "err"}
OPT = ("slope", "sigslope", "yint", "sigyint", "weights", "var_poisson", "var_rnoise",
       "pedestal", "crmag")


def _ramp(data, gdq, timing, instrument="MIRI", gain=5.5, rn=10.34):
    from stcal_dask.engine.datamodel import make_ramp_dataset

    nints, ngroups, ny, nx = data.shape
    t = {"NINTS": nints, "NGROUPS": ngroups, "NFRAMES": timing.nframes,
         "GROUPGAP": timing.groupgap, "TFRAME": timing.frame_time, "TGROUP": timing.group_time,
         "DRPFRMS1": timing.drop_frames1}
    g = np.broadcast_to(np.float32(gain), (ny, nx)) if np.ndim(gain) == 0 else gain
    r = np.broadcast_to(np.float32(rn), (ny, nx)) if np.ndim(rn) == 0 else rn
    ds = make_ramp_dataset(data, gdq, np.zeros((ny, nx), np.uint32), np.array(g, np.float32),
                           np.array(r, np.float32), timing=t)
    if instrument:
        ds.attrs["INSTRUME"] = instrument
    return ds


def _check(products, image, integ, opt, save_opt):
    import dask

    rate, rateints = products[:2]
    (rate, rateints, *rest) = dask.compute(rate, rateints, *products[2:], scheduler="sync")
    for ours, ref in ((rate, image), (rateints, integ)):
        for k, v in RATE.items():
            a, b = np.asarray(ours[v].values), np.asarray(ref[k])
            if k == "dq":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
                ok = ~np.isnan(b)
                np.testing.assert_allclose(a[ok], b[ok], rtol=1e-5, atol=0)
    if save_opt:
        fitopt = rest[0]
        for k in OPT:
            a, b = np.asarray(fitopt[k].values), np.asarray(opt[k])
            assert a.shape == b.shape, k
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            ok = ~np.isnan(b)
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("dq, suppress", [
    ([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], False),
    ([1, 4, 0, 0, 0, 0, 0, 0, 0, 1], False),
    ([1, 4, 0, 0, 0, 0, 0, 0, 0, 1], True),
    ([1, 4, 2, 2, 2, 2, 2, 2, 2, 2], True),   # one usable group only once trimmed
    ([1, 1, 0, 0, 0, 0, 0, 0, 1, 1], True),   # two leading groups, the last one only
])
def test_issue_examples_through_the_dataflow(dq, suppress):
    from stcal_dask.engine import dataflow

    gdq = np.array(dq, np.uint8).reshape(1, 10, 1, 1)
    p = RampFitParams(save_opt=True, suppress_one_group=suppress)
    image, integ, opt = run_stcal(DATA10, gdq, np.zeros((1, 1), np.uint32),
                                  np.full((1, 1), 5.5, np.float32),
                                  np.full((1, 1), 10.34, np.float32), params=p, timing=TIMING10,
                                  instrument="MIRI")
    _check(dataflow.fit_ramps(_ramp(DATA10, gdq, TIMING10), p), image, integ, opt, True)


def test_issue_example_values():
    """The figures quoted for stcal: yint 26.439, pedestal 23.974, slope 1.025854."""
    from stcal_dask.engine import dataflow

    gdq = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1], np.uint8).reshape(1, 10, 1, 1)
    rate, _, fitopt = dataflow.fit_ramps(_ramp(DATA10, gdq, TIMING10),
                                         RampFitParams(save_opt=True))
    assert float(rate["sci"].values[0, 0]) == pytest.approx(1.025854, rel=1e-6)
    assert float(fitopt["yint"].values[0, 0, 0, 0]) == pytest.approx(26.439, rel=1e-4)
    assert float(fitopt["pedestal"].values[0, 0, 0]) == pytest.approx(23.974, rel=1e-4)
    # not MIRI: group 0 is fitted as stcal does for other instruments
    _, _, f2 = dataflow.fit_ramps(_ramp(DATA10, gdq, TIMING10, instrument="NIRSPEC"),
                                  RampFitParams(save_opt=True))
    assert float(f2["pedestal"].values[0, 0, 0]) == pytest.approx(8886.97, rel=1e-5)


def _miri_exposure(seed=0, nints=3, ngroups=8, ny=40, nx=36):
    from stcal_dask.sim.ramp import simulate_exposure

    exp = simulate_exposure(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=seed,
                            frame_time=2.775, cr_rate=0.03)
    gdq = exp.groupdq.copy()
    gdq[:, 0] |= dqflags.DO_NOT_USE   # firstframe
    gdq[:, -1] |= dqflags.DO_NOT_USE  # lastframe
    rng = np.random.default_rng(seed)
    gdq[:, 1][rng.random(gdq[:, 1].shape) < 0.05] |= dqflags.JUMP_DET  # jumps on the new group 0
    gdq[:, 2:][rng.random(gdq[:, 2:].shape) < 0.1] |= dqflags.SATURATED  # short ramps
    return exp._replace(groupdq=gdq)


@pytest.mark.parametrize("save_opt", [False, True])
@pytest.mark.parametrize("suppress", [False, True])
def test_seeded_miri_exposure_equals_stcal(save_opt, suppress):
    from stcal_dask.engine import dataflow

    exp = _miri_exposure()
    c = exp.config
    timing = RampTiming(c.frame_time, c.group_time, c.nframes, c.groupgap, c.drop_frames1)
    p = RampFitParams(save_opt=save_opt, suppress_one_group=suppress)
    image, integ, opt = run_stcal(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise,
                                  params=p, timing=timing, instrument="MIRI")
    ds = _ramp(exp.data, exp.groupdq, timing, gain=exp.gain, rn=exp.readnoise)
    for tile in ((40, 36), (16, 20), (7, 36)):
        _check(dataflow.fit_ramps(ds, p, tile=tile), image, integ, opt, save_opt)


@pytest.mark.parametrize("save_opt, suppress", [(False, False), (True, True)])
def test_miri_with_chargeloss_equals_stcal(save_opt, suppress):
    """CHARGELOSS groups in a MIRI exposure: stcal trims the original group DQ kept for the
    CHARGELOSS read-noise recomputation with the same groups (keeping the JUMP flags it removes
    from the new first group of the fitted DQ, and without suppress_one_group)."""
    from stcal_dask.engine import dataflow

    exp = _miri_exposure(seed=4)
    rng = np.random.default_rng(4)
    gdq = exp.groupdq.copy()
    gdq[:, 1:-1][rng.random(gdq[:, 1:-1].shape) < 0.08] |= dqflags.CHARGELOSS
    gdq[:, 1, :3, :3] |= dqflags.CHARGELOSS | dqflags.JUMP_DET  # both on the new group 0
    c = exp.config
    timing = RampTiming(c.frame_time, c.group_time, c.nframes, c.groupgap, c.drop_frames1)
    p = RampFitParams(save_opt=save_opt, suppress_one_group=suppress)
    assert p.chargeloss_rnoise
    image, integ, opt = run_stcal(exp.data, gdq, exp.pixeldq, exp.gain, exp.readnoise,
                                  params=p, timing=timing, instrument="MIRI")
    ds = _ramp(exp.data, gdq, timing, gain=exp.gain, rn=exp.readnoise)
    for tile in ((40, 36), (16, 20)):
        _check(dataflow.fit_ramps(ds, p, tile=tile), image, integ, opt, save_opt)


def test_trim_decisions():
    t = mg.decide_trim([True, True, False, False, True])
    assert (t.first, t.stop, t.ok) == (2, 4, True)
    assert not mg.decide_trim([True, False, True]).ok  # one group left
    assert not mg.decide_trim([True, True]).ok
    assert mg.decide_trim([False, False]) == mg.GroupTrim(0, 2, True)
    assert mg.is_miri(" miri ") and not mg.is_miri("NIRCAM") and not mg.is_miri(None)


def test_too_few_groups_is_a_user_error():
    from stcal_dask.engine import dataflow
    from stcal_dask.errors import UserInputError

    gdq = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 1], np.uint8).reshape(1, 10, 1, 1)
    rate = dataflow.fit_ramps(_ramp(DATA10, gdq, TIMING10), RampFitParams()).rate
    with pytest.raises(UserInputError, match="MIRI"):
        rate["sci"].values  # noqa: B018


def _miri_fits(tmp_path, shape="3x8x40x48"):
    from astropy.io import fits

    from stcal_dask.cli import main

    ramp = tmp_path / "miri_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", shape, "--seed", "11", "--cr-rate", "0.03",
                 "--scheduler", "threads", "--quiet"]) == 0
    with fits.open(ramp, mode="update") as h:
        h[0].header["INSTRUME"] = "MIRI"
        gdq = h["GROUPDQ"].data
        gdq[:, 0] |= dqflags.DO_NOT_USE
        gdq[:, -1] |= dqflags.DO_NOT_USE
    return ramp, tmp_path / "miri_gain.fits", tmp_path / "miri_readnoise.fits"


@pytest.mark.parametrize("extra, save_opt", [([], True),
                                             (["--rampfit.suppress_one_group", "false"], True),
                                             ([], False)])
def test_cli_miri_with_instrument_defaults_equals_stcal(tmp_path, extra, save_opt):
    """``stcal-dask run --instrument-defaults [--save-opt]`` on a MIRI FITS ramp (firstframe and
    lastframe flags): showers on, first/last groups dropped in the fit; FITS and zarr products
    equal stcal's detect_jumps_data (find_showers) + ramp_fit_data (MIRI); no fitopt product
    without --save-opt."""
    import xarray as xr
    from astropy.io import fits
    from oracle_jump import run_stcal_jump

    from stcal_dask.cli import main
    from stcal_dask.kernels.jump import JumpParams

    ramp, gain, rnoise = _miri_fits(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", str(ramp), "--gain", str(gain), "--readnoise", str(rnoise),
                 "--output-dir", str(out), "--format", "both",
                 *(["--save-opt"] if save_opt else []), "--save-jump", "--instrument-defaults",
                 "--tile", "16x20", *extra,
                 "--scheduler", "threads", "--quiet"]) == 0
    with fits.open(ramp) as h:
        data = h["SCI"].data.astype(np.float32)
        gdq = h["GROUPDQ"].data.astype(np.uint8)
        pdq = h["PIXELDQ"].data.astype(np.uint32)
        hdr = h[0].header
    g = fits.getdata(gain, "SCI").astype(np.float32)
    rn = fits.getdata(rnoise, "SCI").astype(np.float32)
    jgdq, jpdq, _ = run_stcal_jump(data, gdq, pdq, g, rn, params=JumpParams(find_showers=True),
                                   nframes=hdr["NFRAMES"], group_time=hdr["TGROUP"])
    np.testing.assert_array_equal(fits.getdata(out / "miri_jump.fits", "GROUPDQ"), jgdq)
    timing = RampTiming(hdr["TFRAME"], hdr["TGROUP"], hdr["NFRAMES"], hdr["GROUPGAP"],
                        hdr["DRPFRMS1"])
    p = RampFitParams(save_opt=save_opt, suppress_one_group=not extra)
    image, integ, opt = run_stcal(data, jgdq, jpdq, g, rn, params=p, timing=timing,
                                  instrument="MIRI")
    names = {"SCI": "slope", "ERR": "err", "DQ": "dq", "VAR_POISSON": "var_poisson",
             "VAR_RNOISE": "var_rnoise"}
    for fname, ref in (("miri_rate", image), ("miri_rateints", integ)):
        z = xr.open_zarr(out / f"{fname}.zarr")
        for ext, key in names.items():
            for ours in (fits.getdata(out / f"{fname}.fits", ext), z[ext.lower()].values):
                b = np.asarray(ref[key])
                if key == "dq":
                    np.testing.assert_array_equal(ours, b)
                else:
                    ok = ~np.isnan(b)
                    np.testing.assert_array_equal(np.isnan(ours), ~ok)
                    np.testing.assert_allclose(ours[ok], b[ok], rtol=1e-5)
    assert (out / "miri_fitopt.fits").exists() == save_opt
    for key in OPT if save_opt else ():
        ours = fits.getdata(out / "miri_fitopt.fits", key.upper())
        b = np.asarray(opt[key])
        assert ours.shape == b.shape, key
        ok = ~np.isnan(b)
        np.testing.assert_allclose(ours[ok], b[ok], rtol=1e-5, atol=1e-6, err_msg=key)


def test_instrument_defaults_and_explicit_options_win(tmp_path):
    from stcal_dask.cli import build_parser
    from stcal_dask.cli.steps import plan
    from stcal_dask.kernels.jump import instrument_jump_defaults

    assert instrument_jump_defaults("nircam ") == {"expand_large_events": True}
    assert instrument_jump_defaults("MIRI") == {"find_showers": True}
    assert instrument_jump_defaults(None) == {} == instrument_jump_defaults("FGS")
    ramp, gain, rnoise = _miri_fits(tmp_path, shape="1x4x8x8")
    base = ["run", str(ramp), "--gain", str(gain), "--readnoise", str(rnoise), "-o",
            str(tmp_path)]

    def planned(*extra):
        args = build_parser().parse_args([*base, *extra])
        args.input = str(ramp)  # what a batch sets for each of its inputs
        return plan(args, "run")

    p = planned("--instrument-defaults")
    assert p.jump.find_showers and not p.jump.expand_large_events
    assert not planned("--instrument-defaults", "--jump.find_showers", "false").jump.find_showers
    assert not planned().jump.find_showers
