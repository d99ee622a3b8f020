"""Snowballs and showers (kernels/large_events.py) against stcal 1.20.0 ``detect_jumps_data``."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_jump import run_stcal_jump

from stcal_dask import dqflags
from stcal_dask.kernels import jump as jk
from stcal_dask.kernels import large_events as le
from stcal_dask.sim.events import EventConfig, add_large_events
from stcal_dask.sim.ramp import simulate_exposure


def nircam_like(seed, nints=2, ngroups=7, ny=140, nx=130, **ev):
    exp = simulate_exposure(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=seed,
                            cr_rate=0.004)
    cfg = EventConfig(seed=seed, n_snowballs=4, snowball_rows=(64,), **ev)
    return add_large_events(exp, cfg)


def miri_like(seed, nints=3, ngroups=12, ny=120, nx=110, n_showers=3):
    exp = simulate_exposure(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=seed,
                            cr_rate=0.002, frame_time=2.775)
    exp, truth = add_large_events(exp, EventConfig(seed=seed, n_snowballs=0, n_edge_snowballs=0,
                                                   n_showers=n_showers))
    gdq = exp.groupdq.copy()
    gdq[:, 0] |= dqflags.DO_NOT_USE  # firstframe / lastframe
    gdq[:, -1] |= dqflags.DO_NOT_USE
    pdq = exp.pixeldq.copy()
    pdq[:, :4] = dqflags.REFERENCE_PIXEL
    pdq[:, -4:] = dqflags.REFERENCE_PIXEL
    return exp._replace(groupdq=gdq, pixeldq=pdq), truth


def ours(exp, params):
    tg = exp.config.group_time
    r = jk.detect_jumps(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise,
                        params=params, nframes=exp.config.nframes, group_time=tg)
    return le.flag_large_events(exp.data, r.groupdq, r.pixeldq, exp.gain, exp.readnoise,
                                snowballs=params.snowball_settings(tg),
                                showers=params.shower_settings(tg, exp.config.nframes)), r


def theirs(exp, params):
    return run_stcal_jump(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise,
                          params=params, nframes=exp.config.nframes,
                          group_time=exp.config.group_time, extended=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_snowballs_nircam_like_bit_identical(seed):
    exp, truth = nircam_like(seed)
    assert any(t.kind == "snowball" for t in truth)
    p = jk.JumpParams(expand_large_events=True, snowball_time_masked_next_int=30.0)
    res, twopt = ours(exp, p)
    gdq, pdq, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    np.testing.assert_array_equal(twopt.pixeldq, pdq)
    assert res.n_snowballs == n > 0
    assert (res.groupdq != twopt.groupdq).sum() > 100  # the stage did something


def test_snowball_variants_bit_identical():
    """No saturated core required, no next-integration masking, a small cap, 3 groups."""
    exp, _ = nircam_like(5, nints=2, ngroups=3)
    for p in (
        jk.JumpParams(expand_large_events=True, sat_required_snowball=False),
        jk.JumpParams(expand_large_events=True, mask_snowball_core_next_int=False,
                      max_extended_radius=3, min_sat_radius_extend=1.0),
        jk.JumpParams(expand_large_events=True, edge_size=0, expand_factor=3.0, sat_expand=5),
    ):
        res, _ = ours(exp, p)
        gdq, _, _, n = theirs(exp, p)
        np.testing.assert_array_equal(res.groupdq, gdq)
        assert res.n_snowballs == n


def test_snowballs_nirspec_like_many_groups():
    exp, _ = nircam_like(3, nints=1, ngroups=40, ny=90, nx=100)
    p = jk.JumpParams(expand_large_events=True)
    res, _ = ours(exp, p)
    gdq, _, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    assert res.n_snowballs == n > 0


@pytest.mark.parametrize("seed", [0, 2])
def test_showers_miri_like_bit_identical(seed):
    exp, _ = miri_like(seed)
    p = jk.JumpParams(find_showers=True)
    res, twopt = ours(exp, p)
    gdq, _, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    assert res.n_showers == n > 0
    assert (res.groupdq != twopt.groupdq).any()


def test_showers_and_snowballs_together():
    exp, _ = miri_like(4)
    exp2, _ = add_large_events(exp, EventConfig(seed=9, n_snowballs=2, n_edge_snowballs=1))
    p = jk.JumpParams(find_showers=True, expand_large_events=True)
    res, _ = ours(exp2, p)
    gdq, _, _, n = theirs(exp2, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    assert res.n_showers == n


def test_showers_too_few_differences_change_nothing():
    exp, _ = miri_like(1, nints=1, ngroups=6)
    p = jk.JumpParams(find_showers=True)
    res, twopt = ours(exp, p)
    gdq, _, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    np.testing.assert_array_equal(res.groupdq, twopt.groupdq)
    assert n == res.n_showers == 0


def test_options_off_is_the_identity():
    exp, _ = nircam_like(0, nints=1, ngroups=5, ny=40, nx=40)
    p = jk.JumpParams()
    assert p.snowball_settings(10.0) is None and p.shower_settings(10.0, 1) is None
    res, twopt = ours(exp, p)
    np.testing.assert_array_equal(res.groupdq, twopt.groupdq)


@pytest.mark.parametrize("inner,width", [(1, 2.6), (2, 3), (0.5, 1.2), (3, 4.5)])
def test_ring_kernel_equals_astropy(inner, width):
    from astropy.convolution import Ring2DKernel

    np.testing.assert_array_equal(le.ring_kernel(inner, width), Ring2DKernel(inner, width).array)


def test_painting_tiles_equals_whole_frame():
    rng = np.random.default_rng(0)
    shape = (50, 60)
    rasters = [le.ellipse_raster(rng.uniform(0, 60), rng.uniform(0, 50), rng.uniform(1, 30),
                                 rng.uniform(1, 30), rng.uniform(-90, 90), shape)
               for _ in range(20)]
    whole = le.paint(rasters, 0, 50, 0, 60)
    assert whole.any()
    for y0, y1, x0, x1 in [(0, 17, 0, 60), (17, 50, 0, 23), (17, 50, 23, 60)]:
        np.testing.assert_array_equal(le.paint(rasters, y0, y1, x0, x1), whole[y0:y1, x0:x1])


def test_inputs_not_modified():
    exp, _ = miri_like(0, nints=2, ngroups=8, ny=60, nx=60, n_showers=1)
    p = jk.JumpParams(find_showers=True, expand_large_events=True)
    before = [a.copy() for a in (exp.data, exp.groupdq, exp.pixeldq)]
    r = jk.detect_jumps(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise, params=p,
                        nframes=1, group_time=exp.config.group_time)
    g2 = r.groupdq.copy()
    le.flag_large_events(exp.data, r.groupdq, r.pixeldq, exp.gain, exp.readnoise,
                         snowballs=p.snowball_settings(2.775), showers=p.shower_settings(2.775, 1))
    for a, b in zip(before, (exp.data, exp.groupdq, exp.pixeldq), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(g2, r.groupdq)


def test_parameter_checks():
    from stcal_dask.errors import UserInputError

    with pytest.raises(UserInputError, match="edge_size"):
        jk.JumpParams(edge_size=-1)
    with pytest.raises(UserInputError, match="find_showers"):
        jk.JumpParams(find_showers=1)
    with pytest.raises(UserInputError, match="group_time"):
        jk.JumpParams(expand_large_events=True).snowball_settings(0.0)


def test_sigclip_stats_equal_astropy():
    """The shower search's sigma-clip branch (>= minimum_sigclip_groups integrations)."""
    from astropy.stats import sigma_clipped_stats

    rng = np.random.default_rng(3)
    d = rng.normal(0, 10, (101, 3, 6, 7)).astype(np.float32)
    d[rng.random(d.shape) < 0.02] = 500.0
    d[rng.random(d.shape) < 0.02] = np.nan
    d[:, 0, 0, 0] = np.nan
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, med, std = sigma_clipped_stats(d, sigma=5, axis=0)
        m2, s2 = le._sigclip_median_std(d)
    np.testing.assert_array_equal(np.asarray(med), m2)
    np.testing.assert_array_equal(np.asarray(std), s2)


