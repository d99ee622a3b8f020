"""Numba internals of the two-point-difference jump kernel (see :mod:`stcal_dask.kernels.jump`).

Everything here works pixel by pixel with small scratch buffers: a pixel's samples (all
integrations and groups) are gathered into a (nints, ngroups) buffer, its first differences into a
(nints * (ngroups - 1),) float64 buffer, and the decisions are written straight into the output
GROUPDQ cube. No whole-cube float temporaries are made.

Precision follows stcal 1.20.0 exactly (that is what makes the DQ bit-identical):

* electrons ``D = data * gain`` are formed in the product dtype of the inputs (float32 for JWST)
  and the first difference ``D[k+1] - D[k]`` is taken in that dtype, then widened to float64;
* the signed median, sigma and all ratios are float64;
* in the iterative path the numerator ``|d| - c`` is rounded to float32, and from the second
  round on the clipped median ``c`` is rounded to float32 as well (the first round uses the
  float64 median).

Path codes: ``PATH_SKIP`` (0), ``PATH_SIGCLIP`` (1), ``PATH_SINGLE`` (2), ``PATH_ITERATIVE`` (3).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from stcal_dask import dqflags

PATH_SKIP = 0
PATH_SIGCLIP = 1
PATH_SINGLE = 2
PATH_ITERATIVE = 3

_DNU = dqflags.DO_NOT_USE
_SAT = dqflags.SATURATED
_JUMP = dqflags.JUMP_DET
_SAT_DNU = dqflags.SATURATED | dqflags.DO_NOT_USE


@njit(cache=True)
def _sort_prefix(buf, n):
    """Sort ``buf[:n]`` in place (insertion sort for short runs, numpy sort otherwise)."""
    if n <= 32:
        for i in range(1, n):
            v = buf[i]
            j = i - 1
            while j >= 0 and buf[j] > v:
                buf[j + 1] = buf[j]
                j -= 1
            buf[j + 1] = v
    else:
        buf[:n] = np.sort(buf[:n])


@njit(cache=True)
def _median_prefix(buf, n):
    """Median of ``buf[:n]`` (no NaN inside); NaN when n == 0. Sorts ``buf[:n]``.

    Even counts give ``(lo + hi) / 2`` as numpy's (nan)median does.
    """
    if n == 0:
        return np.nan
    _sort_prefix(buf, n)
    h = n // 2
    if n % 2 == 1:
        return buf[h]
    return (buf[h - 1] + buf[h]) / 2.0


@njit(cache=True)
def _nanmedian(vals, n, buf):
    """nanmedian of ``vals[:n]`` (float64) using ``buf`` as scratch."""
    m = 0
    for j in range(n):
        v = vals[j]
        if not math.isnan(v):
            buf[m] = v
            m += 1
    return _median_prefix(buf, m)


@njit(cache=True)
def _clipped_median(a, n, buf):
    """stcal's clipped median of ``a[:n]`` (values already absolute, NaN = unusable).

    Returns ``(c, n_use)``: n_use >= 4 drops every entry equal to the maximum and takes the median
    of the rest; n_use == 3 plain median; n_use == 2 the smaller value; otherwise NaN.
    """
    n_use = 0
    mx = -np.inf
    mn = np.inf
    for j in range(n):
        v = a[j]
        if not math.isnan(v):
            n_use += 1
            if v > mx:
                mx = v
            if v < mn:
                mn = v
    if n_use < 2:
        return np.nan, n_use
    if n_use == 2:
        return mn, n_use
    m = 0
    if n_use == 3:
        for j in range(n):
            v = a[j]
            if not math.isnan(v):
                buf[m] = v
                m += 1
        return _median_prefix(buf, m), n_use
    for j in range(n):
        v = a[j]
        if not math.isnan(v) and v != mx:
            buf[m] = v
            m += 1
    return _median_prefix(buf, m), n_use


@njit(cache=True)
def _load_pixel(data, gdq, gain, y, x, dscr, diffs):
    """Electrons of one pixel into ``dscr`` (NaN on SAT/DNU groups) and its first differences
    (float64, flattened (nints, ndiffs)) into ``diffs``."""
    nints, ngroups = data.shape[0], data.shape[1]
    g = gain[y, x]
    for i in range(nints):
        for k in range(ngroups):
            if gdq[i, k, y, x] & _SAT_DNU:
                dscr[i, k] = np.nan
            else:
                dscr[i, k] = data[i, k, y, x] * g
    nd = ngroups - 1
    for i in range(nints):
        for k in range(nd):
            diffs[i * nd + k] = np.float64(dscr[i, k + 1] - dscr[i, k])


@njit(cache=True)
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


@njit(cache=True)
def diffs_cube(data, gdq, gain, dscr):
    """Float64 first differences (nints, ngroups - 1, ny, nx) in electrons, NaN where unusable.

    Only used by the sigma-clip path, which hands the cube to astropy's sigma_clip.
    """
    nints, ngroups, ny, nx = data.shape
    nd = ngroups - 1
    out = np.empty((nints, nd, ny, nx), dtype=np.float64)
    diffs = np.empty(nints * nd, dtype=np.float64)
    for y in range(ny):
        for x in range(nx):
            _load_pixel(data, gdq, gain, y, x, dscr, diffs)
            for i in range(nints):
                for k in range(nd):
                    out[i, k, y, x] = diffs[i * nd + k]
    return out


@njit(cache=True)
def detect_pass(
    data,
    gdq,
    gain,
    rnterm,
    path,
    clip_jump,
    reset_planes,
    rej,
    thr_3diff,
    thr_2diff,
    do_neighbors,
    nbr_min,
    nbr_max,
    dscr,
    centre,
    primary,
):
    """Detection pass over every pixel; ``gdq`` (the output copy) is updated in place.

    ``rnterm`` = RN_e^2 / nframes (float64, (ny, nx)); ``clip_jump`` (sigma-clip path only) the
    (nints, ndiffs, ny, nx) candidate mask; ``reset_planes`` (nints, ngroups) bool, planes whose
    pure-JUMP values are reset (sigma-clip path). Fills ``primary`` (ny, nx) with the JUMP count
    after detection and, if ``do_neighbors``, ``centre`` (nints, ndiffs, ny, nx) with 1 where the
    pixel is a neighbour-flagging centre.
    """
    nints, ngroups, ny, nx = data.shape
    nd = ngroups - 1
    ntot = nints * nd
    diffs = np.empty(ntot, dtype=np.float64)
    absd = np.empty(ntot, dtype=np.float64)
    ratio = np.empty(ntot, dtype=np.float64)
    buf = np.empty(max(ntot, 1), dtype=np.float64)
    for y in range(ny):
        for x in range(nx):
            _load_pixel(data, gdq, gain, y, x, dscr, diffs)
            m = _nanmedian(diffs, ntot, buf)
            sig = math.sqrt(abs(m) + rnterm[y, x])
            if sig == 0.0:
                sig = np.nan

            if path == PATH_SIGCLIP:
                for i in range(nints):
                    for k in range(nd):
                        if clip_jump[i, k, y, x]:
                            gdq[i, k + 1, y, x] |= _JUMP
                for i in range(nints):
                    for k in range(ngroups):
                        if reset_planes[i, k] and gdq[i, k, y, x] == _JUMP:
                            gdq[i, k, y, x] = 0
            elif path == PATH_SINGLE:
                for j in range(ntot):
                    d = diffs[j]
                    if math.isfinite(d) and abs(d - m) / sig > rej:
                        i = j // nd
                        gdq[i, j - i * nd + 1, y, x] |= _JUMP
            elif path == PATH_ITERATIVE:
                for j in range(ntot):
                    absd[j] = abs(diffs[j])
                first = True
                for _round in range(ntot):
                    c, n_use = _clipped_median(absd, ntot, buf)
                    if n_use < 2:
                        break
                    if not first:
                        c = np.float64(np.float32(c))
                    first = False
                    sig_it = math.sqrt(abs(c) + rnterm[y, x])
                    if sig_it == 0.0:
                        sig_it = np.nan
                    if n_use >= 4:
                        thr = rej
                    elif n_use == 3:
                        thr = thr_3diff
                    else:
                        thr = thr_2diff
                    gmax = np.nan
                    for j in range(ntot):
                        e = np.float32(absd[j] - c)
                        r = abs(np.float64(e)) / sig_it
                        ratio[j] = r
                        if not math.isnan(r) and (math.isnan(gmax) or r > gmax):
                            gmax = r
                    if not gmax > thr:
                        break
                    for j in range(ntot):
                        if ratio[j] == gmax:
                            i = j // nd
                            gdq[i, j - i * nd + 1, y, x] |= _JUMP
                            absd[j] = np.nan

            cnt = 0
            for i in range(nints):
                for k in range(ngroups):
                    if gdq[i, k, y, x] & _JUMP:
                        cnt += 1
            primary[y, x] = cnt

            if do_neighbors:
                for j in range(ntot):
                    i = j // nd
                    k = j - i * nd
                    is_c = 0
                    if gdq[i, k + 1, y, x] & _JUMP:
                        r0 = abs(diffs[j] - m) / sig
                        if r0 < nbr_max and r0 > nbr_min:
                            is_c = 1
                    centre[i, k, y, x] = is_c


@njit(cache=True)
def post_pass(
    data,
    gdq,
    gain,
    do_neighbors,
    centre,
    do_after,
    e1,
    jmax1,
    e2,
    jmax2,
    dscr,
):
    """Neighbour flagging, after-jump flagging and redundant-bit removal, pixel by pixel.

    ``centre`` comes from :func:`detect_pass`; ``e1``/``e2`` are the after-jump thresholds in
    electrons and ``jmax1``/``jmax2`` the number of following groups to flag.
    """
    nints, ngroups, ny, nx = data.shape
    nd = ngroups - 1
    ntot = nints * nd
    diffs = np.empty(max(ntot, 1), dtype=np.float64)
    buf = np.empty(max(ntot, 1), dtype=np.float64)
    addf = np.zeros(ngroups, dtype=np.bool_)
    for y in range(ny):
        for x in range(nx):
            if do_neighbors:
                for i in range(nints):
                    for k in range(nd):
                        hit = False
                        if y > 0 and centre[i, k, y - 1, x]:
                            hit = True
                        elif y + 1 < ny and centre[i, k, y + 1, x]:
                            hit = True
                        elif x > 0 and centre[i, k, y, x - 1]:
                            hit = True
                        elif x + 1 < nx and centre[i, k, y, x + 1]:
                            hit = True
                        if hit and (gdq[i, k + 1, y, x] & _SAT_DNU) == 0:
                            gdq[i, k + 1, y, x] |= _JUMP
            if do_after:
                _load_pixel(data, gdq, gain, y, x, dscr, diffs)
                m = _nanmedian(diffs, ntot, buf)
                for i in range(nints):
                    for g in range(ngroups):
                        addf[g] = False
                    for g in range(1, ngroups):
                        if gdq[i, g, y, x] & _JUMP:
                            ej = diffs[i * nd + g - 1] - m
                            if ej >= e1:
                                for h in range(g, min(g + jmax1, ngroups - 1) + 1):
                                    addf[h] = True
                            if ej >= e2:
                                for h in range(g, min(g + jmax2, ngroups - 1) + 1):
                                    addf[h] = True
                    for g in range(ngroups):
                        if addf[g] and (gdq[i, g, y, x] & _SAT_DNU) == 0:
                            gdq[i, g, y, x] |= _JUMP
            for i in range(nints):
                for g in range(ngroups):
                    v = gdq[i, g, y, x]
                    if (v & _JUMP) and (v & _SAT_DNU):
                        gdq[i, g, y, x] = v ^ _JUMP


@njit(cache=True)
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
