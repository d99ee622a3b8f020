"""Oracle tests: our OLS ramp-fitting kernel against stcal 1.20.0 (OLS_C, one process).

DQ must be bit-identical; slope, var_poisson, var_rnoise, err (and every fitopt array) within
1e-5 relative, with NaN exactly where stcal has NaN. See ``oracle_ramp.py`` for how stcal is fed.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from oracle_ramp import assert_matches_stcal, run_stcal

from stcal_dask import dqflags
from stcal_dask.kernels.ramp_fit import (
    RampFitParams,
    RampTiming,
    all_group0_saturated,
    fit_ramps_tile,
    fitopt_dims,
)
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

pytestmark = pytest.mark.oracle

DNU = dqflags.DO_NOT_USE
SAT = dqflags.SATURATED
JUMP = dqflags.JUMP_DET
PERS = dqflags.PERSISTENCE
CHLOSS = dqflags.CHARGELOSS


def timing_of(cfg: SimulationConfig) -> RampTiming:
    return RampTiming(cfg.frame_time, cfg.group_time, cfg.nframes, cfg.groupgap, cfg.drop_frames1)


def compare(data, gdq, pdq, gain, rn, *, params, timing, zeroframe=None, dark=None):
    """Fit with both implementations and compare everything; returns our result."""
    kw = {"zeroframe": zeroframe, "average_dark_current": dark}
    ours = fit_ramps_tile(data, gdq, pdq, gain, rn, params=params, timing=timing, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = run_stcal(data, gdq, pdq, gain, rn, params=params, timing=timing, **kw)
    assert_matches_stcal(ours, ref)
    if params.save_opt:
        dims = fitopt_dims(gdq, params=params, zeroframe=zeroframe)
        assert (dims.n_segments, dims.n_crmag) == (
            ref[2]["slope"].shape[1],
            ref[2]["crmag"].shape[1],
        )
    return ours


def add_special_pixels(ex, rng):
    """Overwrite a few pixels of a simulated exposure with the special cases of stcal's OLS_C
    fitter: all saturated or DO_NOT_USE ramps, saturation from group 2 or 3, a saturated group 0
    only, 1-group segments next to longer ones, only 1-group segments, PERSISTENCE, CHARGELOSS,
    DROPOUT; bad gains and pixel DQ; negative ramps."""
    data = ex.data.copy()
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * np.uint8(JUMP))
    pdq = ex.pixeldq.copy()
    gain = ex.gain.copy()
    nints, ngroups = data.shape[:2]
    cases = []
    # (integration selector, dq pattern over groups) on pixels of row 0
    cases.append((slice(None), [SAT] * ngroups))  # all saturated
    cases.append((slice(None), [DNU] * ngroups))  # all DO_NOT_USE
    cases.append((0, [DNU] * ngroups))  # one integration all DNU
    cases.append((slice(None), [0] + [SAT] * (ngroups - 1)))  # saturated from group 2
    cases.append((0, [0, 0] + [SAT] * (ngroups - 2)))  # saturated from group 3
    cases.append((slice(None), [SAT] + [0] * (ngroups - 1)))  # group 0 saturated only
    if ngroups >= 4:
        cases.append((slice(None), [0, JUMP, JUMP] + [0] * (ngroups - 3)))  # 1-group + longer
        cases.append((slice(None), [0, DNU, 0, DNU] + [DNU] * (ngroups - 4)))  # only 1-group segs
        cases.append((slice(None), [0, PERS, PERS | JUMP] + [0] * (ngroups - 3)))
        cases.append((slice(None), [0, 0, 0, CHLOSS | DNU] + [CHLOSS | DNU] * (ngroups - 4)))
        cases.append((slice(None), [0, 0, JUMP, CHLOSS] + [0] * (ngroups - 4)))
        cases.append((slice(None), [JUMP | DNU, 0, 0, JUMP | SAT] + [SAT] * (ngroups - 4)))
        cases.append((slice(None), [8] * ngroups))  # every group DROPOUT: slope 0, no DNU
    for x, (ints, pattern) in enumerate(cases):
        if x >= data.shape[3]:
            break
        gdq[ints, :, 0, x] = np.array(pattern, np.uint8)[:ngroups]
    # bad gains and pixel DQ on row 1
    ny, nx = gain.shape
    if ny > 1 and nx > 4:
        gain[1, 0], gain[1, 1], gain[1, 2] = 0.0, -1.0, np.nan
        pdq[1, 3] = DNU
        pdq[1, 4] = dqflags.REFERENCE_PIXEL
    # negative ramps on row 2
    if ny > 2:
        g = np.arange(ngroups, dtype=np.float32)[None, :, None]
        data[:, :, 2, :] = (1000.0 - 3.0 * g * rng.uniform(0.5, 2.0, size=(1, 1, nx))).astype(
            np.float32
        )
    return data, gdq, pdq, gain


SIM_CASES = [
    # nints, ngroups, extra config, params
    (1, 10, {}, {"save_opt": True}),
    (2, 20, {}, {"save_opt": True}),
    (3, 5, {"zeroframe": True}, {"save_opt": True, "suppress_one_group": False}),
    (3, 5, {"zeroframe": True}, {"save_opt": True, "suppress_one_group": True}),
    (2, 1, {"zeroframe": True}, {"save_opt": True}),
    (3, 1, {}, {"suppress_one_group": False}),
    (1, 2, {}, {"save_opt": True, "suppress_one_group": False}),
    (2, 2, {"zeroframe": True}, {"save_opt": True}),
    (1, 3, {"nframes": 4, "groupgap": 1, "drop_frames1": 1}, {"save_opt": True}),
    (2, 30, {"do_not_use_fraction": 0.03, "nan_fraction": 0.002}, {"save_opt": True}),
    (3, 12, {"nframes": 2, "groupgap": 3, "cr_rate": 0.1}, {}),
]


@pytest.mark.parametrize("nints,ngroups,extra,pkw", SIM_CASES)
@pytest.mark.parametrize("with_dark", [False, True])
def test_simulated_exposures(nints, ngroups, extra, pkw, with_dark):
    cfg = SimulationConfig(
        **{"nints": nints, "ngroups": ngroups, "ny": 24, "nx": 32, "cr_rate": 0.04, **extra},
        seed=100 + 7 * nints + ngroups,
    )
    ex = simulate_exposure(cfg)
    rng = np.random.default_rng(cfg.seed)
    data, gdq, pdq, gain = add_special_pixels(ex, rng)
    # hand-placed JUMP flags (without a step) besides the generator's flagged cosmic rays
    hand = rng.random(gdq.shape) < 0.02
    gdq = gdq | (hand.astype(np.uint8) * np.uint8(JUMP))
    dark = None
    if with_dark:
        dark = rng.uniform(0.0, 0.5, size=gain.shape).astype(np.float32)
    compare(
        data,
        gdq,
        pdq,
        gain,
        ex.readnoise,
        params=RampFitParams(**pkw),
        timing=timing_of(cfg),
        zeroframe=ex.zeroframe,
        dark=dark,
    )


def test_unflagged_cosmic_rays_and_flux_range():
    """Bright sources (early saturation), unflagged steps, default parameters."""
    cfg = SimulationConfig(
        nints=2, ngroups=8, ny=40, nx=40, seed=3, source_density=0.05, cr_rate=0.05
    )
    ex = simulate_exposure(cfg)
    compare(
        ex.data,
        ex.groupdq,
        ex.pixeldq,
        ex.gain,
        ex.readnoise,
        params=RampFitParams(),
        timing=timing_of(cfg),
    )


def test_all_saturated_exposure():
    """stcal returns (None, None, None); we flag it with all_group0_saturated."""
    cfg = SimulationConfig(nints=2, ngroups=4, ny=6, nx=7, seed=1)
    ex = simulate_exposure(cfg)
    gdq = np.full(ex.groupdq.shape, SAT, np.uint8)
    params = RampFitParams(save_opt=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = run_stcal(
            ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=params, timing=timing_of(cfg)
        )
    assert ref[0] is None and ref[1] is None and ref[2] is None
    assert all_group0_saturated(gdq)
    ours = fit_ramps_tile(
        ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=params, timing=timing_of(cfg)
    )
    assert np.all(np.isnan(ours.rate.sci)) and np.all(ours.rate.dq & (DNU | SAT) == DNU | SAT)


def _random_case(rng):
    nints = int(rng.integers(1, 4))
    ng = int(rng.integers(1, 13))
    ny, nx = 3, 4
    rate = rng.choice([-3.0, 0.0, 0.5, 5.0, 200.0, 3000.0], size=(ny, nx))
    tg = float(rng.choice([1.0, 10.73677, 2.77504]))
    nf = int(rng.integers(1, 5))
    gg = int(rng.integers(0, 3))
    timing = RampTiming(tg / (nf + gg), tg, nf, gg, int(rng.integers(0, 2)))
    g = np.arange(ng)[None, :, None, None]
    data = (
        rng.normal(1000, 50, (nints, 1, ny, nx))
        + rate * tg * (g + 1)
        + rng.normal(0, 5, (nints, ng, ny, nx))
    ).astype(np.float32)
    bits = np.array([0, 0, 0, 0, 0, 0, 1, 2, 4, 32, 128, 129, 8, 16, 36, 5, 6, 3], np.uint8)
    gdq = rng.choice(bits, size=(nints, ng, ny, nx)).astype(np.uint8)
    if rng.random() < 0.5:
        gdq = np.where(rng.random(gdq.shape) < 0.6, 0, gdq).astype(np.uint8)
    sat_from = rng.integers(0, ng + 3, size=(nints, 1, ny, nx))
    gdq[np.broadcast_to(g >= sat_from, gdq.shape)] |= SAT
    pdq = rng.choice(np.array([0, 0, 0, 0, 1, 2**31, 4], np.uint32), size=(ny, nx))
    gain = rng.choice(
        np.array([2.0, 5.5, 0.97, 0.0, -1.0, np.nan], np.float32),
        p=[0.3, 0.3, 0.25, 0.05, 0.05, 0.05],
        size=(ny, nx),
    )
    rn = rng.choice(
        np.array([10.0, 1.0, 1e5, 0.7], np.float32), p=[0.5, 0.3, 0.1, 0.1], size=(ny, nx)
    )
    if rng.random() < 0.2:
        data[rng.random(data.shape) < 0.05] = np.nan
    dark = None if rng.random() < 0.5 else np.full((ny, nx), 0.3, np.float32)
    zf = None
    if rng.random() < 0.4:
        zf = rng.choice(np.array([0.0, 500.0, 1200.0], np.float32), size=(nints, ny, nx))
    params = RampFitParams(
        save_opt=bool(rng.random() < 0.6), suppress_one_group=bool(rng.random() < 0.5)
    )
    return data, gdq, pdq, gain, rn, params, timing, zf, dark


@pytest.mark.parametrize("seed", range(4))
def test_random_flags_fuzz(seed):
    """Random DQ bits (DNU, SAT, JUMP, PERSISTENCE, CHARGELOSS, DROPOUT, OUTLIER, combinations),
    bad gains, huge read noise, NaN data, zero frames, dark current, negative/zero/bright ramps."""
    rng = np.random.default_rng(seed)
    done = 0
    for _ in range(150):
        data, gdq, pdq, gain, rn, params, timing, zf, dark = _random_case(rng)
        if np.all(gdq[:, 0] & SAT):
            continue  # stcal's all-saturated early exit (tested separately)
        compare(data, gdq, pdq, gain, rn, params=params, timing=timing, zeroframe=zf, dark=dark)
        done += 1
    assert done > 100


def test_chargeloss_without_recompute():
    """``chargeloss_rnoise=False`` is stcal's ramp_fit_data without ``orig_gdq``."""
    cfg = SimulationConfig(nints=2, ngroups=10, ny=10, nx=12, seed=8, cr_rate=0.05)
    ex = simulate_exposure(cfg)
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * np.uint8(JUMP))
    gdq[:, 6:, ::2, ::3] |= CHLOSS | DNU
    gdq[1, 4, 1::2, :] |= CHLOSS
    for flag in (True, False):
        params = RampFitParams(save_opt=True, chargeloss_rnoise=flag)
        compare(
            ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=params, timing=timing_of(cfg)
        )


