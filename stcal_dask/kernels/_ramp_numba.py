"""Numba core of :mod:`stcal_dask.kernels.ramp_fit` (stcal 1.20.0 OLS_C rules, one tile).

Written from the behaviour described in ``ramp_fit_spec.md`` and runs of stcal 1.20.0. The
per-pixel arithmetic follows stcal's C fitter step by step in double precision (inputs are read as
float32 and widened; the optimal weights |(k-c)/c|^P are single-precision powers like C's ``powf``,
tabulated once per tile) and results are rounded to float32 at the end. On every oracle test and
fuzzed case so far the outputs are bit-identical to stcal's. (Note: in numba ``float(x)`` of a
float32 value stays float32, so widening uses ``np.float64``.)

Speed: flag-free integrations skip the segment search; the median of the first differences uses
the branch-free median networks shared with the jump kernel
(:func:`stcal_dask.kernels._median_numba.median_prefix`); the fitopt-only quantities of a
segment (sigslope, yint, sigyint) are computed only when the fitopt product is asked for.

Layout: rows are visited in order. The pixels of a row that need none of the flag rules (no
group DQ bit, a positive gain, no DO_NOT_USE/SATURATED pixel DQ, finite samples; 2..33 groups;
not with ``save_opt``) are fitted first, all together (:func:`_clean_row`: loops over pixels
innermost, the median rate from the lane medians of
:func:`~stcal_dask.kernels._median_numba.clipped_mid`), with the same operations in the same
order as the per-pixel code. The other pixels are visited in C order; a pixel's
(nints, ngroups) samples are read straight from the cube into a small per-pixel scratch buffer
(nints * ngroups sequential streams, one per group plane: ~15 % faster than first transposing
each row into a pixel-major buffer). Memory besides the outputs is O(nx * nints * ngroups).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from stcal_dask.errors import UserInputError
from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_numba import SORT_MAX, clipped_mid, median_prefix, mid_scratch

LARGE_VARIANCE_THRESHOLD = 1.0e6
_SQRT2_C = 1.41421356  # the truncated sqrt(2) stcal uses for the 2-group sigslope

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}


# ------------------------------------------------------------------------------------------------
# segments


@numba.njit(**_JIT, inline="always")
def _segments(q, base, ngroups, npers, jump, sat, skip_sat0, starts, ends, row):
    """Segment one integration's group DQ ``q[base:base+ngroups]`` (stcal's rules, spec §3.4).

    Returns ``(n_kept, n_reported, sat0)``: kept segments are in
    ``starts/ends[row, :n_kept]`` ([start, end) group indices); ``n_reported`` is the count stcal
    reports for the fitopt axis (it keeps the pre-prune count when only length-1 segments
    exist); ``sat0`` means group 0 is SATURATED (the whole integration is unusable and has no
    segment) -- only tested if ``skip_sat0``.
    """
    if skip_sat0 and (q[base] & sat) != 0:
        return 0, 0, True
    size = 0
    max_len = 0
    in_seg = False
    start = 0
    for g in range(ngroups + 1):
        if g < ngroups:
            good = (q[base + g] & npers) == 0
        else:
            good = False
        if good:
            if not in_seg:
                if g > 0 and (q[base + g - 1] & npers) == jump:
                    start = g - 1
                else:
                    start = g
                in_seg = True
        elif in_seg:
            length = g - start
            in_seg = False
            if length == 1 and max_len > 1:
                continue
            starts[row, size] = start
            ends[row, size] = g
            size += 1
            if length > max_len:
                max_len = length
    if size < 2:
        return size, size, False
    if max_len < 2:
        # Only length-1 segments: the first is used, but the reported size is not reduced.
        return 1, size, False
    kept = 0
    for k in range(size):
        if ends[row, k] - starts[row, k] != 1:
            starts[row, kept] = starts[row, k]
            ends[row, kept] = ends[row, k]
            kept += 1
    return kept, kept, False


# ------------------------------------------------------------------------------------------------
# the fitopt dimension pass


@numba.njit(**_JIT)
def fitopt_dims_tile(groupdq, zeroframe, has_zf, suppress, dnu, sat, jump, pers, chargeloss, ngval):
    """Largest fitopt segment count and JUMP_DET count (groups >= 1) over the tile."""
    nints, ngroups, ny, nx = groupdq.shape
    npers = np.uint8(~np.uint8(pers))
    n = nints * ngroups
    q = np.empty(n, dtype=np.uint8)
    starts = np.empty((1, ngroups + 1), dtype=np.int64)
    ends = np.empty((1, ngroups + 1), dtype=np.int64)
    max_seg = 0
    max_cr = 0
    for y in range(ny):
        for x in range(nx):
            for i in range(nints):
                base = i * ngroups
                orq = np.uint8(0)
                for gq in range(ngroups):
                    k = base + gq
                    qq = groupdq[i, gq, y, x]
                    q[k] = qq
                    orq |= qq
                if orq == 0 and not (suppress and ngroups == 1):
                    # flag-free integration: one segment, no cosmic ray
                    if max_seg < 1:
                        max_seg = 1
                    continue
                if suppress:
                    ngood = 0
                    for k in range(base, base + ngroups):
                        if (q[k] & npers) == 0:
                            ngood += 1
                    if ngood == 1:
                        for k in range(base, base + ngroups):
                            q[k] |= dnu
                ncr = 0
                ngood = 0
                for g in range(ngroups):
                    if g > 0 and (q[base + g] & jump) != 0:
                        ncr += 1
                    if q[base + g] == 0:
                        ngood += 1
                if ncr > max_cr:
                    max_cr = ncr
                if (not suppress) and has_zf and ngood == 0:
                    if zeroframe[i, y, x] != 0.0:
                        q[base] = 0
                _, nrep, _ = _segments(q, base, ngroups, npers, jump, sat, True, starts, ends, 0)
                if nrep > max_seg:
                    max_seg = nrep
    return max_seg, max_cr


# ------------------------------------------------------------------------------------------------
# segment fits (spec §3.5, §3.6)


@numba.njit(**_JIT)
def _var_p(mrate, dark, pden):
    if mrate > 0.0:
        return (mrate + dark) / pden
    return dark / pden


@numba.njit(**_JIT)
def _rnoise_short(rn, gain, dt):
    """Read-noise variance of a 1-group (dt = its timing) or 2-group (dt = TGROUP) segment."""
    rnum = rn / dt
    rnum = 12.0 * rnum * rnum
    rden = 6.0 * gain * gain
    return rnum / rden


@numba.njit(**_JIT)
def _rnoise_default(rn, gain, tg, seglen):
    if gain <= 0.0 or math.isnan(gain):
        return 0.0
    rnum = rn / tg
    rnum = 12.0 * rnum * rnum
    rden = seglen * seglen * seglen - seglen
    rden = rden * gain * gain
    return rnum / rden


_POWERS = (0.0, 0.4, 1.0, 3.0, 6.0, 10.0)


@numba.njit(**_JIT)
def _snr_power_index(snr):
    """Index into ``_POWERS`` of the optimal-weighting exponent for a segment's S/N (§3.5)."""
    if snr < 5.0:
        return 0
    if snr < 10.0:
        return 1
    if snr < 20.0:
        return 2
    if snr < 50.0:
        return 3
    if snr < 100.0:
        return 4
    return 5  # also NaN


