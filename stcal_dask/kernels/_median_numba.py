"""Medians of a handful of values per pixel for the numba kernels (jump and ramp fit).

:func:`median_prefix` takes the median of ``buf[:n]`` in place, with no data-dependent branch
up to 32 values: straight-line register networks for n <= ``SMALL_MAX``
(:mod:`._median_small`), pruned Batcher median networks (:mod:`.median_networks`) held in
module tables up to 32, and Wirth's selection beyond. The median does not depend on the method,
so every count gives the value a sort would, bit for bit.

Across the pixels of a row (lanes, pixels along the inner loops): :func:`lane_mid` (the
iterative jump path's clipped medians and the ramp fit's) and :func:`nanmedian_lanes` (NaN-
skipping medians of up to 64 values: the single-pass jump path and the shower ratios). The
kernels take :func:`lane_mid`'s function as a function-pointer argument, so that only the count
a tile needs is compiled, once, apart from them (see :class:`FunctionArg`).
"""

from __future__ import annotations

import numba.experimental.function_type  # noqa: F401  (typing of function-pointer arguments)
import numpy as np
from numba import njit, types
from numba.core.typing import signature
from numba.np.numpy_support import from_dtype

from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_small import ALL_MID, CLIPPED_MID, SMALL_MAX, median_small
from stcal_dask.kernels.median_networks import batcher_pairs, median_pairs
from stcal_dask.kernels.numba_cache import compiled, lock_cache_writes


def pair_tables(pairs_of, nmax: int):
    """Comparator tables for numba: ``(off, a, b)`` with the pairs of count n at
    ``a[off[n]:off[n + 1]]``, ``b[...]``, for n = 0..nmax."""
    nets = [pairs_of(n) for n in range(nmax + 1)]
    off = np.cumsum([0] + [len(t) for t in nets]).astype(np.int64)
    a = np.array([p for t in nets for p, _ in t], dtype=np.int64)
    b = np.array([q for t in nets for _, q in t], dtype=np.int64)
    return off, a, b


_NET_MAX = 32
_NET_OFF, _NET_A, _NET_B = pair_tables(median_pairs, _NET_MAX)


@njit(cache=True, nogil=True, inline="always")
def kth_smallest(a, n, k):
    """k-th smallest of ``a[:n]`` by Wirth's selection, permuting ``a`` in place exactly as
    astropy's C sigma clipping does (the permutation decides the order of its sums)."""
    lo = 0
    hi = n - 1
    while lo < hi:
        v = a[k]
        i = lo
        j = hi
        while True:
            while a[i] < v:
                i += 1
            while v < a[j]:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
            if i > j:
                break
        if j < k:
            lo = i
        if k < i:
            hi = j
    return a[k]


@njit(cache=True, nogil=True)
def _sort_prefix(buf, n):
    """Bring the middle element(s) of ``buf[:n]`` (no NaN, n <= 32) to their sorted positions,
    in place, with a branch-free median network."""
    for t in range(_NET_OFF[n], _NET_OFF[n + 1]):
        a = _NET_A[t]
        b = _NET_B[t]
        va = buf[a]
        vb = buf[b]
        buf[a] = vb if vb < va else va
        buf[b] = va if vb < va else vb


@njit(cache=True, nogil=True, inline="always")
def median_prefix(buf, n):
    """Median of ``buf[:n]`` (no NaN inside); NaN when n == 0. Reorders ``buf[:n]``.

    Even counts give ``(lo + hi) / 2`` as numpy's (nan)median does.
    """
    if n == 0:
        return np.nan
    if n <= SMALL_MAX:
        return median_small(buf, n)
    h = n // 2
    if n > _NET_MAX:
        # selection: the k-th smallest values do not depend on the method
        if n % 2 == 1:
            return kth_smallest(buf, n, h)
        upper = kth_smallest(buf, n, h)
        return (kth_smallest(buf, n, h - 1) + upper) / 2.0
    _sort_prefix(buf, n)
    if n % 2 == 1:
        return buf[h]
    return (buf[h - 1] + buf[h]) / 2.0


