"""Write ``stcal_dask/kernels/_median_small.py``: straight-line median networks.

One straight-line block per n <= :data:`SMALL_MAX` with the values held in local variables
(registers) instead of a scratch buffer: ``median_small`` (one set of values) and
``clipped_mid_lanes`` (many pixels at once, the jump kernel's clipped median: a loop over
pixels whose body is branch-free, so that the compiler vectorises it across pixels), from the
comparator lists of :mod:`stcal_dask.kernels.median_networks`. The module is generated once and
committed (numba's on-disk cache needs a real source file); ``python tools/gen_median_small.py``
rewrites it and ``tests/test_median_networks.py`` checks it is up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stcal_dask.kernels.median_networks import batcher_pairs, median_pairs  # noqa: E402

SMALL_MAX = 12
"""Largest count with a straight-line median in ``_median_small``."""

TARGET = REPO / "stcal_dask" / "kernels" / "_median_small.py"


def _median_block(n: int) -> list[str]:
    """The median of ``buf[:n]`` in single-assignment form with min/max, returned (numba
    compiles re-assigned names and conditional expressions far more slowly; LLVM turns both
    into the same branch-free code): the branch of ``median_small`` for ``n``, its names
    suffixed ``_<n>`` so that no name is assigned in two branches. Outputs of a
    compare-exchange that nothing reads later are left out."""
    pairs = median_pairs(n)
    h = n // 2
    # backward liveness: which (comparator, side) results are read later
    live = {h} if n % 2 else {h - 1, h}
    keep = []
    for a, b in reversed(pairs):
        want = (a in live, b in live)
        keep.append(want)
        if any(want):
            live |= {a, b}
    keep.reverse()
    cur = [f"v{i}_{n}" for i in range(n)]
    lines = [f"        v{i}_{n} = buf[{i}]" for i in range(n)]
    for k, ((a, b), (need_lo, need_hi)) in enumerate(zip(pairs, keep, strict=True)):
        va, vb = cur[a], cur[b]
        if need_lo:
            lines.append(f"        l{k}_{n} = min({va}, {vb})")
            cur[a] = f"l{k}_{n}"
        if need_hi:
            lines.append(f"        h{k}_{n} = max({va}, {vb})")
            cur[b] = f"h{k}_{n}"
    if n % 2:
        lines.append(f"        return {cur[h]}")
    else:
        lines.append(f"        return ({cur[h - 1]} + {cur[h]}) / 2.0")
    return lines


def _median_small() -> list[str]:
    """``median_small(buf, n)``: one branch per count (:func:`_median_block`), all in one
    function (compiled once; a function per count and one calling them cost numba twice as
    much time and run slower)."""
    lines = ["", "", "@njit(cache=True, nogil=True)", "def median_small(buf, n):"]
    for n in range(1, SMALL_MAX + 1):
        lines.append(f"    {'if' if n == 1 else 'elif'} n == {n}:")
        lines += _median_block(n)
    return lines + ["    return float(\"nan\")  # n out of range: the callers never ask"]


def _lane_functions(n: int) -> list[str]:
    """``clipped_mid_<n>`` and ``all_mid_<n>``: for each lane (column) ``x < nl`` of ``apl``
    (n rows, NaN = unusable): ``nuse`` (usable count), ``mxv``/``mnv`` (their extremes), and
    the kept values (``all_mid``: all usable ones; ``clipped_mid``: with >= 4 usable, those
    below the maximum): their count ``cnt`` and the ``(cnt - 1) // 2``-th and ``cnt // 2``-th
    smallest in ``lo``/``hi``, from a full sort with +inf in the places of the values not kept.
    Counts are int32 and values stay in ``apl``'s dtype: narrow lanes let the compiler put more
    pixels in one vector register. Both take a scratch ``spl`` that they do not use: every lane
    function has the signature ``(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)``, so that a
    kernel can call the one it needs through a function pointer.

    Each is written out in full (a shared body inlined by numba would have its whole IR copied
    into each caller, which costs more than compiling it) and without conditional expressions
    (each one is a branch in numba's IR, and numba's passes slow down with the number of
    blocks): the extremes by ``max``/``min`` (``max(m, a)`` is ``a if a > m else m``, NaN
    leaving ``m``), the other choices by ``select`` (one LLVM ``select``). LLVM compiles the
    same machine code from either form."""
    pairs = batcher_pairs(n)
    L = []
    for name, keep_all in (("clipped_mid", False), ("all_mid", True)):
        L += ["", "", "@njit(cache=True, nogil=True)",
              f"def {name}_{n}(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi):",
              "    inf = apl.dtype.type(np.inf)",
              *(["    one = np.int32(1)"] if n > 1 else []),
              *([] if keep_all else ["    four = np.int32(4)"]),
              "    for x in range(nl):"]
        L += [f"        a{i} = apl[{i}, x]" for i in range(n)]
        L.append("        u = np.int32(a0 == a0)")
        L += [f"        u += np.int32(a{i} == a{i})" for i in range(1, n)]
        L.append("        mx = -inf")
        L.append("        mn = inf")
        for i in range(n):
            L.append(f"        mx = max(mx, a{i})")
            L.append(f"        mn = min(mn, a{i})")
        if not keep_all:
            L.append("        few = u < four")
        for i in range(n):
            if keep_all:
                L.append(f"        k{i} = a{i} == a{i}")
            else:
                L.append(f"        k{i} = (a{i} == a{i}) & (few | (a{i} != mx))")
            L.append(f"        v{i} = select(k{i}, a{i}, inf)")
        L.append("        m = np.int32(k0)")
        L += [f"        m += np.int32(k{i})" for i in range(1, n)]
        for a, b in pairs:
            L.append(f"        v{a}, v{b} = min(v{a}, v{b}), max(v{a}, v{b})")
        if n > 1:
            L.append("        il = (m - one) >> one")
            L.append("        ih = m >> one")
        L.append("        l = v0")
        L.append("        h = v0")
        for i in range(1, n):
            L.append(f"        l = select(il == {i}, v{i}, l)")
            L.append(f"        h = select(ih == {i}, v{i}, h)")
        L += ["        nuse[x] = u", "        mxv[x] = mx", "        mnv[x] = mn",
              "        cnt[x] = m", "        lo[x] = l", "        hi[x] = h"]
    return L


_SELECT = [
    "",
    "",
    "@intrinsic",
    "def select(typingctx, cond, a, b):",
    '    """``a if cond else b`` (``a``, ``b`` of one type) as one LLVM ``select``: no branch in',
    '    numba\'s IR."""',
    "    if not isinstance(cond, types.Boolean) or a != b:",
    "        return None",
    "",
    "    def codegen(context, builder, sig, args):",
    "        return builder.select(args[0], args[1], args[2])",
    "",
    "    return a(types.boolean, a, a), codegen",
]