def test_readnoise_and_groupdq_untouched_by_us_but_not_by_stcal():
    """Documents why the harness copies: stcal scales readnoise in place; we never modify it."""
    cfg = SimulationConfig(nints=1, ngroups=5, ny=4, nx=5, seed=2)
    ex = simulate_exposure(cfg)
    rn = ex.readnoise.copy()
    params = RampFitParams()
    fit_ramps_tile(
        ex.data, ex.groupdq, ex.pixeldq, ex.gain, rn, params=params, timing=timing_of(cfg)
    )
    np.testing.assert_array_equal(rn, ex.readnoise)
    from oracle_ramp import stcal_dqflags
    from stcal.ramp_fitting import ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    rd = RampData()
    rd.set_arrays(ex.data.copy(), ex.groupdq.copy(), ex.pixeldq.copy(), np.zeros_like(ex.gain))
    rd.set_meta("NIRCAM", cfg.frame_time, cfg.group_time, 0, 1, 0)
    rd.set_dqflags(stcal_dqflags())
    rn_stcal = ex.readnoise.copy()
    ramp_fit.ramp_fit_data(rd, False, rn_stcal, ex.gain.copy(), "OLS_C", "optimal", "none")
    assert not np.array_equal(rn_stcal, ex.readnoise)


def test_combined_weighting_shares_variances_with_stcal():
    """The 1.7-era slope weighting changes slopes only; DQ and variances still match 1.20.0."""
    cfg = SimulationConfig(nints=2, ngroups=6, ny=12, nx=12, seed=4, cr_rate=0.08)
    ex = simulate_exposure(cfg)
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * np.uint8(JUMP))
    params = RampFitParams(save_opt=True)
    ours = fit_ramps_tile(
        ex.data,
        gdq,
        ex.pixeldq,
        ex.gain,
        ex.readnoise,
        params=dataclasses.replace(params, slope_weighting="combined"),
        timing=timing_of(cfg),
    )
    image, integ, _ = run_stcal(
        ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=params, timing=timing_of(cfg)
    )
    for f in ("dq", "var_poisson", "var_rnoise", "err"):
        np.testing.assert_array_equal(getattr(ours.rate, f), image[f])
        np.testing.assert_array_equal(getattr(ours.rateints, f), integ[f])
    np.testing.assert_array_equal(np.isnan(ours.rate.sci), np.isnan(image["slope"]))


