"""Behaviour of the jump kernel on hand-made ramps (the cases of stcal's own jump tests, written
from their described behaviour), plus API, validation and immutability tests.

Most cases use gain 1 (so DN == electrons), nframes 1 and, like stcal's two-point tests, a
rejection threshold of 3 for all three thresholds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from seeded_ramps import rough_ramps

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError
from stcal_dask.kernels import _jump_numba as nb
from stcal_dask.kernels.jump import (
    JumpGlobals,
    JumpParams,
    choose_path,
    combine_jump_globals,
    detect_jumps,
    detect_jumps_globals,
    detect_jumps_tile,
    finalize_jump_globals,
    jump_globals_partial,
    jump_halo,
    merge_jump_globals_partials,
    sigclip_reset_partial,
    total_primary_crs,
)
from stcal_dask.sim.ramp import simulate_exposure

SAT = dqflags.SATURATED
DNU = dqflags.DO_NOT_USE
JUMP = dqflags.JUMP_DET
P3 = JumpParams(
    rejection_threshold=3.0,
    three_group_rejection_threshold=3.0,
    four_group_rejection_threshold=3.0,
    flag_4_neighbors=False,
)


def run(ramps, *, rn=10.0, gdq=None, params=P3, gain=1.0, nframes=1, group_time=10.0):
    """Run the kernel on ``ramps`` ((ngroups,), (nints, ngroups) or 4-D), return the result."""
    data = np.asarray(ramps, dtype=np.float32)
    while data.ndim < 4:
        data = data[..., None] if data.ndim >= 2 else data[None, ..., None]
        if data.ndim == 3:
            data = data[..., None]
    ny, nx = data.shape[2:]
    gdq = np.zeros(data.shape, np.uint8) if gdq is None else np.asarray(gdq, np.uint8)
    gdq = gdq.reshape(data.shape)
    gain = np.broadcast_to(np.asarray(gain, np.float32), (ny, nx)).copy()
    rn = np.broadcast_to(np.asarray(rn, np.float32), (ny, nx)).copy()
    pdq = np.zeros((ny, nx), np.uint32)
    return detect_jumps(
        data, gdq, pdq, gain, rn, params=params, nframes=nframes, group_time=group_time
    )


def jump_groups(res, i=0, y=0, x=0):
    """Groups of integration ``i`` of pixel (y, x) carrying JUMP."""
    return [int(g) for g in np.flatnonzero(res.groupdq[i, :, y, x] & JUMP)]


# ----------------------------------------------------------------------------------------------
# the behaviours that stcal 1.20.0's own two-point-difference tests check


@pytest.mark.parametrize(
    "ramp, expected",
    [
        ([10, 20, 30, 530, 540, 550], [3]),  # 5 usable diffs
        ([10, 20, 30, 530, 540, np.nan], [3]),  # 4
        ([10, 20, 30, 530, np.nan, np.nan], [3]),  # 3
        ([10, 20, 520, np.nan, np.nan, np.nan], [2]),  # 2
        ([10, 510, np.nan, np.nan, np.nan, np.nan], []),  # 1 usable diff: nothing
    ],
)
def test_varying_groups(ramp, expected):
    assert jump_groups(run(ramp)) == expected


def test_multint_pixel_pools_integrations():
    rng = np.random.default_rng(3)
    ramps = np.cumsum(rng.normal(10, 1, (7, 4)), axis=1)
    ramps[5] = [0, 1000, 3000, 6000]
    res = run(ramps)
    assert jump_groups(res, i=5) == [1, 2, 3]
    assert all(jump_groups(res, i=i) == [] for i in range(7) if i != 5)


def test_nocrs_noflux():
    res = run(np.zeros((1, 6, 3, 3)))
    assert not np.any(res.groupdq) and res.n_primary == 0


def test_5grps_cr3_noflux():
    assert jump_groups(run([0, 0, 1000, 1000, 1000])) == [2]


def test_2ints_cr_in_second_int_and_rerun_is_stable():
    ramps = np.zeros((2, 5))
    ramps[1, 1:] = 1000
    res = run(ramps)
    assert jump_groups(res, i=0) == [] and jump_groups(res, i=1) == [1]
    again = run(ramps, gdq=res.groupdq)
    np.testing.assert_array_equal(again.groupdq, res.groupdq)


def test_6grps_negative_differences_zero_median():
    # diffs -10, 5, 10, -5, 0: both |d| = 10 are dropped as tied maxima -> nothing flagged
    assert jump_groups(run([0, -10, -5, 5, 0, 0])) == []


def test_5grps_negative_jump_flagged():
    assert jump_groups(run([1000, 0, 0, 0, 0])) == [1]


@pytest.mark.parametrize("ramp, expected", [([0, 1000, 1000], [1]), ([0, 0, 1000], [2])])
def test_3grps_two_diff_rule(ramp, expected):
    assert jump_groups(run(ramp)) == expected


def test_3grps_two_diff_threshold_is_three_group_threshold():
    # c = min(|d|) = 0, sigma = rn = 10: a 59 e- step is 5.9 sigma, 61 e- is 6.1 sigma.
    params = JumpParams(flag_4_neighbors=False)
    assert jump_groups(run([0, 59, 59], params=params)) == []
    assert jump_groups(run([0, 61, 61], params=params)) == [1]


def test_4grps_cr2_noflux():
    assert jump_groups(run([0, 1000, 1000, 1000])) == [1]


def test_6grps_two_consecutive_big_diffs():
    ramps = np.zeros((1, 6, 2, 2))
    ramps[0, :, 0, 0] = [0, 1000, 2000, 2000, 2000, 2000]
    res = run(ramps)
    assert jump_groups(res) == [1, 2]
    assert not np.any(res.groupdq[..., 1:, :]) and not np.any(res.groupdq[..., :, 1:])


def test_4grps_two_crs_at_least_one_flag():
    assert len(jump_groups(run([0, 1000, 1000, 2000]))) >= 1


@pytest.mark.parametrize(
    "ramp, expected",
    [
        ([10, 1020, 1030, 1040, 2060], [1, 4]),
        ([0, 1000, 1010, 1020, 2020, 2030], [1, 4]),
        ([0, 10, 1010, 1020, 2020, 2030], [2, 4]),
        ([0, 1010, 1020, 1030, 1040, 1050, 1060, 1870, 1880, 1890], [1, 7]),
    ],
)
def test_two_crs(ramp, expected):
    assert jump_groups(run(ramp)) == expected


def test_negative_slope_ramp():
    assert jump_groups(run([100, 0, -200, -260, -360])) == [2]


@pytest.mark.parametrize(
    "ramp, expected",
    [
        ([0, 10, 20, 30, 40, 1040], [5]),
        ([0, 10, 20, 30, 40, 50, 1050], [6]),
        ([0, 10, 20, 30, 40, 50, 1060, 1070], [6]),
    ],
)
def test_single_late_cr(ramp, expected):
    assert jump_groups(run(ramp)) == expected


@pytest.mark.parametrize("nsat, ngroups", [(1, 9), (2, 10), (3, 11)])
def test_trailing_saturation_ignored(nsat, ngroups):
    ramp = np.arange(ngroups, dtype=float) * 10
    ramp[6:] += 1000
    ramp[ngroups - nsat :] = 60000
    gdq = np.zeros(ngroups, np.uint8)
    gdq[ngroups - nsat :] = SAT
    res = run(ramp, gdq=gdq)
    assert jump_groups(res) == [6]
    assert np.all(res.groupdq[0, ngroups - nsat :, 0, 0] == SAT)


def test_11grps_pixel_dnu_excludes_big_diff_single_pass():
    ramp = np.arange(11, dtype=float) * 10
    ramp[9:] += 5000
    gdq = np.zeros(11, np.uint8)
    gdq[[0, 9, 10]] = DNU
    res = run(ramp, gdq=gdq)
    assert (
        detect_jumps_globals(
            np.zeros((1, 11, 1, 1), np.float32),
            np.zeros((1, 11, 1, 1), np.uint8),
            np.ones((1, 1), np.float32),
            params=P3,
        ).path
        == "single"
    )
    assert jump_groups(res) == []


@pytest.mark.parametrize(
    "step, rn, nframes, flagged",
    [
        (16.0, 5.0, 1, True),  # 3.2 sigma
        (15.0, 5.0, 1, False),  # exactly 3 sigma: strict '>'
        (16.0, 5.0 * np.sqrt(2), 2, True),  # RN^2 / nframes = 25
    ],
)
def test_threshold_is_strict(step, rn, nframes, flagged):
    ramp = np.zeros(10)
    ramp[2:] = step
    assert (jump_groups(run(ramp, rn=rn, nframes=nframes)) == [2]) is flagged


def test_rn0_noflux_no_flags():
    res = run(np.zeros((1, 10, 2, 2)), rn=0.0)
    assert not np.any(res.groupdq)


def test_sigma_clipping_all_diffs_of_pixel():
    """15 integrations x 9 groups, clipped over all 120 diffs of a pixel (only_use_ints=False)."""
    rng = np.random.default_rng(7)
    ramps = np.cumsum(rng.normal(100.0, 5.0, (15, 9, 2, 2)), axis=1)
    ramps[7, 3:, 0, 1] += 1000.0
    params = JumpParams(
        rejection_threshold=6.0,
        only_use_ints=False,
        minimum_sigclip_groups=10,
        flag_4_neighbors=False,
        after_jump_flag_dn1=1619.0,
        after_jump_flag_time1=160.0,
    )
    res = run(ramps, rn=1.0, params=params)
    flagged = np.argwhere(res.groupdq & JUMP)
    assert flagged.tolist() == [[7, 3, 0, 1]]


def test_sigma_clip_plane_reset():
    """Where a whole (int, group) plane is JUMP or DNU, pure-JUMP values there are reset."""
    rng = np.random.default_rng(8)
    ramps = np.cumsum(rng.normal(100.0, 3.0, (100, 3, 1, 2)), axis=1)
    ramps[40, 2:] += 2000.0  # both pixels jump in int 40, group 2
    ramps[60, 2:, 0, 0] += 2000.0  # only one pixel jumps in int 60, group 2
    gdq = np.zeros(ramps.shape, np.uint8)
    gdq[60, 2, 0, 1] = DNU  # ...and the other is DNU: the plane is all JUMP or DNU
    gdq[40, 2, 0, 1] = 16  # JUMP plus another bit is not reset
    params = JumpParams(flag_4_neighbors=False)
    res = run(ramps, rn=1.0, gdq=gdq, params=params)
    assert res.groupdq[40, 2, 0, 0] == 0 and res.groupdq[40, 2, 0, 1] == 16 | JUMP
    assert res.groupdq[60, 2, 0, 0] == 0 and res.groupdq[60, 2, 0, 1] == DNU
    ramps[30, 1:, 0, 0] += 2000.0  # an ordinary single jump is kept
    res = run(ramps, rn=1.0, gdq=gdq, params=params)
    assert res.groupdq[30, 1, 0, 0] == JUMP


def test_saturated_groups_never_get_jump():
    ramps = np.zeros((1, 6, 1, 3))
    ramps[0, :, 0, 0] = [0, 10, 2000, 60000, 60000, 60000]  # jumps into saturation
    ramps[0, :, 0, 1] = [0, 60000, 60000, 60000, 60000, 60000]  # 1 usable group
    ramps[0, :, 0, 2] = [0, 10, 20, 30, 40, 50]
    gdq = np.zeros(ramps.shape, np.uint8)
    gdq[0, 3:, 0, 0] = SAT
    gdq[0, 1:, 0, 1] = SAT
    res = run(ramps, gdq=gdq, params=JumpParams())
    assert not np.any((res.groupdq & SAT) & (res.groupdq & JUMP))
    assert jump_groups(res, x=1) == []


def test_iterative_numerator_rounded_to_float32():
    """stcal stores |d| - c in float32: 1000 + u/2 and 1000 - u/2 (u = 1 ulp) both round to 1000,
    so the two large diffs tie and are flagged together at the 4-diff threshold (4.5 sigma > 4);
    flagged one by one, the second would face the 3-diff threshold (5) and survive."""
    u = 2.0**-14
    ramp = np.array([0, 1000 + u, u, u, 1.5 * u], np.float32)
    res = run(ramp, rn=222.2, params=JumpParams(flag_4_neighbors=False))
    assert jump_groups(res) == [1, 2]


# ----------------------------------------------------------------------------------------------
# neighbours, after-jump flagging, PIXELDQ, bookkeeping


def _neighbour_frame(step):
    ramps = np.zeros((1, 10, 5, 5))
    ramps[0, 4:, 2, 2] = step
    return ramps


def test_neighbours_flagged_between_limits_not_on_saturated():
    gdq = np.zeros((1, 10, 5, 5), np.uint8)
    gdq[0, 4:, 1, 2] = SAT
    res = run(_neighbour_frame(470.0), gdq=gdq, params=JumpParams())  # r0 = 47 sigma
    assert res.groupdq[0, 4, 2, 2] & JUMP
    for y, x in [(3, 2), (2, 1), (2, 3)]:
        assert res.groupdq[0, 4, y, x] == JUMP
    assert res.groupdq[0, 4, 1, 2] == SAT
    assert res.groupdq[0, 4, 1, 1] == 0  # no diagonals
    assert res.n_primary == 1


@pytest.mark.parametrize("step", [50.0, 20000.0])  # 5 sigma and 2000 sigma
def test_neighbours_not_flagged_outside_limits(step):
    res = run(_neighbour_frame(step), params=JumpParams())
    assert res.groupdq[0, 4, 2, 2] & JUMP
    assert int((res.groupdq & JUMP).astype(bool).sum()) == 1


def test_neighbours_at_array_corner_and_halo():
    ramps = np.zeros((1, 10, 4, 4))
    ramps[0, 4:, 0, 0] = 470.0
    res = run(ramps, params=JumpParams())
    assert np.argwhere(res.groupdq[0, 4] & JUMP).tolist() == [[0, 0], [0, 1], [1, 0]]
    assert jump_halo(JumpParams()) == 1 and jump_halo(JumpParams(flag_4_neighbors=False)) == 0


def _after_frame():
    ramps = np.zeros((1, 10, 1, 4))
    ramps[0, 3:, 0, 0] = 500.0  # DN
    ramps[0, 3:, 0, 1] = 60.0  # DN; gain 4 -> 240 e-
    ramps[0, 3:, 0, 2] = 2000.0  # DN
    ramps[0, 3:, 0, 3] = -2000.0  # negative jumps never propagate
    return ramps


def test_after_jump_flagging_two_thresholds_and_median_gain():
    gain = np.array([[2.0, 4.0, 2.0, 2.0]])  # median 2: e1 = 200 e-, e2 = 3000 e-
    params = JumpParams(
        flag_4_neighbors=False,
        after_jump_flag_dn1=100.0,
        after_jump_flag_time1=20.0,  # 2 groups at 10 s
        after_jump_flag_dn2=1500.0,
        after_jump_flag_time2=45.0,  # 4 groups
    )
    res = run(_after_frame(), rn=1.0, gain=gain, params=params)
    assert jump_groups(res, x=0) == [3, 4, 5]
    assert jump_groups(res, x=1) == [3, 4, 5]  # 60 DN >= 100 DN * 2 / 4
    assert jump_groups(res, x=2) == [3, 4, 5, 6, 7]
    assert jump_groups(res, x=3) == [3]


def test_after_jump_too_small_and_truncated_at_last_group():
    params = JumpParams(
        flag_4_neighbors=False, after_jump_flag_dn1=1000.0, after_jump_flag_time1=100.0
    )
    res = run(_after_frame(), rn=1.0, gain=2.0, params=params)
    assert jump_groups(res, x=0) == [3]  # 1000 e- < 2000 e-
    assert jump_groups(res, x=2) == list(range(3, 10))


def test_after_jump_not_on_saturated_groups_and_needs_group_time():
    ramps = _after_frame()
    gdq = np.zeros(ramps.shape, np.uint8)
    gdq[0, 5:, 0, 2] = SAT
    params = JumpParams(flag_4_neighbors=False, after_jump_flag_time1=30.0)
    res = run(ramps, rn=1.0, gain=2.0, gdq=gdq, params=params)
    assert jump_groups(res, x=2) == [3, 4]
    with pytest.raises(UserInputError, match="group_time"):
        run(ramps, params=params, group_time=None)


def test_pixeldq_bad_gain():
    gain = np.array([[2.0, 0.0, -1.0, np.nan]], np.float32)
    data = np.zeros((1, 4, 1, 4), np.float32)
    pdq = np.array([[0, 0, int(dqflags.DQ.HOT), 0]], np.uint32)
    res = detect_jumps(
        data, np.zeros(data.shape, np.uint8), pdq, gain, np.ones((1, 4), np.float32), nframes=1
    )
    ngv = dqflags.NO_GAIN_VALUE | DNU
    assert res.pixeldq.tolist() == [[0, ngv, ngv | int(dqflags.DQ.HOT), ngv]]


def test_input_jump_counted_and_redundant_bits_removed():
    gdq = np.zeros((1, 5, 1, 3), np.uint8)
    gdq[0, 2, 0, 0] = JUMP
    gdq[0, 2, 0, 1] = JUMP | SAT | 16
    gdq[0, 2, 0, 2] = JUMP | DNU
    res = run(np.zeros((1, 5, 1, 3)), gdq=gdq)
    assert res.groupdq[0, 2, 0].tolist() == [JUMP, SAT | 16, DNU]
    assert res.primary_count.tolist() == [[1, 1, 1]] and res.n_primary == 3


def test_skip_returns_minus_99_and_only_removes_redundant_bits():
    gdq = np.zeros((2, 2, 2, 2), np.uint8)
    gdq[0, 1, 0, 0] = JUMP | SAT
    gdq[1, 1, 1, 1] = JUMP
    data = np.zeros((2, 2, 2, 2), np.float32)
    data[0, 1] = 1e5
    ones = np.ones((2, 2), np.float32)
    g = detect_jumps_globals(data, gdq, ones, params=JumpParams())
    res = detect_jumps(data, gdq, np.zeros((2, 2), np.uint32), ones, ones, nframes=1)
    assert g.skip and total_primary_crs(res.n_primary, g) == -99
    expected = gdq.copy()
    expected[0, 1, 0, 0] = SAT
    np.testing.assert_array_equal(res.groupdq, expected)


# ----------------------------------------------------------------------------------------------
# clipped median, path choice, globals


@pytest.mark.parametrize(
    "vals, expected, n_use",
    [
        ([5, 1, 3, 9], 3.0, 4),  # drop the max, median of 5, 1, 3
        ([5, 9, 3, 9, 1], 3.0, 5),  # ties at the max all dropped
        ([5, 1, 3, 9, 2, 8], 3.0, 6),  # 5 left: median 3
        ([4, 1, 3, 9, 2], 2.5, 5),  # 4 left: mean of the middle two
        ([7, 7, 7, 7], np.nan, 4),  # all tied: nothing left
        ([5, 1, 3], 3.0, 3),  # no clipping with 3
        ([5, np.nan, 2], 2.0, 2),  # the smaller of 2
        ([np.nan, 4.0], np.nan, 1),
    ],
)
def test_clipped_median_rules(vals, expected, n_use):
    a = np.asarray(vals, np.float64)
    c, n, _mx, _mn = nb._clipped_median(a, a.size, np.empty(a.size))
    assert n == n_use
    np.testing.assert_equal(c, expected)


@pytest.mark.parametrize(
    "nints, ngroups, dnu, only_use_ints, path",
    [
        (1, 10, [], True, "iterative"),
        (1, 11, [], True, "single"),
        (2, 6, [], True, "iterative"),
        (3, 11, [], True, "single"),
        (99, 3, [], True, "iterative"),
        (100, 3, [], True, "sigclip"),
        (100, 2, [], True, "sigclip"),
        (1, 11, [0, 10], True, "iterative"),
        (10, 10, [], False, "sigclip"),
        (10, 9, [], False, "iterative"),
        (1, 2, [], True, "skip"),
        (5, 2, [], True, "skip"),
        (2, 5, [0, 4, 3], True, "skip"),
    ],
)
def test_choose_path(nints, ngroups, dnu, only_use_ints, path):
    plane = np.zeros((nints, ngroups), bool)
    plane[0, dnu] = True
    params = JumpParams(only_use_ints=only_use_ints)
    assert choose_path(plane, params) == path


def test_globals_partials_merge_and_median_gain():
    e = simulate_exposure(nints=2, ngroups=4, ny=9, nx=7, seed=2, bad_gain_fraction=0.2)
    gdq = e.groupdq.copy()
    gdq[1, 3] |= DNU
    gdq[1, 2, :5] |= DNU
    parts = [
        jump_globals_partial(gdq[..., a:b, :], e.gain[a:b]) for a, b in [(0, 2), (2, 5), (5, 9)]
    ]
    left = merge_jump_globals_partials(merge_jump_globals_partials(*parts[:2]), parts[2])
    right = merge_jump_globals_partials(parts[0], merge_jump_globals_partials(*parts[1:]))
    gl, gr = (finalize_jump_globals(p, params=JumpParams()) for p in (left, right))
    whole = combine_jump_globals([jump_globals_partial(gdq, e.gain)], params=JumpParams())
    for g in (gl, gr):
        assert g.median_gain == whole.median_gain == np.nanmedian(e.gain)
        assert g.median_gain.dtype == np.float32
        np.testing.assert_array_equal(g.plane_dnu, whole.plane_dnu)
    assert whole.plane_dnu.tolist() == [[False] * 4, [False, False, False, True]]
    assert whole.path == "iterative" and not whole.needs_sigclip_pass


def test_median_gain_is_gathered_only_for_after_jump_flagging():
    from stcal_dask.kernels.jump import needs_median_gain

    assert not needs_median_gain(JumpParams())
    assert needs_median_gain(JumpParams(after_jump_flag_time1=10.0))
    assert needs_median_gain(JumpParams(after_jump_flag_time2=1.0))
    e = simulate_exposure(nints=1, ngroups=5, ny=6, nx=5, seed=3)
    part = jump_globals_partial(e.groupdq, None)
    assert part.gain_values.size == 0
    g = finalize_jump_globals(part, params=JumpParams())
    assert np.isnan(g.median_gain) and g.path == "iterative"
    with_gain = finalize_jump_globals(jump_globals_partial(e.groupdq, e.gain), params=JumpParams())
    np.testing.assert_array_equal(g.plane_dnu, with_gain.plane_dnu)
    # without after-jump flagging the tiles give the same result either way
    a = detect_jumps_tile(e.data, e.groupdq, e.pixeldq, e.gain, e.readnoise, params=JumpParams(),
                          nframes=1, group_time=10.0, jump_globals=g)
    b = detect_jumps_tile(e.data, e.groupdq, e.pixeldq, e.gain, e.readnoise, params=JumpParams(),
                          nframes=1, group_time=10.0, jump_globals=with_gain)
    np.testing.assert_array_equal(a.groupdq, b.groupdq)
    with pytest.raises(UserInputError, match="4-D"):
        jump_globals_partial(e.groupdq[0], None)


def test_tile_rejects_bad_globals():
    e = simulate_exposure(nints=1, ngroups=4, ny=4, nx=4, seed=1)
    args = (e.data, e.groupdq, e.pixeldq, e.gain, e.readnoise)
    wrong = JumpGlobals(np.float32(2.0), np.zeros((2, 4), bool), "iterative")
    with pytest.raises(UserInputError, match="nints, ngroups"):
        detect_jumps_tile(*args, params=JumpParams(), nframes=1, group_time=1.0, jump_globals=wrong)
    pending = JumpGlobals(np.float32(2.0), np.zeros((1, 4), bool), "sigclip")
    assert pending.needs_sigclip_pass
    with pytest.raises(UserInputError, match="sigclip_reset"):
        detect_jumps_tile(*args, params=JumpParams(), nframes=1, group_time=1.0,
                          jump_globals=pending)
    odd = JumpGlobals(np.float32(2.0), np.zeros((1, 4), bool), "reset-only")
    with pytest.raises(UserInputError, match="globals.path"):
        detect_jumps_tile(*args, params=JumpParams(), nframes=1, group_time=1.0, jump_globals=odd)
    g = detect_jumps_globals(e.data, e.groupdq, e.gain, params=JumpParams())
    with pytest.raises(UserInputError, match="path"):
        sigclip_reset_partial(e.data, e.groupdq, e.gain, params=JumpParams(), jump_globals=g)


# ----------------------------------------------------------------------------------------------
# immutability, parameters, input validation


@pytest.mark.parametrize("nints, ngroups", [(1, 6), (100, 3)])
def test_inputs_never_modified(nints, ngroups):
    e = simulate_exposure(
        nints=nints,
        ngroups=ngroups,
        ny=5,
        nx=6,
        seed=4,
        cr_rate=0.1,
        bad_gain_fraction=0.2,
        nan_fraction=0.05,
        do_not_use_fraction=0.05,
    )
    gdq = e.groupdq.copy()
    gdq[0, 1, 0, 0] |= JUMP | SAT
    arrays = [e.data, gdq, e.pixeldq, e.gain, e.readnoise]
    copies = [a.copy() for a in arrays]
    params = JumpParams(after_jump_flag_time1=30.0, min_jump_to_flag_neighbors=2.0)
    res = detect_jumps(*arrays, params=params, nframes=1, group_time=10.0)
    g = detect_jumps_globals(e.data, gdq, e.gain, params=params)
    jump_globals_partial(gdq, e.gain)
    if g.path == "sigclip":
        sigclip_reset_partial(e.data, gdq, e.gain, params=params, jump_globals=g)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    for out, inp in zip(res[:2], arrays[1:3], strict=True):
        assert not np.shares_memory(out, inp)
    assert res.groupdq.dtype == np.uint8 and res.pixeldq.dtype == np.uint32
    assert res.primary_count.dtype == np.int32 and res.primary_count.shape == (5, 6)


def test_params_defaults_are_jwst_and_frozen():
    p = JumpParams()
    assert p.to_dict() == {
        "rejection_threshold": 4.0,
        "three_group_rejection_threshold": 6.0,
        "four_group_rejection_threshold": 5.0,
        "flag_4_neighbors": True,
        "max_jump_to_flag_neighbors": 1000.0,
        "min_jump_to_flag_neighbors": 10.0,
        "after_jump_flag_dn1": 0.0,
        "after_jump_flag_time1": 0.0,
        "after_jump_flag_dn2": 0.0,
        "after_jump_flag_time2": 0.0,
        "minimum_groups": 3,
        "minimum_sigclip_groups": 100,
        "only_use_ints": True,
        "min_diffs_single_pass": 10,
        # large events (JWST JumpStep defaults)
        "expand_large_events": False,
        "min_jump_area": 5.0,
        "min_sat_area": 1.0,
        "expand_factor": 2.0,
        "use_ellipses": False,
        "sat_required_snowball": True,
        "min_sat_radius_extend": 2.5,
        "sat_expand": 2,
        "edge_size": 25,
        "mask_snowball_core_next_int": True,
        "snowball_time_masked_next_int": 4000.0,
        "max_extended_radius": 200,
        "find_showers": False,
        "extend_snr_threshold": 1.2,
        "extend_min_area": 90,
        "extend_inner_radius": 1.0,
        "extend_outer_radius": 2.6,
        "extend_ellipse_expand_ratio": 1.1,
        "time_masked_after_shower": 15.0,
        "max_shower_amplitude": 4.0,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.rejection_threshold = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rejection_threshold": -1.0}, "rejection_threshold"),
        ({"four_group_rejection_threshold": float("nan")}, "four_group_rejection_threshold"),
        ({"max_jump_to_flag_neighbors": "big"}, "max_jump_to_flag_neighbors"),
        ({"after_jump_flag_time2": float("inf")}, "after_jump_flag_time2"),
        ({"flag_4_neighbors": 1}, "flag_4_neighbors"),
        ({"only_use_ints": "yes"}, "only_use_ints"),
        ({"minimum_sigclip_groups": 0}, "minimum_sigclip_groups"),
        ({"min_diffs_single_pass": 2.5}, "min_diffs_single_pass"),
        ({"minimum_groups": True}, "minimum_groups"),
        ({"rejection_threshold": True}, "rejection_threshold"),
    ],
)
def test_params_validation(kwargs, match):
    with pytest.raises(UserInputError, match=match) as info:
        JumpParams(**kwargs)
    assert "\n" not in str(info.value)


def test_input_validation():
    data = np.zeros((1, 4, 3, 3), np.float32)
    gdq = np.zeros(data.shape, np.uint8)
    two = np.ones((3, 3), np.float32)
    pdq = np.zeros((3, 3), np.uint32)
    ok = dict(nframes=1)
    with pytest.raises(UserInputError, match="4-D"):
        detect_jumps(data[0], gdq[0], pdq, two, two, **ok)
    with pytest.raises(UserInputError, match="groupdq shape"):
        detect_jumps(data, gdq[:, :3], pdq, two, two, **ok)
    with pytest.raises(UserInputError, match="floating"):
        detect_jumps(data.astype(np.int16), gdq, pdq, two, two, **ok)
    with pytest.raises(UserInputError, match="unsigned"):
        detect_jumps(data, gdq.astype(np.int8), pdq, two, two, **ok)
    with pytest.raises(UserInputError, match="readnoise shape"):
        detect_jumps(data, gdq, pdq, two, two[:2], **ok)
    with pytest.raises(UserInputError, match="nframes"):
        detect_jumps(data, gdq, pdq, two, two, nframes=0)
    with pytest.raises(UserInputError, match="params"):
        detect_jumps_tile(
            data, gdq, pdq, two, two, params={}, nframes=1, group_time=1.0, jump_globals=None
        )


def test_read_only_and_non_contiguous_inputs():
    e = simulate_exposure(nints=2, ngroups=5, ny=9, nx=12, seed=6, cr_rate=0.1)
    arrays = [e.data, e.groupdq, e.pixeldq, e.gain, e.readnoise]
    ref = detect_jumps(*arrays, nframes=1)
    ro = []
    for a in arrays:
        v = a.view()
        v.flags.writeable = False
        ro.append(v)
    res = detect_jumps(*ro, nframes=1)
    # every other column of a wider frame: non-contiguous views
    wide = [np.repeat(a, 2, axis=-1)[..., ::2] for a in arrays]
    res2 = detect_jumps(*wide, nframes=1)
    for r in (res, res2):
        np.testing.assert_array_equal(r.groupdq, ref.groupdq)
        np.testing.assert_array_equal(r.pixeldq, ref.pixeldq)
        assert r.groupdq.flags.writeable


def test_network_median_matches_numpy():
    rng = np.random.default_rng(0)
    for n in range(1, 41):
        for _ in range(30):
            v = rng.choice([0.0, -0.5, 1.0, 2.5, np.inf, -np.inf, 7.0], n)
            v = np.where(rng.random(n) < 0.5, rng.normal(size=n), v)
            buf = v.copy()
            np.testing.assert_equal(nb._median_prefix(buf, n), np.median(v))


def _add_edge_pixels(data, gdq, rn):
    """Edge cases written into seeded ramps (in place): row 0 has no usable difference, row 1
    at most one usable group, row 2 a median of 0 with zero read noise (sigma NaN)."""
    gdq[:, :, 0, :5] = DNU
    gdq[:, 1:, 1, :5] = SAT
    rn[2, :3] = 0.0
    data[:, :, 2, :3] = 0.0


def _rows_equal_pixels(data, gdq, gain, rn, params, path):
    """Run ``path`` across rows and pixel by pixel, assert the flags and primary counts are
    equal, and return the row-wise result."""
    from stcal_dask.kernels.jump import _run_frame

    reset = np.zeros(data.shape[:2], bool)
    row = _run_frame(data, gdq, gain, rn, params=params, path=path, reset=reset)
    pix = _run_frame(data, gdq, gain, rn, params=params, path=path, reset=reset,
                     rowwise=False)  # fmt: skip
    np.testing.assert_array_equal(row[0], pix[0])
    np.testing.assert_array_equal(row[1], pix[1])
    return row


@pytest.mark.parametrize(
    "nints, ngroups, dtype",
    [(1, 3, np.float32), (2, 3, np.float32), (1, 11, np.float32), (1, 12, np.float32),
     (2, 20, np.float32), (3, 11, np.float64), (1, 33, np.float32), (2, 32, np.float32),
     (1, 65, np.float32), (5, 14, np.float32), (1, 66, np.float32)],
)  # fmt: skip
def test_single_pass_rows_equal_the_pixel_by_pixel_path(nints, ngroups, dtype):
    """The single-pass path run across each row's pixels (lane medians up to 64 differences per
    pixel) flags exactly what the pixel-by-pixel path flags, and counts the same primary
    jumps, on seeded ramps with NaN/inf data, SATURATED and DO_NOT_USE groups, pixels with no
    or one usable difference, zero read noise and neighbour flagging between limits; beyond 64
    differences both run pixel by pixel."""
    rng = np.random.default_rng(7 * ngroups + nints)
    ny, nx = 9, 41
    data, gdq, gain, rn = rough_ramps(rng, (nints, ngroups, ny, nx), dtype=dtype,
                                      jumps=((0.05, 400.0), (0.03, -300.0), (0.03, 60.0)))
    _add_edge_pixels(data, gdq, rn)
    params = JumpParams(min_diffs_single_pass=1, min_jump_to_flag_neighbors=5.0,
                        max_jump_to_flag_neighbors=200.0)  # fmt: skip
    assert detect_jumps_globals(data, gdq, gain, params=params).path == "single"
    row = _rows_equal_pixels(data, gdq, gain, rn, params, "single")
    assert (row[0] & JUMP).any()


@pytest.mark.parametrize(
    "nints, ngroups, dtype",
    [(1, 3, np.float32), (1, 4, np.float32), (1, 5, np.float32), (1, 10, np.float32),
     (2, 6, np.float32), (1, 10, np.float64), (1, 13, np.float32), (3, 11, np.float32),
     (1, 33, np.float32)],
)  # fmt: skip
def test_iterative_rows_equal_the_pixel_by_pixel_path(nints, ngroups, dtype):
    """The iterative path run across each row's pixels (every round's largest ratio taken by
    its float32 numerator) flags exactly what the pixel-by-pixel path (ratios divided out)
    flags, with the same primary counts, on seeded ramps with many tied differences, NaN/inf
    data, SATURATED and DO_NOT_USE groups, zero read noise and many jumps per pixel (several
    rounds), with neighbour flagging between limits."""
    rng = np.random.default_rng(11 * ngroups + nints)
    ny, nx = 12, 37
    data, gdq, gain, rn = rough_ramps(rng, (nints, ngroups, ny, nx), dtype=dtype,
                                      jumps=((0.2, 400.0), (0.1, -300.0), (0.1, 63.0),
                                             (0.05, 1e30)))  # fmt: skip
    _add_edge_pixels(data, gdq, rn)
    params = JumpParams(min_jump_to_flag_neighbors=5.0, max_jump_to_flag_neighbors=200.0,
                        min_diffs_single_pass=1000)
    assert detect_jumps_globals(data, gdq, gain, params=params).path == "iterative"
    row = _rows_equal_pixels(data, gdq, gain, rn, params, "iterative")
    assert (row[1] > 1).any() or nints * (ngroups - 1) < 4  # flagged in several rounds


@pytest.mark.parametrize("step, flagged", [(15.0, False), (15.000001, True), (16.0, True)])
def test_single_pass_threshold_is_strict(step, flagged):
    # 12 groups -> 11 diffs -> single pass; median 0, sigma = rn = 5 e-, threshold 3
    ramp = np.zeros(12)
    ramp[5:] = step
    assert (jump_groups(run(ramp, rn=5.0)) == [5]) is flagged


def test_path_codes_match_the_numba_module_and_numba_loads_lazily():
    import subprocess
    import sys

    from stcal_dask.kernels import jump as jk

    assert jk._PATH_CODE == {"skip": nb.PATH_SKIP, "sigclip": nb.PATH_SIGCLIP,
                             "single": nb.PATH_SINGLE, "iterative": nb.PATH_ITERATIVE,
                             "reset-only": nb.PATH_RESET_ONLY}
    # building graphs (CLI, dataflow) never loads numba/llvmlite in the client process
    code = ("import sys, stcal_dask.cli, stcal_dask.engine.dataflow; "
            "assert 'numba' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