def test_showers_sigclip_branch_bit_identical():
    exp, _ = miri_like(6, nints=100, ngroups=4, ny=40, nx=36, n_showers=1)
    p = jk.JumpParams(find_showers=True, extend_min_area=20)
    res, _ = ours(exp, p)
    gdq, _, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    assert res.n_showers == n


# ---------------------------------------------------------------------------------------------
# the dataflow stage: whole-plane tasks over jump tiles; results independent of the tiling

TILINGS = [(64, 130), (50, 40), (33, 97), (200, 200)]


def _dataflow(exp, params, tile, scheduler="sync"):
    import dask

    from stcal_dask.engine import dataflow
    from stcal_dask.engine.datamodel import ramp_from_exposure

    out = dataflow.detect_jumps(ramp_from_exposure(exp), params, tile=tile)
    return dask.compute(out["groupdq"].data, out["pixeldq"].data,
                        out[dataflow.JUMP_COUNT_VARIABLE].data,
                        out[dataflow.LARGE_EVENTS_VARIABLE].data, scheduler=scheduler)


@pytest.mark.parametrize("kind", ["nircam", "nirspec", "miri"])
def test_dataflow_bit_identical_for_every_tiling(kind):
    if kind == "nircam":
        exp, _ = nircam_like(0)
        p = jk.JumpParams(expand_large_events=True, snowball_time_masked_next_int=30.0)
    elif kind == "nirspec":
        exp, _ = nircam_like(3, nints=1, ngroups=30, ny=90, nx=100)
        p = jk.JumpParams(expand_large_events=True)
    else:
        exp, _ = miri_like(0)
        p = jk.JumpParams(find_showers=True)
    gdq, pdq, total, n = theirs(exp, p)
    assert n > 0
    for k, tile in enumerate(TILINGS):
        g, pd, c, ne = _dataflow(exp, p, tile, scheduler="threads" if k == 1 else "sync")
        np.testing.assert_array_equal(g, gdq)
        np.testing.assert_array_equal(pd, pdq)
        assert int(c) == total and int(ne) == n


