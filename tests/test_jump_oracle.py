"""Jump kernel vs stcal 1.20.0 ``detect_jumps_data`` (single process): GROUPDQ and PIXELDQ
bit-identical, primary count equal, on seeded synthetic exposures covering every path and rule."""

from __future__ import annotations

import numpy as np
import pytest
from oracle_jump import run_stcal_jump
from seeded_ramps import rough_ramps

from stcal_dask import dqflags
from stcal_dask.kernels.jump import (
    JumpParams,
    detect_jumps,
    detect_jumps_globals,
    total_primary_crs,
)
from stcal_dask.sim.ramp import simulate_exposure

pytestmark = pytest.mark.oracle

SAT = dqflags.SATURATED
DNU = dqflags.DO_NOT_USE
JUMP = dqflags.JUMP_DET
GROUP_TIME = 10.73677


def _compare(data, gdq, pdq, gain, rn, *, params=None, nframes=1, group_time=GROUP_TIME):
    """Run both; assert identical outputs; return (our result, globals)."""
    params = JumpParams() if params is None else params
    ours = detect_jumps(
        data, gdq, pdq, gain, rn, params=params, nframes=nframes, group_time=group_time
    )
    g = detect_jumps_globals(data, gdq, gain, params=params)
    sg, sp, stotal = run_stcal_jump(
        data, gdq, pdq, gain, rn, params=params, nframes=nframes, group_time=group_time
    )
    assert ours.groupdq.dtype == sg.dtype
    diff = np.argwhere(ours.groupdq != sg)
    assert diff.size == 0, f"{len(diff)} GROUPDQ differences, first at {diff[:5].tolist()}"
    np.testing.assert_array_equal(ours.pixeldq, sp)
    assert total_primary_crs(ours.n_primary, g) == stotal
    return ours, g


def _sim(nints, ngroups, ny, nx, seed, **kw):
    e = simulate_exposure(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=seed, **kw)
    return [e.data.copy(), e.groupdq.copy(), e.pixeldq.copy(), e.gain.copy(), e.readnoise.copy()]


@pytest.mark.parametrize(
    "nints, ngroups, size, path",
    [
        (1, 3, 24, "iterative"),
        (2, 3, 20, "iterative"),
        (1, 4, 24, "iterative"),
        (3, 4, 16, "iterative"),
        (1, 5, 24, "iterative"),
        (2, 5, 20, "iterative"),
        (1, 10, 32, "iterative"),
        (3, 10, 16, "iterative"),
        (1, 11, 24, "single"),
        (2, 20, 16, "single"),
        (1, 120, 8, "single"),
    ],
)
def test_paths_on_simulated_exposures(nints, ngroups, size, path):
    arrays = _sim(nints, ngroups, size, size + 3, seed=100 + ngroups, cr_rate=0.05)
    ours, g = _compare(*arrays)
    assert g.path == path
    assert ours.n_primary > 0


@pytest.mark.parametrize("nframes", [1, 4])
def test_features_mix(nframes):
    """NaN data, DO_NOT_USE samples, bad gains (0, <0, NaN), early saturation, nframes."""
    arrays = _sim(
        2,
        6,
        30,
        27,
        seed=7,
        cr_rate=0.05,
        nan_fraction=0.02,
        do_not_use_fraction=0.05,
        bad_gain_fraction=0.05,
        saturation_dn=4000.0,
        nframes=nframes,
    )
    gain = arrays[3]
    gain[0, :3] = [0.0, -1.5, np.nan]
    gain[5, 5] = np.inf
    ours, _ = _compare(*arrays, nframes=nframes)
    bad = (gain <= 0) | np.isnan(gain)
    assert np.all(ours.pixeldq[bad] & (dqflags.NO_GAIN_VALUE | DNU) == dqflags.NO_GAIN_VALUE | DNU)


@pytest.mark.parametrize("sat_group", [0, 1, 3, 5])
def test_saturation_from_group(sat_group):
    data, gdq, pdq, gain, rn = _sim(2, 7, 18, 18, seed=sat_group, cr_rate=0.05)
    sat = np.zeros((18, 18), bool)
    sat[::3, ::2] = True
    sat[0, :] = True  # along an edge too
    gdq[0, sat_group:][:, sat] |= SAT
    data[0, sat_group:][:, sat] = 60000.0
    ours, _ = _compare(data, gdq, pdq, gain, rn)
    assert not np.any((ours.groupdq & SAT) & (ours.groupdq & JUMP))