@numba.njit(**_JIT)
def _weight_table(ngroups):
    """Unscaled optimal weights |(k - c)/c|^P for every exponent and segment length >= 3.

    ``table[p, n, k]`` for exponent ``_POWERS[p]``, segment length ``n`` and sample ``k``; the power
    is evaluated in single precision as stcal's ``powf`` does. Precomputed once per tile.
    """
    powers = np.array(_POWERS, dtype=np.float32)
    table = np.zeros((6, ngroups + 1, ngroups + 1), dtype=np.float64)
    for n in range(3, ngroups + 1):
        mid = float(n - 1) / 2.0
        invmid = 1.0 / mid
        for k in range(n):
            w = np.float32(abs((float(k) - mid) * invmid))
            for p in range(6):
                table[p, n, k] = np.float64(w ** powers[p])
    return table


@numba.njit(**_JIT)
def _fit_segment(d, base, start, length, timing1, rn, gain, dark, mrate, tg, wtab, out,
                 need_opt):
    """Fit one segment; ``out`` = [slope, sigslope, var_p, var_r, var_e, yint, sigyint]
    (sigslope, yint and sigyint, only used by the fitopt product, only with ``need_opt``)."""
    for k in range(7):
        out[k] = 0.0
    if length == 1:
        t = timing1
        out[0] = d[base + start] / t
        out[2] = _var_p(mrate, dark, t * gain)
        out[3] = _rnoise_short(rn, gain, t)
    elif length == 2:
        d0 = d[base + start]
        d1 = d[base + start + 1]
        out[0] = (d1 - d0) / tg
        out[2] = _var_p(mrate, dark, tg * gain)
        out[3] = _rnoise_short(rn, gain, tg)
        if need_opt:
            out[1] = _SQRT2_C * rn
            second = float(start) + 1.0
            out[5] = d1 * (1.0 - second) + d0 * second
            out[6] = out[1]
    else:
        # optimal-weighting exponent from the segment's signal-to-noise ratio
        first = d[base + start]
        last = d[base + start + length - 1]
        delta = last - first
        den = rn * rn + delta * gain
        if den <= 0.0 or gain == 0.0:
            snr = 0.0
        else:
            s = delta * gain / math.sqrt(den)
            snr = 0.0 if s < 0.0 else s
        pidx = _snr_power_index(snr)
        invrn2 = 1.0 / (rn * rn)
        sumw = 0.0
        sumx = 0.0
        sumxx = 0.0
        sumy = 0.0
        sumxy = 0.0
        for k in range(length):
            w = wtab[pidx, length, k] * invrn2
            xval = float(k) + float(start)
            v = d[base + start + k]
            if math.isnan(v):
                v = 0.0
            xwt = xval * w
            sumw += w
            sumx += xwt
            sumxx += xval * xwt
            sumy += v * w
            sumxy += v * xwt
        den = sumw * sumxx - sumx * sumx
        num = sumw * sumxy - sumx * sumy
        invden = 1.0 / den
        out[0] = num * invden / tg
        if need_opt:
            out[1] = math.sqrt(sumw * invden)
            out[5] = (sumxx * sumy - sumx * sumxy) * invden
            out[6] = math.sqrt(sumxx * invden)
        seglen = float(length)
        out[2] = _var_p(mrate, dark, tg * gain * (seglen - 1.0))
        out[3] = _rnoise_default(rn, gain, tg, seglen)
    out[4] = out[2] + out[3]