SORT_MAX = 32
"""Largest count that the lane functions (:func:`lane_mid`) sort across lanes."""
_SORT_OFF, _SORT_A, _SORT_B = pair_tables(batcher_pairs, SORT_MAX)


@njit(cache=True, nogil=True, inline="always")
def sort_rows(spl, nl, n, off, a, b):
    """Sort the first ``nl`` columns of rows ``0..n-1`` of ``spl`` (no NaN), in place, with the
    comparator network of count ``n`` in the tables ``(off, a, b)`` of :func:`pair_tables`, one
    compare-exchange at a time across the columns (branch-free, vectorised)."""
    for t in range(off[n], off[n + 1]):
        ra = spl[a[t]]
        rb = spl[b[t]]
        for x in range(nl):
            va = ra[x]
            vb = rb[x]
            ra[x] = vb if vb < va else va
            rb[x] = va if vb < va else vb


@njit(cache=True, nogil=True, inline="always")
def _lanes_rows(apl, spl, nl, keep_all, nuse, mxv, mnv, cnt, lo, hi):
    """The lanes (see :func:`lane_mid`) of any count ``ntot = apl.shape[0]`` up to
    :data:`SORT_MAX`: the full sorting network of that count, one compare-exchange at a time
    across the lanes (rows of ``spl``, scratch like ``apl``), the middle pair gathered
    branch-free; the same values as the straight-line functions of
    :mod:`~stcal_dask.kernels._median_small`."""
    ntot = apl.shape[0]
    inf = apl.dtype.type(np.inf)
    for n in range(nl):
        nuse[n] = 0
        cnt[n] = 0
        mxv[n] = -inf
        mnv[n] = inf
    for j in range(ntot):
        aj = apl[j]
        for n in range(nl):
            a = aj[n]
            nuse[n] += a == a
            mx = mxv[n]
            mn = mnv[n]
            mxv[n] = a if a > mx else mx
            mnv[n] = a if a < mn else mn
    for j in range(ntot):
        aj = apl[j]
        sj = spl[j]
        for n in range(nl):
            a = aj[n]
            keep = (a == a) & ((nuse[n] < 4) | keep_all | (a != mxv[n]))
            sj[n] = a if keep else inf
            cnt[n] += keep
    sort_rows(spl, nl, ntot, _SORT_OFF, _SORT_A, _SORT_B)
    for n in range(nl):
        lo[n] = spl[0, n]
        hi[n] = spl[0, n]
    for j in range(1, ntot):
        sj = spl[j]
        for n in range(nl):
            m = cnt[n]
            lo[n] = sj[n] if (m - 1) >> 1 == j else lo[n]
            hi[n] = sj[n] if m >> 1 == j else hi[n]


@njit(cache=True, nogil=True)
def clipped_mid_rows(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi):
    """The lane function (see :func:`lane_mid`) of the count ``apl.shape[0]`` (<=
    :data:`SORT_MAX`) clipping the maximum."""
    _lanes_rows(apl, spl, nl, False, nuse, mxv, mnv, cnt, lo, hi)


@njit(cache=True, nogil=True)
def all_mid_rows(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi):
    """The lane function (see :func:`lane_mid`) of the count ``apl.shape[0]`` (<=
    :data:`SORT_MAX`) keeping every value."""
    _lanes_rows(apl, spl, nl, True, nuse, mxv, mnv, cnt, lo, hi)


def _lane_signature(dtype) -> signature:
    fl = from_dtype(np.dtype(dtype))
    a2, a1 = types.Array(fl, 2, "C"), types.Array(fl, 1, "C")
    i1 = types.Array(types.int32, 1, "C")
    return signature(types.void, a2, a2, types.int64, i1, a1, a1, i1, a1, a1)