def test_do_not_use_pixel_and_whole_plane():
    data, gdq, pdq, gain, rn = _sim(2, 8, 20, 21, seed=3, cr_rate=0.05, do_not_use_fraction=0.05)
    gdq[:, 0] |= DNU  # MIRI-like first group, whole plane
    gdq[1, -1] |= DNU  # last group of one integration
    ours, g = _compare(data, gdq, pdq, gain, rn)
    assert g.plane_dnu[:, 0].all() and g.plane_dnu[1, -1] and not g.plane_dnu[0, -1]
    assert not np.any(ours.groupdq[:, 0] & JUMP)


def test_whole_plane_dnu_switches_single_pass_to_iterative():
    # 12 groups -> 11 diffs -> single pass; two whole-plane DNU groups -> 9 diffs -> iterative.
    data, gdq, pdq, gain, rn = _sim(1, 12, 16, 16, seed=4, cr_rate=0.05)
    assert _compare(data, gdq, pdq, gain, rn)[1].path == "single"
    gdq[0, 0] |= DNU
    gdq[0, 11] |= DNU
    assert _compare(data, gdq, pdq, gain, rn)[1].path == "iterative"


@pytest.mark.parametrize(
    "nints, ngroups, dnu_planes, path",
    [
        (1, 2, [], "skip"),
        (3, 2, [], "skip"),
        (2, 4, [0, 3], "skip"),  # 2 usable groups left
        (2, 4, [0], "iterative"),
    ],
)
def test_skip_rule(nints, ngroups, dnu_planes, path):
    data, gdq, pdq, gain, rn = _sim(nints, ngroups, 10, 12, seed=9, cr_rate=0.1)
    gdq[0, 1, 2, 3] |= JUMP | SAT  # redundant bits are removed even when skipped
    gdq[-1, 1, 4, 4] |= JUMP
    for k in dnu_planes:
        gdq[0, k] |= DNU
    ours, g = _compare(data, gdq, pdq, gain, rn)
    assert g.path == path
    if path == "skip":
        assert total_primary_crs(ours.n_primary, g) == -99


def test_neighbour_flagging_at_array_edges():
    nints, ngroups, ny, nx = 1, 6, 9, 8
    rng = np.random.default_rng(1)
    data = (np.arange(ngroups)[None, :, None, None] * 100.0).repeat(ny, 2).repeat(nx, 3)
    data = (data + rng.normal(0, 3, (nints, ngroups, ny, nx))).astype(np.float32)
    for y, x in [(0, 0), (0, 4), (8, 7), (4, 0), (4, 7), (8, 3), (4, 4)]:
        data[0, 3:, y, x] += 800.0
    gdq = np.zeros(data.shape, np.uint8)
    gdq[0, 3:, 4, 5] = SAT  # a saturated neighbour never gets JUMP
    gain = np.full((ny, nx), 2.0, np.float32)
    rn = np.full((ny, nx), 5.0, np.float32)
    pdq = np.zeros((ny, nx), np.uint32)
    ours, _ = _compare(data, gdq, pdq, gain, rn)
    assert ours.groupdq[0, 3, 1, 0] & JUMP and ours.groupdq[0, 3, 0, 1] & JUMP
    assert not ours.groupdq[0, 3, 4, 5] & JUMP


def test_after_jump_flagging_two_thresholds():
    data, gdq, pdq, gain, rn = _sim(2, 12, 16, 16, seed=12, cr_rate=0.05, bad_gain_fraction=0.05)
    params = JumpParams(
        after_jump_flag_dn1=100.0,
        after_jump_flag_time1=2.5 * GROUP_TIME,
        after_jump_flag_dn2=1000.0,
        after_jump_flag_time2=6.2 * GROUP_TIME,
    )
    ours, _ = _compare(data, gdq, pdq, gain, rn, params=params)
    base, _ = _compare(data, gdq, pdq, gain, rn)
    assert (ours.groupdq & JUMP).sum() > (base.groupdq & JUMP).sum()


def test_after_jump_iterative_with_zero_dn():
    data, gdq, pdq, gain, rn = _sim(1, 6, 16, 16, seed=13, cr_rate=0.05)
    params = JumpParams(after_jump_flag_time1=1.5 * GROUP_TIME, after_jump_flag_time2=30 * 60.0)
    _compare(data, gdq, pdq, gain, rn, params=params)


@pytest.mark.parametrize("only_use_ints", [True, False])
def test_sigma_clip_path(only_use_ints):
    params = JumpParams(only_use_ints=only_use_ints)
    data, gdq, pdq, gain, rn = _sim(100, 3, 4, 5, seed=14, cr_rate=0.03, nan_fraction=0.01)
    ours, g = _compare(data, gdq, pdq, gain, rn, params=params)
    assert g.path == "sigclip"
    assert ours.n_primary > 0