# ------------------------------------------------------------------------------------------------
# flag-free pixels, a row at a time


@numba.njit(**_JIT)
def _clean_row(data, groupdq, pixeldq, gain, rnoise, dark, y, tg, sqrt2nf, combined, invalid,
               wtab, r_slope, r_dq, r_vp, r_vr, r_err, i_slope, i_dq, i_vp, i_vr, i_err,
               done):  # fmt: skip
    """Fit every pixel of row ``y`` that needs none of the flag rules, across the row's pixels
    at once (the loops over pixels are innermost and branch-light, so that they vectorise).

    Such a pixel has no group DQ bit in any integration, a positive gain, no DO_NOT_USE or
    SATURATED pixel DQ bit, finite samples, and ngroups >= 2: each integration is one segment of
    all groups. Outputs are written for those pixels only, and ``done[x]`` tells which they are;
    the values are those of the pixel-by-pixel code below, operation for operation (the same
    helpers, the same order of every sum; the median rate's median from
    :func:`~stcal_dask.kernels._median_numba.clipped_mid`, which gives the value
    :func:`~stcal_dask.kernels._median_numba.median_prefix` gives). Without ``save_opt`` only.
    """
    nints, ngroups, ny, nx = data.shape
    for x in range(nx):
        done[x] = False
    # which pixels: an OR of the group DQ and a sum that is NaN where a sample is not finite
    orr = np.zeros(nx, dtype=np.uint32)
    bad = np.zeros(nx, dtype=np.float32)
    for i in range(nints):
        for k in range(ngroups):
            grow = groupdq[i, k, y]
            drow = data[i, k, y]
            for x in range(nx):
                orr[x] |= grow[x]
                bad[x] += drow[x] * np.float32(0.0)
    lane = np.empty(nx, dtype=np.int64)
    nl = 0
    for x in range(nx):
        g = gain[y, x]
        if orr[x] == 0 and bad[x] == 0.0 and g > 0.0 and (pixeldq[y, x] & invalid) == 0:
            lane[nl] = x
            nl += 1
    if nl == 0:
        return
    n = nints * ngroups
    nm = ngroups - 1
    dd = np.empty((n, nl), dtype=np.float64)
    for i in range(nints):
        for k in range(ngroups):
            src = data[i, k, y]
            dst = dd[i * ngroups + k]
            for m in range(nl):
                dst[m] = np.float64(src[lane[m]])
    g_l = np.empty(nl, dtype=np.float64)
    rn_l = np.empty(nl, dtype=np.float64)
    dk_l = np.empty(nl, dtype=np.float64)
    for m in range(nl):
        x = lane[m]
        g = np.float64(gain[y, x])
        g_l[m] = g
        rn_l[m] = np.float64(np.float32(np.float64(rnoise[y, x]) * (g / sqrt2nf)))
        dk_l[m] = np.float64(dark[y, x])

    # median rate: per integration the median of the first differences of the rates (spec §3.3)
    mpl = np.empty((nm, nl), dtype=np.float64)
    spl, nuse, mxv, mnv, cnt, lo, hi = mid_scratch(mpl)
    mrate = np.zeros(nl, dtype=np.float64)
    for i in range(nints):
        base = i * ngroups
        for k in range(nm):
            a = dd[base + k]
            b = dd[base + k + 1]
            out = mpl[k]
            for m in range(nl):
                out[m] = b[m] / tg - a[m] / tg
        clipped_mid(mpl, spl, nm, nl, True, nuse, mxv, mnv, cnt, lo, hi)
        for m in range(nl):
            mi = (lo[m] + hi[m]) / 2.0
            mrate[m] += 0.0 if math.isnan(mi) else mi
    for m in range(nl):
        mrate[m] = mrate[m] / float(nints)

    # one segment of all groups per integration (spec §3.5, §3.6, §4.1, §4.2)
    rate_p = np.zeros(nl, dtype=np.float64)
    rate_r = np.zeros(nl, dtype=np.float64)
    rate_num = np.zeros(nl, dtype=np.float64)
    rate_den = np.zeros(nl, dtype=np.float64)
    slope = np.empty(nl, dtype=np.float64)
    invrn2 = np.empty(nl, dtype=np.float64)
    pidx = np.empty(nl, dtype=np.int64)
    sw = np.empty(nl, dtype=np.float64)
    sx = np.empty(nl, dtype=np.float64)
    sxx = np.empty(nl, dtype=np.float64)
    sy = np.empty(nl, dtype=np.float64)
    sxy = np.empty(nl, dtype=np.float64)
    seglen = float(ngroups)
    for i in range(nints):
        base = i * ngroups
        if ngroups == 2:
            for m in range(nl):
                slope[m] = (dd[base + 1, m] - dd[base, m]) / tg
        else:
            for m in range(nl):
                g = g_l[m]
                rn = rn_l[m]
                delta = dd[base + ngroups - 1, m] - dd[base, m]
                den = rn * rn + delta * g
                if den <= 0.0 or g == 0.0:
                    snr = 0.0
                else:
                    q = delta * g / math.sqrt(den)
                    snr = 0.0 if q < 0.0 else q
                pidx[m] = _snr_power_index(snr)
                invrn2[m] = 1.0 / (rn * rn)
                sw[m] = 0.0
                sx[m] = 0.0
                sxx[m] = 0.0
                sy[m] = 0.0
                sxy[m] = 0.0
            for k in range(ngroups):
                xval = float(k) + 0.0
                v = dd[base + k]
                for m in range(nl):
                    w = wtab[pidx[m], ngroups, k] * invrn2[m]
                    xwt = xval * w
                    sw[m] += w
                    sx[m] += xwt
                    sxx[m] += xval * xwt
                    sy[m] += v[m] * w
                    sxy[m] += v[m] * xwt
            for m in range(nl):
                den = sw[m] * sxx[m] - sx[m] * sx[m]
                num = sw[m] * sxy[m] - sx[m] * sy[m]
                invden = 1.0 / den
                slope[m] = num * invden / tg
        for m in range(nl):
            x = lane[m]
            g = g_l[m]
            rn = rn_l[m]
            if ngroups == 2:
                vps = _var_p(mrate[m], dk_l[m], tg * g)
                vrs = _rnoise_short(rn, g, tg)
            else:
                vps = _var_p(mrate[m], dk_l[m], tg * g * (seglen - 1.0))
                vrs = _rnoise_default(rn, g, tg, seglen)
            ves = vps + vrs
            inv_r = 0.0 + 1.0 / vrs
            inv_p = 0.0
            if vps > 0.0:
                inv_p += 1.0 / vps
            inv_e = 0.0 + 1.0 / ves
            if combined:
                num = 0.0 + slope[m] / ves
            else:
                num = 0.0 + slope[m] / vrs
            ivp = 0.0
            if inv_p > 0.0:
                ivp = 1.0 / inv_p
            if ivp >= LARGE_VARIANCE_THRESHOLD:
                ivp = 0.0
            ivr = 1.0 / inv_r
            if ivr >= LARGE_VARIANCE_THRESHOLD:
                ivr = 0.0
            var_err = 1.0 / inv_e
            islope = num * var_err if combined else num * ivr
            ierr = 0.0 if var_err > LARGE_VARIANCE_THRESHOLD else math.sqrt(var_err)
            if inv_p > 0.0:
                rate_p[m] += inv_p
            rate_r[m] += inv_r
            rate_num[m] += num
            rate_den[m] += inv_e
            i_slope[i, y, x] = np.float32(islope)
            i_dq[i, y, x] = np.uint32(pixeldq[y, x])
            i_vp[i, y, x] = np.float32(ivp)
            i_vr[i, y, x] = np.float32(ivr)
            i_err[i, y, x] = np.float32(ierr)

    # the exposure (spec §4.3)
    for m in range(nl):
        x = lane[m]
        vp = rate_p[m]
        if vp > 0.0:
            vp = 1.0 / vp
        if vp >= LARGE_VARIANCE_THRESHOLD or vp < 0.0:
            vp = 0.0
        vr = rate_r[m]
        if vr > 0.0:
            vr = 1.0 / vr
        if vr >= LARGE_VARIANCE_THRESHOLD:
            vr = 0.0
        err = math.sqrt(vp + vr)
        rslope = rate_num[m]
        if not math.isnan(rslope):
            if combined:
                rslope = rslope / rate_den[m]
            else:
                rslope = rslope * vr
        r_slope[y, x] = np.float32(rslope)
        r_dq[y, x] = np.uint32(pixeldq[y, x])
        r_vp[y, x] = np.float32(vp)
        r_vr[y, x] = np.float32(vr)
        r_err[y, x] = np.float32(err)
        done[x] = True