class FunctionArg(types.WrapperAddressProtocol):
    """A numba function passed to the kernels as a function-pointer argument (numba's
    first-class function type), e.g. a lane function (see :func:`lane_mid`).

    A numba function that calls another links a copy of the callee's code into its own and
    optimises it again, at every level of the call chain; passed as an argument (typed as a
    function pointer of the signature ``sig``), the callee is compiled (or loaded from the cache)
    on its own, on first use, and only where a tile calls it: the kernels that take it compile
    without it, and a kernel compiled once serves every function of that signature (e.g. the
    lane functions of every count, or a stub that does nothing where a path is not taken).
    ``dispatcher`` is the numba function itself (callable from Python).
    """

    def __init__(self, dispatcher, sig):
        self.dispatcher = dispatcher
        self._sig = sig
        self._addr = None

    def signature(self):
        """The numba signature of the function."""
        return self._sig

    def __wrapper_address__(self):
        """Address of the compiled function's C-callable wrapper (compiling it on first use)."""
        if self._addr is None:
            cres = compiled(self.dispatcher, self._sig.args)
            self._addr = cres.library.get_pointer_to_function(cres.fndesc.llvm_cfunc_wrapper_name)
        return self._addr


@njit(cache=True, nogil=True)
def _lane_unused(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi):
    """The lane function for a count no kernel calls one with (see :func:`lane_mid`)."""


_LANE_MIDS: dict[tuple[str, int, bool], FunctionArg] = {}


def lane_mid(dtype, n: int, keep_all: bool = False) -> FunctionArg:
    """The lane function of ``n`` values in ``dtype`` (float32 or float64), for the kernels'
    ``mid`` arguments: ``mid(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)``.

    Per lane (column ``x < nl`` of ``apl``, n rows, NaN = unusable): ``nuse`` the usable count,
    ``mxv``/``mnv`` their extremes, and of the kept values (all usable ones with ``keep_all``;
    else with >= 4 usable, those below the maximum, as stcal's clipped median) the count ``cnt``
    and the ``(cnt - 1) // 2``-th and ``cnt // 2``-th smallest in ``lo``/``hi``: the median is
    ``(lo + hi) / 2`` (for odd counts exactly ``lo``). ``spl`` is scratch like ``apl``;
    ``nuse``/``cnt`` int32, the others in ``apl``'s dtype (:func:`mid_scratch` makes them).
    Straight-line networks in registers for 1 <= n <= ``SMALL_MAX``
    (:mod:`._median_small`), :func:`clipped_mid_rows` up to :data:`SORT_MAX`; for another
    count (a kernel that will not call it) one that does nothing.
    """
    key = (np.dtype(dtype).name, int(n), bool(keep_all))
    found = _LANE_MIDS.get(key)
    if found is None:
        if 1 <= n <= SMALL_MAX:
            disp = (ALL_MID if keep_all else CLIPPED_MID)[n]
        elif SMALL_MAX < n <= SORT_MAX:
            disp = all_mid_rows if keep_all else clipped_mid_rows
        else:
            disp = _lane_unused
        found = _LANE_MIDS[key] = FunctionArg(disp, _lane_signature(dtype))
    return found


@njit(cache=True, nogil=True)
def mid_scratch(apl):
    """The arrays a lane function (:func:`lane_mid`) fills or uses for the lanes of ``apl`` (n, nl):
    ``(spl, nuse, mxv, mnv, cnt, lo, hi)``, counts int32, the others in ``apl``'s dtype."""
    nl = apl.shape[1]
    return (np.empty_like(apl), np.empty(nl, np.int32), np.empty(nl, apl.dtype),
            np.empty(nl, apl.dtype), np.empty(nl, np.int32), np.empty(nl, apl.dtype),
            np.empty(nl, apl.dtype))  # fmt: skip


@njit(cache=True, nogil=True)
def _median_prefix_apart(buf, n):
    """:func:`median_prefix` compiled on its own (see :func:`median_function`)."""
    return median_prefix(buf, n)


_MEDIAN_FUNCTION: list[FunctionArg] = []