def test_long_integration_over_256_groups():
    """More than 256 groups (stcal once had a uint8 counter bug there); DNU first/last group."""
    cfg = SimulationConfig(
        nints=1, ngroups=321, ny=4, nx=6, seed=5, frame_time=3.0, cr_rate=0.01, saturation_dn=1e9
    )
    ex = simulate_exposure(cfg)
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * np.uint8(JUMP))
    gdq[0, 0] |= DNU
    gdq[0, -1] |= DNU
    compare(
        ex.data,
        gdq,
        ex.pixeldq,
        ex.gain,
        ex.readnoise,
        params=RampFitParams(save_opt=True),
        timing=RampTiming(3.0, 3.0, 1),
    )


@pytest.mark.parametrize("nints, ngroups", [(1, 2), (2, 3), (1, 10), (3, 6), (1, 33)])
def test_mostly_flag_free_tiles(nints, ngroups):
    """Tiles where most pixels carry no flag (fitted a row at a time) among NaN/inf samples,
    bad gains, pixel DQ bits, flagged groups and dark current. (The "combined" weighting is
    the stcal 1.7-1.18 rule, whose slopes differ from 1.20.0's by design; it is checked
    against the pixel-by-pixel code in the kernel tests.)"""
    from test_ramp_fit_kernel import _mixed_clean_tile

    data, gdq, pdq, gain, rn, dark = _mixed_clean_tile(nints, ngroups, seed=7 * ngroups + nints)
    compare(data, gdq, pdq, gain, rn, params=RampFitParams(), timing=RampTiming(10.6, 21.2, 2),
            dark=dark)
