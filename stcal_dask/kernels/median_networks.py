"""Median selection networks shared by the numba kernels (pure Python, no numba).

The jump and ramp kernels take the median of a handful of values per pixel (the first
differences of one ramp: 9 for a 10-group exposure). A sorting network is data-independent,
so it compiles to branch-free min/max code; pruned to the comparators the middle output(s)
depend on it needs fewer comparators than the full sort (24 instead of 28 for 9 values).

The median of a set of numbers does not depend on how it is found, so every method here gives
the same value bit for bit as a sort (even counts: ``(lo + hi) / 2``, as numpy's median).

:func:`batcher_pairs` and :func:`median_pairs` give the comparator lists (any n), from which
:mod:`stcal_dask.kernels._median_numba` builds its tables. The straight-line module
:mod:`stcal_dask.kernels._median_small` is generated from the same lists by
``tools/gen_median_small.py`` (outside the package; a test checks the committed module is up
to date).
"""

from __future__ import annotations


def batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Compare-exchange pairs ``(i, j)``, i < j, of Batcher's odd-even merge sort of ``n``
    elements (any n: the network of the next power of two without the comparators that only
    touch padding)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def median_pairs(n: int) -> list[tuple[int, int]]:
    """:func:`batcher_pairs` of ``n`` pruned to the comparators the middle output(s) depend on
    (position n // 2, and n // 2 - 1 for even n)."""
    if n == 0:
        return []
    need = {n // 2} if n % 2 else {n // 2 - 1, n // 2}
    keep = []
    for a, b in reversed(batcher_pairs(n)):
        if a in need or b in need:
            keep.append((a, b))
            need |= {a, b}
    return keep[::-1]