def test_sigma_clip_total_groups_and_plane_reset():
    # only_use_ints=False, 12 integrations x 9 groups = 108 total groups >= 100 -> sigma clip.
    params = JumpParams(only_use_ints=False)
    data, gdq, pdq, gain, rn = _sim(12, 9, 2, 3, seed=15, cr_rate=0.02)
    data[4, 3:] += 4000.0  # every pixel jumps at int 4 group 3: the whole plane is JUMP
    gdq[4, 3] &= ~np.uint8(SAT)
    ours, g = _compare(data, gdq, pdq, gain, rn, params=params)
    assert g.path == "sigclip" and g.sigclip_reset[4, 3]
    # and with one more whole-plane DNU group it is 107 (still sigma clip)
    gdq[0, 0] |= DNU
    _compare(data, gdq, pdq, gain, rn, params=params)


def test_sigma_clip_needs_enough_integrations():
    data, gdq, pdq, gain, rn = _sim(99, 3, 3, 3, seed=16, cr_rate=0.03)
    assert _compare(data, gdq, pdq, gain, rn)[1].path == "iterative"


def test_input_jump_bits_counted_and_redundant_removed():
    data, gdq, pdq, gain, rn = _sim(1, 5, 10, 10, seed=17, cr_rate=0.0)
    gdq[0, 2, 1, 1] |= JUMP
    gdq[0, 3, 2, 2] |= JUMP | SAT
    gdq[0, 4, 3, 3] |= JUMP | DNU | 16
    ours, g = _compare(data, gdq, pdq, gain, rn)
    assert ours.groupdq[0, 3, 2, 2] == SAT and ours.groupdq[0, 4, 3, 3] == DNU | 16


@pytest.mark.parametrize("seed", range(6))
def test_random_fuzz(seed):
    """Randomised small exposures: noiseless integer ramps (ties), inf/NaN, odd parameters."""
    rng = np.random.default_rng(seed)
    nints = int(rng.choice([1, 2, 3]))
    ngroups = int(rng.choice([3, 4, 5, 9, 11, 14]))
    ny, nx = int(rng.integers(2, 10)), int(rng.integers(2, 10))
    shape = (nints, ngroups, ny, nx)
    steps = rng.integers(0, 5, shape).astype(np.float32) * float(rng.choice([1.0, 10.0]))
    data = np.cumsum(steps, axis=1).astype(np.float32)
    if seed % 2:
        data += rng.normal(0, 1.0, shape).astype(np.float32)
    data[rng.random(shape) < 0.05] += np.float32(500.0)
    data[rng.random(shape) < 0.02] = np.inf
    data[rng.random(shape) < 0.02] = np.nan
    u = rng.random(shape)
    gdq = np.zeros(shape, np.uint8)
    gdq[u < 0.05] |= DNU
    gdq[u > 0.97] |= SAT
    gdq[(u > 0.5) & (u < 0.52)] |= JUMP
    gain = rng.choice([1.0, 2.2, 0.0, -1.0, np.nan], (ny, nx), p=[0.5, 0.35, 0.05, 0.05, 0.05])
    rn = rng.choice([0.0, 1.0, 4.5], (ny, nx))
    params = JumpParams(
        rejection_threshold=float(rng.choice([3.0, 4.0])),
        three_group_rejection_threshold=float(rng.choice([3.0, 6.0])),
        four_group_rejection_threshold=float(rng.choice([3.0, 5.0])),
        min_jump_to_flag_neighbors=float(rng.choice([0.0, 3.0, 10.0])),
        max_jump_to_flag_neighbors=float(rng.choice([50.0, 1000.0])),
        after_jump_flag_dn1=float(rng.choice([0.0, 5.0])),
        after_jump_flag_time1=float(rng.choice([0.0, 25.0])),
        min_diffs_single_pass=int(rng.choice([3, 10])),
    )
    _compare(
        data,
        gdq,
        np.zeros((ny, nx), np.uint32),
        gain.astype(np.float32),
        rn.astype(np.float32),
        params=params,
        nframes=int(rng.choice([1, 2])),
    )


@pytest.mark.parametrize(
    "nints, ngroups, seed",
    [(1, 2, 0), (1, 3, 1), (1, 11, 2), (1, 12, 3), (1, 13, 4), (2, 7, 5), (1, 14, 6),
     (1, 21, 7), (3, 9, 8), (1, 33, 9), (1, 41, 10)],
)  # fmt: skip
def test_iterative_path_every_difference_count(nints, ngroups, seed):
    """The iterative path at every kind of difference count: the lane-parallel rounds use
    straight-line networks up to 12 differences per pixel and one shared network up to 32, and
    beyond that the pixel-by-pixel rounds (min_diffs_single_pass raised so that stcal iterates
    on 40 differences too); ties, NaN/inf,
    SATURATED/DO_NOT_USE groups and several jumps per ramp."""
    rng = np.random.default_rng(100 + seed)
    ny, nx = 11, 37
    data, gdq, gain, rn = rough_ramps(rng, (nints, ngroups, ny, nx),
                                      jumps=((0.06, 400.0), (0.04, -300.0), (0.03, 90.0)))
    params = JumpParams(min_diffs_single_pass=64, min_jump_to_flag_neighbors=5.0)
    _compare(data, gdq, np.zeros((ny, nx), np.uint32), gain, rn, params=params)