def test_dataflow_options_off_has_no_large_event_tasks():
    from stcal_dask.engine import dataflow
    from stcal_dask.engine.datamodel import ramp_from_exposure

    exp, _ = nircam_like(0, nints=1, ngroups=5, ny=40, nx=40)
    out = dataflow.detect_jumps(ramp_from_exposure(exp), jk.JumpParams(), tile=(20, 20))
    assert dataflow.LARGE_EVENTS_VARIABLE not in out
    names = {k[0] if isinstance(k, tuple) else k for k in out["groupdq"].data.dask}
    assert not any("large-events" in str(n) or "snowball" in str(n) for n in names)


def _key_name(key) -> str:
    return str(key[0] if isinstance(key, tuple) else key)


def _inputs_wait_for(dsk, task_prefix, allowed, barrier):
    """Every task whose name starts with ``task_prefix`` has each input either named with one
    of the ``allowed`` prefixes or computed after a task named ``barrier...`` (an ancestor).
    Returns how many tasks were checked."""
    from dask.core import get_dependencies

    deps = {k: get_dependencies(dsk, k) for k in dsk}
    memo: dict = {}

    def after_barrier(key):
        if key not in memo:
            memo[key] = any(_key_name(d).startswith(barrier) or after_barrier(d)
                            for d in deps.get(key, ()))  # fmt: skip
        return memo[key]

    tasks_ = [k for k in dsk if _key_name(k).startswith(task_prefix)]
    for k in tasks_:
        for d in deps[k]:
            assert _key_name(d).startswith(allowed) or after_barrier(d), (k, d)
    return len(tasks_)


