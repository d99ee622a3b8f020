"""Behaviour tests of the OLS ramp-fitting kernel (stcal 1.20.0 rules), without stcal.

The cases follow the scenarios of stcal 1.20.0's own OLS ramp-fitting tests (their setups and
expected numbers, restated); the tests are written here from those behaviours. Plus:
immutability, parameter validation, tiling invariance.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError
from stcal_dask.kernels.ramp_fit import (
    FitoptDims,
    RampFitParams,
    RampFitResult,
    RampTiming,
    all_group0_saturated,
    fit_ramps_tile,
    fitopt_dims,
)
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

G = 0
DNU = dqflags.DO_NOT_USE
SAT = dqflags.SATURATED
JUMP = dqflags.JUMP_DET
PERS = dqflags.PERSISTENCE
CHLOSS = dqflags.CHARGELOSS
NGV = dqflags.NO_GAIN_VALUE


def fit(data, gdq, *, gain, rn, timing, pdq=None, params=None, **kw):
    """Fit ramps given as (nints, ngroups, npix) arrays laid out on a 1-row tile."""
    data = np.asarray(data, dtype=np.float32)
    gdq = np.asarray(gdq, dtype=np.uint8)
    if data.ndim == 1:
        data = data[None, :, None]
    if gdq.ndim == 1:
        gdq = gdq[None, :, None]
    data = data[:, :, None, :]
    gdq = np.broadcast_to(gdq[:, :, None, :], data.shape)
    npix = data.shape[-1]
    img = (1, npix)
    pdq = np.zeros(img, np.uint32) if pdq is None else np.asarray(pdq, np.uint32).reshape(img)
    gain = np.broadcast_to(np.float32(gain), img)
    rn = np.broadcast_to(np.float32(rn), img)
    params = params or RampFitParams(suppress_one_group=False)
    return fit_ramps_tile(data, gdq, pdq, gain, rn, params=params, timing=timing, **kw)


def prim(prod, pix=0):
    """[slope, dq, err, var_poisson, var_rnoise] of a rate product at a pixel of the 1-row tile."""
    return [
        prod.sci[..., 0, pix],
        prod.dq[..., 0, pix],
        prod.err[..., 0, pix],
        prod.var_poisson[..., 0, pix],
        prod.var_rnoise[..., 0, pix],
    ]


def assert_prim(prod, expected, pix=0):
    slope, dq, err, vp, vr = prim(prod, pix)
    exp_slope, exp_dq, exp_err, exp_vp, exp_vr = expected
    np.testing.assert_allclose(slope, exp_slope, rtol=2e-5, atol=2e-5)
    assert int(dq) == exp_dq
    np.testing.assert_allclose(err, exp_err, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(vp, exp_vp, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(vr, exp_vr, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------------
# single-pixel cases (stcal test_ramp_fitting_cases.py): 10 groups, tf = tg = 10 s, nframes 1,
# gain 5.5, read noise 10.34, save_opt.

BASE = np.array([15, 25, 35, 54, 55, 65, 75, 94, 95, 105], dtype=np.float32)
CASE_TIMING = RampTiming(10.0, 10.0, 1, 0, 0)
CASE_PARAMS = RampFitParams(suppress_one_group=False, save_opt=True)


def fit_case(dq, data=BASE):
    return fit(data, np.array(dq), gain=5.5, rn=10.34, timing=CASE_TIMING, params=CASE_PARAMS)


def opt_at(res, seg=0):
    o = res.fitopt
    return [
        o.slope[0, seg, 0, 0],
        o.sigslope[0, seg, 0, 0],
        o.var_poisson[0, seg, 0, 0],
        o.var_rnoise[0, seg, 0, 0],
        o.yint[0, seg, 0, 0],
        o.sigyint[0, seg, 0, 0],
        o.pedestal[0, 0, 0],
        o.weights[0, seg, 0, 0],
    ]


def assert_opt(res, expected, seg=0):
    got = opt_at(res, seg)
    for k, (g, e) in enumerate(zip(got, expected, strict=True)):
        atol = 2e-2 if k == 4 else 2e-5
        rtol = 3e-5 if k == 6 else 2e-5
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"fitopt item {k}")


def test_case_all_good():
    res = fit_case([G] * 10)
    assert_prim(res.rate, [1.0117551, 0, 0.0921951, 0.0020202, 0.00647973])
    assert_opt(
        res,
        [1.0117551, 4.874572, 0.0020202, 0.00647973, 15.911023, 27.789335, 13.988245, 154.32735],
    )
    assert res.fitopt.slope.shape == (1, 1, 1, 1)


def test_case_length1_segment_dropped_beside_longer():
    res = fit_case([G, JUMP, JUMP, G] + [SAT] * 6)
    assert_prim(res.rate, [1.9, JUMP | SAT, 1.05057204, 0.03454545, 1.0691562])
    assert_opt(res, [1.9, 56.870003, 0.03454545, 1.0691562, -3.0, 56.870003, 13.1, 0.9353173])


def test_case_three_segments():
    res = fit_case([G, G, G, JUMP, G, JUMP, G, JUMP, SAT, SAT])
    assert_prim(res.rate, [0.85, JUMP | SAT, 0.42747884, 0.00454545, 0.1781927])
    slopes = res.fitopt.slope[0, :, 0, 0]
    np.testing.assert_allclose(slopes, [1.0000001, 0.1, 1.0], rtol=2e-5)
    np.testing.assert_allclose(res.fitopt.sigyint[0, :, 0, 0], [36.709427, 56.87, 56.87], rtol=2e-5)
    np.testing.assert_allclose(res.fitopt.yint[0, :, 0, 0], [15, 51, 15], atol=2e-2)
    np.testing.assert_allclose(
        res.fitopt.weights[0, :, 0, 0], [3.741269, 0.935317, 0.935317], rtol=2e-5
    )
    np.testing.assert_allclose(res.fitopt.pedestal[0, 0, 0], 14.15, rtol=3e-5)


def test_case_jump_near_end():
    res = fit_case([G] * 8 + [JUMP, G])
    assert_prim(res.rate, [1.07484829, JUMP, 0.12186482, 0.00227273, 0.01257831])
    np.testing.assert_allclose(res.fitopt.slope[0, :, 0, 0], [1.0757396, 1.0], rtol=2e-5)
    np.testing.assert_allclose(res.fitopt.weights[0, :, 0, 0], [78.56665, 0.935317], rtol=2e-5)


def test_case_only_group0_good_uses_one_group_time():
    res = fit_case([G] + [SAT] * 9)
    assert_prim(res.rate, [1.5, SAT, 1.047105, 0.02727273, 1.0691562])
    assert_opt(res, [1.5, 0, 0.02727273, 1.0691562, 0, 0, 13.5, 0.935317])


def test_case_jump_with_step():
    data = BASE.copy()
    data[4:] += 2000
    dq = [G] * 10
    dq[4] = JUMP
    res = fit_case(dq, data)
    assert_prim(res.rate, [1.073401, JUMP, 0.16134359, 0.00227273, 0.02375903])
    np.testing.assert_allclose(res.fitopt.slope[0, :, 0, 0], [1.2799551, 1.0144024], rtol=2e-5)
    np.testing.assert_allclose(res.fitopt.yint[0, :, 0, 0], [13.537246, 2015.0737], atol=2e-2)
    np.testing.assert_allclose(res.fitopt.crmag[0, :, 0, 0], [data[4] - data[3]], rtol=1e-6)


def test_case_jumps_on_last_two_groups():
    res = fit_case([G] * 8 + [JUMP, JUMP])
    assert_prim(res.rate, [1.0757396, JUMP, 0.12379601, 0.0025974, 0.01272805])
    assert_opt(
        res, [1.0757396, 6.450687, 0.0025974, 0.01272805, 14.504951, 27.842508, 13.92426, 78.56665]
    )


def test_case_leading_length1_dropped():
    res = fit_case([G, JUMP, G, G, G, G, G, SAT, SAT, SAT])
    assert_prim(res.rate, [0.98561335, JUMP | SAT, 0.1848883, 0.00363636, 0.03054732])
    assert_opt(
        res,
        [0.98561335, 9.920554, 0.00363636, 0.03054732, 16.508228, 39.383667, 14.014386, 32.736103],
    )


def test_case_consecutive_jumps():
    res = fit_case([G, G, JUMP, JUMP, G, G, G, G, JUMP, G])
    assert_prim(res.rate, [0.9999994, JUMP, 0.22721863, 0.0030303, 0.048598])
    np.testing.assert_allclose(
        res.fitopt.weights[0, :, 0, 0], [0.935317, 18.706345, 0.935317], rtol=2e-5
    )


def test_case_two_jumps_three_segments():
    res = fit_case([G, G, JUMP, G, G, JUMP, G, G, G, G])
    assert_prim(res.rate, [1.0, JUMP, 0.21298744, 0.0025974, 0.04276625])
    np.testing.assert_allclose(
        res.fitopt.var_rnoise[0, :, 0, 0], [1.0691562, 0.26728904, 0.05345781], rtol=2e-5
    )


def test_case_saturated_after_two_groups():
    res = fit_case([G, G] + [SAT] * 8)
    assert_prim(res.rate, [1.0, SAT, 1.042755, 0.01818182, 1.0691562])
    assert_opt(res, [1.0, 56.870003, 0.01818182, 1.0691562, 15.0, 56.870003, 14.0, 0.935317])


def test_case_two_groups():
    data = np.array([[15, 15], [59025, 59025]], dtype=np.float32)  # (ngroups, npix)
    dq = np.array([[G, SAT], [SAT, SAT]])
    res = fit(data[None], dq[None], gain=5.5, rn=10.34, timing=CASE_TIMING, params=CASE_PARAMS)
    assert_prim(res.rate, [1.5, SAT, 1.047105, 0.027273, 1.069156], pix=0)
    slope, dq1, err, vp, vr = prim(res.rate, 1)
    assert np.isnan(slope) and dq1 == DNU | SAT and err == vp == vr == 0
    assert np.all(res.fitopt.slope[..., 1] == 0)


# ------------------------------------------------------------------------------------------------
# stcal test_ramp_fitting.py scenarios


def negative_ramp(nints=1, ngroups=10):
    g = np.arange(ngroups, dtype=np.float32)
    data = np.stack([-0.5 * (g + 1) * (k + 1) for k in range(nints)])
    return data[:, :, None]


def test_negative_median_rate_single_integration():
    timing = RampTiming(1.0, 1.0, 1)
    params = RampFitParams(suppress_one_group=False, save_opt=True)
    res = fit(
        negative_ramp(), np.zeros((1, 10, 1)), gain=1.0, rn=10.0, timing=timing, params=params
    )
    slope, _, err, vp, vr = prim(res.rate)
    assert slope < 0 and vp == 0 and vr != 0 and err == np.sqrt(vr)
    for a, b in zip(prim(res.rateints), prim(res.rate), strict=True):
        np.testing.assert_allclose(a[0], b, rtol=1e-6)
    assert res.fitopt.slope.shape[1] == 1
    np.testing.assert_allclose(res.fitopt.var_poisson[0, 0, 0, 0], vp)


def test_negative_median_rate_multi_integration():
    timing = RampTiming(1.0, 1.0, 1)
    params = RampFitParams(suppress_one_group=False, save_opt=True)
    res = fit(
        negative_ramp(3), np.zeros((3, 10, 1)), gain=1.0, rn=10.0, timing=timing, params=params
    )
    slope, _, err, vp, vr = prim(res.rate)
    assert slope < 0 and vp == 0 and vr != 0
    np.testing.assert_allclose(err, np.sqrt(vr), rtol=1e-7)
    assert np.all(res.rateints.var_poisson == 0)
    np.testing.assert_allclose(res.rateints.err, np.sqrt(res.rateints.var_rnoise), rtol=1e-6)
    assert np.all(res.fitopt.var_poisson == 0)


def test_negative_median_rate_multi_segment_fitopt_axis():
    timing = RampTiming(1.0, 1.0, 1)
    data = np.zeros((1, 15, 2), np.float32)
    data[0, :, 0] = -0.5 * (np.arange(15) + 1)
    data[0, :, 1] = np.arange(15) + 50.0 * (np.arange(15) >= 5) + 50.0 * (np.arange(15) >= 10)
    dq = np.zeros((1, 15, 2), np.uint8)
    dq[0, [5, 10], 1] = JUMP
    params = RampFitParams(suppress_one_group=False, save_opt=True)
    res = fit(data, dq, gain=1.0, rn=10.0, timing=timing, params=params)
    assert res.fitopt.slope.shape == (1, 3, 1, 2)
    assert np.all(res.fitopt.var_poisson[0, :, 0, 0] == 0)
    assert fitopt_dims(dq[:, :, None, :], params=params) == FitoptDims(3, 2)


def test_negative_ramp_with_dark_current():
    timing = RampTiming(1.0, 1.0, 1)
    res = fit(
        negative_ramp(),
        np.zeros((1, 10, 1)),
        gain=1.0,
        rn=10.0,
        timing=timing,
        average_dark_current=np.ones((1, 1), np.float32),
    )
    slope, _, err, vp, vr = prim(res.rate)
    np.testing.assert_allclose(vp, 1 / 9, atol=5e-3)
    assert slope < 0 and vr != 0
    np.testing.assert_allclose(err, np.sqrt(vp + vr), atol=5e-3)


def test_dq_compress_final():
    data = np.ones((2, 5, 3), np.float32) * np.arange(5, dtype=np.float32)[None, :, None]
    dq = np.zeros((2, 5, 3), np.uint8)
    dq[:, :, 0] = SAT
    dq[0, :, 1] = SAT
    res = fit(data, dq, gain=1.0, rn=10.0, timing=RampTiming(1.0, 1.0, 1))
    dnu_ints = (res.rateints.dq[:, 0, :] & DNU) != 0
    assert dnu_ints.tolist() == [[True, True, False], [True, False, False]]
    assert ((res.rate.dq[0] & DNU) != 0).tolist() == [True, False, False]


def test_two_group_cases():
    data = np.array([-12328.601, -4289.051], np.float32)
    pairs = [(G, G), (SAT, G), (DNU | SAT, G), (DNU, SAT), (DNU, G), (G, DNU), (G, DNU | SAT)]
    dq = np.array(pairs, np.uint8).T[None]  # (1, 2, 7)
    res = fit(
        np.broadcast_to(data[None, :, None], (1, 2, 7)),
        dq,
        gain=0.9699,
        rn=9.4552,
        timing=RampTiming(14.58889, 14.58889, 1),
    )
    r = res.rate
    np.testing.assert_allclose(
        r.sci[0],
        [551.0735, np.nan, np.nan, np.nan, -293.9943, -845.0678, -845.0677],
        rtol=1e-6,
    )
    assert r.dq[0].tolist() == [0, 3, 3, 3, 0, 0, 2]
    np.testing.assert_allclose(r.var_poisson[0], [38.945766, 0, 0, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        r.var_rnoise[0], [0.420046, 0, 0, 0, 0.420046, 0.420046, 0.420046], rtol=1e-6
    )
    np.testing.assert_allclose(
        r.err[0], [6.274218, 0, 0, 0, 0.6481096, 0.6481096, 0.6481096], rtol=1e-6
    )


def one_group_setup(nints):
    data = np.broadcast_to(np.arange(1, 6, dtype=np.float32)[None, :, None], (nints, 5, 3)).copy()
    dq = np.zeros((nints, 5, 3), np.uint8)
    dq[0, :, 0] = SAT
    dq[0, 1:, 1] = SAT
    return data, dq


@pytest.mark.parametrize("suppress", [True, False])
def test_one_group_ramp_one_integration(suppress):
    data, dq = one_group_setup(1)
    res = fit(
        data,
        dq,
        gain=1.0,
        rn=10.0,
        timing=RampTiming(1.0, 1.0, 1),
        params=RampFitParams(suppress_one_group=suppress),
    )
    r = res.rate
    if suppress:
        np.testing.assert_allclose(r.sci[0], [np.nan, np.nan, 1.0000001], rtol=1e-5)
        assert r.dq[0].tolist() == [3, 3, 0]
        np.testing.assert_allclose(r.var_poisson[0], [0, 0, 0.25], rtol=1e-5)
        np.testing.assert_allclose(r.var_rnoise[0], [0, 0, 4.999999], rtol=1e-5)
        np.testing.assert_allclose(r.err[0], [0, 0, 2.2912877], rtol=1e-5)
    else:
        np.testing.assert_allclose(r.sci[0], [np.nan, 1.0, 1.0000001], rtol=1e-5)
        assert r.dq[0].tolist() == [3, 2, 0]
        np.testing.assert_allclose(r.var_poisson[0], [0, 1, 0.25], rtol=1e-5)
        np.testing.assert_allclose(r.var_rnoise[0], [0, 100, 5.0000005], rtol=1e-5)
        np.testing.assert_allclose(r.err[0], [0, 10.049875, 2.291288], rtol=1e-5)
    for f in r._fields:
        np.testing.assert_array_equal(getattr(res.rateints, f)[0], getattr(r, f))


@pytest.mark.parametrize("suppress", [True, False])
def test_one_group_ramp_two_integrations(suppress):
    data, dq = one_group_setup(2)
    res = fit(
        data,
        dq,
        gain=1.0,
        rn=10.0,
        timing=RampTiming(1.0, 1.0, 1),
        params=RampFitParams(suppress_one_group=suppress),
    )
    r, ri = res.rate, res.rateints
    np.testing.assert_allclose(r.sci[0], [1, 1, 1], rtol=1e-5)
    assert r.dq[0].tolist() == [2, 2, 0]
    if suppress:
        np.testing.assert_allclose(r.var_poisson[0], [0.125] * 3, rtol=1e-5)
        np.testing.assert_allclose(r.var_rnoise[0], [4.999998, 4.999998, 2.4999995], rtol=1e-5)
        np.testing.assert_allclose(r.err[0], [2.263846, 2.263846, 1.620185], rtol=1e-5)
        np.testing.assert_allclose(ri.sci[:, 0], [[np.nan, np.nan, 1], [1, 1, 1]], rtol=1e-5)
        assert ri.dq[:, 0].tolist() == [[3, 3, 0], [0, 0, 0]]
        np.testing.assert_allclose(
            ri.var_poisson[:, 0], [[0, 0, 0.25], [0.125, 0.125, 0.25]], rtol=1e-5
        )
    else:
        np.testing.assert_allclose(r.var_poisson[0], [0.125, 0.2, 0.125], rtol=1e-5)
        np.testing.assert_allclose(r.var_rnoise[0], [5.0, 4.7619047, 2.5000002], rtol=1e-5)
        np.testing.assert_allclose(r.err[0], [2.2638464, 2.2275333, 1.6201853], rtol=1e-5)
        np.testing.assert_allclose(ri.sci[:, 0], [[np.nan, 1, 1], [1, 1, 1]], rtol=1e-5)
        assert ri.dq[:, 0].tolist() == [[3, 2, 0], [0, 0, 0]]
        np.testing.assert_allclose(
            ri.err[:, 0], [[0, 10.049875, 2.291288], [2.2638464, 2.291288, 2.291288]], rtol=1e-5
        )


def test_zeroframe():
    timing = RampTiming(10.736, 10.736 * 5, 4, 1)
    ramp = 8000.0 + 2000.0 * np.arange(5, dtype=np.float32)
    data = np.stack([np.stack([ramp] * 3, -1), np.stack([ramp / 2] * 3, -1)]).astype(np.float32)
    dq = np.zeros((2, 5, 3), np.uint8)
    dq[0, 1:, 0] = SAT
    dq[0, :, 1:] = SAT
    zf = np.zeros((2, 1, 3), np.float32)
    zf[0, 0, :] = [4000.0, 0.0, 7000.0]
    zf[1, 0, :] = 2000.0
    res = fit(data, dq, gain=5.0, rn=10.0, timing=timing, zeroframe=zf)
    ri, r = res.rateints, res.rate
    np.testing.assert_allclose(
        ri.sci[:, 0], [[298.0626, np.nan, 652.01196], [18.62891] * 3], rtol=1e-5, atol=1e-5
    )
    assert ri.dq[:, 0].tolist() == [[2, 3, 2], [0, 0, 0]]
    np.testing.assert_allclose(
        ri.var_rnoise[:, 0], [[0.03470363, 0, 0.21689774], [0.0004338] * 3], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(r.sci[0], [22.07871, 18.628912, 19.89315], rtol=1e-5, atol=1e-5)
    assert r.dq[0].tolist() == [2, 2, 2]
    np.testing.assert_allclose(
        r.var_poisson[0], [0.13110262, 0.00867591, 0.29745975], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(r.err[0], [0.36267212, 0.09544477, 0.54579544], rtol=1e-5, atol=1e-5)


def test_only_good_0th_group():
    timing = RampTiming(10.736, 10.736 * 5, 2, 3)
    ramp = 8000.0 + 2000.0 * np.arange(5, dtype=np.float32)
    data = np.stack([ramp] * 3, -1)[None]
    dq = np.zeros((1, 5, 3), np.uint8)
    dq[0, 2:, 1] = SAT
    dq[0, 1:, 2] = SAT
    r = fit(data, dq, gain=5.0, rn=10.0, timing=timing).rate
    np.testing.assert_allclose(r.sci[0], [37.257824, 37.257824, 496.77103], rtol=1e-5, atol=1e-5)
    assert r.dq[0].tolist() == [0, 2, 2]
    np.testing.assert_allclose(
        r.var_poisson[0], [0.03470363, 0.13881457, 6.169534], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        r.var_rnoise[0], [0.00086759, 0.01735182, 0.19279794], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(r.err[0], [0.18860336, 0.39517894, 2.5223665], rtol=1e-5, atol=1e-5)


def test_all_saturated():
    data = np.full((2, 4, 3), 60000.0, np.float32)
    dq = np.full((2, 4, 3), SAT, np.uint8)
    res = fit(data, dq, gain=2.0, rn=10.0, timing=RampTiming(10.0, 10.0, 1))
    # stcal returns (None, None, None) for a whole frame like this; the decision is the dataflow
    # layer's, from all_group0_saturated; per pixel the kernel returns unusable results.
    assert all_group0_saturated(dq[:, :, None, :])
    assert not all_group0_saturated(np.zeros((1, 2, 1, 1), np.uint8))
    assert np.all(np.isnan(res.rate.sci)) and np.all(res.rate.dq == DNU | SAT)
    assert np.all(res.rateints.dq == DNU | SAT)
    assert np.all(res.rate.err == 0) and np.all(res.rateints.var_rnoise == 0)


def test_dq_multi_integration_dnu():
    timing = RampTiming(10.736, 10.736 * 5, 4, 1)
    ramp = 1000.0 + 100.0 * np.arange(5, dtype=np.float32)
    data = np.stack([ramp, ramp])[:, :, None]
    dq = np.zeros((2, 5, 1), np.uint8)
    dq[0] = DNU
    res = fit(data, dq, gain=5.0, rn=10.0, timing=timing)
    assert_prim(res.rate, [1.8628913, 0, 0.03607474, 0.00086759, 0.0004338])
    ri = res.rateints
    assert np.isnan(ri.sci[0, 0, 0]) and ri.dq[:, 0, 0].tolist() == [DNU, 0]
    np.testing.assert_allclose(ri.var_poisson[:, 0, 0], [0, 0.00086759], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ri.err[:, 0, 0], [0, 0.03607474], rtol=1e-5, atol=1e-5)


def test_new_saturation_flags():
    ng = 20
    ramp = 1000.0 + 30.0 * np.arange(ng, dtype=np.float32)
    data = np.broadcast_to(ramp[None, :, None], (2, ng, 3)).copy()
    dq = np.zeros((2, ng, 3), np.uint8)
    dq[1, 5:7, 0] = JUMP
    dq[1, 15:, 0] = SAT
    dq[0, 5:7, 1] = JUMP
    dq[0, 15:, 1] = SAT
    dq[1, :, 1] = SAT
    dq[:, :, 2] = SAT
    res = fit(data, dq, gain=5.5, rn=10.0, timing=RampTiming(10.736, 10.736, 1))
    assert res.rate.dq[0].tolist() == [6, 6, 3]
    assert res.rateints.dq[:, 0].tolist() == [[0, 6, 3], [6, 3, 3]]
    assert np.isnan(res.rate.sci[0, 2]) and np.isfinite(res.rate.sci[0, :2]).all()
    assert np.isnan(res.rateints.sci[1, 0, 1])


def test_invalid_integrations_suppressed():
    ng = 5
    data = np.broadcast_to(
        (100.0 + 5000.0 * np.arange(ng, dtype=np.float32))[None, :, None], (8, ng, 1)
    )
    dq = np.zeros((8, ng, 1), np.uint8)
    dq[:, :, 0] = [DNU, G, JUMP | SAT, SAT, SAT]  # one good group: suppressed
    dq[0, :, 0] = [DNU, G, JUMP, G, DNU | SAT]
    dq[3, :, 0] = [DNU, G, G, SAT, SAT]
    res = fit(
        data,
        dq,
        gain=5.5,
        rn=6.097407,
        timing=RampTiming(2.77504, 2.77504, 1),
        params=RampFitParams(suppress_one_group=True),
    )
    ri = res.rateints
    assert ri.dq[:, 0, 0].tolist() == [6, 7, 7, 2, 7, 7, 7, 7]
    assert (
        np.isfinite(ri.sci[[0, 3], 0, 0]).all()
        and np.isnan(ri.sci[[1, 2, 4, 5, 6, 7], 0, 0]).all()
    )
    assert res.rate.dq[0, 0] == JUMP | SAT
    vr = ri.var_rnoise[[0, 3], 0, 0].astype(np.float64)
    expected = np.sum(ri.sci[[0, 3], 0, 0] / vr) / np.sum(1 / vr)
    np.testing.assert_allclose(res.rate.sci[0, 0], expected, rtol=1e-6)


def test_one_group():
    timing = RampTiming(10.736, 10.736 * 5, 4, 1)
    res = fit(
        np.array([105.31459], np.float32),
        np.zeros(1),
        gain=5.0,
        rn=10.0,
        timing=timing,
        params=RampFitParams(),  # suppress_one_group=True is ignored for NGROUPS = 1
    )
    assert_prim(res.rate, [3.923792, 0, 0.2528676, 0.02923839, 0.03470363])
    for f in res.rate._fields:
        np.testing.assert_array_equal(getattr(res.rateints, f)[0], getattr(res.rate, f))


def test_chargeloss_read_noise():
    ng = 10
    ramp = 100.0 + 20.0 * np.arange(ng, dtype=np.float32)
    data = np.broadcast_to(ramp[None, :, None], (1, ng, 4)).copy()
    data[0, 3:, 1:] += 50.0
    dq = np.zeros((1, ng, 4), np.uint8)
    dq[0, 3, 1:] = JUMP
    dq[0, 7:, 1] = DNU | CHLOSS
    dq[0, 7:, 2] = SAT
    res = fit(data, dq, gain=1.0, rn=0.7071, timing=RampTiming(10.6, 10.6, 1))
    r = res.rate
    assert np.all(r.sci[0] == r.sci[0, 0])
    assert r.var_poisson[0, 1] == r.var_poisson[0, 2] and r.err[0, 1] == r.err[0, 2]
    assert r.var_poisson[0, 1] != r.var_poisson[0, 0] and r.var_poisson[0, 1] != r.var_poisson[0, 3]
    assert r.var_rnoise[0, 1] == r.var_rnoise[0, 3]
    assert r.var_rnoise[0, 1] != r.var_rnoise[0, 0] and r.var_rnoise[0, 1] != r.var_rnoise[0, 2]
    off = fit(
        data,
        dq,
        gain=1.0,
        rn=0.7071,
        timing=RampTiming(10.6, 10.6, 1),
        params=RampFitParams(suppress_one_group=False, chargeloss_rnoise=False),
    )
    assert off.rate.var_rnoise[0, 1] == off.rate.var_rnoise[0, 2]


def test_crmag():
    ng = 10
    data = (13.67 * np.arange(ng)).astype(np.float32)
    data[3:] += 165.855
    data[7:] += 430.543
    dq = np.zeros((1, ng, 2), np.uint8)
    dq[0, [3, 7], 0] = JUMP
    d2 = np.stack([data, 13.67 * np.arange(ng)], -1)[None].astype(np.float32)
    res = fit(
        d2,
        dq,
        gain=1.0,
        rn=1.0,
        timing=RampTiming(1.0, 1.0, 1),
        params=RampFitParams(save_opt=True),
    )
    np.testing.assert_allclose(res.fitopt.crmag[0, :, 0, 0], [179.52501, 444.213], rtol=1e-4)
    assert np.all(res.fitopt.crmag[0, :, 0, 1] == 0)


def test_bad_gain():
    data = np.broadcast_to((np.arange(6, dtype=np.float32) * 10)[None, :, None], (1, 6, 3))
    gain = np.array([0.0, -1.0, np.nan], np.float32)
    res = fit_ramps_tile(
        data[:, :, None, :],
        np.zeros((1, 6, 1, 3), np.uint8),
        np.zeros((1, 3), np.uint32),
        gain[None],
        np.full((1, 3), 10.0, np.float32),
        params=RampFitParams(save_opt=True),
        timing=RampTiming(1.0, 1.0, 1),
    )
    assert np.all(res.rate.dq == DNU | NGV) and np.all(res.rateints.dq == DNU | NGV)
    assert np.all(np.isnan(res.rate.sci)) and np.all(res.rate.var_rnoise == 0)
    assert np.all(res.fitopt.var_rnoise == 0) and np.all(np.isinf(res.fitopt.weights))


def test_persistence_propagated_and_good():
    data = np.arange(6, dtype=np.float32) * 10
    dq = np.array([G, G, PERS, G, G, G])
    res = fit(data, dq, gain=2.0, rn=5.0, timing=RampTiming(1.0, 1.0, 1))
    assert res.rate.dq[0, 0] == PERS and res.rateints.dq[0, 0, 0] == PERS
    np.testing.assert_allclose(res.rate.sci[0, 0], 10.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# slope weighting option


def test_combined_slope_weighting():
    cfg = SimulationConfig(nints=2, ngroups=8, ny=12, nx=10, seed=5, cr_rate=0.05)
    ex = simulate_exposure(cfg)
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * JUMP)
    timing = RampTiming(cfg.frame_time, cfg.group_time, 1)
    base = RampFitParams(save_opt=True)
    comb = dataclasses.replace(base, slope_weighting="combined")
    a = fit_ramps_tile(ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=base, timing=timing)
    b = fit_ramps_tile(ex.data, gdq, ex.pixeldq, ex.gain, ex.readnoise, params=comb, timing=timing)
    for f in ("dq", "var_poisson", "var_rnoise", "err"):
        np.testing.assert_array_equal(getattr(a.rate, f), getattr(b.rate, f))
        np.testing.assert_array_equal(getattr(a.rateints, f), getattr(b.rateints, f))
    o = b.fitopt
    var_e = o.var_poisson.astype(np.float64) + o.var_rnoise
    with np.errstate(divide="ignore"):
        w = np.where(o.var_rnoise > 0, 1.0 / var_e, 0.0)
    np.testing.assert_allclose(o.weights, np.where(o.var_rnoise > 0, w * w, o.weights), rtol=1e-5)
    # integration slope = inverse-total-variance weighted mean of the segment slopes
    num = np.sum(o.slope * w, axis=1)
    den = np.sum(w, axis=1)
    ok = np.isfinite(b.rateints.sci) & (den > 0)
    np.testing.assert_allclose(
        b.rateints.sci[ok], (num / np.where(den > 0, den, 1))[ok], rtol=2e-5, atol=1e-6
    )
    ok_r = np.isfinite(b.rate.sci) & (den.sum(0) > 0)
    exp_r = num.sum(0) / np.where(den.sum(0) > 0, den.sum(0), 1)
    np.testing.assert_allclose(b.rate.sci[ok_r], exp_r[ok_r], rtol=2e-5, atol=1e-6)
    assert not np.allclose(a.rate.sci[ok_r], b.rate.sci[ok_r])


# ------------------------------------------------------------------------------------------------
# immutability, validation, dtype conversion


def test_inputs_not_modified(small_exposure):
    ex = small_exposure
    args = [ex.data, ex.groupdq, ex.pixeldq, ex.gain, ex.readnoise]
    zf = np.full((2, 40, 50), 1.0, np.float32)
    dark = np.full((40, 50), 0.1, np.float32)
    copies = [a.copy() for a in args] + [zf.copy(), dark.copy()]
    fit_ramps_tile(
        *args,
        params=RampFitParams(save_opt=True),
        timing=RampTiming(10.0, 10.0, 1),
        zeroframe=zf,
        average_dark_current=dark,
    )
    for a, c in zip([*args, zf, dark], copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_any_dtype_accepted(small_exposure):
    ex = small_exposure
    t = RampTiming(10.0, 10.0, 1)
    p = RampFitParams()
    a = fit_ramps_tile(ex.data, ex.groupdq, ex.pixeldq, ex.gain, ex.readnoise, params=p, timing=t)
    b = fit_ramps_tile(
        ex.data.astype(np.float64),
        ex.groupdq.astype(np.int32),
        ex.pixeldq.astype(np.int64),
        np.broadcast_to(ex.gain.astype(np.float64), ex.gain.shape),  # read-only
        np.asfortranarray(ex.readnoise.astype(np.float64)),
        params=p,
        timing=t,
    )
    for f in a.rate._fields:
        np.testing.assert_array_equal(getattr(a.rate, f), getattr(b.rate, f))
    assert a.rate.sci.dtype == np.float32 and a.rate.dq.dtype == np.uint32
    assert isinstance(a, RampFitResult) and a.fitopt is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "LIKELY"},
        {"algorithm": "OLS"},
        {"weighting": "unweighted"},
        {"slope_weighting": "poisson"},
        {"save_opt": "yes"},
        {"suppress_one_group": 1},
    ],
)
def test_params_validation(kwargs):
    with pytest.raises(UserInputError) as e:
        RampFitParams(**kwargs)
    assert "\n" not in str(e.value)


def test_params_defaults():
    p = RampFitParams()
    assert (p.algorithm, p.weighting, p.suppress_one_group, p.save_opt) == (
        "OLS_C",
        "optimal",
        True,
        False,
    )
    assert p.slope_weighting == "readnoise"
    assert RampFitParams(algorithm="ols_c").algorithm == "ols_c"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.save_opt = True


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frame_time": 0.0, "group_time": 1.0, "nframes": 1},
        {"frame_time": 1.0, "group_time": float("nan"), "nframes": 1},
        {"frame_time": 1.0, "group_time": 1.0, "nframes": 0},
        {"frame_time": 1.0, "group_time": 1.0, "nframes": 1, "groupgap": -1},
        {"frame_time": 1.0, "group_time": 1.0, "nframes": 1.5},
    ],
)
def test_timing_validation(kwargs):
    with pytest.raises(UserInputError):
        RampTiming(**kwargs)


def test_shape_errors(small_exposure):
    ex = small_exposure
    t = RampTiming(10.0, 10.0, 1)
    with pytest.raises(UserInputError, match="gain"):
        fit_ramps_tile(
            ex.data,
            ex.groupdq,
            ex.pixeldq,
            ex.gain[:-1],
            ex.readnoise,
            params=RampFitParams(),
            timing=t,
        )
    with pytest.raises(UserInputError, match="data"):
        fit_ramps_tile(
            ex.data[0],
            ex.groupdq,
            ex.pixeldq,
            ex.gain,
            ex.readnoise,
            params=RampFitParams(),
            timing=t,
        )
    with pytest.raises(ValueError, match="n_segments"):
        fit_ramps_tile(
            ex.data,
            ex.groupdq | (ex.cr_mask.astype(np.uint8) * JUMP),
            ex.pixeldq,
            ex.gain,
            ex.readnoise,
            params=RampFitParams(save_opt=True),
            timing=t,
            n_segments=0,
            n_crmag=10,
        )


# ------------------------------------------------------------------------------------------------
# tiling: any spatial tiling stitched back equals the whole-frame fit, bit for bit

_TILE_EX = simulate_exposure(
    SimulationConfig(
        nints=2,
        ngroups=7,
        ny=23,
        nx=29,
        seed=21,
        cr_rate=0.08,
        zeroframe=True,
        do_not_use_fraction=0.05,
        nan_fraction=0.01,
    )
)
_TILE_GDQ = _TILE_EX.groupdq | (_TILE_EX.cr_mask.astype(np.uint8) * JUMP)
_TILE_GDQ[:, 3, ::5, ::4] |= CHLOSS
_TILE_DARK = np.full((23, 29), 0.05, np.float32)


def _fit_window(params, ys, xs, **kw):
    ex = _TILE_EX
    return fit_ramps_tile(
        ex.data[..., ys, xs],
        _TILE_GDQ[..., ys, xs],
        ex.pixeldq[ys, xs],
        ex.gain[ys, xs],
        ex.readnoise[ys, xs],
        params=params,
        timing=RampTiming(10.0, 10.0, 1),
        zeroframe=ex.zeroframe[:, ys, xs],
        average_dark_current=_TILE_DARK[ys, xs],
        **kw,
    )


def _cuts(draw, n):
    k = draw(st.integers(0, 4))
    return sorted(set([0, n, *draw(st.lists(st.integers(1, n - 1), min_size=k, max_size=k))]))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), suppress=st.booleans())
def test_tiling_bit_identical(data, suppress):
    params = RampFitParams(save_opt=True, suppress_one_group=suppress)
    full = _fit_window(params, slice(None), slice(None))
    ycuts = _cuts(data.draw, 23)
    xcuts = _cuts(data.draw, 29)
    windows = [
        (slice(y0, y1), slice(x0, x1))
        for y0, y1 in zip(ycuts[:-1], ycuts[1:], strict=True)
        for x0, x1 in zip(xcuts[:-1], xcuts[1:], strict=True)
    ]
    dims = [
        fitopt_dims(_TILE_GDQ[..., ys, xs], params=params, zeroframe=_TILE_EX.zeroframe[:, ys, xs])
        for ys, xs in windows
    ]
    nseg = max(d.n_segments for d in dims)
    ncr = max(d.n_crmag for d in dims)
    assert (nseg, ncr) == tuple(fitopt_dims(_TILE_GDQ, params=params, zeroframe=_TILE_EX.zeroframe))
    assert full.fitopt.slope.shape[1] == nseg and full.fitopt.crmag.shape[1] == ncr
    out = {}
    for ys, xs in windows:
        res = _fit_window(params, ys, xs, n_segments=nseg, n_crmag=ncr)
        for prod in ("rate", "rateints", "fitopt"):
            for f, arr in getattr(res, prod)._asdict().items():
                key = (prod, f)
                if key not in out:
                    ref = getattr(getattr(full, prod), f)
                    out[key] = np.full(ref.shape, 12345, ref.dtype)
                out[key][..., ys, xs] = arr
    for (prod, f), arr in out.items():
        np.testing.assert_array_equal(arr, getattr(getattr(full, prod), f), err_msg=f"{prod}.{f}")


def _mixed_clean_tile(nints, ngroups, seed):
    """A tile where most pixels carry no flag but JUMP_DET (the row-wise path) among pixels
    that need the flag rules: NaN/inf samples, bad gains, DO_NOT_USE/SATURATED/other pixel DQ
    bits, other flagged groups; varied flux (negative too), read noise and dark current."""
    rng = np.random.default_rng(seed)
    ny, nx = 7, 45
    shape = (nints, ngroups, ny, nx)
    flux = rng.choice([-3.0, 0.0, 0.5, 20.0, 400.0, 5000.0], (ny, nx))
    data = (np.arange(ngroups)[None, :, None, None] * flux * 10.7
            + rng.normal(0, 8.0, shape)).astype(np.float32)  # fmt: skip
    data[rng.random(shape) < 0.01] = np.nan
    data[rng.random(shape) < 0.005] = np.inf
    gdq = np.zeros(shape, np.uint8)
    u = rng.random(shape)
    gdq[u < 0.01] = dqflags.JUMP_DET
    # pixels whose only flag is JUMP_DET (fitted row-wise too): one or more jumps, consecutive
    # ones, at group 0, on the last group, leaving fewer than two unflagged groups
    jumpy = rng.random((ny, nx)) < 0.5
    gdq[(rng.random(shape) < 0.2) & jumpy] = dqflags.JUMP_DET
    gdq[u > 0.99] = dqflags.SATURATED
    pdq = rng.choice(np.array([0, 0, 0, 0, dqflags.DO_NOT_USE, dqflags.SATURATED, 16],
                              np.uint32), (ny, nx))  # fmt: skip
    gain = rng.choice(np.array([2.0, 1.1, 0.0, -1.0, np.nan], np.float32), (ny, nx),
                      p=[0.5, 0.4, 0.04, 0.03, 0.03])  # fmt: skip
    rn = rng.choice(np.array([0.5, 5.0, 14.0], np.float32), (ny, nx))
    dark = rng.choice(np.array([0.0, 0.01, 2.0], np.float32), (ny, nx))
    return data, gdq, pdq, gain, rn, dark


@pytest.mark.parametrize("nints, ngroups", [(1, 2), (2, 2), (1, 3), (3, 4), (6, 5), (1, 10),
                                            (2, 13), (1, 14), (1, 33), (1, 34)])  # fmt: skip
@pytest.mark.parametrize("weighting", ["readnoise", "combined"])
def test_flag_free_pixels_row_wise_equal_pixel_by_pixel(nints, ngroups, weighting):
    """Pixels with no flag but JUMP_DET are fitted a row at a time (not with ``save_opt``,
    whose extra products only the pixel-by-pixel code makes); both give the same rate and
    rateints bit for bit, on every kind of pixel and shape (up to 33 groups row-wise, 34 pixel
    by pixel; six integrations: a long row-wise list of JUMP_DET segments)."""
    data, gdq, pdq, gain, rn, dark = _mixed_clean_tile(nints, ngroups, seed=nints * 100 + ngroups)
    timing = RampTiming(10.6, 21.2, 2)
    out = {}
    for save_opt in (False, True):
        params = RampFitParams(save_opt=save_opt, slope_weighting=weighting)
        out[save_opt] = fit_ramps_tile(data, gdq, pdq, gain, rn, params=params, timing=timing,
                                       average_dark_current=dark)  # fmt: skip
    for prod in ("rate", "rateints"):
        for field in ("sci", "err", "dq", "var_poisson", "var_rnoise"):
            a = np.asarray(getattr(getattr(out[False], prod), field))
            b = np.asarray(getattr(getattr(out[True], prod), field))
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"{prod}.{field}")  # fmt: skip


@pytest.mark.parametrize("group_time", [10.73677, 21.47354, 2.77504, 0.1, 3.0])
def test_rates_by_reciprocal_equal_division(monkeypatch, group_time):
    """The row-wise fit takes the samples' rates (float32 / TGROUP) by the reciprocal of TGROUP
    with one FMA correction where an exhaustive check over the float32 significands allows it;
    the outputs equal those of plain division bit for bit, on samples of every magnitude
    (subnormal float32 to 1e30, negative, signed zeros)."""
    from stcal_dask.kernels import ramp_fit as rf

    assert rf._tg_reciprocal(float(np.float32(group_time)))
    data, gdq, pdq, gain, rn, dark = _mixed_clean_tile(2, 10, seed=11)
    rng = np.random.default_rng(12)
    extreme = np.array([1e-45, -3e-42, 1.2e-38, 1e-30, 7.5e-12, 0.0, -0.0, 3.3e12, -1e30, 1e30],
                       np.float32)  # fmt: skip
    pick = rng.random(data.shape) < 0.2
    data[pick] = rng.choice(extreme, int(pick.sum()))
    timing = RampTiming(group_time, group_time, 1)
    out = []
    for verified in (True, False):
        monkeypatch.setattr(rf, "_tg_reciprocal", lambda _t, v=verified: v)
        out.append(fit_ramps_tile(data, gdq, pdq, gain, rn, params=RampFitParams(),
                                  timing=timing, average_dark_current=dark))  # fmt: skip
    for prod in ("rate", "rateints"):
        for field in ("sci", "err", "dq", "var_poisson", "var_rnoise"):
            a = np.asarray(getattr(getattr(out[0], prod), field))
            b = np.asarray(getattr(getattr(out[1], prod), field))
            np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                          err_msg=f"{prod}.{field}")  # fmt: skip
