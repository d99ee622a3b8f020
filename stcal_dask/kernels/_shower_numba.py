"""Numba internals of the shower search (see :mod:`stcal_dask.kernels.large_events`).

:func:`ratio_cube` computes the masked signal-to-noise ratios of every first difference in one
pass over the rows (stcal's ``nan_invalid_data``, ``np.diff``, ``nanmedian`` over all
integrations and differences, ``diff_meddiff_int`` and ``get_bigellipses``' masking), in the
float32 arithmetic numpy uses on float32 inputs, so the values are the same bit for bit.

:func:`ring_states` classifies each pixel of a ratio plane for the ring convolution's threshold
test (stcal's ``convolve_fast`` followed by ``> extend_snr_threshold``). stcal convolves with
FFTs; the values it compares differ from the exact sums by the FFT's rounding, which depends on
the whole plane. Here the sums are taken directly (float64, over the kernel's non-zero taps) and
a pixel is decided only when the exact comparison is further from the threshold than any
rounding of either computation can reach; it returns the pixels above the threshold and those
too close to call, which the caller settles (see ``large_events.shower_plane``).

:func:`sparse_components` labels the 8-connected regions of a sparse set of pixels (the few
hundred above the threshold in a plane of a million) without a whole-plane label image.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stcal_dask import dqflags
from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_numba import (
    LANE_MEDIAN_MAX,
    lane_median_scratch,
    median_prefix,
    nanmedian_lanes,
)
from stcal_dask.kernels.numba_cache import lock_cache_writes

_DNU = dqflags.DO_NOT_USE
_SAT = dqflags.SATURATED
_JUMP = dqflags.JUMP_DET
_REF = dqflags.REFERENCE_PIXEL
_BAD = _DNU | _SAT | _JUMP
# the group DQ values stcal's nan_invalid_data turns into NaN (exact equality)
_NAN_VALUES = (_JUMP | _DNU, _SAT | _DNU, _SAT, _JUMP, _DNU)

LANE_SORT_MAX = LANE_MEDIAN_MAX
"""Largest number of differences per pixel whose median :func:`ratio_cube` takes with one
median network run across the pixels of a row (branch-free, vectorised); beyond it, by
selection pixel by pixel."""


@njit(cache=True, nogil=True, inline="always")
def _masked_value(v):
    """True where stcal's ``nan_invalid_data`` makes the electrons NaN (group DQ equal to one of
    five values)."""
    return (v == _NAN_VALUES[0]) | (v == _NAN_VALUES[1]) | (v == _NAN_VALUES[2]) | (
        v == _NAN_VALUES[3]) | (v == _NAN_VALUES[4])  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy")
def ratio_cube(data, gdq, pdq, gain, readnoise, nframes):
    """(nints, ngroups - 1, ny, nx) float32: the masked difference ratios.

    ``data`` (nints, ngroups, ny, nx) float32 DN; ``gdq`` the group DQ; ``pdq`` (ny, nx) PIXELDQ;
    ``gain``/``readnoise`` (ny, nx) float32; ``nframes`` int. Per pixel: electrons
    ``data * gain`` (NaN where the group DQ equals one of stcal's five invalid values), first
    differences, their median over every integration and difference (NaN ignored), sigma
    ``sqrt(|median| + (readnoise * gain)**2 / nframes)``, ratio ``|diff - median| / sigma``; NaN
    where group ``g``'s DQ or the PIXELDQ has JUMP, SATURATED or DO_NOT_USE, and on reference
    pixels. All float32, as numpy computes it on float32 arrays.
    """
    nints, ngroups, ny, nx = data.shape
    nd = ngroups - 1
    out = np.empty((nints, nd, ny, nx), dtype=np.float32)
    ntot = nints * nd
    diffs = np.empty((nints, nd, nx), dtype=np.float32)
    lanes = diffs.reshape((ntot, nx))
    spl, cnt, left, lo, hi = lane_median_scratch(ntot, nx, diffs)
    meds = np.empty(nx, dtype=np.float32)
    sigs = np.empty(nx, dtype=np.float32)
    pbad = np.empty(nx, dtype=np.bool_)
    e_prev = np.empty(nx, dtype=np.float32)
    buf = np.empty(max(ntot, 1), dtype=np.float32)
    nan32 = np.float32(np.nan)
    fr = np.float32(nframes)
    for y in range(ny):
        for i in range(nints):
            for x in range(nx):
                e = data[i, 0, y, x] * gain[y, x]
                e_prev[x] = nan32 if _masked_value(gdq[i, 0, y, x]) else e
            for g in range(1, ngroups):
                for x in range(nx):
                    e = data[i, g, y, x] * gain[y, x]
                    e = nan32 if _masked_value(gdq[i, g, y, x]) else e
                    diffs[i, g - 1, x] = e - e_prev[x]
                    e_prev[x] = e
        if 0 < ntot <= LANE_SORT_MAX:
            nanmedian_lanes(lanes, nx, spl, cnt, left, lo, hi)
            for x in range(nx):
                # float32 mean of the middle two for even counts, as numpy's nanmedian
                odd = (cnt[x] & 1) == 1
                meds[x] = lo[x] if odd else (lo[x] + hi[x]) / np.float32(2.0)
        else:
            for x in range(nx):
                m = np.int64(0)  # not a literal: median_prefix is compiled for int64 only
                for j in range(ntot):
                    v = lanes[j, x]
                    buf[m] = v
                    m += v == v  # NaN is left out (infinities stay, as in nanmedian)
                meds[x] = np.float32(median_prefix(buf, m)) if m > 0 else nan32
        for x in range(nx):
            rn_e = readnoise[y, x] * gain[y, x]
            sigs[x] = np.sqrt(abs(meds[x]) + rn_e * rn_e / fr)
            p = pdq[y, x]
            pbad[x] = (p == _REF) | ((p & _BAD) != 0)
        # plane by plane, pixels along the inner loop (contiguous, vectorised)
        for i in range(nints):
            for k in range(nd):
                gq = gdq[i, k + 1, y]
                dq = diffs[i, k]
                oq = out[i, k, y]
                for x in range(nx):
                    flagged = pbad[x] | ((gq[x] & _BAD) != 0)
                    r = abs(dq[x] - meds[x]) / sigs[x]
                    oq[x] = nan32 if flagged else r
    return out


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _finite_norms(plane):
    """(sum of squares, largest magnitude) of the finite values of a plane (float64; in any
    order: they only size a rounding margin)."""
    ny, nx = plane.shape
    sq = 0.0
    amax = 0.0
    for y in range(ny):
        pr = plane[y]
        for x in range(nx):
            v = np.float64(pr[x])
            v = v if (v - v) == 0.0 else 0.0
            sq += v * v
            amax = max(amax, abs(v))
    return sq, amax


@njit(cache=True, nogil=True)
def ring_states(plane, run_dy, run_dx, run_len, run_w, thr, norm_min, fft_error):
    """Classify the pixels of a ratio plane for the threshold test on its ring convolution.

    Parameters
    ----------
    plane : (ny, nx) float
        Ratios (NaN or infinite = not usable; they count as 0 and carry no weight).
    run_dy, run_dx, run_len, run_w : (nruns,) int64, int64, int64, float64
        The kernel's non-zero taps as runs of equal weight along rows: output (y, x) takes
        ``run_w * plane[y + run_dy, x + run_dx + j]`` for ``j < run_len``. Taps outside the
        frame carry weight (value 0), as stcal's normalisation pads with ones.
    thr : float
        ``extend_snr_threshold``.
    norm_min : float
        A pixel is usable only where the weight of usable taps exceeds this (stcal: ``1e-3``
        times the kernel's mean).
    fft_error : float
        Bound on an FFT convolution's error at any pixel relative to the 2-norm of its input
        plane times the kernel's 1-norm (``large_events.FFT_ERROR``).

    Returns
    -------
    above, undecided : int64 arrays
        Sorted linear indices (``y * nx + x``) of the pixels above the threshold and of those
        too close to call (all others are below it or unusable): the weighted sum ``s`` and
        weight ``n`` of a pixel's usable taps (float64; sums of run sums, rounding below 1e-12
        of the sum of the terms' magnitudes) are compared as ``s - thr * n`` with a margin
        covering the FFT's error on both (``fft_error`` times the 2-norms of the plane's usable
        values and of the padded 0/1 usable map) and the rounding of both computations.
    """
    ny, nx = plane.shape
    nruns = run_dy.size
    r = 0  # reach of the kernel
    wmax = 1
    k1 = 0.0
    for t in range(nruns):
        r = max(r, abs(run_dy[t]), abs(run_dx[t]), abs(run_dx[t] + run_len[t] - 1))
        wmax = max(wmax, run_len[t])
        k1 += abs(run_w[t]) * run_len[t]
    py, px = ny + 2 * r, nx + 2 * r
    sq, amax = _finite_norms(plane)
    pad = np.sqrt(np.float64(py * px))
    norm_margin = (fft_error * pad + 1e-12) * k1
    margin = fft_error * np.sqrt(sq) * k1 + thr * norm_margin + 1e-12 * (amax + thr) * k1
    # the plane padded by r (outside: value 0, weight 1), one row at a time in vr/gr, and the
    # run sums of the last 2r + 1 padded rows: hv[row % k, w - 1, x] = sum of the row's
    # values x .. x + w - 1 (hg the same of the weights)
    k = 2 * r + 1
    vr = np.zeros(px, dtype=np.float64)
    gr = np.ones(px, dtype=np.float64)
    hv = np.zeros((k, wmax, px), dtype=np.float64)
    hg = np.zeros((k, wmax, px), dtype=np.float64)
    acc = np.empty(nx, dtype=np.float64)
    nrm = np.empty(nx, dtype=np.float64)
    above = np.empty(ny * nx, dtype=np.int64)
    undecided = np.empty(ny * nx, dtype=np.int64)
    n_above = 0
    n_undecided = 0
    for row in range(py):
        b = row % k
        yin = row - r
        if 0 <= yin < ny:
            pr = plane[yin]
            for x in range(nx):
                v = np.float64(pr[x])
                ok = (v - v) == 0.0  # finite
                vr[r + x] = v if ok else 0.0
                gr[r + x] = 1.0 if ok else 0.0
        else:
            vr[:] = 0.0
            gr[:] = 1.0
        hv[b, 0, :] = vr
        hg[b, 0, :] = gr
        for w in range(1, wmax):
            pv = hv[b, w - 1]
            pg = hg[b, w - 1]
            cv = hv[b, w]
            cg = hg[b, w]
            for x in range(px - w):
                cv[x] = pv[x] + vr[x + w]
                cg[x] = pg[x] + gr[x + w]
        y = row - 2 * r  # the output row whose last input row this is
        if y < 0:
            continue
        acc[:] = 0.0
        nrm[:] = 0.0
        for t in range(nruns):
            src = (y + r + run_dy[t]) % k
            x0 = r + run_dx[t]
            wt = run_w[t]
            sv = hv[src, run_len[t] - 1, x0 : x0 + nx]
            sg = hg[src, run_len[t] - 1, x0 : x0 + nx]
            for x in range(nx):
                acc[x] += wt * sv[x]
                nrm[x] += wt * sg[x]
        py_row = plane[y]
        for x in range(nx):
            v0 = np.float64(py_row[x])
            if not (v0 - v0) == 0.0:
                continue
            n = nrm[x]
            if n <= norm_min - norm_margin:
                continue
            d = acc[x] - thr * n
            if d > margin and n > norm_min + norm_margin:
                above[n_above] = y * nx + x
                n_above += 1
            elif d >= -margin:
                undecided[n_undecided] = y * nx + x
                n_undecided += 1
    return above[:n_above].copy(), undecided[:n_undecided].copy()


@njit(cache=True, nogil=True, inline="always")
def _root(parent, p):
    while parent[p] != p:
        parent[p] = parent[parent[p]]
        p = parent[p]
    return p


@njit(cache=True, nogil=True)
def sparse_components(lin, ny, nx):
    """8-connected components of the pixels at the sorted linear indices ``lin`` of a (ny, nx)
    plane.

    Returns ``(comp, bbox)``: ``comp[p]`` the component of pixel ``p`` (0, 1, ... numbered in the
    raster order of their first pixels, as ``scipy.ndimage.label`` and ``skimage.measure.label``
    number them) and ``bbox[k] = (y0, y1, x0, x1)`` (end-exclusive) of component k.
    """
    n = lin.size
    parent = np.arange(n)
    for p in range(n):
        y = lin[p] // nx
        x = lin[p] - y * nx
        # the neighbours before a pixel in raster order: W, NW, N, NE
        for oy, ox in ((0, -1), (-1, -1), (-1, 0), (-1, 1)):
            yy = y + oy
            xx = x + ox
            if yy < 0 or xx < 0 or xx >= nx:
                continue
            c = yy * nx + xx
            q = np.searchsorted(lin[:p], c)
            if q < p and lin[q] == c:
                a = _root(parent, p)
                b = _root(parent, q)
                if a != b:
                    if a < b:
                        parent[b] = a
                    else:
                        parent[a] = b
    comp = np.empty(n, dtype=np.int64)
    ids = np.full(n, -1, dtype=np.int64)
    m = 0
    for p in range(n):
        r = _root(parent, p)
        if ids[r] < 0:
            ids[r] = m
            m += 1
        comp[p] = ids[r]
    bbox = np.empty((m, 4), dtype=np.int64)
    bbox[:, 0] = ny
    bbox[:, 1] = 0
    bbox[:, 2] = nx
    bbox[:, 3] = 0
    for p in range(n):
        k = comp[p]
        y = lin[p] // nx
        x = lin[p] - y * nx
        bbox[k, 0] = min(bbox[k, 0], y)
        bbox[k, 1] = max(bbox[k, 1], y + 1)
        bbox[k, 2] = min(bbox[k, 2], x)
        bbox[k, 3] = max(bbox[k, 3], x + 1)
    return comp, bbox


lock_cache_writes(globals())  # one process at a time adds to a function's cache entries