@pytest.mark.parametrize("kind", ["snowballs", "showers"])
def test_dataflow_inputs_are_read_again_after_the_large_event_barriers(kind):
    """The large-event stage waits for every jump tile, and the fit (and the shower ratio and
    flagging tasks) for the stage: the data, gain and read noise they need are read by tasks
    that run after that barrier, not shared with jump detection (which would keep every tile
    of them in memory across the stage)."""
    from stcal_dask.engine import dataflow
    from stcal_dask.engine.datamodel import ramp_from_exposure

    if kind == "snowballs":
        exp, _ = nircam_like(0, nints=1, ngroups=6, ny=60, nx=60)
        p = jk.JumpParams(expand_large_events=True)
    else:
        exp, _ = miri_like(0, nints=1, ngroups=12, ny=60, nx=60)
        p = jk.JumpParams(find_showers=True)
    jumped = dataflow.detect_jumps(ramp_from_exposure(exp), p, tile=(30, 30))
    rate = dataflow.fit_ramps(jumped).rate
    dsk = dict(rate["sci"].data.__dask_graph__())
    events = dataflow._LARGE_EVENTS_PREFIX
    assert _inputs_wait_for(dsk, "stcal-dask-fit-tile-", (events,), events) == 4
    if kind == "showers":
        jump = ("stcal-dask-jump-tile-",)
        assert _inputs_wait_for(dsk, "shower_ratio-", (*jump, "shower_globals-"),
                                "shower_globals-") == 4  # fmt: skip
        assert _inputs_wait_for(dsk, "shower_apply-", (*jump, "shower_planes-"),
                                "shower_planes-") == 4  # fmt: skip


def test_cli_run_with_snowballs_matches_stcal(tmp_path):
    """``stcal-dask run --jump.expand_large_events true`` (FITS in, FITS and zarr out): the
    jump products' GROUPDQ and PIXELDQ (FITS and zarr) equal stcal's detect_jumps_data with
    snowballs, and the rate its
    OLS fit of that GROUPDQ. The 40 x 48 frame lies within edge_size of an edge everywhere, so
    every JUMP region of >= 5 pixels is a snowball."""
    import xarray as xr
    from astropy.io import fits
    from oracle_ramp import run_stcal

    from stcal_dask.cli import main
    from stcal_dask.kernels.ramp_fit import RampFitParams, RampTiming

    ramp = tmp_path / "expo_ramp.fits"
    local = ["--scheduler", "threads", "--quiet"]
    assert main(["simulate", str(ramp), "--shape", "2x6x40x48", "--seed", "7", "--cr-rate",
                 "0.05", *local]) == 0
    gain, rnoise = tmp_path / "expo_gain.fits", tmp_path / "expo_readnoise.fits"
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", str(ramp), "--gain", str(gain), "--readnoise", str(rnoise),
                 "--output-dir", str(out), "--format", "both", "--save-jump", "--tile", "16x20",
                 "--jump.expand_large_events", "true", *local]) == 0
    with fits.open(ramp) as h:
        data = h["SCI"].data.astype(np.float32)
        gdq = h["GROUPDQ"].data.astype(np.uint8)
        pdq = h["PIXELDQ"].data.astype(np.uint32)
        hdr = h[0].header
    g = fits.getdata(gain, "SCI").astype(np.float32)
    rn = fits.getdata(rnoise, "SCI").astype(np.float32)
    p = jk.JumpParams(expand_large_events=True)
    jgdq, jpdq, _, n = run_stcal_jump(data, gdq, pdq, g, rn, params=p, nframes=hdr["NFRAMES"],
                                      group_time=hdr["TGROUP"], extended=True)
    assert n > 0
    two = jk.detect_jumps(data, gdq, pdq, g, rn, params=jk.JumpParams(),
                          nframes=hdr["NFRAMES"], group_time=hdr["TGROUP"])
    assert (jgdq != two.groupdq).any()
    np.testing.assert_array_equal(fits.getdata(out / "expo_jump.fits", "GROUPDQ"), jgdq)
    np.testing.assert_array_equal(fits.getdata(out / "expo_jump.fits", "PIXELDQ"), jpdq)
    zj = xr.open_zarr(out / "expo_jump.zarr", consolidated=False)
    np.testing.assert_array_equal(zj["groupdq"].values, jgdq)
    np.testing.assert_array_equal(zj["pixeldq"].values, jpdq)
    timing = RampTiming(hdr["TFRAME"], hdr["TGROUP"], hdr["NFRAMES"], hdr["GROUPGAP"],
                        hdr["DRPFRMS1"])
    image, _, _ = run_stcal(data, jgdq, jpdq, g, rn, params=RampFitParams(), timing=timing)
    rate_dq = fits.getdata(out / "expo_rate.fits", "DQ")
    np.testing.assert_array_equal(rate_dq, image["dq"])
    ours = fits.getdata(out / "expo_rate.fits", "SCI")
    ok = ~np.isnan(image["slope"])
    np.testing.assert_allclose(ours[ok], image["slope"][ok], rtol=1e-5)
    z = xr.open_zarr(out / "expo_rate.zarr")
    np.testing.assert_array_equal(z["dq"].values, image["dq"])


