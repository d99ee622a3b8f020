"""The straight-line median networks shared by the jump and ramp kernels, and numba's set-up
without scipy."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stcal_dask.kernels import _median_small, median_networks

GENERATOR = Path(__file__).resolve().parents[1] / "tools" / "gen_median_small.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_median_small", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_module_is_up_to_date():
    gen = _generator()
    assert gen.TARGET.read_text() == gen.generate_source(), "run: python tools/gen_median_small.py"
    assert _median_small.SMALL_MAX == gen.SMALL_MAX


@pytest.mark.parametrize("n", range(1, 40))
def test_pruned_network_brings_the_middle_into_place(n):
    """Applying only the pruned comparators to every 0/1 input (the 0-1 principle) leaves the
    middle position(s) equal to those of the sorted input."""
    pairs = median_networks.median_pairs(n)
    mids = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
    rng = np.random.default_rng(n)
    cases = rng.integers(0, 2, size=(512, n)) if n > 12 else (
        (np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    for bits in cases:
        v = list(bits)
        for a, b in pairs:
            if v[b] < v[a]:
                v[a], v[b] = v[b], v[a]
        srt = sorted(bits)
        assert [v[m] for m in mids] == [srt[m] for m in mids]


_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e300, -1e300]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_values, min_size=1, max_size=_median_small.SMALL_MAX))
def test_median_small_equals_numpy(values):
    buf = np.array(values, dtype=np.float64)
    before = buf.copy()
    got = _median_small.median_small(buf, len(values))
    want = np.median(before)
    assert got == want or (np.isnan(got) and np.isnan(want))
    np.testing.assert_array_equal(buf, before)  # only read


def test_median_small_reads_only_the_prefix():
    buf = np.array([5.0, 1.0, 3.0, -100.0, 1e9])
    assert _median_small.median_small(buf, 3) == 3.0
    assert _median_small.median_small(buf, 2) == 3.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 9, 12, 13, 32])
@pytest.mark.parametrize(("dtype", "keep_all"), [(np.float32, False), (np.float64, False),
                                                 (np.float64, True)])  # as the kernels use them
def test_lane_mid_equals_a_sort_per_column(n, dtype, keep_all):
    """The lane function of n values, across columns at once: usable count, extremes, and the
    middle pair of the kept values (all usable ones with keep_all; else with >= 4 usable, those
    below the maximum), ties, NaN and inf included; only the first nl columns written; the
    straight-line functions up to SMALL_MAX, the network across rows beyond."""
    from stcal_dask.kernels._median_numba import lane_mid

    rng = np.random.default_rng(n)
    nl = 300
    apl = rng.choice(np.array([0.0, 1.0, 1.0, 2.0, 3.5, 7.0, 7.0, np.inf, np.nan]), (n, nl + 5))
    apl[:, :40] = rng.integers(0, 3, (n, 40))  # many ties with the maximum
    apl[:, 40:60] = np.nan
    apl = apl.astype(dtype)
    nuse = np.full(nl + 5, -1, np.int32)
    cnt = nuse.copy()
    mxv, mnv, lo, hi = (np.full(nl + 5, -7.0, dtype) for _ in range(4))
    fn = lane_mid(dtype, n, keep_all)
    table = _median_small.ALL_MID if keep_all else _median_small.CLIPPED_MID
    assert n > _median_small.SMALL_MAX or fn.dispatcher is table[n]
    spl = np.empty_like(apl)
    fn.dispatcher(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)
    for x in range(nl + 5):
        if x >= nl:  # only the first nl columns
            assert nuse[x] == -1 and lo[x] == -7.0
            continue
        col = apl[:, x]
        usable = col[~np.isnan(col)]
        assert nuse[x] == usable.size
        if usable.size == 0:
            assert cnt[x] == 0
            continue
        assert mxv[x] == usable.max() and mnv[x] == usable.min()
        few = usable.size < 4 or keep_all
        kept = np.sort(usable if few else usable[usable != usable.max()])
        assert cnt[x] == kept.size
        if kept.size:
            assert lo[x] == kept[(kept.size - 1) // 2] and hi[x] == kept[kept.size // 2]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 12, 13, 31, 32, 33, 38, 57, 63, 64])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nanmedian_lanes_equals_numpy_nanmedian(n, dtype):
    """The lane medians (NaN left out; -inf/+inf padding of the left-out places) give per
    column the middle pair of a sort of its non-NaN values, for every count from 0 to n,
    with ties, infinities of both signs and columns of NaN only; only the first nl columns."""
    from stcal_dask.kernels import _median_numba as mn

    rng = np.random.default_rng(1000 + n)
    nl = 400
    apl = rng.choice(np.array([0.0, -1.0, 1.0, 2.0, 3.5, 7.0, np.inf, -np.inf]), (n, nl + 3))
    apl[:, :100] = rng.normal(size=(n, 100))
    keep = rng.integers(0, n + 1, nl + 3)  # non-NaN count of each column, 0..n
    for x in range(nl + 3):
        apl[rng.permutation(n)[keep[x]:], x] = np.nan
    apl = apl.astype(dtype)
    scratch = mn.lane_median_scratch(n, nl + 3, apl)
    spl, cnt, left, lo, hi = scratch
    lo[:] = hi[:] = -7.0
    mn.nanmedian_lanes(apl, nl, *scratch)
    assert (lo[nl:] == -7.0).all()
    for x in range(nl):
        vals = np.sort(apl[:, x][~np.isnan(apl[:, x])])
        assert cnt[x] == vals.size == keep[x]
        if vals.size == 0:
            assert lo[x] == -np.inf and hi[x] == np.inf
            continue
        assert lo[x] == vals[(vals.size - 1) // 2] and hi[x] == vals[vals.size // 2]
        with np.errstate(invalid="ignore"):
            want = np.median(vals.astype(np.float64))
        got = lo[x] if vals.size % 2 else (np.float64(lo[x]) + np.float64(hi[x])) / 2.0
        np.testing.assert_equal(got, want)


def test_kernels_set_up_numba_without_scipy_linalg():
    """numba's CPU target set-up imports scipy.linalg only to choose np.correlate's BLAS path
    (~0.35 s of every worker's start); the kernels hide it, and scipy still imports later."""
    code = (
        "import sys, numpy as np\n"
        "from stcal_dask.engine.cluster import _warm_kernels\n"
        "_warm_kernels()\n"
        "assert 'scipy.linalg' not in sys.modules, 'scipy.linalg was imported'\n"
        "import scipy.linalg\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