@pytest.mark.parametrize(
    "nints, ngroups, seed",
    [(1, 12, 0), (3, 12, 1), (2, 20, 2), (1, 33, 3), (2, 33, 4), (1, 65, 5), (1, 66, 6)],
)  # fmt: skip
def test_single_pass_every_kind_of_difference_count(nints, ngroups, seed):
    """The single-pass path with up to 64 differences per pixel (lane medians across each row)
    and beyond (pixel by pixel): ties, NaN/inf data, SATURATED/DO_NOT_USE groups, several
    jumps per ramp, neighbour flagging."""
    rng = np.random.default_rng(200 + seed)
    ny, nx = 11, 37
    data, gdq, gain, rn = rough_ramps(rng, (nints, ngroups, ny, nx), dnu=0.04, sat=0.03,
                                      jumps=((0.04, 400.0), (0.03, -300.0), (0.03, 90.0)))
    params = JumpParams(min_jump_to_flag_neighbors=5.0)
    ours, g = _compare(data, gdq, np.zeros((ny, nx), np.uint32), gain, rn, params=params)
    assert g.path == "single" and ours.n_primary > 0


def test_uint32_groupdq_and_preexisting_pixeldq():
    data, gdq, pdq, gain, rn = _sim(1, 6, 12, 12, seed=18, cr_rate=0.05, bad_gain_fraction=0.1)
    pdq[:] = int(dqflags.DQ.HOT)
    _compare(data, gdq.astype(np.uint32), pdq, gain, rn)


@pytest.mark.parametrize("seed, ngroups, rej", [(1, 7, 4.0), (2, 8, 3.0), (3, 6, 4.0)])
def test_float32_rounding_near_ties(seed, ngroups, rej):
    """Group values from an alphabet of f32 neighbours (1000 +- 1 ulp, 2^-15 + 2^-38, ...):
    the iterative path's float32 rounding of |d| - c and of the clipped median decides ties
    here, so only an exact emulation of stcal's precision gives the same flags."""
    rng = np.random.default_rng(seed)
    u = 2.0**-14
    alphabet = np.array(
        [0, 2**-15, 2**-15 + 2**-38, 2**-15 + 2**-37, 1, 1 + 2**-23, 3, 7.5, 500, 500 + 2**-15,
         1000, 1000 + u, 1000 - u, 2000, -1000],
        np.float32,
    )  # fmt: skip
    data = rng.choice(alphabet, size=(1, ngroups, 40, 40)).astype(np.float32)
    rn = rng.choice(np.array([0.5, 1, 50, 222.2, 300], np.float32), size=(40, 40))
    params = JumpParams(
        rejection_threshold=rej,
        four_group_rejection_threshold=rej + 1,
        three_group_rejection_threshold=rej + 2,
    )
    _compare(
        data,
        np.zeros(data.shape, np.uint8),
        np.zeros((40, 40), np.uint32),
        np.ones((40, 40), np.float32),
        rn.astype(np.float32),
        params=params,
    )


def test_sigclip_bounds_match_astropy():
    """The numba sigma clipping reproduces astropy's sigma_clip bounds exactly (lanes with ties,
    outliers, NaN/inf, odd and even counts)."""
    from astropy.stats import sigma_clip

    from stcal_dask.kernels import _jump_numba as nb

    rng = np.random.default_rng(3)
    for t in range(400):
        n = int(rng.integers(1, 120))
        kind = t % 4
        if kind == 0:
            lane = rng.normal(0.0, 10.0, n)
        elif kind == 1:
            lane = np.round(rng.normal(100.0, 3.0, n)) + (rng.random(n) < 0.05) * 1000.0
        elif kind == 2:
            lane = rng.choice([0.0, 1.0, 2.5, 1e3, 1e3 + 2.0**-14, -7.0, 0.1], n)
        else:
            lane = np.float32(rng.normal(50, 5, n)).astype(np.float64)
            lane[rng.random(n) < 0.05] = np.nan
            lane[rng.random(n) < 0.05] = np.inf
        _, lo, hi = sigma_clip(lane[None], sigma=4.0, axis=1, masked=True, return_bounds=True)
        finite = lane[np.isfinite(lane)].copy()
        buf = np.empty(max(n, 1))
        buf[: finite.size] = finite
        got = nb.sigclip_bounds(buf, finite.size, 4.0, 5)
        np.testing.assert_array_equal(got, (lo[0], hi[0]))