def test_cli_zarr_nircam_instrument_defaults_match_stcal(tmp_path):
    """A zarr ramp store whose ``INSTRUME`` attr is NIRCAM, run with ``--instrument-defaults``
    (snowball flagging on, as JWST's NIRCam jump parameters), zarr in and FITS + zarr out: GROUPDQ
    and PIXELDQ equal stcal's detect_jumps_data with snowballs and the rate (DQ bit for bit, SCI
    within 1e-5) its OLS fit of that GROUPDQ; without the option no snowball is flagged."""
    import xarray as xr
    import zarr
    from astropy.io import fits
    from oracle_ramp import run_stcal

    from stcal_dask.cli import main
    from stcal_dask.kernels.ramp_fit import RampFitParams, RampTiming

    store = tmp_path / "nrc.zarr"
    local = ["--scheduler", "threads", "--quiet"]
    assert main(["simulate", str(store), "--shape", "2x6x40x48", "--seed", "7", "--cr-rate",
                 "0.05", *local]) == 0
    zarr.open_group(str(store), mode="r+").attrs["INSTRUME"] = "NIRCAM"
    before = {f: f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()}
    outs = {}
    for name, extra in (("defaults", ["--instrument-defaults"]), ("plain", [])):
        out = outs[name] = tmp_path / name
        out.mkdir()
        assert main(["run", str(store), "--output-dir", str(out), "--format", "both",
                     "--save-jump", "--tile", "16x20", *extra, *local]) == 0
    assert {f: f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file()} == before
    ds = xr.open_zarr(store, consolidated=False)
    data, gdq = ds["sci"].values, ds["groupdq"].values
    pdq, g, rn = ds["pixeldq"].values, ds["gain"].values, ds["readnoise"].values
    a = ds.attrs
    jgdq, jpdq, _, n = run_stcal_jump(data, gdq, pdq, g, rn,
                                      params=jk.JumpParams(expand_large_events=True),
                                      nframes=a["NFRAMES"], group_time=a["TGROUP"],
                                      extended=True)
    assert n > 0
    out = outs["defaults"]
    for got in (fits.getdata(out / "nrc_jump.fits", "GROUPDQ"),
                xr.open_zarr(out / "nrc_jump.zarr", consolidated=False)["groupdq"].values):
        np.testing.assert_array_equal(got, jgdq)
    np.testing.assert_array_equal(fits.getdata(out / "nrc_jump.fits", "PIXELDQ"), jpdq)
    plain = fits.getdata(outs["plain"] / "nrc_jump.fits", "GROUPDQ")
    assert (plain != jgdq).any()  # the defaults did turn snowballs on
    timing = RampTiming(a["TFRAME"], a["TGROUP"], a["NFRAMES"], a["GROUPGAP"], a["DRPFRMS1"])
    image, _, _ = run_stcal(data, jgdq, jpdq, g, rn, params=RampFitParams(), timing=timing)
    ok = ~np.isnan(image["slope"])
    for sci, dq in ((fits.getdata(out / "nrc_rate.fits", "SCI"),
                     fits.getdata(out / "nrc_rate.fits", "DQ")),
                    (xr.open_zarr(out / "nrc_rate.zarr")["sci"].values,
                     xr.open_zarr(out / "nrc_rate.zarr")["dq"].values)):
        np.testing.assert_array_equal(dq, image["dq"])
        np.testing.assert_array_equal(np.isnan(sci), ~ok)
        np.testing.assert_allclose(sci[ok], image["slope"][ok], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# the shower search's fast paths against the step-by-step computations they replace


def _ratio_inputs(seed, nints=2, ngroups=9, ny=23, nx=19):
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 30, (nints, ngroups, ny, nx)).astype(np.float32).cumsum(axis=1)
    values = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 16], dtype=np.uint8)
    gdq = values[rng.integers(0, values.size, data.shape)]
    gdq[rng.random(data.shape) < 0.6] = 0
    gdq[:, :, 0, :] = dqflags.DO_NOT_USE  # a row with every group masked: median NaN
    pdq = np.zeros((ny, nx), np.uint32)
    pdq[:, :2] = dqflags.REFERENCE_PIXEL
    pdq[3, 3] = dqflags.NO_GAIN_VALUE | dqflags.DO_NOT_USE
    gain = rng.uniform(1.5, 6, (ny, nx)).astype(np.float32)
    rn = rng.uniform(5, 15, (ny, nx)).astype(np.float32)
    rn[5, 5] = 0.0  # with a zero median: 0 / 0
    data[:, :, 5, 5] = 7.0
    return data, gdq, pdq, gain, rn