# ------------------------------------------------------------------------------------------------
# the tile


@numba.njit(**_JIT)
def fit_tile_core(
    data,
    groupdq,
    pixeldq,
    gain,
    rnoise,
    dark,
    zeroframe,
    has_zf,
    tf,
    tg,
    nframes,
    groupgap,
    drop_frames1,
    suppress,
    save_opt,
    chargeloss_rnoise,
    combined,
    dnu,
    sat,
    jump,
    pers,
    chargeloss,
    ngval,
    # outputs
    r_slope,
    r_dq,
    r_vp,
    r_vr,
    r_err,
    i_slope,
    i_dq,
    i_vp,
    i_vr,
    i_err,
    o_slope,
    o_sigslope,
    o_yint,
    o_sigyint,
    o_weights,
    o_vp,
    o_vr,
    o_ped,
    o_crmag,
):
    nints, ngroups, ny, nx = data.shape
    n = nints * ngroups
    npers = np.uint8(~np.uint8(pers))
    invalid = dnu | sat
    dnu_chg = np.uint8(dnu | chargeloss)
    t1 = (float(nframes) + 1.0) * tf / 2.0
    ped_tmp = ((nframes + 1) / 2.0 + drop_frames1) / (nframes + groupgap)
    sqrt2nf = math.sqrt(2.0 * nframes)
    max_seg_slots = o_slope.shape[1]
    max_cr_slots = o_crmag.shape[1]

    d = np.empty(n, dtype=np.float64)
    q = np.empty(n, dtype=np.uint8)
    oq = np.empty(n, dtype=np.uint8)
    clean = np.empty(nints, dtype=np.bool_)
    mbuf = np.empty(max(ngroups, 1), dtype=np.float64)
    starts = np.empty((nints, ngroups + 1), dtype=np.int64)
    ends = np.empty((nints, ngroups + 1), dtype=np.int64)
    cstarts = np.empty((1, ngroups + 1), dtype=np.int64)
    cends = np.empty((1, ngroups + 1), dtype=np.int64)
    nkept = np.empty(nints, dtype=np.int64)
    cnt_sat = np.empty(nints, dtype=np.int64)
    cnt_dnu = np.empty(nints, dtype=np.int64)
    cnt_dnu_sat = np.empty(nints, dtype=np.int64)
    cnt_good = np.empty(nints, dtype=np.int64)
    has_cl = np.empty(nints, dtype=np.bool_)
    is_0th = np.empty(nints, dtype=np.bool_)
    is_zf = np.empty(nints, dtype=np.bool_)
    idq = np.empty(nints, dtype=np.uint32)
    islope = np.empty(nints, dtype=np.float64)
    ivp = np.empty(nints, dtype=np.float64)
    ivr = np.empty(nints, dtype=np.float64)
    ierr = np.empty(nints, dtype=np.float64)
    seg = np.empty(7, dtype=np.float64)
    wtab = _weight_table(ngroups)
    # flag-free pixels are fitted a row at a time (_clean_row); the others pixel by pixel
    rows = (not save_opt) and 2 <= ngroups <= SORT_MAX + 1
    done = np.zeros(nx, dtype=np.bool_)

    for y in range(ny):
        if rows:
            _clean_row(data, groupdq, pixeldq, gain, rnoise, dark, y, tg, sqrt2nf, combined,
                       invalid, wtab, r_slope, r_dq, r_vp, r_vr, r_err, i_slope, i_dq, i_vp,
                       i_vr, i_err, done)  # fmt: skip
        for x in range(nx):
            if done[x]:
                continue
            # ---------------- pixel setup (spec §3.1, §3.2)
            g = np.float64(gain[y, x])
            # stcal's in-place conversion: R = RN * gain / sqrt(2 nframes), rounded to float32
            rn = np.float64(np.float32(np.float64(rnoise[y, x]) * (g / sqrt2nf)))
            dk = np.float64(dark[y, x])
            pdq = np.uint32(pixeldq[y, x])
            if g <= 0.0 or math.isnan(g):
                pdq |= np.uint32(dnu | ngval)
            rdq = pdq
            any_cl = False
            for i in range(nints):
                base = i * ngroups
                idq[i] = pdq
                islope[i] = 0.0
                ivp[i] = 0.0
                ivr[i] = 0.0
                ierr[i] = 0.0
                # copy the samples; fast path for an integration without any flag
                orq = np.uint8(0)
                for gq in range(ngroups):
                    k = base + gq
                    qq = groupdq[i, gq, y, x]
                    q[k] = qq
                    orq |= qq
                    d[k] = np.float64(data[i, gq, y, x])
                ns = 0
                nd = 0
                nds = 0
                ngd = ngroups
                fj = False
                fp = False
                fc = False
                is_clean = orq == 0 and not (suppress and ngroups == 1)
                clean[i] = is_clean
                if not is_clean:
                    fj = (orq & jump) != 0
                    fp = (orq & pers) != 0
                    fc = (orq & chargeloss) != 0
                    # one pass over the groups: counts (branch-free), SATURATED samples to NaN,
                    # CR magnitudes; suppress_one_group is applied after it (below)
                    ngood = 0
                    ngd = 0
                    ncr = 0
                    for gg in range(ngroups):
                        k = base + gg
                        qq = q[k]
                        ngood += (qq & npers) == 0
                        ngd += qq == 0
                        nd += (qq & dnu) != 0
                        nds += (qq & invalid) != 0
                        if qq & sat:
                            d[k] = np.nan
                            ns += 1
                        if save_opt and gg > 0 and (qq & jump):
                            if ncr >= max_cr_slots:
                                raise ValueError("n_crmag is smaller than this tile needs")
                            o_crmag[i, ncr, y, x] = np.float32(d[k] - d[k - 1])
                            ncr += 1
                    if suppress and ngood == 1:
                        # suppress_one_group: exactly one usable group -> DO_NOT_USE everywhere
                        for k in range(base, base + ngroups):
                            q[k] |= dnu
                        ngd = 0
                        nd = ngroups
                        nds = ngroups
                is_0th[i] = False
                is_zf[i] = False
                if not suppress:
                    if ngd == 1 and q[base] == 0:
                        is_0th[i] = True
                    elif ngd == 0 and has_zf:
                        zv = np.float64(zeroframe[i, y, x])
                        if zv != 0.0:
                            d[base] = zv
                            q[base] = 0
                            ngd = 1
                            nds -= 1
                            if ns == ngroups:
                                ns -= 1
                            if nd == ngroups:
                                nd -= 1
                            is_zf[i] = True
                if fj:
                    idq[i] |= np.uint32(jump)
                    rdq |= np.uint32(jump)
                if fp:
                    idq[i] |= np.uint32(pers)
                    rdq |= np.uint32(pers)
                cnt_sat[i] = ns
                cnt_dnu[i] = nd
                cnt_dnu_sat[i] = nds
                cnt_good[i] = ngd
                has_cl[i] = fc
                if fc:
                    any_cl = True

            # ---------------- median rate (spec §3.3)
            if ngroups == 1:
                acc = 0.0
                for i in range(nints):
                    acc += d[i * ngroups] / t1
                mrate = acc / float(nints)
            else:
                acc = 0.0
                for i in range(nints):
                    base = i * ngroups
                    if is_0th[i]:
                        mi = d[base] / t1
                    elif is_zf[i]:
                        mi = d[base] / tf
                    else:
                        # median of the usable first differences (NaN ones left out as
                        # they are found); none usable: the first group's rate
                        r0 = np.nan if (q[base] & dnu) else d[base] / tg
                        prev = r0
                        nm = 0
                        for kk in range(ngroups - 1):
                            qn = q[base + kk + 1]
                            cur = np.nan if (qn & dnu) else d[base + kk + 1] / tg
                            if not (qn & jump):
                                diff = cur - prev
                                if not math.isnan(diff):
                                    mbuf[nm] = diff
                                    nm += 1
                            prev = cur
                        if nm == 0:
                            mi = r0
                        else:
                            mi = median_prefix(mbuf, nm)
                    if math.isnan(mi):
                        mi = 0.0
                    acc += mi
                mrate = acc / float(nints)

            # ---------------- integrations (spec §4.1, §4.2)
            rate_p = 0.0
            rate_r = 0.0
            rate_num = 0.0
            rate_den = 0.0
            dnu_cnt = 0
            sat_cnt = 0
            rate_sat = False
            for i in range(nints):
                base = i * ngroups
                if clean[i]:
                    nk, nrep, sat0 = 1, 1, False
                    starts[i, 0] = 0
                    ends[i, 0] = ngroups
                else:
                    nk, nrep, sat0 = _segments(
                        q, base, ngroups, npers, jump, sat, True, starts, ends, i
                    )
                nkept[i] = nk
                if sat0:
                    idq[i] |= np.uint32(invalid)
                    islope[i] = np.nan
                if save_opt and nrep > max_seg_slots:
                    raise ValueError("n_segments is smaller than this tile needs")
                if cnt_dnu_sat[i] == ngroups:
                    idq[i] |= np.uint32(dnu)
                    if cnt_sat[i] == ngroups:
                        idq[i] |= np.uint32(sat)
                elif nk > 0:
                    if suppress:
                        timing1 = tg
                    elif is_0th[i]:
                        timing1 = t1
                    elif is_zf[i]:
                        timing1 = tf
                    else:
                        timing1 = tg
                    inv_r = 0.0
                    inv_p = 0.0
                    inv_e = 0.0
                    num = 0.0
                    for s in range(nk):
                        st = starts[i, s]
                        ln = ends[i, s] - st
                        _fit_segment(d, base, st, ln, timing1, rn, g, dk, mrate, tg, wtab, seg,
                                     save_opt)
                        inv_r += 1.0 / seg[3]
                        if seg[2] > 0.0:
                            inv_p += 1.0 / seg[2]
                        inv_e += 1.0 / seg[4]
                        if combined:
                            num += seg[0] / seg[4]
                        else:
                            num += seg[0] / seg[3]
                        if save_opt:
                            o_slope[i, s, y, x] = np.float32(seg[0])
                            o_sigslope[i, s, y, x] = np.float32(seg[1])
                            o_vp[i, s, y, x] = np.float32(seg[2])
                            o_vr[i, s, y, x] = np.float32(seg[3])
                            o_yint[i, s, y, x] = np.float32(seg[5])
                            o_sigyint[i, s, y, x] = np.float32(seg[6])
                            if combined:
                                we = 1.0 / seg[4]
                                o_weights[i, s, y, x] = np.float32(we * we)
                            else:
                                o_weights[i, s, y, x] = np.float32(1.0 / seg[3])
                    if inv_p > 0.0:
                        ivp[i] = 1.0 / inv_p
                    if ivp[i] >= LARGE_VARIANCE_THRESHOLD:
                        ivp[i] = 0.0
                    ivr[i] = 1.0 / inv_r
                    if ivr[i] >= LARGE_VARIANCE_THRESHOLD:
                        ivr[i] = 0.0
                    if idq[i] & invalid:
                        islope[i] = np.nan
                        ivp[i] = 0.0
                        ivr[i] = 0.0
                        ierr[i] = 0.0
                    else:
                        var_err = 1.0 / inv_e
                        if combined:
                            islope[i] = num * var_err
                        else:
                            islope[i] = num * ivr[i]
                        if var_err > LARGE_VARIANCE_THRESHOLD:
                            ierr[i] = 0.0
                        else:
                            ierr[i] = math.sqrt(var_err)
                    if inv_p > 0.0:
                        rate_p += inv_p
                    rate_r += inv_r
                    rate_num += num
                    rate_den += inv_e
                # per-integration DQ and pedestal (spec §4.2, §6)
                if idq[i] & dnu:
                    dnu_cnt += 1
                    islope[i] = np.nan
                if save_opt:
                    if idq[i] & sat:
                        o_ped[i, y, x] = 0.0
                    else:
                        ped = d[base] - islope[i] * ped_tmp
                        if math.isnan(ped):
                            ped = 0.0
                        o_ped[i, y, x] = np.float32(ped)
                if idq[i] & sat:
                    sat_cnt += 1
                    islope[i] = np.nan
                if cnt_sat[i] > 0:
                    idq[i] |= np.uint32(sat)
                    rate_sat = True

            # ---------------- exposure (spec §4.3)
            if dnu_cnt == nints:
                rdq |= np.uint32(dnu)
            if sat_cnt == nints:
                rdq |= np.uint32(sat)
            vp = rate_p
            if vp > 0.0:
                vp = 1.0 / vp
            if vp >= LARGE_VARIANCE_THRESHOLD or vp < 0.0:
                vp = 0.0
            vr = rate_r
            if vr > 0.0:
                vr = 1.0 / vr
            if vr >= LARGE_VARIANCE_THRESHOLD:
                vr = 0.0
            err = math.sqrt(vp + vr)
            rslope = rate_num
            if rdq & np.uint32(invalid):
                rslope = np.nan
                vp = 0.0
                vr = 0.0
                err = 0.0
            if rate_sat:
                rdq |= np.uint32(sat)
            if not math.isnan(rslope):
                if combined:
                    rslope = rslope / rate_den
                else:
                    rslope = rslope * vr

            # ---------------- CHARGELOSS read-noise recomputation (spec §4.8)
            if chargeloss_rnoise and any_cl:
                evar_r = 0.0
                for i in range(nints):
                    base = i * ngroups
                    if not has_cl[i]:
                        if ivr[i] > 0.0:
                            evar_r += 1.0 / ivr[i]
                        continue
                    for k in range(base, base + ngroups):
                        # the group DQ before suppression (stcal's orig_gdq)
                        v = groupdq[i, k - base, y, x]
                        if v & chargeloss:
                            v ^= dnu_chg
                        oq[k] = v
                    nk, _, _ = _segments(
                        oq, base, ngroups, npers, jump, sat, False, cstarts, cends, 0
                    )
                    if suppress:
                        timing1 = tg
                    elif is_0th[i]:
                        timing1 = t1
                    elif is_zf[i]:
                        timing1 = tf
                    else:
                        timing1 = tg
                    inv_r = 0.0
                    for s in range(nk):
                        ln = cends[0, s] - cstarts[0, s]
                        if ln == 1:
                            sv = _rnoise_short(rn, g, timing1)
                        elif ln == 2:
                            sv = _rnoise_short(rn, g, tg)
                        else:
                            sv = _rnoise_default(rn, g, tg, float(ln))
                        if sv > 0.0:
                            inv_r += 1.0 / sv
                    ivr[i] = 1.0 / inv_r
                    if ivr[i] >= LARGE_VARIANCE_THRESHOLD:
                        ivr[i] = 0.0
                    evar_r += inv_r
                if evar_r > 0.0:
                    vr = 1.0 / evar_r
                if vr >= LARGE_VARIANCE_THRESHOLD:
                    vr = 0.0

            # ---------------- store
            r_slope[y, x] = np.float32(rslope)
            r_dq[y, x] = rdq
            r_vp[y, x] = np.float32(vp)
            r_vr[y, x] = np.float32(vr)
            r_err[y, x] = np.float32(err)
            for i in range(nints):
                i_slope[i, y, x] = np.float32(islope[i])
                i_dq[i, y, x] = idq[i]
                i_vp[i, y, x] = np.float32(ivp[i])
                i_vr[i, y, x] = np.float32(ivr[i])
                i_err[i, y, x] = np.float32(ierr[i])


