"""Numba internals of the two-point-difference jump kernel (see :mod:`stcal_dask.kernels.jump`).

:func:`run_frame` streams the frame row by row through small buffers (three rows of group DQ,
first differences and neighbour-centre flags, and one row of electrons, all group-major
as the frame is: the loops run along a row's pixels, unit-stride), so memory beyond the inputs
and outputs is O(nx * nints * ngroups). Row y is detected, then post-processed (neighbour
flags, after-jump flags, redundant-bit removal) once row y + 1 has been detected, and written
out.

Detection on the iterative path (fewer differences per pixel than ``min_diffs_single_pass``:
the usual JWST case) runs across the pixels of a row at once (:func:`_iterative_row`): round 1
over the whole row, the flags and later rounds only over the pixels still going on (a round's
largest ratio is that of its largest or smallest value, and the differences at it are found by
their float32 numerators, no ratio divided out per difference), with
branch-free loops that the compiler vectorises, and the clipped medians from sorting networks
run across pixels (straight-line ones in registers up to 12 differences, the lane function
:func:`~stcal_dask.kernels._median_numba.lane_mid` of the pixels' count of differences,
passed to :func:`run_frame` as ``mid``). The single-pass path (many groups) runs
across the pixels of a row too (:func:`single_row`, one median network across the row up to
64 differences per pixel). The other cases detect pixel by pixel (:func:`_detect_pixel`, the
reference the row-wise paths are tested against); medians use branch-free sorting networks.
The single-pass and pixel-by-pixel detections are passed to :func:`run_frame` as
function-pointer arguments too, so that a frame compiles only the detection it runs.

Precision follows stcal 1.20.0 exactly (that is what makes the DQ bit-identical):

* electrons ``D = data * gain`` are formed in the product dtype of the inputs (float32 for JWST)
  and the first difference ``D[k+1] - D[k]`` is taken in that dtype, then widened to float64;
* the signed median, sigma and all ratios are float64;
* in the iterative path the numerator ``|d| - c`` is rounded to float32, and from the second
  round on the clipped median ``c`` is rounded to float32 as well (the first round uses the
  float64 median).

The row-wise detection functions use numpy's error model (a float division by zero gives
inf/NaN instead of raising): with Python's, every division by a sigma carries a zero test that
keeps its loop from vectorising, and no divisor there is ever zero (a zero sigma is NaN).

Path codes: ``PATH_SKIP`` (0), ``PATH_SIGCLIP`` (1), ``PATH_SINGLE`` (2), ``PATH_ITERATIVE`` (3),
``PATH_RESET_ONLY`` (4: the group DQ already holds the sigma-clip detections; only the plane
reset is applied).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from numba import njit, types
from numba.core.typing import signature
from numba.np.numpy_support import from_dtype

from stcal_dask import dqflags
from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_numba import LANE_MEDIAN_MAX as _LANE_MEDIAN_MAX
from stcal_dask.kernels._median_numba import SORT_MAX as _SORT_MAX
from stcal_dask.kernels._median_numba import (
    FunctionArg,
    lane_median_scratch,
    median_function,
    mid_scratch,
    nanmedian_lanes,
)
from stcal_dask.kernels._median_numba import kth_smallest as _kth_smallest
from stcal_dask.kernels._median_numba import median_prefix as _median_prefix
from stcal_dask.kernels.numba_cache import lock_cache_writes

PATH_SKIP = 0
PATH_SIGCLIP = 1
PATH_SINGLE = 2
PATH_ITERATIVE = 3
PATH_RESET_ONLY = 4

_DNU = dqflags.DO_NOT_USE
_SAT = dqflags.SATURATED
_JUMP = dqflags.JUMP_DET
_SAT_DNU = dqflags.SATURATED | dqflags.DO_NOT_USE


@njit(cache=True, nogil=True, inline="always")
def _nanmedian(vals, n, buf):
    """nanmedian of ``vals[:n]`` (float64) using ``buf`` as scratch."""
    m = np.int64(0)  # not a literal: callees are compiled for int64 only
    for j in range(n):
        v = vals[j]
        buf[m] = v  # kept only if counted: no data-dependent branch
        m += not math.isnan(v)
    return _median_prefix(buf, m)


@njit(cache=True, nogil=True, inline="always")
def _clipped_median(a, n, buf):
    """stcal's clipped median of ``a[:n]`` (values already absolute, NaN = unusable).

    Returns ``(c, n_use, max, min)``: n_use >= 4 drops every entry equal to the maximum and takes
    the median of the rest; n_use == 3 plain median; n_use == 2 the smaller value; otherwise NaN.
    ``max``/``min`` are the extremes of the usable values.
    """
    n_use = 0
    mx = -np.inf
    mn = np.inf
    for j in range(n):
        v = a[j]
        # NaN compares false: it neither counts nor moves the extremes (no branch needed)
        n_use += not math.isnan(v)
        mx = v if v > mx else mx
        mn = v if v < mn else mn
    if n_use < 2:
        return np.nan, n_use, mx, mn
    if n_use == 2:
        return mn, n_use, mx, mn
    m = np.int64(0)
    if n_use == 3:
        for j in range(n):
            v = a[j]
            buf[m] = v  # kept only if counted: no data-dependent branch
            m += not math.isnan(v)
        return _median_prefix(buf, m), n_use, mx, mn
    for j in range(n):
        v = a[j]
        buf[m] = v
        m += v != mx and not math.isnan(v)
    return _median_prefix(buf, m), n_use, mx, mn


@njit(cache=True, nogil=True)
def whole_plane_flags(gdq, bits):
    """(nints, ngroups) bool: True where *every* pixel of the plane has one of ``bits`` set."""
    nints, ngroups, ny, nx = gdq.shape
    out = np.ones((nints, ngroups), dtype=np.bool_)
    for i in range(nints):
        for k in range(ngroups):
            done = False
            for y in range(ny):
                for x in range(nx):
                    if (gdq[i, k, y, x] & bits) == 0:
                        out[i, k] = False
                        done = True
                        break
                if done:
                    break
    return out


@njit(cache=True, nogil=True)
def sigclip_bounds(buf, count, sigma, maxiters):
    """Clipping bounds of astropy's fast ``sigma_clip`` (median centre, population std) for the
    ``count`` finite values in ``buf`` (reordered in place); (NaN, NaN) when ``count`` is 0.

    Reproduces astropy 8's ``compute_sigma_clipped_bounds`` operation for operation: Wirth median
    (upper middle selected first for even counts), sequential mean and sum of squares over the
    permuted buffer, order-preserving compaction, stop when nothing or everything is clipped or
    after ``maxiters`` iterations.
    """
    if count == 0:
        return np.nan, np.nan
    iteration = 0
    while True:
        if count % 2 == 0:
            upper = _kth_smallest(buf, count, count // 2)
            lower = _kth_smallest(buf, count, count // 2 - 1)
            cen = 0.5 * (upper + lower)
        else:
            cen = _kth_smallest(buf, count, (count - 1) // 2)
        mean = 0.0
        for i in range(count):
            mean += buf[i]
        mean /= count
        std = 0.0
        for i in range(count):
            std += (buf[i] - mean) * (buf[i] - mean)
        std = math.sqrt(std / count)
        blo = cen - sigma * std
        bhi = cen + sigma * std
        new = 0
        for i in range(count):
            if buf[i] >= blo and buf[i] <= bhi:
                buf[new] = buf[i]
                new += 1
        if new == count or new == 0:
            return blo, bhi
        count = new
        iteration += 1
        if maxiters != -1 and iteration >= maxiters:
            return blo, bhi


@njit(cache=True, nogil=True, inline="always")
def _rn_term(readnoise, gain, y, x, nreads_half):
    """RN_e^2 / (0.5 * n_reads_groupdiff) as stcal: ``(rn * gain) ** 2`` in the inputs' dtype,
    then widened to float64 and divided by ``nreads_half`` (= nframes)."""
    rn_e = readnoise[y, x] * gain[y, x]
    rn2 = rn_e * rn_e
    return np.float64(rn2) / nreads_half


@njit(cache=True, nogil=True, inline="always")
def _sigma(m, rnterm):
    """sigma = sqrt(|m| + RN^2/nframes) of a signed median ``m`` (0 -> NaN)."""
    sig = math.sqrt(abs(m) + rnterm)
    if sig == 0.0:
        sig = np.nan
    return sig


@njit(cache=True, nogil=True, inline="always")
def _median_sigma(diffs, ntot, buf, rnterm):
    """Signed nanmedian of the differences and its sigma (:func:`_sigma`)."""
    m = _nanmedian(diffs, ntot, buf)
    return m, _sigma(m, rnterm)


@njit(cache=True, nogil=True)
def _nanmedian_by(vals, n, buf, median):
    """:func:`_nanmedian` with ``median`` (the function-pointer argument of :func:`run_frame`)
    taking the median, for the callers that need it for a few pixels only (those with jumps):
    the median networks are compiled once, on their own (the pixel-by-pixel detection, which
    needs them for every pixel, inlines them)."""
    m = np.int64(0)
    for j in range(n):
        v = vals[j]
        buf[m] = v  # kept only if counted: no data-dependent branch
        m += not math.isnan(v)
    return median(buf, m)


@njit(cache=True, nogil=True, inline="always")
def _sigclip_pixel(grow, dcol, nints, ngroups, path, only_use_ints, reset_planes, x, rej, buf):
    """Sigma-clip detection (``PATH_SIGCLIP``) and plane reset of pixel ``x`` (``grow`` its
    row's group DQ, ``dcol`` its differences)."""
    nd = ngroups - 1
    if path == PATH_SIGCLIP:
        # astropy sigma_clip(sigma=rej, maxiters=5) across the integrations of each difference
        # (only_use_ints) or across all differences of the pixel; JUMP where a finite
        # difference is outside the bounds and its later group is neither SAT nor DNU.
        nlanes = nd if only_use_ints else 1
        for lane in range(nlanes):
            count = np.int64(0)
            for i in range(nints):
                for k in range(nd):
                    if only_use_ints and k != lane:
                        continue
                    v = dcol[i * nd + k]
                    if math.isfinite(v):
                        buf[count] = v
                        count += 1
            blo, bhi = sigclip_bounds(buf, count, rej, 5)
            for i in range(nints):
                for k in range(nd):
                    if only_use_ints and k != lane:
                        continue
                    v = dcol[i * nd + k]
                    q = i * ngroups + k + 1
                    if math.isfinite(v) and (v < blo or v > bhi) and (grow[q, x] & _SAT_DNU) == 0:
                        grow[q, x] |= _JUMP
    for i in range(nints):
        for k in range(ngroups):
            if reset_planes[i, k] and grow[i * ngroups + k, x] == _JUMP:
                grow[i * ngroups + k, x] = 0


@njit(cache=True, nogil=True, inline="always")
def _detect_pixel(
    grow, erow, drow, rnterm, nints, ngroups, path, only_use_ints, reset_planes, x,
    rej, thr_3diff, thr_2diff, absd, ratio, buf, dcol,
):  # fmt: skip
    """Detection for pixel ``x`` of the row held in the row buffers.

    The row buffers are group-major, indexed ``[q, x]`` (no per-pixel views, which would cost
    reference counting): ``grow[:, x]`` (nints * ngroups,) the pixel's group DQ (updated in
    place), ``erow[:, x]`` its electrons in the inputs' product dtype (NaN on SAT/DNU groups);
    fills ``drow[:, x]`` (nints * (ngroups - 1),) with the differences, and the
    contiguous scratch ``dcol`` with them too (the pixel's medians are taken from it).

    Returns ``(m, sigma, have_m)``: the signed median of the differences and its read-noise sigma
    when already computed (``have_m``); they are needed later only for pixels carrying JUMP
    (neighbour centres, after-jump excess), so they are computed lazily.
    """
    nd = ngroups - 1
    ntot = nints * nd
    for i in range(nints):
        for k in range(nd):
            # difference in the product dtype (float32 for JWST), then widened
            d = np.float64(erow[i * ngroups + k + 1, x] - erow[i * ngroups + k, x])
            dcol[i * nd + k] = d
            drow[i * nd + k, x] = d
    m = np.nan
    sig = np.nan
    have_m = False

    if path == PATH_SIGCLIP or path == PATH_RESET_ONLY:
        _sigclip_pixel(grow, dcol, nints, ngroups, path, only_use_ints, reset_planes, x, rej, buf)
    elif path == PATH_SINGLE:
        m, sig = _median_sigma(dcol, ntot, buf, rnterm)
        have_m = True
        # |d - m| <= lim guarantees |d - m| / sig <= rej, so most divisions are skipped
        lim = rej * sig * (1.0 - 1e-9)
        for i in range(nints):
            for k in range(nd):
                d = dcol[i * nd + k]
                a = abs(d - m)
                if a > lim and math.isfinite(d) and a / sig > rej:
                    grow[i * ngroups + k + 1, x] |= _JUMP
    elif path == PATH_ITERATIVE:
        for j in range(ntot):
            absd[j] = abs(dcol[j])
        first = True
        for _round in range(ntot):
            c, n_use, amax, amin = _clipped_median(absd, ntot, buf)
            if n_use < 2:
                break
            if not first:
                # stcal stores later-round medians in a float32 array
                c = np.float64(np.float32(c))
            first = False
            sig_it = math.sqrt(abs(c) + rnterm)
            if sig_it == 0.0:
                sig_it = np.nan
            if n_use >= 4:
                thr = rej
            elif n_use == 3:
                thr = thr_3diff
            else:
                thr = thr_2diff
            # The ratio |f32(a - c)| / sigma is quasi-convex in a, so its maximum is reached at
            # the smallest or the largest usable a: most pixels stop here.
            r_hi = abs(np.float64(np.float32(amax - c))) / sig_it
            r_lo = abs(np.float64(np.float32(amin - c))) / sig_it
            if not (r_hi > thr or r_lo > thr):
                break
            gmax = np.nan
            for j in range(ntot):
                # stcal stores |d| - c in a float32 array
                e = np.float32(absd[j] - c)
                r = abs(np.float64(e)) / sig_it
                ratio[j] = r
                if not math.isnan(r) and (math.isnan(gmax) or r > gmax):
                    gmax = r
            if not gmax > thr:
                break
            for i in range(nints):
                for k in range(nd):
                    j = i * nd + k
                    if ratio[j] == gmax:
                        grow[i * ngroups + k + 1, x] |= _JUMP
                        absd[j] = np.nan
    return m, sig, have_m


@njit(cache=True, nogil=True, error_model="numpy")
def detect_pixels(grow, erow, drow, rnt, nints, ngroups, path, only_use_ints, reset_planes,
                  rej, thr_3diff, thr_2diff, absd, ratio, buf, dcol, mrow, srow, have):
    """Detection pixel by pixel (:func:`_detect_pixel`) for every pixel ``x`` of a row held in
    the row buffers (``grow`` (nints * ngroups, nx), ``drow`` (ntot, nx), ``rnt`` (nx,) the
    read-noise terms, ``erow`` (nints * ngroups, nx)), with ``mrow[x]``, ``srow[x]``,
    ``have[x]`` its ``(m, sigma, have_m)``: the paths and counts the row-wise detections do
    not cover. :func:`run_frame` takes it as a function-pointer argument
    (:func:`pixel_detection`), so that it is compiled only where a tile needs it."""
    for x in range(grow.shape[1]):
        m, sig, have_m = _detect_pixel(
            grow, erow, drow, rnt[x], nints, ngroups, path, only_use_ints, reset_planes, x,
            rej, thr_3diff, thr_2diff, absd, ratio, buf, dcol,
        )  # fmt: skip
        mrow[x] = m
        srow[x] = sig
        have[x] = have_m


@njit(cache=True, nogil=True)
def _single_unused(erow, rnt, nints, ngroups, rej, dpl, jmask, mrow, srow):
    """:func:`single_row` for a frame that does not detect on the row-wise single-pass path."""


@njit(cache=True, nogil=True)
def _pixels_unused(grow, erow, drow, rnt, nints, ngroups, path, only_use_ints, reset_planes,
                   rej, thr_3diff, thr_2diff, absd, ratio, buf, dcol, mrow, srow, have):
    """:func:`detect_pixels` for a frame that does not detect pixel by pixel."""


@njit(cache=True, nogil=True, inline="always")
def _clipped_round(apl, spl, nl, first, rnt_l, rej, thr_3diff, thr_2diff, nuse, mxv, mnv,
                   cnt, lo, hi, cv, emv, go, mid):  # fmt: skip
    """One round's clipped median, sigma and stop test for lanes ``0..nl-1`` of ``apl``
    ((ntot, >= nl) absolute differences in the electrons' dtype, NaN = unusable), pixels along
    the inner loops, branch-free so that they vectorise.

    Same values as :func:`_clipped_median` and the round's tests in :func:`_detect_pixel`, bit
    for bit: the usable values (with >= 4 of them, those below the maximum) are sorted by a
    full network with +inf in the places of the others (in the electrons' dtype: the float64
    values that the scalar path sorts are exactly these, widened), and the median of the
    first ``m`` sorted values is ``(s[(m - 1) // 2] + s[m // 2]) / 2`` in float64, which for
    odd ``m`` is ``s[m // 2]`` exactly. Sets ``cv`` (the centre, rounded to float32 unless
    ``first``), ``emv`` (float32: the larger numerator ``|f32(a - c)|`` of the largest and the
    smallest value, that of the largest ratio) and ``go`` (the round goes on to the flags: that
    ratio exceeds the threshold). ``mid`` is the lane function of ``ntot`` values clipping the
    maximum (:func:`~stcal_dask.kernels._median_numba.lane_mid`).

    One ratio is divided out per lane, not the two of the extremes: rounded division by the
    same sigma (> 0, or NaN: no ratio exceeds anything) does not decrease as the numerator
    grows, so the larger ratio is that of the larger numerator. A NaN numerator is that of
    the largest value only when the smallest one's is NaN too (the values are >= 0: the
    smallest one's is NaN only when it and the centre are +inf, and then so is the largest),
    and the selection below keeps the other numerator then, as the two-ratio test would.
    """
    mid(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)
    for n in range(nl):
        n_use = nuse[n]
        med = (np.float64(lo[n]) + np.float64(hi[n])) / 2.0 if cnt[n] > 0 else np.nan
        c = np.float64(mnv[n]) if n_use == 2 else med
        if not first:
            # stcal stores later-round medians in a float32 array
            c = np.float64(np.float32(c))
        sig = math.sqrt(abs(c) + rnt_l[n])
        sig = np.nan if sig == 0.0 else sig
        thr = rej if n_use >= 4 else (thr_3diff if n_use == 3 else thr_2diff)
        # stcal stores |d| - c in a float32 array
        e_hi = abs(np.float32(np.float64(mxv[n]) - c))
        e_lo = abs(np.float32(np.float64(mnv[n]) - c))
        em = e_hi if e_hi >= e_lo else e_lo
        cv[n] = c
        emv[n] = em
        go[n] = (n_use >= 2) & (np.float64(em) / sig > thr)


@njit(cache=True, nogil=True, inline="always")
def _row_differences(erow, nints, ngroups, dpl, apl, absolute):
    """A row's first differences ``erow[g + 1] - erow[g]`` within each integration, taken in
    the electrons' dtype: into ``dpl`` (ntot, nx) and into ``apl`` (same shape), both in the
    electrons' dtype, as they are and, with ``absolute``, as their magnitudes."""
    nd = ngroups - 1
    nx = erow.shape[1]
    for i in range(nints):
        for k in range(nd):
            e1 = erow[i * ngroups + k + 1]
            e0 = erow[i * ngroups + k]
            dj = dpl[i * nd + k]
            aj = apl[i * nd + k]
            for x in range(nx):
                d = e1[x] - e0[x]
                dj[x] = d
                aj[x] = abs(d) if absolute else d


@njit(cache=True, nogil=True, error_model="numpy")
def _iterative_row(erow, rnt, nints, ngroups, rej, thr_3diff, thr_2diff, dpl, jmask, mid):
    """The iterative path's detection for a whole row, pixels along the inner (vectorised)
    loops: ``jmask[x]`` gets bit ``j`` for each difference ``j`` that :func:`_detect_pixel`
    would flag JUMP (in its later group), ``dpl[j, x]`` the differences.

    Round 1 runs across the whole row; the flags and every later round only across the
    pixels still going on (gathered). ``erow`` (nints * ngroups, nx) electrons, ``rnt``
    (nx,) the read-noise terms, ``mid`` the lane function of ``ntot`` values in the electrons'
    dtype (:func:`~stcal_dask.kernels._median_numba.lane_mid`).
    """
    nd = ngroups - 1
    ntot = nints * nd
    nx = erow.shape[1]
    # |d| in the electrons' dtype: the scalar path's float64 |d| widened from it, exactly;
    # apl holds the lanes of a round, bpl receives those of the next (they swap each round)
    apl = np.empty((ntot, nx), dtype=erow.dtype)
    bpl = np.empty_like(apl)
    spl, nuse, mxv, mnv, cnt, lo, hi = mid_scratch(apl)
    rnt_l = np.empty(nx, dtype=np.float64)
    cv = np.empty(nx, dtype=np.float64)
    emv = np.empty(nx, dtype=np.float32)
    go = np.empty(nx, dtype=np.bool_)
    # the round's flag bits of each lane (ntot <= 32: see detects_rowwise); lane and gather
    # indices unsigned (indexing with them needs no negative-index check)
    bl = np.empty(nx, dtype=np.uint32)
    lane = np.empty(nx, dtype=np.uint64)
    idx = np.empty(nx, dtype=np.uint64)
    none = np.uint32(0)
    nan_e = apl.dtype.type(np.nan)
    _row_differences(erow, nints, ngroups, dpl, apl, True)
    for x in range(nx):
        jmask[x] = 0
        lane[x] = x
        rnt_l[x] = rnt[x]
    nl = nx
    first = True
    for _round in range(ntot):
        if nl == 0:
            break
        _clipped_round(apl, spl, nl, first, rnt_l, rej, thr_3diff, thr_2diff, nuse, mxv, mnv,
                       cnt, lo, hi, cv, emv, go, mid)  # fmt: skip
        first = False
        # the lanes that go on (most stop in round 1), in order: idx[w] >= w, so that their
        # values can be moved down in place (branch-free)
        w = 0
        for n in range(nl):
            idx[w] = n
            w += go[n]
        if w == 0:
            break
        for t in range(w):
            src = idx[t]
            lane[t] = lane[src]
            rnt_l[t] = rnt_l[src]
            cv[t] = cv[src]
            emv[t] = emv[src]
            bl[t] = 0
        # flag every difference of the largest ratio |f32(|d| - c)| / sigma, difference by
        # difference across the lanes that go on (gathered into bpl), and leave it out of
        # the next rounds. That ratio is at the largest or the smallest usable value (the
        # float32 numerator does not decrease away from c on either side), so its numerator
        # is the larger of theirs (emv); in a lane that goes on sigma is finite and positive,
        # and dividing distinct float32 numerators by it in float64 keeps them distinct, so
        # the differences at that ratio are those at that numerator. It exceeds the
        # threshold in every lane that goes on (that is the test of go).
        for j in range(ntot):
            aj = apl[j]
            bj = bpl[j]
            bit = np.uint32(1 << j)
            for t in range(w):
                bj[t] = aj[idx[t]]
            for t in range(w):
                a = bj[t]
                # stcal stores |d| - c in a float32 array
                hit = abs(np.float32(np.float64(a) - cv[t])) == emv[t]
                bl[t] |= bit if hit else none
                bj[t] = nan_e if hit else a
        for t in range(w):
            jmask[lane[t]] |= np.int64(bl[t])
        apl, bpl = bpl, apl
        nl = w


@njit(cache=True, nogil=True, error_model="numpy")
def single_row(erow, rnt, nints, ngroups, rej, dpl, jmask, mrow, srow):
    """The single-pass path's detection for a whole row, pixels along the inner (vectorised)
    loops: the same flags, median and sigma as :func:`_detect_pixel` on ``PATH_SINGLE``, bit
    for bit.

    ``erow`` (nints * ngroups, nx) electrons (NaN on SAT/DNU groups), ``rnt`` (nx,) the
    read-noise terms; fills ``dpl[j, x]`` with the differences, ``jmask[x]`` with bit
    ``j`` for each difference flagged JUMP (in its later group), ``mrow``/``srow`` (nx,) with
    the signed median of the pixel's differences and its sigma. The median is taken over the
    differences in the electrons' dtype (the float64 values the scalar path sorts are exactly
    these, widened) by :func:`~stcal_dask.kernels._median_numba.nanmedian_lanes`, the mean of
    an even count's middle pair in float64. Needs 1 <= nints * (ngroups - 1) <= 64.
    :func:`run_frame` takes it as a function-pointer argument (:func:`single_detection`), so
    that it is compiled only where a tile needs it.
    """
    nd = ngroups - 1
    ntot = nints * nd
    nx = erow.shape[1]
    apl = np.empty((ntot, nx), dtype=erow.dtype)
    spl, cnt, left, lo, hi = lane_median_scratch(ntot, nx, apl)
    _row_differences(erow, nints, ngroups, dpl, apl, False)
    nanmedian_lanes(apl, nx, spl, cnt, left, lo, hi)
    for x in range(nx):
        lo64 = np.float64(lo[x])
        m = lo64 if (cnt[x] & 1) == 1 else (lo64 + np.float64(hi[x])) / 2.0
        sig = math.sqrt(abs(m) + rnt[x])
        mrow[x] = m
        srow[x] = np.nan if sig == 0.0 else sig
        jmask[x] = 0
    for j in range(ntot):
        dj = dpl[j]
        bit = np.int64(1) << j
        for x in range(nx):
            d = dj[x]
            # (d - d) == 0 is False for NaN and infinities: only finite differences count
            hit = ((d - d) == 0.0) & (abs(d - mrow[x]) / srow[x] > rej)
            jmask[x] |= bit * hit


class FrameInputs(NamedTuple):
    """The frame (or tile) :func:`run_frame` reads, as read-only C arrays."""

    data: np.ndarray
    """(nints, ngroups, ny, nx) DN."""
    groupdq: np.ndarray
    """(nints, ngroups, ny, nx) unsigned group DQ (never modified)."""
    gain: np.ndarray
    """(ny, nx) electron/DN."""
    readnoise: np.ndarray
    """(ny, nx) CDS read noise, DN."""
    eproto: np.ndarray
    """1-element array of the electrons' dtype (the product dtype of ``data`` and ``gain``)."""


class DetectSettings(NamedTuple):
    """How jumps are detected."""

    path: int
    """``PATH_*`` code."""
    only_use_ints: bool
    """Sigma-clip across integrations only (else across all differences of a pixel)."""
    reset_planes: np.ndarray
    """(nints, ngroups) bool: planes whose pure-JUMP values are reset (sigma-clip path)."""
    nreads_half: float
    """0.5 * n_reads_groupdiff (= nframes): RN^2 is divided by it."""
    rej: float
    """Sigma threshold with >= 4 usable differences, and of the single-pass/sigma-clip paths."""
    thr_3diff: float
    """Sigma threshold with exactly 3 usable differences (four_group_rejection_threshold)."""
    thr_2diff: float
    """Sigma threshold with exactly 2 usable differences (three_group_rejection_threshold)."""
    rowwise: bool
    """Detect across the pixels of each row where the path and difference count allow it
    (:func:`_iterative_row`, :func:`single_row`); False only to check them against the
    pixel-by-pixel path, which gives the same flags."""


class FlagSettings(NamedTuple):
    """What is flagged after detection."""

    neighbors: bool
    """Flag the 4 neighbours of jumps whose ratio is within (nbr_min, nbr_max)."""
    nbr_min: float
    nbr_max: float
    after: bool
    """Flag groups after large jumps (e1/jmax1, e2/jmax2)."""
    e1: float
    """Electron threshold of the first after-jump rule."""
    jmax1: int
    """Groups flagged after a jump >= e1."""
    e2: float
    """Electron threshold of the second after-jump rule."""
    jmax2: int
    """Groups flagged after a jump >= e2."""
    remove_redundant: bool
    """Clear JUMP where SATURATED or DO_NOT_USE is set too (False only for the sigma-clip
    reset pass)."""


class FrameOutputs(NamedTuple):
    """What :func:`run_frame` writes (every element)."""

    groupdq: np.ndarray
    """(nints, ngroups, ny, nx) output group DQ."""
    primary: np.ndarray
    """(ny, nx) int32: each pixel's JUMP count right after detection."""


class RowRings(NamedTuple):
    """The row buffers of :func:`run_frame`, group-major like the frame (one row of pixels per
    group or difference, so that the loops over a row's pixels are unit-stride and vectorise);
    the rings hold the three rows y - 1, y, y + 1 at ``row % 3``."""

    erow: np.ndarray
    """(nints * ngroups, nx) electrons of the row being detected, NaN on SAT/DNU."""
    gring: np.ndarray
    """(3, nints * ngroups, nx) group DQ."""
    centre: np.ndarray
    """(3, nints * ngroups, nx) uint8, 1 where the difference ending at that group is a
    neighbour-flagging centre, else 0 (the group DQ's layout; 0 at each integration's group 0;
    bytes rather than bools, so that the flagging combines them with integer operations)."""
    dring: np.ndarray
    """(3, max(ntot, 1), nx) first differences (electrons), in the electrons' dtype, in which
    they are taken: the float64 values that the medians and ratios use are these, widened."""
    mring: np.ndarray
    """(3, nx) float64 signed median of the differences, where ``mvalid``."""
    mvalid: np.ndarray
    """(3, nx) bool."""
    addf: np.ndarray
    """(ngroups,) bool after-jump scratch."""
    rnt: np.ndarray
    """(nx,) float64 read-noise terms of the row."""
    jmask: np.ndarray
    """(nx,) int64 JUMP bits from the row-wise detections ((0,) off those paths)."""
    mq: np.ndarray
    """(nx,) float64 signed medians from :func:`single_row` or :func:`detect_pixels`."""
    sq: np.ndarray
    """(nx,) float64 sigmas from :func:`single_row` or :func:`detect_pixels`."""
    hq: np.ndarray
    """(nx,) bool: :func:`detect_pixels` has set ``mq``/``sq`` of the pixel."""
    hit: np.ndarray
    """(nx,) bool neighbour-flag scratch."""
    absd: np.ndarray
    """(max(ntot, 1),) float64 per-pixel scratch."""
    ratio: np.ndarray
    """(max(ntot, 1),) float64 per-pixel scratch."""
    buf: np.ndarray
    """(max(ntot, nints, 1),) float64 median scratch."""
    dcol: np.ndarray
    """(max(ntot, 1),) float64: one pixel's differences, contiguous (for its medians)."""


def row_rings(shape, edtype, gdtype, quick: bool) -> RowRings:
    """The :class:`RowRings` of a frame of ``shape`` (nints, ngroups, ny, nx), electrons in
    ``edtype``, group DQ in ``gdtype``; ``quick``: a row-wise detection path is taken
    (:func:`detects_rowwise`). Made here, with numpy, and passed to :func:`run_frame` (a
    compiled function returning them would be one more to compile)."""
    nints, ngroups, ny, nx = shape
    ntot = nints * (ngroups - 1)
    ng_all = nints * ngroups
    nd1 = max(ntot, 1)
    return RowRings(
        np.empty((ng_all, nx), dtype=edtype),
        np.empty((3, ng_all, nx), dtype=gdtype),
        np.zeros((3, ng_all, nx), dtype=np.uint8),
        np.empty((3, nd1, nx), dtype=edtype),
        np.empty((3, nx), dtype=np.float64),
        np.zeros((3, nx), dtype=np.bool_),
        np.zeros(ngroups, dtype=np.bool_),
        np.empty(nx, dtype=np.float64),
        np.zeros(nx if quick else 0, dtype=np.int64),
        np.empty(nx, dtype=np.float64),
        np.empty(nx, dtype=np.float64),
        np.zeros(nx, dtype=np.bool_),
        np.zeros(nx, dtype=np.bool_),
        np.empty(nd1, dtype=np.float64),
        np.empty(nd1, dtype=np.float64),
        np.empty(max(ntot, nints, 1), dtype=np.float64),
        np.empty(nd1, dtype=np.float64),
    )


@njit(cache=True, nogil=True)
def _load_row(inputs, yy, rings):
    """Copy row ``yy`` in: its group DQ and electrons (NaN on SATURATED/DO_NOT_USE groups),
    one group plane's row at a time (contiguous, branch-free, vectorised)."""
    data, groupdq, gain = inputs.data, inputs.groupdq, inputs.gain
    erow = rings.erow
    nints, ngroups, ny, nx = data.shape
    grow = rings.gring[yy % 3]
    gain_row = gain[yy]
    for i in range(nints):
        for g in range(ngroups):
            q = i * ngroups + g
            src_g = groupdq[i, g, yy]
            src_d = data[i, g, yy]
            dst = erow[q]
            dst_g = grow[q]
            for x in range(nx):
                v = src_g[x]
                e = src_d[x] * gain_row[x]
                dst[x] = e if (v & _SAT_DNU) == 0 else np.nan
                dst_g[x] = v


@njit(cache=True, nogil=True, error_model="numpy")
def _row_medians(dpl, rnt, lane, nl, mrow, srow, vrow, allmid):
    """The signed median of its first differences (NaN-skipping) and its sigma (:func:`_sigma`)
    of the pixels ``lane[:nl]`` of a row at once (of every pixel when they are more than half
    the row: gathering them would cost more), into ``mrow``/``srow`` (nx,), with ``vrow`` set
    True there. The differences ``dpl`` (ntot, nx) are the row's, in the electrons' dtype as
    the detections take them (their float64 values are these, widened), pixels along the
    inner loops, and their middle pair found by ``allmid``, the lane function of ``ntot``
    values keeping every usable one (:func:`~stcal_dask.kernels._median_numba.lane_mid` with
    ``keep_all``: a network across the lanes, which only reads them), averaged in float64 for
    an even count: the value of the pixel's own median, bit for bit."""
    ntot, nx = dpl.shape
    dense = 2 * nl > nx
    if dense:
        # every pixel: the network runs on the differences themselves
        spl, nuse, mxv, mnv, cnt, lo, hi = mid_scratch(dpl)
        allmid(dpl, spl, nx, nuse, mxv, mnv, cnt, lo, hi)
        for x in range(nx):
            _lane_median(lo[x], hi[x], cnt[x], rnt[x], mrow, srow, vrow, x)
        return
    apl = np.empty((ntot, nl), dtype=dpl.dtype)
    spl, nuse, mxv, mnv, cnt, lo, hi = mid_scratch(apl)
    for j in range(ntot):
        dj = dpl[j]
        aj = apl[j]
        for n in range(nl):
            aj[n] = dj[lane[n]]
    allmid(apl, spl, nl, nuse, mxv, mnv, cnt, lo, hi)
    for n in range(nl):
        x = lane[n]
        _lane_median(lo[n], hi[n], cnt[n], rnt[x], mrow, srow, vrow, x)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _lane_median(lo, hi, cnt, rnt_x, mrow, srow, vrow, x):
    """:func:`_row_medians` of one lane: the median from the lane function's middle pair and
    count, its sigma, into ``mrow[x]``, ``srow[x]``, ``vrow[x]``."""
    lo64 = np.float64(lo)
    m = (lo64 + np.float64(hi)) / 2.0 if cnt > 0 else np.nan
    m = lo64 if (cnt & 1) == 1 else m
    sig = math.sqrt(abs(m) + rnt_x)
    mrow[x] = m
    srow[x] = np.nan if sig == 0.0 else sig
    vrow[x] = True


@njit(cache=True, nogil=True, error_model="numpy", no_cpython_wrapper=True)
def _detect_row(inputs, detect, do_neighbors, nbr_min, nbr_max, yy, quick, rings, primary, mid,
                allmid, single, pixels, median):
    """Detect the jumps of row ``yy`` (loaded by :func:`_load_row`): its group DQ gets JUMP,
    ``primary[yy]`` the JUMP counts; with ``do_neighbors`` the neighbour-flagging centres
    (differences whose ratio is within (``nbr_min``, ``nbr_max``)) and the medians they need
    are kept in the rings. ``mid``, ``allmid``, ``single``, ``pixels``, ``median``: see
    :func:`run_frame`, which calls it through a function pointer (:func:`row_phases`)."""
    readnoise, gain = inputs.readnoise, inputs.gain
    path, only_use_ints, reset_planes, nreads_half, rej, thr_3diff, thr_2diff, _rw = detect
    erow, gring, centre, dring, mring, mvalid, addf, rnt, jmask, mq, sq, hq, hit, absd, \
        ratio, buf, dcol = rings
    nints, ngroups, ny, nx = inputs.data.shape
    nd = ngroups - 1
    ntot = nints * nd
    ng_all = nints * ngroups
    ry = yy % 3
    grow = gring[ry]
    drow = dring[ry]
    crow = centre[ry]
    for x in range(nx):
        rnt[x] = _rn_term(readnoise, gain, yy, x, nreads_half)
    is_single = path == PATH_SINGLE
    if quick and is_single:
        single(erow, rnt, nints, ngroups, rej, drow, jmask, mq, sq)
    elif quick:
        _iterative_row(erow, rnt, nints, ngroups, rej, thr_3diff, thr_2diff, drow, jmask, mid)
    else:
        pixels(grow, erow, drow, rnt, nints, ngroups, path, only_use_ints, reset_planes, rej,
               thr_3diff, thr_2diff, absd, ratio, buf, dcol, mq, sq, hq)
    m_row = mring[ry]
    v_row = mvalid[ry]
    if quick:
        # JUMP in the later group of each flagged difference (branch-free)
        for i in range(nints):
            for k in range(nd):
                j = i * nd + k
                g_q = grow[i * ngroups + k + 1]
                for x in range(nx):
                    g_q[x] |= _JUMP * ((jmask[x] >> j) & 1)
        for x in range(nx):
            m_row[x] = mq[x] if is_single else np.nan
            v_row[x] = is_single
    else:
        for x in range(nx):
            m_row[x] = mq[x]
            v_row[x] = hq[x]
    # each pixel's JUMP count, group by group along the row
    p_row = primary[yy]
    for x in range(nx):
        p_row[x] = 0
    for q in range(ng_all):
        g_q = grow[q]
        for x in range(nx):
            p_row[x] += (g_q[x] & _JUMP) != 0
    if not do_neighbors:
        return
    # the centre flags: False but at the JUMP differences within (nbr_min, nbr_max)
    for q in range(ng_all):
        c_q = crow[q]
        for x in range(nx):
            c_q[x] = False
    if quick:
        # the pixels with a JUMP: their count, and where they are at most half the row (see
        # dense below) their list (branch-free; unsigned: indexing with them needs no
        # negative-index check)
        n_jump = 0
        for x in range(nx):
            n_jump += p_row[x] != 0
        if n_jump == 0:
            return
        lane = np.empty(nx, dtype=np.uint64)
        at = np.empty(nx, dtype=np.uint64)
        if 2 * n_jump <= nx:
            n = 0
            for x in range(nx):
                lane[n] = x
                n += p_row[x] != 0
        if not is_single:
            # their signed medians and sigmas at once (vectorised: a median network across
            # them, as the single-pass path's), the values that the pixel's own median of its
            # differences would give, bit for bit
            _row_medians(drow, rnt, lane, n_jump, m_row, sq, v_row, allmid)
        # (m_row, sq: the median and sigma of every pixel with a JUMP) branch-free along the
        # row, or only at the pixels with a JUMP where they are at most half the row (the
        # centre flags are False elsewhere); a pixel without JUMP is never a centre
        dense = 2 * n_jump > nx
        for i in range(nints):
            for k in range(nd):
                q = i * ngroups + k + 1
                c_q = crow[q]
                g_q = grow[q]
                d_j = drow[i * nd + k]
                if dense:
                    for x in range(nx):
                        r0 = abs(d_j[x] - m_row[x]) / sq[x]
                        c_q[x] = ((g_q[x] & _JUMP) != 0) & (r0 < nbr_max) & (r0 > nbr_min)
                else:
                    # only at the JUMP differences of those pixels (gathered branch-free; the
                    # flags are False elsewhere already): a ratio for each, not one for each
                    # difference of the pixel
                    w = 0
                    for n in range(n_jump):
                        x = lane[n]
                        at[w] = x
                        w += (g_q[x] & _JUMP) != 0
                    for t in range(w):
                        x = at[t]
                        r0 = abs(d_j[x] - m_row[x]) / sq[x]
                        c_q[x] = (r0 < nbr_max) & (r0 > nbr_min)
        return
    for x in range(nx):
        if p_row[x] == 0:
            continue
        m = m_row[x]
        if v_row[x]:
            sig = sq[x]
        else:
            for j in range(ntot):
                dcol[j] = drow[j, x]
            m = _nanmedian_by(dcol, ntot, buf, median)
            sig = _sigma(m, rnt[x])
            m_row[x] = m
            v_row[x] = True
        for i in range(nints):
            for k in range(nd):
                q = i * ngroups + k + 1
                r0 = abs(drow[i * nd + k, x] - m) / sig
                crow[q, x] = ((grow[q, x] & _JUMP) != 0) & (r0 < nbr_max) & (r0 > nbr_min)


@njit(cache=True, nogil=True, inline="always")
def _flag_value(v, h, jump, sat_dnu, red, zero):
    """A group DQ value ``v`` after neighbour flagging and redundant-bit removal (see
    :func:`_flag_plane`; ``h`` 1 where a 4-neighbour is a centre, else 0), branch-free."""
    sd = (v & sat_dnu) != 0
    return (v | ((h * jump) & (zero if sd else jump))) & ~(red if sd else zero)


@njit(cache=True, nogil=True, inline="always")
def _flag_plane(g_q, cu, cd, cr, dst, red):
    """One group's row after neighbour flagging (and redundant-bit removal): ``dst[x]`` gets
    ``g_q[x]`` with JUMP added where the same group of a 4-neighbour is a centre (``cu``,
    ``cd``: the rows above and below, ``cr``: this row, whose pixels left and right count; 0/1
    flags) unless the group is SATURATED or DO_NOT_USE, where instead the bits ``red`` (JUMP,
    or 0 to keep them) are cleared. Branch-free along the row, in the group DQ's dtype (so
    that it vectorises); ``dst`` may be ``g_q``."""
    nx = g_q.shape[0]
    gt = g_q.dtype.type
    jump = gt(_JUMP)
    sat_dnu = gt(_SAT_DNU)
    red = gt(red)
    zero = gt(0)
    if nx >= 3:
        # the inner pixels, through shifted views (an index like x - 1 would cost a
        # negative-index check)
        cu_m = cu[1 : nx - 1]
        cd_m = cd[1 : nx - 1]
        c_lf = cr[: nx - 2]
        c_rt = cr[2:]
        g_m = g_q[1 : nx - 1]
        d_m = dst[1 : nx - 1]
        for t in range(nx - 2):
            d_m[t] = _flag_value(g_m[t], cu_m[t] | cd_m[t] | c_lf[t] | c_rt[t], jump, sat_dnu,
                                 red, zero)
    for x in (0, nx - 1):
        # the edge pixels (twice the same one when nx == 1: the result does not change)
        h = cu[x] | cd[x]
        if x > 0:
            h |= cr[x - 1]
        if x + 1 < nx:
            h |= cr[x + 1]
        dst[x] = _flag_value(g_q[x], h, jump, sat_dnu, red, zero)


@njit(cache=True, nogil=True, no_cpython_wrapper=True)
def _finish_row(flags, y, ny, rings, gdq_out, median):
    """Post-process row ``y`` once rows y - 1, y and y + 1 are detected: neighbour flags,
    after-jump flags and redundant-bit removal, and write it out into ``gdq_out`` (``median``:
    see :func:`run_frame`, which calls it through a function pointer, :func:`row_phases`)."""
    (do_neighbors, nbr_min, nbr_max, do_after, e1, jmax1, e2, jmax2,
     remove_redundant_bits) = flags  # fmt: skip
    erow, gring, centre, dring, mring, mvalid, addf, rnt, jmask, mq, sq, hq, hit, absd, \
        ratio, buf, dcol = rings
    ng_all, nx = gring.shape[1], gring.shape[2]
    ngroups = addf.shape[0]
    nints = ng_all // ngroups
    nd = ngroups - 1
    ntot = nints * nd
    ry = y % 3
    grow = gring[ry]
    drow = dring[ry]
    # a group is flagged where the same group of a 4-neighbour is a centre (the centre flags
    # are 0 off the JUMP pixels, and everywhere without neighbour flagging); off the frame
    # nothing is
    crow = centre[ry]
    cup = centre[(y + 2) % 3]
    cdn = centre[(y + 1) % 3]
    if y == 0 or y + 1 == ny:
        zero = np.zeros((ng_all, nx), dtype=centre.dtype)
        cup = zero if y == 0 else cup
        cdn = zero if y + 1 == ny else cdn
    red = _JUMP if remove_redundant_bits else 0
    if not do_after:
        # neighbour flags, redundant-bit removal and the write, one pass per group
        for i in range(nints):
            for g in range(ngroups):
                q = i * ngroups + g
                _flag_plane(grow[q], cup[q], cdn[q], crow[q], gdq_out[i, g, y], red)
        return
    for q in range(ng_all):
        _flag_plane(grow[q], cup[q], cdn[q], crow[q], grow[q], 0)
    for x in range(nx):
        any_jump = False
        for i in range(nints):
            for g in range(1, ngroups):
                if grow[i * ngroups + g, x] & _JUMP:
                    any_jump = True
        if not any_jump:
            continue
        m = mring[ry, x]
        if not mvalid[ry, x]:
            for j in range(ntot):
                dcol[j] = drow[j, x]
            m = _nanmedian_by(dcol, ntot, buf, median)
        for i in range(nints):
            for g in range(ngroups):
                addf[g] = False
            for g in range(1, ngroups):
                if grow[i * ngroups + g, x] & _JUMP:
                    ej = drow[i * nd + g - 1, x] - m
                    if ej >= e1:
                        for h in range(g, min(g + jmax1, ngroups - 1) + 1):
                            addf[h] = True
                    if ej >= e2:
                        for h in range(g, min(g + jmax2, ngroups - 1) + 1):
                            addf[h] = True
            for g in range(ngroups):
                q = i * ngroups + g
                if addf[g] and (grow[q, x] & _SAT_DNU) == 0:
                    grow[q, x] |= _JUMP
    # redundant-bit removal and the write
    for i in range(nints):
        for g in range(ngroups):
            g_q = grow[i * ngroups + g]
            dst = gdq_out[i, g, y]
            gt = g_q.dtype.type
            for x in range(nx):
                v = g_q[x]
                dst[x] = v & ~(gt(red) if (v & gt(_SAT_DNU)) != 0 else gt(0))


@njit(cache=True, nogil=True)
def detects_rowwise(path, ntot, rowwise):
    """Whether :func:`run_frame` detects across each row's pixels (:func:`_iterative_row`,
    :func:`single_row`) on ``path`` (``PATH_*``) with ``ntot`` differences per pixel: up to the
    counts their networks cover, unless ``rowwise`` is False; else pixel by pixel."""
    return rowwise and (
        (path == PATH_ITERATIVE and 1 <= ntot <= _SORT_MAX)
        or (path == PATH_SINGLE and 1 <= ntot <= _LANE_MEDIAN_MAX)
    )


_ROW_DETECTIONS: dict[tuple, FunctionArg] = {}
_F64 = types.Array(types.float64, 1, "C")


def _arr(dtype, ndim: int):
    return types.Array(from_dtype(np.dtype(dtype)), ndim, "C")


def single_detection(edtype, used: bool = True) -> FunctionArg:
    """:func:`single_row` for electrons in ``edtype``, as the ``single`` argument of
    :func:`run_frame`; with ``used=False`` one of the same signature that does nothing (nothing
    is compiled for a frame that does not call it)."""
    key = ("single", np.dtype(edtype).name, bool(used))
    found = _ROW_DETECTIONS.get(key)
    if found is None:
        sig = signature(types.void, _arr(edtype, 2), _F64, types.int64, types.int64,
                        types.float64, _arr(edtype, 2), types.Array(types.int64, 1, "C"), _F64,
                        _F64)
        found = _ROW_DETECTIONS[key] = FunctionArg(single_row if used else _single_unused, sig)
    return found


def pixel_detection(edtype, gdtype, used: bool = True) -> FunctionArg:
    """:func:`detect_pixels` for electrons in ``edtype`` and group DQ in ``gdtype``, as the
    ``pixels`` argument of :func:`run_frame`; with ``used=False`` one of the same signature that
    does nothing (nothing is compiled for a frame that detects row-wise)."""
    key = ("pixels", np.dtype(edtype).name, np.dtype(gdtype).name, bool(used))
    found = _ROW_DETECTIONS.get(key)
    if found is None:
        sig = signature(
            types.void, _arr(gdtype, 2), _arr(edtype, 2), _arr(edtype, 2), _F64, types.int64,
            types.int64, types.int64, types.boolean, types.Array(types.boolean, 2, "C"),
            types.float64, types.float64, types.float64, _F64, _F64, _F64, _F64, _F64, _F64,
            types.Array(types.boolean, 1, "C"),
        )  # fmt: skip
        found = _ROW_DETECTIONS[key] = FunctionArg(detect_pixels if used else _pixels_unused,
                                                   sig)
    return found


_ROW_PHASES: dict[tuple, tuple[FunctionArg, FunctionArg]] = {}


def row_phases(inputs, detect, flags, out, rings, mid) -> tuple[FunctionArg, FunctionArg]:
    """The ``detect_row`` and ``finish_row`` arguments of :func:`run_frame` for arguments of
    these types: :class:`~stcal_dask.kernels._median_numba.FunctionArg` of :func:`_detect_row`
    and :func:`_finish_row`, each compiled once, on its own (called directly, both would be
    linked into :func:`run_frame` with all they call and optimised again there)."""
    key = tuple(numba.typeof(a) for a in (inputs, detect, flags, out, rings, mid))
    found = _ROW_PHASES.get(key)
    if found is None:
        tin, tdet, tflags, tout, trings, tmid = key
        i64, f64 = types.int64, types.float64
        tsingle = numba.typeof(single_detection(inputs.eproto.dtype, used=False))
        tpixels = numba.typeof(pixel_detection(inputs.eproto.dtype, inputs.groupdq.dtype,
                                               used=False))
        tmedian = numba.typeof(median_function())
        detect_sig = signature(types.void, tin, tdet, types.boolean, f64, f64, i64,
                               types.boolean, trings, tout.types[1], tmid, tmid, tsingle,
                               tpixels, tmedian)
        finish_sig = signature(types.void, tflags, i64, i64, trings, tout.types[0], tmedian)
        found = _ROW_PHASES[key] = (FunctionArg(_detect_row, detect_sig),
                                    FunctionArg(_finish_row, finish_sig))
    return found


@njit(cache=True, nogil=True)
def run_frame(inputs, detect, flags, out, rings, mid, allmid, single, pixels, median,
              detect_row, finish_row):
    """Detection, neighbour and after-jump flagging and redundant-bit removal of a frame.

    Reads ``inputs`` (:class:`FrameInputs`, never modified), detects with ``detect``
    (:class:`DetectSettings`), flags with ``flags`` (:class:`FlagSettings`) and writes every
    element of ``out`` (:class:`FrameOutputs`): the group DQ, and in ``primary`` each pixel's
    JUMP count right after detection. ``rings``: the frame's :class:`RowRings`
    (:func:`row_rings`), used as scratch.

    The other arguments are functions passed as function pointers (each compiled apart from
    this function, and only where a frame calls it: see
    :class:`~stcal_dask.kernels._median_numba.FunctionArg`). Four detect the rows: ``mid`` the
    lane function (:func:`~stcal_dask.kernels._median_numba.lane_mid`) of
    ``nints * (ngroups - 1)`` values in the electrons' dtype, called on the row-wise iterative
    path; ``allmid`` the one of as many values keeping every usable value (``keep_all``),
    called there for the neighbour centres' medians; ``single`` the row-wise single-pass
    detection (:func:`single_detection`); ``pixels`` the pixel-by-pixel detection
    (:func:`pixel_detection`), called where :func:`detects_rowwise` is False. ``median``
    (:func:`~stcal_dask.kernels._median_numba.median_function`) takes the medians of the few
    pixels that need one apart. ``detect_row`` and ``finish_row`` are :func:`_detect_row` and
    :func:`_finish_row` (:func:`row_phases`).

    Rows are streamed through small group-major buffers (:class:`RowRings`): row y is copied in
    (:func:`_load_row`), detected (:func:`_detect_row`), and post-processed once row y + 1 has
    been detected (:func:`_finish_row`), which writes it out. Only three rows
    of group DQ, differences and neighbour centres are held.

    The per-row phases unpack the named tuples once per row; the per-pixel helpers take plain
    arrays (a tuple of arrays bound per pixel would cost reference-count updates of every
    member).
    """
    nints, ngroups, ny, nx = inputs.data.shape
    quick = detects_rowwise(detect.path, nints * (ngroups - 1), detect.rowwise)
    for yy in range(ny + 1):
        if yy < ny:
            _load_row(inputs, yy, rings)
            detect_row(inputs, detect, flags.neighbors, flags.nbr_min, flags.nbr_max, yy, quick,
                       rings, out.primary, mid, allmid, single, pixels, median)  # fmt: skip
        if yy == 0:
            continue
        finish_row(flags, yy - 1, ny, rings, out.groupdq, median)


@njit(cache=True, nogil=True)
def with_bad_gain(gain, pixeldq, bits):
    """A copy of ``pixeldq`` (ny, nx) with ``bits`` ORed in where the gain is <= 0 or NaN, in one
    pass (branch-free)."""
    ny, nx = gain.shape
    out = np.empty((ny, nx), dtype=pixeldq.dtype)
    for y in range(ny):
        g_y = gain[y]
        p_y = pixeldq[y]
        o_y = out[y]
        for x in range(nx):
            g = g_y[x]
            bad = (g <= 0.0) | (g != g)
            o_y[x] = p_y[x] | (bits * bad)
    return out


@njit(cache=True, nogil=True)
def remove_redundant(gdq):
    """Clear JUMP wherever the same element also has SATURATED or DO_NOT_USE (in place)."""
    nints, ngroups, ny, nx = gdq.shape
    for i in range(nints):
        for g in range(ngroups):
            for y in range(ny):
                for x in range(nx):
                    v = gdq[i, g, y, x]
                    if (v & _JUMP) and (v & _SAT_DNU):
                        gdq[i, g, y, x] = v ^ _JUMP


lock_cache_writes(globals())  # one process at a time adds to a function's cache entries