@pytest.mark.parametrize("seed,nframes,ngroups", [(0, 1, 40), (1, 4, 9), (2, 1, 20), (3, 1, 33)])
def test_shower_ratio_compiled_equals_numpy(seed, nframes, ngroups):
    """Medians by a network across pixels (up to 64 differences) and by selection (78)."""
    data, gdq, pdq, gain, rn = _ratio_inputs(seed, ngroups=ngroups)
    st = le.ShowerSettings(nframes=nframes)
    fast = le.shower_ratio_tile(data, gdq, pdq, gain, rn, settings=st)
    ref = le._ratio_numpy(data, gdq, pdq, gain, rn, st)
    assert fast.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(fast, ref)  # NaN where NaN
    assert np.isnan(fast).any() and np.isfinite(fast).any()


def _fft_regions(plane, settings):
    """stcal's get_bigellipses step by step: FFT convolution, threshold, regions."""
    k = le.ring_kernel(settings.extend_inner_radius, settings.extend_outer_radius)
    with np.errstate(all="ignore"):
        emission = le._convolve_fast(plane, k) > settings.extend_snr_threshold
    return le.region_ellipses(emission, settings.extend_min_area)


def test_fft_error_bound_holds():
    """The FFT convolution's error stays far inside FFT_ERROR (the margin of the direct sums)."""
    from scipy import signal

    rng = np.random.default_rng(5)
    k = le.ring_kernel(1.0, 2.6)
    n = k.shape[0] // 2
    worst = 0.0
    for shape in [(64, 80), (300, 257), (1030, 1032)]:
        x = np.abs(rng.standard_cauchy(shape)).astype(np.float32)
        x[rng.random(shape) < 0.2] = np.nan
        z = np.where(np.isfinite(x), x, 0).astype(np.float64)
        fft = signal.oaconvolve(z, k, mode="same")  # the unnormalised sum stcal divides
        pad = np.pad(z, n)
        direct = sum(k[a, b] * pad[2 * n - a : 2 * n - a + shape[0],
                                   2 * n - b : 2 * n - b + shape[1]]
                     for a, b in zip(*np.nonzero(k), strict=True))  # fmt: skip
        worst = max(worst, float(np.abs(fft - direct).max() / np.sqrt((z * z).sum())))
    assert 0 < worst < le.FFT_ERROR / 100