# ------------------------------------------------------------------------------------------------
# Python wrapper


def readonly_c(a, dtype):
    """``a`` as a C-contiguous array of ``dtype`` (copied only if needed), as a read-only view.

    Every input reaches numba read-only and C-ordered, so there is one compiled specialisation
    whatever the caller passes (writeable or not) and the kernel cannot write into the caller's
    arrays.
    """
    a = np.ascontiguousarray(np.asarray(a).astype(dtype, copy=False))
    a = a.view()
    a.flags.writeable = False
    return a


def _as(arr, dtype, name, shape):
    a = np.asarray(arr)
    if a.shape != shape:
        raise UserInputError(f"{name} must have shape {shape}, got {a.shape}")
    return readonly_c(a, dtype)


def fit_tile(
    data,
    groupdq,
    pixeldq,
    gain,
    readnoise,
    *,
    params,
    timing,
    zeroframe=None,
    average_dark_current=None,
    n_segments=None,
    n_crmag=None,
):
    """Implementation of :func:`stcal_dask.kernels.ramp_fit.fit_ramps_tile`."""
    from stcal_dask.kernels.ramp_fit import (
        FitoptProduct,
        RampFitParams,
        RampFitResult,
        RampTiming,
        RateProduct,
        effective_suppress,
        fitopt_dims,
        flag_args,
    )

    if not isinstance(params, RampFitParams):
        raise UserInputError(f"params must be a RampFitParams, got {type(params).__name__}")
    if not isinstance(timing, RampTiming):
        raise UserInputError(f"timing must be a RampTiming, got {type(timing).__name__}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise UserInputError(f"data must be 4-D (nints, ngroups, ny, nx), got shape {data.shape}")
    nints, ngroups, ny, nx = data.shape
    if min(nints, ngroups) < 1:
        raise UserInputError(f"data needs at least 1 integration and 1 group, got {data.shape}")
    data = _as(data, np.float32, "data", data.shape)
    gdq = _as(groupdq, np.uint8, "groupdq", data.shape)
    img = (ny, nx)
    pdq = _as(pixeldq, np.uint32, "pixeldq", img)
    gain32 = _as(gain, np.float32, "gain", img)
    rn32 = _as(readnoise, np.float32, "readnoise", img)
    if average_dark_current is None:
        dark = readonly_c(np.zeros(img, dtype=np.float32), np.float32)
    else:
        dark = _as(average_dark_current, np.float32, "average_dark_current", img)
    has_zf = zeroframe is not None
    if has_zf:
        zf = _as(zeroframe, np.float32, "zeroframe", (nints, ny, nx))
    else:
        zf = readonly_c(np.zeros((1, 1, 1), dtype=np.float32), np.float32)

    suppress = effective_suppress(params, ngroups)
    save_opt = bool(params.save_opt)
    if save_opt:
        if n_segments is None or n_crmag is None:
            own = fitopt_dims(gdq, params=params, zeroframe=zf if has_zf else None)
            n_segments = own.n_segments if n_segments is None else n_segments
            n_crmag = own.n_crmag if n_crmag is None else n_crmag
        nseg, ncr = int(n_segments), int(n_crmag)
        if nseg < 0 or ncr < 0:
            raise UserInputError(f"n_segments/n_crmag must be >= 0, got {nseg}, {ncr}")
        seg_shape = (nints, nseg, ny, nx)
        o = [np.zeros(seg_shape, dtype=np.float32) for _ in range(7)]
        o_ped = np.zeros((nints, ny, nx), dtype=np.float32)
        o_crmag = np.zeros((nints, ncr, ny, nx), dtype=np.float32)
    else:
        o = [np.zeros((1, 0, 1, 1), dtype=np.float32) for _ in range(7)]
        o_ped = np.zeros((1, 1, 1), dtype=np.float32)
        o_crmag = np.zeros((1, 0, 1, 1), dtype=np.float32)

    r = [np.empty(img, dtype=np.float32) for _ in range(5)]
    r[1] = np.empty(img, dtype=np.uint32)
    ri = [np.empty((nints, ny, nx), dtype=np.float32) for _ in range(5)]
    ri[1] = np.empty((nints, ny, nx), dtype=np.uint32)

    dnu, sat, jump, pers, chargeloss, ngval = flag_args()
    if ny > 0 and nx > 0:
        fit_tile_core(
            data,
            gdq,
            pdq,
            gain32,
            rn32,
            dark,
            zf,
            has_zf,
            float(np.float32(timing.frame_time)),
            float(np.float32(timing.group_time)),
            int(timing.nframes),
            int(timing.groupgap),
            int(timing.drop_frames1),
            suppress,
            save_opt,
            bool(params.chargeloss_rnoise),
            params.slope_weighting == "combined",
            dnu,
            sat,
            jump,
            pers,
            chargeloss,
            ngval,
            *r,
            *ri,
            *o,
            o_ped,
            o_crmag,
        )
    rate = RateProduct(*r)
    rateints = RateProduct(*ri)
    fitopt = None
    if save_opt:
        # order of the C fitter's arrays above: slope, sigslope, yint, sigyint, weights, vp, vr
        fitopt = FitoptProduct(*o, o_ped, o_crmag)
    return RampFitResult(rate, rateints, fitopt)
