"""run_tiled: any spatial tiling (1-pixel tiles, irregular edges) gives the whole-frame result."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiling import check_edges, even_edges, run_tiled

from stcal_dask.kernels.jump import (
    JumpParams,
    combine_jump_globals,
    detect_jumps,
    detect_jumps_tile,
    jump_globals_partial,
    jump_halo,
    merge_sigclip_reset_partials,
    sigclip_reset_partial,
    total_primary_crs,
    with_sigclip_reset,
)
from stcal_dask.sim.ramp import simulate_exposure

NFRAMES = 1
GROUP_TIME = 10.0


def _exposure(nints=2, ngroups=5, ny=13, nx=11, seed=21, **kw):
    e = simulate_exposure(
        nints=nints,
        ngroups=ngroups,
        ny=ny,
        nx=nx,
        seed=seed,
        cr_rate=0.08,
        bad_gain_fraction=0.05,
        nan_fraction=0.01,
        do_not_use_fraction=0.02,
        **kw,
    )
    return e.data, e.groupdq, e.pixeldq, e.gain, e.readnoise


def _tiled_globals(arrays, params, y_edges, x_edges):
    """The dataflow sequence of the jump module docstring, with numpy tiles."""
    data, gdq, _pdq, gain, _rn = arrays
    tiles = [
        (slice(y0, y1), slice(x0, x1))
        for y0, y1 in zip(y_edges[:-1], y_edges[1:], strict=True)
        for x0, x1 in zip(x_edges[:-1], x_edges[1:], strict=True)
    ]
    g = combine_jump_globals(
        [jump_globals_partial(gdq[(..., *t)], gain[t]) for t in tiles], params=params
    )
    if g.needs_sigclip_pass:
        parts = [
            sigclip_reset_partial(
                data[(..., *t)], gdq[(..., *t)], gain[t], params=params, jump_globals=g
            )
            for t in tiles
        ]
        g = with_sigclip_reset(g, merge_sigclip_reset_partials(*parts))
    return g


def _check_tiling(arrays, params, y_edges, x_edges):
    whole = detect_jumps(*arrays, params=params, nframes=NFRAMES, group_time=GROUP_TIME)
    g = _tiled_globals(arrays, params, y_edges, x_edges)
    kernel = partial(
        detect_jumps_tile, params=params, nframes=NFRAMES, group_time=GROUP_TIME, jump_globals=g
    )
    tiled = run_tiled(kernel, arrays, y_edges, x_edges, halo=jump_halo(params))
    assert type(tiled).__name__ == "JumpResult"
    np.testing.assert_array_equal(tiled.groupdq, whole.groupdq)
    np.testing.assert_array_equal(tiled.pixeldq, whole.pixeldq)
    np.testing.assert_array_equal(tiled.primary_count, whole.primary_count)
    assert total_primary_crs(tiled.n_primary, g) == total_primary_crs(whole.n_primary, g)
    return whole


def _edges_strategy(n):
    return st.sets(st.integers(1, n - 1), max_size=n - 1).map(lambda s: [0, *sorted(s), n])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ye=_edges_strategy(13), xe=_edges_strategy(11), after=st.booleans())
def test_random_tilings_match_whole_frame(ye, xe, after):
    params = JumpParams(
        after_jump_flag_dn1=20.0 if after else 0.0,
        after_jump_flag_time1=25.0 if after else 0.0,
        min_jump_to_flag_neighbors=3.0,
    )
    _check_tiling(_exposure(), params, ye, xe)


@pytest.mark.parametrize(
    "ye, xe",
    [
        (list(range(14)), list(range(12))),  # 1-pixel tiles
        ([0, 1, 13], [0, 10, 11]),  # slivers at the edges
        ([0, 13], [0, 11]),  # one tile
        (even_edges(13, 4), even_edges(11, 3)),
    ],
)
@pytest.mark.parametrize("flag_4_neighbors", [True, False])
def test_fixed_tilings(ye, xe, flag_4_neighbors):
    params = JumpParams(flag_4_neighbors=flag_4_neighbors, min_jump_to_flag_neighbors=3.0)
    whole = _check_tiling(_exposure(), params, ye, xe)
    assert whole.n_primary > 0


def test_tiling_sigclip_path_with_plane_reset():
    """Sigma-clip path: the plane-reset rule needs the second global pass; tiles still agree."""
    data, gdq, pdq, gain, rn = _exposure(nints=101, ngroups=3, ny=3, nx=4, seed=5)
    gdq = gdq.copy()
    data = data.copy()
    data[50, 2] += 5000.0  # every pixel jumps in integration 50, group 2 -> plane reset
    gdq[50, 2, 0, 0] = 0
    arrays = (data, gdq, pdq, gain, rn)
    params = JumpParams()
    g = _tiled_globals(arrays, params, [0, 1, 3], [0, 2, 3, 4])
    assert g.path == "sigclip" and g.sigclip_reset[50, 2]
    for ye, xe in [([0, 1, 3], [0, 2, 3, 4]), ([0, 1, 2, 3], [0, 1, 2, 3, 4])]:
        _check_tiling(arrays, params, ye, xe)


def test_skip_path_tiled():
    arrays = _exposure(nints=2, ngroups=2)
    _check_tiling(arrays, JumpParams(), [0, 5, 13], [0, 1, 11])


def test_run_tiled_plain_array_and_halo_clipping():
    a = np.arange(7 * 5, dtype=np.int64).reshape(7, 5)

    def box_sum(t):  # 3x3 neighbourhood sum, edges clipped
        p = np.pad(t, 1)
        return sum(
            p[1 + dy : 1 + dy + t.shape[0], 1 + dx : 1 + dx + t.shape[1]]
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
        )

    whole = box_sum(a)
    out = run_tiled(box_sum, [a], [0, 2, 3, 7], [0, 1, 4, 5], halo=1)
    np.testing.assert_array_equal(out, whole)
    # Without a halo the tile borders differ: the halo is really used.
    assert not np.array_equal(run_tiled(box_sum, [a], [0, 2, 3, 7], [0, 1, 4, 5]), whole)


def test_edges_validation():
    assert check_edges([0, 3, 5], 5) == [0, 3, 5]
    for bad in ([1, 5], [0, 4], [0, 3, 3, 5], [0]):
        with pytest.raises(ValueError):
            check_edges(bad, 5)
    with pytest.raises(ValueError):
        even_edges(5, 0)
    with pytest.raises(ValueError):
        run_tiled(lambda t: t, [np.zeros((2, 2)), np.zeros((3, 2))], [0, 2], [0, 2])