def median_function() -> FunctionArg:
    """:func:`median_prefix` of a float64 C array's first ``n`` values as a function-pointer
    argument (``median(buf, n) -> float64``): the median networks and the sort it calls are
    compiled once, on their own, instead of being linked into every kernel that calls them
    and optimised again there."""
    if not _MEDIAN_FUNCTION:
        sig = signature(types.float64, types.Array(types.float64, 1, "C"), types.int64)
        _MEDIAN_FUNCTION.append(FunctionArg(_median_prefix_apart, sig))
    return _MEDIAN_FUNCTION[0]


LANE_MEDIAN_MAX = 64
"""Largest number of values per lane whose middle pair :func:`nanmedian_lanes` finds."""
_LM_OFF, _LM_A, _LM_B = pair_tables(median_pairs, LANE_MEDIAN_MAX)


@njit(cache=True, nogil=True)
def nanmedian_lanes(apl, nl, spl, cnt, left, lo, hi):
    """Per lane (column ``x < nl`` of ``apl`` (n, >= nl), 1 <= n <= :data:`LANE_MEDIAN_MAX`,
    NaN = left out), into the scratch ``(spl, cnt, left, lo, hi)`` from
    :func:`lane_median_scratch`: ``cnt[x]`` the lane's non-NaN count and ``lo[x]``/``hi[x]`` the
    ``(cnt - 1) // 2``-th and ``cnt // 2``-th smallest of its values, so that its median is
    ``lo`` for odd counts and ``(lo + hi) / 2`` for even ones (``lo = -inf``, ``hi = +inf``
    when there is no value: their mean is NaN, as numpy's nanmedian of nothing).

    One median network run across the lanes, branch-free: the values are copied into ``spl``
    with n rounded up to an even ``N``, and of a lane's ``u = N - cnt`` left-out places the
    first ``u // 2`` get ``-inf`` and the others ``+inf``; the lane's middle pair (one value
    twice when ``cnt`` is odd) then lands on the sorted places ``N // 2 - 1`` and ``N // 2``
    whatever ``cnt`` is: the only outputs the pruned network
    (:func:`~stcal_dask.kernels.median_networks.median_pairs`) computes. Infinite values of the
    lane tie with the padding without changing any sorted value.
    """
    n = apl.shape[0]
    big = n + (n & 1)
    inf = apl.dtype.type(np.inf)
    for x in range(nl):
        cnt[x] = 0
    for j in range(n):
        aj = apl[j]
        for x in range(nl):
            cnt[x] += aj[x] == aj[x]
    for x in range(nl):
        left[x] = (big - cnt[x]) // 2  # left-out places still to get -inf
    for j in range(big):
        sj = spl[j]
        if j < n:
            aj = apl[j]
            for x in range(nl):
                v = aj[x]
                k = left[x]
                ok = v == v
                sj[x] = v if ok else (-inf if k > 0 else inf)
                left[x] = k - (not ok)
        else:
            for x in range(nl):
                sj[x] = -inf if left[x] > 0 else inf
    sort_rows(spl, nl, big, _LM_OFF, _LM_A, _LM_B)
    s0 = spl[big // 2 - 1]
    s1 = spl[big // 2]
    for x in range(nl):
        v0 = s0[x]
        lo[x] = v0
        hi[x] = v0 if cnt[x] & 1 else s1[x]


@njit(cache=True, nogil=True)
def lane_median_scratch(n, nl, proto):
    """The scratch ``(spl, cnt, left, lo, hi)`` of :func:`nanmedian_lanes` for (n, nl) lanes
    of ``proto``'s dtype (an array): ``spl`` (n rounded up to even, nl), int64 ``cnt`` and
    ``left`` (nl,), ``lo``/``hi`` (nl,)."""
    return (np.empty((n + (n & 1), nl), proto.dtype), np.empty(nl, np.int64),
            np.empty(nl, np.int64), np.empty(nl, proto.dtype), np.empty(nl, proto.dtype))


lock_cache_writes(globals())  # one process at a time adds to a function's cache entries