@pytest.mark.parametrize("case", ["noise", "flat", "patch"])
def test_shower_plane_equals_fft_convolution(case):
    """The direct ring sums decide as stcal's FFT convolution does, including pixels exactly
    on the threshold (a flat plane at the threshold: settled by the FFT; an isolated patch:
    too small to matter)."""
    rng = np.random.default_rng(11)
    if case == "noise":
        st = le.ShowerSettings(extend_min_area=20)
        plane = np.abs(rng.normal(0, 1.1, (200, 230))).astype(np.float32)
        plane[60:110, 80:150] += 0.9  # a shower
        plane[rng.random(plane.shape) < 0.05] = np.nan
        plane[:, :4] = np.nan
    elif case == "flat":
        st = le.ShowerSettings(extend_snr_threshold=1.5, extend_min_area=20)
        plane = np.full((90, 70), 1.5, np.float32)
        plane[20:30, 20:30] = np.nan
    else:
        # the centre of a 3 x 3 patch of 4.5 sees 8 of its 36 ring pixels at 4.5: exactly 1.0
        st = le.ShowerSettings(extend_snr_threshold=1.0, extend_min_area=5)
        plane = np.zeros((60, 50), np.float32)
        plane[30:33, 20:23] = 4.5
    from stcal_dask.kernels import _shower_numba as snb

    k = le.ring_kernel(st.extend_inner_radius, st.extend_outer_radius)
    _, undecided = snb.ring_states(plane, *le._kernel_runs(k), st.extend_snr_threshold,
                                   1e-3 * np.mean(k), le.FFT_ERROR)
    if case != "noise":
        assert undecided.size
    got = le.shower_plane(plane, settings=st)
    assert got == _fft_regions(plane, st)
    if case == "noise":
        assert got