def generate_source() -> str:
    """Source text of :mod:`stcal_dask.kernels._median_small`."""
    out = [
        f'"""Straight-line medians of 1..{SMALL_MAX} values.',
        "",
        "GENERATED by ``python tools/gen_median_small.py``; do not edit.",
        "",
        "``median_small(buf, n)``: the median of ``buf[:n]`` (no NaN inside, 1 <= n <= "
        f"{SMALL_MAX}),",
        "``(lo + hi) / 2`` for even n; ``buf`` is only read. Each count has its own branch of",
        "compare-exchanges on local variables (Batcher's network pruned to the middle outputs).",
        "",
        "``clipped_mid_<n>(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)`` (``CLIPPED_MID[n]``) and",
        "``all_mid_<n>`` (``ALL_MID[n]``): the same networks (full sorts) across the first ``nl``",
        "columns of ``apl`` (n rows) at once: per column the usable (non-NaN) count, maximum and",
        "minimum, and the middle pair of the kept values (with >= 4 usable, those below the",
        "maximum; ``all_mid``: all usable ones); ``spl`` is unused (the signature is that of",
        "every lane median, see ``stcal_dask.kernels._median_numba.lane_mid``).",
        '"""',
        "",
        "import numpy as np",
        "from numba import njit, types",
        "from numba.extending import intrinsic",
        "",
        "from stcal_dask.kernels.numba_cache import lock_cache_writes",
        "",
        f"SMALL_MAX = {SMALL_MAX}",
        *_SELECT,
    ]
    out += _median_small()
    for n in range(1, SMALL_MAX + 1):
        out += _lane_functions(n)
    for name, what in (("clipped_mid", "clipping the maximum"), ("all_mid", "keeping all")):
        out += ["", "", f"{name.upper()} = (", "    None,"]
        out += [f"    {name}_{n}," for n in range(1, SMALL_MAX + 1)]
        out += [")", f'"""``{name.upper()}[n]``: the lane function of n values ({what}; '
                '1 <= n <= SMALL_MAX)."""']
    out += ["", "lock_cache_writes(globals())"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    TARGET.write_text(generate_source())
    print(f"wrote {TARGET}")