def _revert_whole_cube(data, gain, gdq_in, gdq, amplitude):
    e = data * gain
    bad = dqflags.DO_NOT_USE | dqflags.SATURATED | dqflags.JUMP_DET
    out = gdq.copy()
    import warnings

    for i in range(gdq.shape[0]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = e[i].copy()
            t[(gdq_in[i] & bad) != 0] = np.nan
            before = np.nanmean(np.diff(t, axis=0), axis=0)
            t = e[i].copy()
            t[(gdq[i] & bad) != 0] = np.nan
            after = np.nanmean(np.diff(t, axis=0), axis=0)
            d = np.abs(before - after)
        rev = ~np.isfinite(d) | (d > amplitude)
        out[i][:, rev] = gdq_in[i][:, rev]
    return out


@pytest.mark.parametrize("n_changed", [0, 1, 2, 300])
def test_shower_revert_equals_whole_cube(n_changed):
    """max_flux_showers evaluated on the changed pixels only, with 40 groups (numpy would sum
    a single column pairwise: a copy keeps it plane by plane)."""
    rng = np.random.default_rng(n_changed)
    nints, ngroups, ny, nx = 2, 40, 30, 25
    data = rng.normal(10, 3, (nints, ngroups, ny, nx)).astype(np.float32).cumsum(axis=1)
    gain = rng.uniform(1, 6, (ny, nx)).astype(np.float32)
    gdq_in = np.where(rng.random(data.shape) < 0.05, np.uint8(4), np.uint8(0))
    gdq = gdq_in.copy()
    flat = rng.choice(ny * nx, n_changed, replace=False)
    for f in flat:
        y, x = divmod(int(f), nx)
        g = int(rng.integers(1, ngroups - 6))
        gdq[1, g : g + int(rng.integers(1, 6)), y, x] |= dqflags.JUMP_DET
    if n_changed > 2:
        gdq[0, :, 0, 0] = dqflags.DO_NOT_USE  # the rate becomes NaN
    st = le.ShowerSettings(max_shower_amplitude=0.05)
    want = _revert_whole_cube(data, gain, gdq_in, gdq, st.max_shower_amplitude)
    got = le._revert_showers(data, gain, gdq_in, gdq.copy(), st)
    np.testing.assert_array_equal(got, want)
    if n_changed > 2:
        assert (got != gdq_in).any() and (got != gdq).any()


@pytest.mark.parametrize("density", [0.0, 0.002, 0.05, 0.4, 0.7])
def test_sparse_components_equal_label(density):
    """Regions of a set of pixels: the same pixels, numbering and boxes as an 8-connected
    scipy.ndimage.label (skimage.measure.label's 2-D connectivity) of the whole plane."""
    from scipy import ndimage

    rng = np.random.default_rng(int(density * 1000))
    mask = rng.random((97, 131)) < density
    mask[0, :] |= density > 0.01  # regions along the edges and wrapping rows
    mask[:, -1] |= density > 0.01
    lin = np.flatnonzero(mask)
    comp, bbox = le._components(lin, mask.shape)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    np.testing.assert_array_equal(comp, lab.ravel()[lin] - 1)
    assert bbox.shape[0] == n
    for k, sl in enumerate(ndimage.find_objects(lab)):
        assert tuple(bbox[k]) == (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)


def test_shower_amplitude_is_the_jwst_steps():
    """The JWST jump step sets stcal's revert amplitude to JumpData's default (6) times the group
    time and never passes its max_shower_amplitude parameter: neither do we (the oracle is set
    up as the step does it, so the shower tests above compare that). The value matters: 4 DN/s
    times the group time would keep thousands more flags on this exposure."""
    from stcal.jump.jump_class import JumpData

    assert JumpData().max_shower_amplitude == jk.STCAL_SHOWER_AMPLITUDE
    exp, _ = miri_like(0)
    tg = exp.config.group_time
    for amp in (4.0, 0.5, 100.0):
        st = jk.JumpParams(find_showers=True, max_shower_amplitude=amp).shower_settings(tg, 1)
        assert st.max_shower_amplitude == jk.STCAL_SHOWER_AMPLITUDE * tg
    p = jk.JumpParams(find_showers=True, max_shower_amplitude=0.5)
    res, twopt = ours(exp, p)
    gdq, _, _, n = theirs(exp, p)
    np.testing.assert_array_equal(res.groupdq, gdq)
    other = le.flag_large_events(
        exp.data, twopt.groupdq, twopt.pixeldq, exp.gain, exp.readnoise, snowballs=None,
        showers=p.shower_settings(tg, 1)._replace(max_shower_amplitude=4.0 * tg))
    assert (other.groupdq != res.groupdq).sum() > 100


def test_points_inside_ellipse_equals_the_scalar_test(monkeypatch):
    """The vectorised inside test equals stcal's scalar arithmetic (``**``, libm pow) for
    every point: random ellipses (also zero and negative axes) and points, many on or within
    an ulp of the boundary (on-axis points of half-integer axes), where squaring by
    multiplication could differ."""
    rng = np.random.default_rng(5)
    checked = 0
    scalar = le.point_inside_ellipse
    redone = []
    monkeypatch.setattr(le, "point_inside_ellipse",
                        lambda *a: redone.append(1) or scalar(*a))  # fmt: skip
    for _ in range(300):
        h = float(rng.choice([-1.0, 0.0, rng.uniform(0, 30), float(rng.integers(1, 40))]))
        w = float(rng.choice([0.0, rng.uniform(0, 60), float(rng.integers(1, 60))]))
        angle = float(rng.choice([0.0, 90.0, -45.0, rng.uniform(-90, 90)]))
        e = le.Ellipse(float(rng.uniform(0, 100)), float(rng.uniform(0, 100)), h, w,
                       np.degrees(np.radians(angle)))
        px = e.x + rng.uniform(-40, 40, 200)
        py = e.y + rng.uniform(-40, 40, 200)
        # points on the ellipse's axes at the semi-axis lengths, and an ulp either side
        t = np.radians(180 - e.angle)
        for r, (cx, cy) in ((max(h, w) / 2, (np.cos(t), -np.sin(t))),
                            (min(h, w) / 2, (np.sin(t), np.cos(t)))):
            for f in (1.0, 1.0 + 2e-16, 1.0 - 2e-16):
                px = np.append(px, e.x + r * f * cx)
                py = np.append(py, e.y + r * f * cy)
        got = le.points_inside_ellipse(px, py, e)
        want = np.array([scalar(a, b, e) for a, b in zip(px, py, strict=True)])
        np.testing.assert_array_equal(got, want)
        checked += int(want.sum())
    assert checked > 1000
    assert 50 < len(redone) < 5000  # the boundary points went to the scalar test
    assert le.points_inside_ellipse(np.zeros(0), np.zeros(0), e).shape == (0,)
