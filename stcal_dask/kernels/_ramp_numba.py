"""Numba core of :mod:`stcal_dask.kernels.ramp_fit` (stcal 1.20.0 OLS_C rules, one tile).

Written from stcal 1.20.0's documented behaviour of ``ramp_fit_data`` (``algorithm="OLS_C"``)
and runs of it. The per-pixel arithmetic follows stcal's C fitter step by step in double
precision (inputs are read as float32 and widened; the optimal weights |(k-c)/c|^P are
single-precision powers like C's ``powf``, tabulated once per tile) and results are rounded to
float32 at the end, so the outputs are bit-identical to stcal's on every oracle test. (Note: in
numba ``float(x)`` of a float32 value stays float32, so widening uses ``np.float64``.)

This module holds compiled code only: :func:`stcal_dask.kernels.ramp_fit.fit_ramps_tile`
validates the inputs and hands them over grouped in the named tuples below
(:class:`RampInputs`, :class:`RampSettings`), with the output arrays to fill in its result
tuples (``RateProduct``, ``FitoptProduct``: only their fields are used here).

Speed: flag-free integrations skip the segment search; the median of the first differences uses
the branch-free median networks shared with the jump kernel
(:func:`stcal_dask.kernels._median_numba.median_prefix`); the fitopt-only quantities of a
segment (sigslope, yint, sigyint) are computed only when the fitopt product is asked for.
Divisions bound the row-wise fit (the divider is slow and, on a busy core, shared): the
samples' rates (float32 / TGROUP, the bulk of them) are taken by the reciprocal of TGROUP with
one FMA correction (:func:`_quotient`) where an exhaustive check over the float32 significands
(:func:`reciprocal_quotients_exact`) shows it equal to the division for that TGROUP; every
other quotient is a division, as stcal's.

Layout: rows are visited in order. The pixels of a row that need none of the flag rules but
the JUMP_DET segmentation (no group DQ bit but JUMP_DET, two unflagged groups or more per
integration, a positive gain, no DO_NOT_USE/SATURATED pixel DQ, finite samples; 2..33 groups;
not with ``save_opt``) are fitted first, all together (:func:`_lane_row`: loops over pixels
innermost, one pass over each integration's groups for the flag tests, the first differences
and the one-segment sums, the median rate from the lane medians of
:func:`~stcal_dask.kernels._median_numba.lane_mid`; the JUMP_DET segments found from bit masks
of the unflagged groups, listed, and summed segment by segment sorted by length and weighting
exponent, :func:`_jump_lanes`: summed across the lanes group by group instead, that was
slower), with the same operations in the same order as the per-pixel code. The other
pixels, listed, are visited in C order (:func:`_pixel_row`, not called for a row without any);
a pixel's (nints, ngroups) samples are read straight from the cube into a small per-pixel
scratch (:class:`PixelScratch`): nints * ngroups sequential streams, one per group plane, which
is faster than first transposing each row into a pixel-major buffer.
Memory besides the outputs is O(nx * nints * ngroups).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from stcal_dask import dqflags
from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_numba import SORT_MAX, FunctionArg, median_function, mid_scratch
from stcal_dask.kernels.numba_cache import lock_cache_writes

LARGE_VARIANCE_THRESHOLD = 1.0e6
_SQRT2_C = 1.41421356  # the truncated sqrt(2) stcal uses for the 2-group sigslope

# the DQ bits, as compile-time constants
_DNU, _SAT, _JUMP = dqflags.DO_NOT_USE, dqflags.SATURATED, dqflags.JUMP_DET
_PERS, _CHARGELOSS, _NO_GAIN = dqflags.PERSISTENCE, dqflags.CHARGELOSS, dqflags.NO_GAIN_VALUE
_INVALID = _DNU | _SAT

_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

# what the row fitters (:func:`_lane_row`, :func:`_pixel_row`) return: called through function
# pointers, they cannot raise (an exception is only printed, and 0 returned)
_ROW_OK, _ROW_FEW_SEGMENTS, _ROW_FEW_CRMAG = 1, 2, 3
# ... and they are compiled without the wrapper that Python calls go through (it would unbox
# every array of their named tuples: much code to compile for nothing)
_ROW_JIT = {**_JIT, "no_cpython_wrapper": True}


# ------------------------------------------------------------------------------------------------
# what the tile kernel is given


class RampInputs(NamedTuple):
    """The tile's inputs, read-only C arrays (converted by the public module)."""

    data: np.ndarray
    """(nints, ngroups, ny, nx) float32, DN."""
    groupdq: np.ndarray
    """(nints, ngroups, ny, nx) uint8 group DQ."""
    pixeldq: np.ndarray
    """(ny, nx) uint32 pixel DQ."""
    gain: np.ndarray
    """(ny, nx) float32, electron/DN."""
    readnoise: np.ndarray
    """(ny, nx) float32 CDS read noise, DN."""
    dark: np.ndarray
    """(ny, nx) float32 average dark current, DN/s (zeros when not given)."""
    zeroframe: np.ndarray
    """(nints, ny, nx) float32 ZEROFRAME, DN; (1, 1, 1) when there is none."""
    has_zf: bool
    """Whether ``zeroframe`` is real."""
    cl_groupdq: np.ndarray
    """(nints, ngroups, ny, nx) uint8 group DQ of the CHARGELOSS read-noise recomputation
    (stcal's ``orig_gdq``: before ``suppress_one_group``; for MIRI, the same groups dropped but
    JUMP_DET kept on the new first group)."""


class RampSettings(NamedTuple):
    """Timing and step parameters as plain scalars."""

    frame_time: float
    """TFRAME, s (float32-rounded)."""
    group_time: float
    """TGROUP, s (float32-rounded)."""
    nframes: int
    groupgap: int
    drop_frames1: int
    suppress: int
    """``suppress_one_group`` as stcal applies it: 0 off (also for NGROUPS == 1), 1 suppress
    one-group ramps and fit with its rules, 2 only the rules (the group DQ was suppressed on the
    whole ramp before MIRI's groups were dropped)."""
    save_opt: bool
    chargeloss_rnoise: bool
    combined: bool
    """Slope weighting 1/(var_poisson + var_rnoise) (stcal < 1.19) instead of 1/var_rnoise."""
    tg_reciprocal: bool
    """The rates of the samples (float32 / TGROUP) may be computed by the reciprocal with one
    correction (:func:`reciprocal_quotients_exact` of ``group_time`` holds)."""


class TileTimes(NamedTuple):
    """Per-tile constants derived from :class:`RampSettings`."""

    tf: float
    """Frame time, s."""
    tg: float
    """Group time, s."""
    t1: float
    """Timing of a ramp whose only usable group is group 0: (nframes + 1) * tf / 2."""
    ped_tmp: float
    """Pedestal factor ((nframes + 1) / 2 + drop_frames1) / (nframes + groupgap)."""
    sqrt2nf: float
    """sqrt(2 nframes): CDS read noise to single-read read noise (with the gain)."""
    inv_tg: float
    """1 / TGROUP where ``tg_reciprocal`` (:func:`_quotient`), else 0 (plain division)."""


# ------------------------------------------------------------------------------------------------
# the samples' rates


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` of float64 values rounded once (LLVM's ``llvm.fma``)."""
    if not all(t == types.float64 for t in (a, b, c)):
        return None

    def codegen(context, builder, sig, args):
        return builder.fma(*args)

    return types.float64(types.float64, types.float64, types.float64), codegen


@numba.njit(**_JIT, inline="always")
def _quotient(a, b, inv_b):
    """``a / b`` by the reciprocal ``inv_b`` = 1 / b with one correction step: the product's
    exact remainder (an FMA) times ``inv_b`` added in one rounding (zeros as ``a * inv_b``, which
    keeps their sign). Equal to the division only where verified
    (:func:`reciprocal_quotients_exact`); it is several times cheaper across a row."""
    q = a * inv_b
    r = _fma(-q, b, a)
    q1 = _fma(r, inv_b, q)
    return q if a == 0.0 else q1


@numba.njit(**_JIT)
def reciprocal_quotients_exact(b):
    """Whether :func:`_quotient` of every finite float32 value (widened) by ``b`` (a positive
    float64) equals its quotient ``v / b``, bit for bit.

    Every float32 significand in [1, 2) is tried (2**23 values). That covers all finite values:
    the three roundings scale exactly with a power-of-two exponent (no product or remainder
    comes near the float64 overflow or subnormal range from float32 inputs and a positive
    ``b`` of moderate size, checked here), both are odd in the sign, and zeros are exact.
    """
    if not (b > 1.0e-30 and b < 1.0e30):
        return False
    inv_b = 1.0 / b
    scale = 1.0 / 8388608.0
    bad = 0
    for m in range(8388608):
        a = 1.0 + float(m) * scale
        bad += _quotient(a, b, inv_b) != a / b
    return bad == 0


@numba.njit(**_JIT, inline="always")
def _rates(drow, out, nx, tg, inv_tg):
    """``out[x] = drow[x] / tg`` (float32 samples widened) for x < nx, by :func:`_quotient`
    where ``inv_tg`` is not 0 (verified exact for ``tg``)."""
    if inv_tg != 0.0:
        for x in range(nx):
            out[x] = _quotient(np.float64(drow[x]), tg, inv_tg)
    else:
        for x in range(nx):
            out[x] = np.float64(drow[x]) / tg


# ------------------------------------------------------------------------------------------------
# segments


@numba.njit(**_JIT, inline="always")
def _segments(q, base, ngroups, npers, jump, sat, skip_sat0, starts, ends, row):
    """Segment one integration's group DQ ``q[base:base+ngroups]`` as stcal's OLS_C fitter does
    (runs of groups without any bit but PERSISTENCE; a run starts one group early after a
    JUMP_DET-only group; length-1 runs are dropped once a longer one exists).

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


@numba.njit(**_JIT)
def _segments_apart(q, base, ngroups, npers, starts, ends):
    """:func:`_segments` (no SATURATED group-0 test, row 0) compiled once on its own, for the
    CHARGELOSS read-noise recomputation (rare: every caller of an inlined function compiles a
    copy of it)."""
    return _segments(q, base, ngroups, npers, _JUMP, _SAT, False, starts, ends, 0)


# ------------------------------------------------------------------------------------------------
# the fitopt dimension pass


@numba.njit(**_JIT)
def fitopt_dims_tile(groupdq, zeroframe, has_zf, suppress):
    """Largest fitopt segment count and JUMP_DET count (groups >= 1) over the tile."""
    nints, ngroups, ny, nx = groupdq.shape
    npers = np.uint8(~np.uint8(_PERS))
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
                if suppress == 1:
                    ngood = 0
                    for k in range(base, base + ngroups):
                        if (q[k] & npers) == 0:
                            ngood += 1
                    if ngood == 1:
                        for k in range(base, base + ngroups):
                            q[k] |= _DNU
                ncr = 0
                ngood = 0
                for g in range(ngroups):
                    if g > 0 and (q[base + g] & _JUMP) != 0:
                        ncr += 1
                    if q[base + g] == 0:
                        ngood += 1
                if ncr > max_cr:
                    max_cr = ncr
                if (not suppress) and has_zf and ngood == 0:
                    if zeroframe[i, y, x] != 0.0:
                        q[base] = 0
                _, nrep, _ = _segments(q, base, ngroups, npers, _JUMP, _SAT, True, starts, ends,
                                       0)  # fmt: skip
                if nrep > max_seg:
                    max_seg = nrep
    return max_seg, max_cr


# ------------------------------------------------------------------------------------------------
# segment fits (stcal's OLS_C segment slope and variances)


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


@numba.njit(**_JIT, inline="always")
def _snr(delta, rn, gain):
    """A segment's signal-to-noise ratio as stcal's optimal weighting computes it, from the
    difference of its last and first samples (DN), the read noise and the gain; 0 when not
    positive or undefined."""
    den = rn * rn + delta * gain
    if den <= 0.0 or gain == 0.0:
        return 0.0
    s = delta * gain / math.sqrt(den)
    return 0.0 if s < 0.0 else s


@numba.njit(**_JIT)
def _snr_power_index(snr):
    """Index into ``_POWERS`` of the optimal-weighting exponent for a segment's S/N (stcal's
    optimal weighting, Fixsen et al. 2000)."""
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


@numba.njit(**_JIT, inline="always")
def _add_sample(sumw, sumx, sumxx, sumy, sumxy, w, xval, v):
    """The optimal-weighting sums ``(sumw, sumx, sumxx, sumy, sumxy)`` with the sample ``v``
    (DN) at ``x = xval`` of weight ``w`` added (in this order: every caller's sums round alike)."""
    xwt = xval * w
    return sumw + w, sumx + xwt, sumxx + xval * xwt, sumy + v * w, sumxy + v * xwt


@numba.njit(**_JIT, inline="always")
def _weighted_sums(d, base, start, length, rn, gain, invrn2, wtab):
    """The optimal-weighting sums ``(sumw, sumx, sumxx, sumy, sumxy)`` of the segment
    ``[start, start + length)`` (length >= 3) of the samples ``d[base:]`` (NaN taken as 0):
    the exponent from the segment's signal-to-noise ratio (first and last samples), weights
    ``wtab[p, length, k] * invrn2`` (``invrn2`` = 1 / RN^2) at x = k + start."""
    first = d[base + start]
    last = d[base + start + length - 1]
    pidx = _snr_power_index(_snr(last - first, rn, gain))
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
        sumw, sumx, sumxx, sumy, sumxy = _add_sample(sumw, sumx, sumxx, sumy, sumxy, w, xval, v)
    return sumw, sumx, sumxx, sumy, sumxy


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
        sumw, sumx, sumxx, sumy, sumxy = _weighted_sums(d, base, start, length, rn, gain,
                                                        1.0 / (rn * rn), wtab)  # fmt: skip
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
# combining a pixel's segments and integrations (shared by both layouts)


@numba.njit(**_JIT, inline="always")
def _timing1(suppress, is_0th, is_zf, times):
    """Timing of a 1-group segment: TGROUP with suppression, the group-0 or ZEROFRAME timing
    when that is the integration's only usable sample, else TGROUP."""
    if suppress:
        return times.tg
    if is_0th:
        return times.t1
    if is_zf:
        return times.tf
    return times.tg


@numba.njit(**_JIT, inline="always")
def _integration_result(inv_p, inv_r, inv_e, num, combined, unusable):
    """An integration's ``(slope, var_poisson, var_rnoise, err)`` from the sums over its
    segments of 1/var_p (positive ones only), 1/var_r, 1/(var_p + var_r) and the weighted
    slopes; NaN slope and zero variances when ``unusable`` (DO_NOT_USE or SATURATED)."""
    ivp = 0.0
    if inv_p > 0.0:
        ivp = 1.0 / inv_p
    if ivp >= LARGE_VARIANCE_THRESHOLD:
        ivp = 0.0
    ivr = 1.0 / inv_r
    if ivr >= LARGE_VARIANCE_THRESHOLD:
        ivr = 0.0
    if unusable:
        return np.nan, 0.0, 0.0, 0.0
    var_err = 1.0 / inv_e
    islope = num * var_err if combined else num * ivr
    ierr = 0.0 if var_err > LARGE_VARIANCE_THRESHOLD else math.sqrt(var_err)
    return islope, ivp, ivr, ierr


@numba.njit(**_JIT, inline="always")
def _exposure(rate_p, rate_r, rate_num, rate_den, unusable, combined):
    """The exposure's ``(slope, var_poisson, var_rnoise, err)`` from the sums over the
    integrations (as :func:`_integration_result`); NaN slope and zeros when ``unusable``."""
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
    if unusable:
        rslope = np.nan
        vp = 0.0
        vr = 0.0
        err = 0.0
    if not math.isnan(rslope):
        if combined:
            rslope = rslope / rate_den
        else:
            rslope = rslope * vr
    return rslope, vp, vr, err


# ------------------------------------------------------------------------------------------------
# pixels with no flag but JUMP_DET, a row at a time


@numba.njit(**_JIT, inline="always")
def _lane_power_index(first, last, rn, gain):
    """:func:`_snr_power_index` of :func:`_snr` as a float (0.0 .. 5.0), branch-free for the
    loops across a row: the same quotient, the same thresholds (NaN gives 5)."""
    return _delta_power_index(last - first, rn, gain)


@numba.njit(**_JIT, inline="always")
def _delta_power_index(delta, rn, gain):
    """:func:`_lane_power_index` of a segment whose last sample exceeds its first by
    ``delta``."""
    den = rn * rn + delta * gain
    s = delta * gain / math.sqrt(den)
    snr = 0.0 if (den <= 0.0) | (gain == 0.0) | (s < 0.0) else s
    p = float((snr >= 5.0) + (snr >= 10.0) + (snr >= 20.0) + (snr >= 50.0) + (snr >= 100.0))
    return 5.0 if snr != snr else p


@numba.njit(**_JIT, inline="always")
def _lane_weight(p, w0, w1, w2, w3, w4, w5):
    """``(w0, ..., w5)[p]`` for a power index ``p`` of :func:`_lane_power_index`, by selects
    (no gather)."""
    w = w0
    w = w1 if p == 1.0 else w
    w = w2 if p == 2.0 else w
    w = w3 if p == 3.0 else w
    w = w4 if p == 4.0 else w
    return w5 if p == 5.0 else w


@numba.njit(**_JIT, inline="always")
def _segment_terms(slope, seglen, g, rnum12, dark, mrate, tg, combined):
    """A segment's ``(1/var_r, 1/var_p or 0 when var_p <= 0, 1/(var_p + var_r), weighted
    slope)`` from its slope and length (>= 2 groups, gain > 0): the variances of
    :func:`_fit_segment` (``rnum12`` = 12 (RN / TGROUP)^2, as :func:`_rnoise_default` forms it)
    and the terms :func:`_pixel_row` sums over an integration's segments, branch-free."""
    vps = (mrate + dark if mrate > 0.0 else dark) / (tg * g * (seglen - 1.0))
    vrs = rnum12 / ((seglen * seglen * seglen - seglen) * g * g)
    ves = vps + vrs
    ip = 1.0 / vps
    return 1.0 / vrs, ip if vps > 0.0 else 0.0, 1.0 / ves, slope / (ves if combined else vrs)


@intrinsic
def _ctz(typingctx, v):
    """The number of trailing zero bits of a uint64 (LLVM's ``cttz``; 64 for 0)."""
    if v != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

    return types.uint64(types.uint64), codegen


@numba.njit(**_JIT)
def _jump_lanes(data, groupdq, i, y, nj, jl, good, tg, rn_l, g_l, irn2, rn12, dk_l, wtab, sc_r,
                sc_t, lst, lst2, s_st, s_key, bkt, perm, f_x, fin, nseg):
    """The JUMP_DET segments of integration ``i`` of row ``y`` for :func:`_lane_row`: of the
    pixels ``jl[:nj]`` (group DQ bits JUMP_DET only, two unflagged groups or more), appended to
    the segment list from ``nseg``
    (``f_x`` the pixel, ``fin[:, 0:5]`` slope, length, gain, 12 (RN / TGROUP)^2, dark): every
    pixel's first segment, then the second ones, and so on (a pixel's in their order). Returns
    the new length of the list.

    The segments are those of :func:`_segments` and their slopes those of
    :func:`_fit_segment` (the same operations on the same values in the same order), without
    branches that depend on where the jumps are: (1) from bit masks of each pixel's unflagged
    groups (``good``, across the row: bit g for group g), the runs of unflagged groups (their
    first and last groups as bits; a run not at group 0 starts one group earlier, a one-group
    run at group 0 -- the segment [0, 1) -- is dropped), taken lowest first (``_ctz``),
    ordinal by ordinal over the pixels that have one more (``lst``, ``lst2``: positions in
    ``jl``; ``sc_r``, ``sc_t`` the runs' bits not yet taken), with each segment's length and
    the difference of its last and first samples (the slope of a two-group segment, times
    TGROUP); (2) the exponent of the optimal weighting of each segment of three groups or more
    (from that difference); (3) those segments sorted by length and exponent (a counting sort,
    ``s_key``, ``bkt``, ``perm``), so that their weighted sums (:func:`_weighted_sums`) run
    with the same weights and number of samples segment after segment (no mispredicted loop
    exits); (4) the slopes.
    ``s_st``, ``s_key``, ``perm``: room for ``nj * (ngroups // 2)`` entries; ``bkt``:
    ``6 * (ngroups + 1) + 1``.
    """
    ngroups, nx = data.shape[1], data.shape[3]
    nk = 6 * (ngroups + 1)
    first_at = nseg
    # each pixel's unflagged groups as a bit mask
    for x in range(nx):
        good[x] = 0
    for g in range(ngroups):
        qg = groupdq[i, g, y]
        for x in range(nx):
            good[x] |= np.uint64(qg[x] == 0) << np.uint64(g)
    # (1) the runs, then the segments ordinal by ordinal
    for j in range(nj):
        gm = good[jl[j]]
        lone0 = (gm & np.uint64(3)) == np.uint64(1)
        keep = ~np.uint64(lone0)
        sc_r[j] = gm & ~(gm << np.uint64(1)) & keep
        sc_t[j] = gm & ~(gm >> np.uint64(1)) & keep
        lst[j] = j
    nl = nj
    lanes, spare = lst, lst2
    while nl > 0:
        m = 0
        for jj in range(nl):
            j = lanes[jj]
            r = sc_r[j]
            t = sc_t[j]
            x = jl[j]
            st = np.int64(_ctz(r))
            st -= st > 0
            en = np.int64(_ctz(t)) + 1
            f_x[nseg] = x
            s_st[nseg - first_at] = st
            fin[nseg, 1] = float(en - st)
            # the last sample minus the first (a two-group segment's slope, times TGROUP)
            fin[nseg, 0] = np.float64(data[i, en - 1, y, x]) - np.float64(data[i, st, y, x])
            nseg += 1
            r &= r - np.uint64(1)
            sc_r[j] = r
            sc_t[j] = t & (t - np.uint64(1))
            spare[m] = j
            m += r != 0
        lanes, spare = spare, lanes
        nl = m
    # (2) the segments of three groups or more listed (``s_idx``, allocated here: one more
    # array in :func:`_lane_row` moved its others and slowed its loops), their sort key: length
    # and exponent of the optimal weighting (from the difference of the last and first samples)
    s_idx = np.empty(nseg - first_at, dtype=np.int64)
    m = 0
    for n in range(nseg - first_at):
        s_idx[m] = n
        m += fin[first_at + n, 1] > 2.0
    for idx in range(m):
        n = s_idx[idx]
        x = f_x[first_at + n]
        p = np.int64(_delta_power_index(fin[first_at + n, 0], rn_l[x], g_l[x]))
        s_key[n] = np.int64(fin[first_at + n, 1]) * 6 + p
    # (3) those segments sorted by their key (a counting sort, ``perm``)
    for k in range(nk + 1):
        bkt[k] = 0
    for idx in range(m):
        bkt[s_key[s_idx[idx]] + 1] += 1
    for k in range(nk):
        bkt[k + 1] += bkt[k]
    for idx in range(m):
        n = s_idx[idx]
        k = s_key[n]
        perm[bkt[k]] = n
        bkt[k] += 1
    # ... and their weighted sums (_weighted_sums) and slopes (times TGROUP), key by key
    # (bkt[k] is now the end of key k's entries)
    for k in range(6 * 3, nk):
        ln = k // 6
        wrow = wtab[k % 6, ln]
        for idx in range(bkt[k - 1], bkt[k]):
            n = perm[idx] + first_at
            x = f_x[n]
            st = s_st[n - first_at]
            invrn2 = irn2[x]
            sumw = 0.0
            sumx = 0.0
            sumxx = 0.0
            sumy = 0.0
            sumxy = 0.0
            for kk in range(ln):
                w = wrow[kk] * invrn2
                xval = float(kk) + float(st)
                v = np.float64(data[i, st + kk, y, x])
                sumw, sumx, sumxx, sumy, sumxy = _add_sample(sumw, sumx, sumxx, sumy, sumxy, w,
                                                             xval, v)  # fmt: skip
            num = sumw * sumxy - sumx * sumy
            invden = 1.0 / (sumw * sumxx - sumx * sumx)
            fin[n, 0] = num * invden
    # (4) the slopes, and the other columns of the list
    for n in range(first_at, nseg):
        x = f_x[n]
        fin[n, 0] = fin[n, 0] / tg
        fin[n, 2] = g_l[x]
        fin[n, 3] = rn12[x]
        fin[n, 4] = dk_l[x]
    return nseg


@numba.njit(**_ROW_JIT)
def _lane_row(inp, st, times, y, wtab, rate, rateints, done, mid):
    """Fit every pixel of row ``y`` that needs no flag rule but the JUMP_DET segmentation
    (flag-free pixels and those whose only group DQ bit is JUMP_DET, by far the most common
    flagged pixels), across the row's pixels; ngroups >= 2, without ``save_opt`` only. Sets
    ``done[x]`` for every column: whether it is such a pixel.

    Such a pixel needs none of the flag rules but the JUMP_DET segmentation: its group DQ has
    no bit but JUMP_DET; every integration has at least two groups without any bit (so it has a
    segment of two groups or more and keeps no one-group segment, and neither
    suppress_one_group, the group-0 timing nor the ZEROFRAME applies); its gain is positive,
    its pixel DQ has neither DO_NOT_USE nor SATURATED, and its samples are finite (a sum that
    is NaN where one is not).

    Every column of the row is a lane (the loops over them are innermost and branch-light, so
    that they vectorise). One pass over each integration's groups takes, group by group while
    the group's row is in cache, the flag tests, the first differences of the rates for the
    median rate, and the optimal-weighting sums of the whole integration as one segment (the
    weights picked by selects, no gather); then the lane medians (``mid``, the float64 lane
    function of ngroups - 1 values keeping every value,
    :func:`~stcal_dask.kernels._median_numba.lane_mid`, NaN in the places of the differences
    whose later group has JUMP_DET) and the slopes. An integration with JUMP_DET is segmented
    pixel by pixel (:func:`_jump_segments`) and the weighted sums of its segments taken there.
    Once the median rates are known, the variances and inverses are computed across the row
    (and across a list of the JUMP_DET segments), then each integration's and the exposure's
    combination. Outputs are written for every column (:func:`_pixel_row` then writes the
    pixels not ``done``); the values are those of the pixel-by-pixel code, operation for
    operation (the same arithmetic, the same order of every sum; the median from ``mid`` is
    the value :func:`~stcal_dask.kernels._median_numba.median_prefix` gives).
    """
    nints, ngroups, ny, nx = inp.data.shape
    data, groupdq = inp.data, inp.groupdq
    tg = times.tg
    combined = st.combined
    # the output arrays, unpacked once: a named tuple of arrays passed or bound per pixel
    # costs reference-count updates of every member
    r_sci, r_err, r_dq, r_vp, r_vr = (rate.sci, rate.err, rate.dq, rate.var_poisson,
                                      rate.var_rnoise)
    i_sci, i_err, i_dq, i_vp, i_vr = (rateints.sci, rateints.err, rateints.dq,
                                      rateints.var_poisson, rateints.var_rnoise)
    g_l = np.empty(nx, dtype=np.float64)
    rn_l = np.empty(nx, dtype=np.float64)
    dk_l = np.empty(nx, dtype=np.float64)
    irn2 = np.empty(nx, dtype=np.float64)
    rn12 = np.empty(nx, dtype=np.float64)
    for x in range(nx):
        g = np.float64(inp.gain[y, x])
        rn = np.float64(np.float32(np.float64(inp.readnoise[y, x]) * (g / times.sqrt2nf)))
        g_l[x] = g
        rn_l[x] = rn
        dk_l[x] = np.float64(inp.dark[y, x])
        irn2[x] = 1.0 / (rn * rn)
        rnum = rn / tg
        rn12[x] = 12.0 * rnum * rnum

    nm = ngroups - 1
    mpl = np.empty((nm, nx), dtype=np.float64)
    spl, nuse, mxv, mnv, cnt, lo, hi = mid_scratch(mpl)
    mrate = np.zeros(nx, dtype=np.float64)
    r0 = np.empty(nx, dtype=np.float64)
    r1 = np.empty(nx, dtype=np.float64)
    # the flag tests: OR of every group DQ, unflagged groups (this integration), any
    # integration with fewer than two, the samples times 0 summed (NaN where one is not finite)
    orr = np.zeros(nx, dtype=np.uint8)
    ngood = np.empty(nx, dtype=np.uint8)
    few = np.zeros(nx, dtype=np.uint8)
    bad = np.zeros(nx, dtype=np.float32)
    # per integration: OR of its group DQ, its slope as one segment of all groups
    orq = np.empty((nints, nx), dtype=np.uint8)
    slope_c = np.empty((nints, nx), dtype=np.float64)
    pidx = np.empty(nx, dtype=np.float64)
    wrow = np.empty(nx, dtype=np.float64)
    sums = np.empty((5, nx), dtype=np.float64)
    sw, sx, sxx, sy, sxy = sums[0], sums[1], sums[2], sums[3], sums[4]

    jl = np.empty(nx, dtype=np.int64)
    # scratch of the JUMP_DET segmentation (_jump_lanes; at most ngroups // 2 segments per
    # pixel)
    good = np.empty(nx, dtype=np.uint64)
    sc_r = np.empty(nx, dtype=np.uint64)
    sc_t = np.empty(nx, dtype=np.uint64)
    lst = np.empty(nx, dtype=np.int64)
    lst2 = np.empty(nx, dtype=np.int64)
    nrow = nx * max(1, ngroups // 2)
    s_st = np.empty(nrow, dtype=np.int64)
    s_key = np.empty(nrow, dtype=np.int64)
    perm = np.empty(nrow, dtype=np.int64)
    bkt = np.empty(6 * (ngroups + 1) + 1, dtype=np.int64)
    # the segments of the integrations with JUMP_DET (in integration order, from seg_at[i]):
    # their pixel; slope, length, the pixel's gain, 12 (RN / TGROUP)^2, dark and median rate;
    # their four terms (_segment_terms). Room for ngroups // 2 per pixel and integration, of
    # which only the used part is ever touched (growing the list as needed instead doubled
    # this function's compile time)
    cap = nints * nx * max(1, ngroups // 2)
    f_x = np.empty(cap, dtype=np.int64)
    fin = np.empty((cap, 6), dtype=np.float64)
    tout = np.empty((cap, 4), dtype=np.float64)
    seg_at = np.zeros(nints + 1, dtype=np.int64)
    seg1_at = np.zeros(nints, dtype=np.int64)
    nseg = 0
    for i in range(nints):
        d0 = data[i, 0, y]
        dn = data[i, ngroups - 1, y]
        oi = orq[i]
        for x in range(nx):
            pidx[x] = _lane_power_index(np.float64(d0[x]), np.float64(dn[x]), rn_l[x], g_l[x])
        for x in range(nx):
            oi[x] = 0
            ngood[x] = 0
        sums[:] = 0.0
        # one pass over the groups; simple loops, each writing one array, so that they
        # vectorise
        for k in range(ngroups):
            dk = data[i, k, y]
            qk = groupdq[i, k, y]
            for x in range(nx):
                oi[x] |= qk[x]
            for x in range(nx):
                ngood[x] += np.uint8(qk[x] == 0)
            for x in range(nx):
                bad[x] += dk[x] * np.float32(0.0)
            # each group's rate is divided once, then used by both of its differences
            _rates(dk, r1, nx, tg, times.inv_tg)
            if k > 0:
                out = mpl[k - 1]
                for x in range(nx):
                    out[x] = np.nan if (qk[x] & _JUMP) != 0 else r1[x] - r0[x]
            r0, r1 = r1, r0
            # the optimal-weighting sums of the segment of all groups (_weighted_sums)
            xval = float(k) + 0.0
            w0, w1, w2 = wtab[0, ngroups, k], wtab[1, ngroups, k], wtab[2, ngroups, k]
            w3, w4, w5 = wtab[3, ngroups, k], wtab[4, ngroups, k], wtab[5, ngroups, k]
            for x in range(nx):
                wrow[x] = _lane_weight(pidx[x], w0, w1, w2, w3, w4, w5) * irn2[x]
            for x in range(nx):
                w = wrow[x]
                xwt = xval * w
                v = np.float64(dk[x])
                sw[x] += w
                sx[x] += xwt
                sxx[x] += xval * xwt
                sy[x] += v * w
                sxy[x] += v * (xval * w)
        for x in range(nx):
            few[x] |= np.uint8(ngood[x] < 2)
        for x in range(nx):
            orr[x] |= oi[x]
        # the median rate (NaN counted as 0)
        mid(mpl, spl, nx, nuse, mxv, mnv, cnt, lo, hi)
        for x in range(nx):
            mi = (lo[x] + hi[x]) / 2.0
            mrate[x] += 0.0 if math.isnan(mi) else mi
        # every column as one segment of all groups (:func:`_fit_segment`'s arithmetic)
        sc = slope_c[i]
        for x in range(nx):
            if ngroups == 2:
                sc[x] = (np.float64(dn[x]) - np.float64(d0[x])) / tg
            else:
                den = sw[x] * sxx[x] - sx[x] * sx[x]
                num = sw[x] * sxy[x] - sx[x] * sy[x]
                invden = 1.0 / den
                sc[x] = num * invden / tg
        # the integrations with JUMP_DET (and no other bit, two unflagged groups or more):
        # their segments and slopes, listed (_jump_lanes; their columns listed first,
        # branch-free: where the jumps are is unpredictable)
        nj = 0
        for x in range(nx):
            jl[nj] = x
            nj += (oi[x] != 0) & ((oi[x] | _JUMP) == _JUMP) & (ngood[x] >= 2)
        seg1_at[i] = nseg + nj
        if nj > 0:
            nseg = _jump_lanes(data, groupdq, i, y, nj, jl, good, tg, rn_l, g_l, irn2, rn12,
                               dk_l, wtab, sc_r, sc_t, lst, lst2, s_st, s_key, bkt, perm, f_x,
                               fin, nseg)  # fmt: skip
        seg_at[i + 1] = nseg

    nl = 0
    for x in range(nx):
        use = (((orr[x] | _JUMP) == _JUMP) & (few[x] == 0) & (bad[x] == 0.0)
               & (inp.gain[y, x] > 0.0) & ((inp.pixeldq[y, x] & _INVALID) == 0))
        done[x] = use
        nl += use
    if nl == 0:
        return _ROW_OK
    for x in range(nx):
        mrate[x] = mrate[x] / float(nints)
    for j in range(nseg):
        fin[j, 5] = mrate[f_x[j]]
    # the JUMP_DET segments' variances and inverses across the list (one array in, one out:
    # vectorised)
    for j in range(nseg):
        tr, tp, te, tn = _segment_terms(fin[j, 0], fin[j, 1], fin[j, 2], fin[j, 3],
                                        fin[j, 4], fin[j, 5], tg, combined)  # fmt: skip
        tout[j, 0] = tr
        tout[j, 1] = tp
        tout[j, 2] = te
        tout[j, 3] = tn

    # an integration's sums over its segments, the exposure's over its integrations
    s_terms = np.empty((4, nx), dtype=np.float64)
    s_p, s_r, s_e, s_n = s_terms[0], s_terms[1], s_terms[2], s_terms[3]
    rate_sums = np.zeros((4, nx), dtype=np.float64)
    rate_p, rate_r, rate_num, rate_den = rate_sums[0], rate_sums[1], rate_sums[2], rate_sums[3]
    rdq = np.empty(nx, dtype=np.uint32)
    for x in range(nx):
        rdq[x] = np.uint32(inp.pixeldq[y, x])
    seglen = float(ngroups)
    for i in range(nints):
        sc = slope_c[i]
        for x in range(nx):
            tr, tp, te, tn = _segment_terms(sc[x], seglen, g_l[x], rn12[x], dk_l[x], mrate[x],
                                            tg, combined)  # fmt: skip
            s_r[x] = 0.0 + tr
            s_p[x] = 0.0 + tp
            s_e[x] = 0.0 + te
            s_n[x] = 0.0 + tn
        # the JUMP_DET integrations: the sums over each pixel's segments, in order (the
        # list holds every such pixel's first segment, then the second ones, ...)
        for j in range(seg_at[i], seg1_at[i]):
            x = f_x[j]
            s_r[x] = 0.0 + tout[j, 0]
            s_p[x] = 0.0 + tout[j, 1]
            s_e[x] = 0.0 + tout[j, 2]
            s_n[x] = 0.0 + tout[j, 3]
        for j in range(seg1_at[i], seg_at[i + 1]):
            x = f_x[j]
            s_r[x] += tout[j, 0]
            s_p[x] += tout[j, 1]
            s_e[x] += tout[j, 2]
            s_n[x] += tout[j, 3]
        # the integration's results, across the row
        oi = orq[i]
        for x in range(nx):
            islope, ivp, ivr, ierr = _integration_result(s_p[x], s_r[x], s_e[x], s_n[x],
                                                         combined, False)  # fmt: skip
            rate_p[x] += s_p[x] if s_p[x] > 0.0 else 0.0
            rate_r[x] += s_r[x]
            rate_num[x] += s_n[x]
            rate_den[x] += s_e[x]
            idq = np.uint32(inp.pixeldq[y, x]) | (np.uint32(_JUMP) if oi[x] != 0 else
                                                 np.uint32(0))  # fmt: skip
            rdq[x] |= idq
            i_sci[i, y, x] = np.float32(islope)
            i_dq[i, y, x] = idq
            i_vp[i, y, x] = np.float32(ivp)
            i_vr[i, y, x] = np.float32(ivr)
            i_err[i, y, x] = np.float32(ierr)

    for x in range(nx):
        rslope, vp, vr, err = _exposure(rate_p[x], rate_r[x], rate_num[x], rate_den[x], False,
                                        combined)  # fmt: skip
        r_sci[y, x] = np.float32(rslope)
        r_dq[y, x] = rdq[x]
        r_vp[y, x] = np.float32(vp)
        r_vr[y, x] = np.float32(vr)
        r_err[y, x] = np.float32(err)
    return _ROW_OK


# ------------------------------------------------------------------------------------------------
# the other pixels, one at a time


class PixelScratch(NamedTuple):
    """Working arrays of the pixel-by-pixel path (:func:`pixel_scratch`, allocated once per
    tile); the per-integration ones have length nints."""

    d: np.ndarray
    """(nints * ngroups,) float64 samples; NaN at SATURATED groups."""
    q: np.ndarray
    """(nints * ngroups,) uint8 group DQ after suppression and zero-frame substitution."""
    oq: np.ndarray
    """(nints * ngroups,) uint8 group DQ of the CHARGELOSS recomputation."""
    mbuf: np.ndarray
    """(max(ngroups, 1),) float64 median scratch."""
    starts: np.ndarray
    """(nints, ngroups + 1) segment starts."""
    ends: np.ndarray
    """(nints, ngroups + 1) segment ends (exclusive)."""
    cstarts: np.ndarray
    """(1, ngroups + 1) segment starts of the CHARGELOSS recomputation."""
    cends: np.ndarray
    """(1, ngroups + 1) segment ends of the CHARGELOSS recomputation."""
    clean: np.ndarray
    """bool: the integration has no group DQ bit (one segment of all groups)."""
    cnt_sat: np.ndarray
    """int64: SATURATED groups."""
    cnt_dnu_sat: np.ndarray
    """int64: DO_NOT_USE or SATURATED groups."""
    has_cl: np.ndarray
    """bool: some group has CHARGELOSS."""
    is_0th: np.ndarray
    """bool: group 0 is the only usable group."""
    is_zf: np.ndarray
    """bool: the ZEROFRAME stands in for group 0."""
    idq: np.ndarray
    """uint32 integration DQ."""
    islope: np.ndarray
    """float64 integration slope."""
    ivp: np.ndarray
    """float64 integration Poisson variance."""
    ivr: np.ndarray
    """float64 integration read-noise variance."""
    ierr: np.ndarray
    """float64 integration error."""
    seg: np.ndarray
    """(7,) float64: one segment's fit (see :func:`_fit_segment`)."""


def pixel_scratch(nints, ngroups):
    """A :class:`PixelScratch` for ramps of ``nints`` x ``ngroups``. Made with numpy and passed
    to :func:`fit_tile_core` (a compiled function returning it would be one more to
    compile)."""
    n = nints * ngroups
    return PixelScratch(
        np.empty(n, dtype=np.float64),
        np.empty(n, dtype=np.uint8),
        np.empty(n, dtype=np.uint8),
        np.empty(max(ngroups, 1), dtype=np.float64),
        np.empty((nints, ngroups + 1), dtype=np.int64),
        np.empty((nints, ngroups + 1), dtype=np.int64),
        np.empty((1, ngroups + 1), dtype=np.int64),
        np.empty((1, ngroups + 1), dtype=np.int64),
        np.empty(nints, dtype=np.bool_),
        np.empty(nints, dtype=np.int64),
        np.empty(nints, dtype=np.int64),
        np.empty(nints, dtype=np.bool_),
        np.empty(nints, dtype=np.bool_),
        np.empty(nints, dtype=np.bool_),
        np.empty(nints, dtype=np.uint32),
        np.empty(nints, dtype=np.float64),
        np.empty(nints, dtype=np.float64),
        np.empty(nints, dtype=np.float64),
        np.empty(nints, dtype=np.float64),
        np.empty(7, dtype=np.float64),
    )


@numba.njit(**_ROW_JIT)
def _pixel_row(inp, settings, times, y, wtab, sc, rate, rateints, fitopt, todo, ntodo, median):
    """Fit the pixels ``todo[:ntodo]`` (column indices) of row ``y``, one at a time, in five
    phases: set-up and one pass over the groups (suppression, ZEROFRAME, counts), the median
    rate, the segments and integrations, the exposure, the CHARGELOSS read-noise
    recomputation.

    The phases stay in this one loop body on purpose: in helper functions, every array a
    helper takes (bound to an inlined helper's parameter, or passed to a compiled one) costs
    reference-count updates per pixel, which made this path markedly slower when tried. The named
    tuples are unpacked here once per row; the scalar parts shared with :func:`_lane_row`
    are helpers (:func:`_timing1`, :func:`_integration_result`, :func:`_exposure`).
    """
    nints, ngroups, ny, nx = inp.data.shape
    data, groupdq, pixeldq, gain, rnoise, dark, zeroframe, has_zf, cl_groupdq = inp
    d, q, oq, mbuf, starts, ends, cstarts, cends, clean, cnt_sat, cnt_dnu_sat, has_cl, is_0th, \
        is_zf, idq, islope, ivp, ivr, ierr, seg = sc
    r_slope, r_err, r_dq, r_vp, r_vr = (rate.sci, rate.err, rate.dq, rate.var_poisson,
                                        rate.var_rnoise)
    i_slope, i_err, i_dq, i_vp, i_vr = (rateints.sci, rateints.err, rateints.dq,
                                        rateints.var_poisson, rateints.var_rnoise)
    o_slope, o_sigslope, o_yint, o_sigyint = fitopt.slope, fitopt.sigslope, fitopt.yint, \
        fitopt.sigyint
    o_weights, o_vp, o_vr = fitopt.weights, fitopt.var_poisson, fitopt.var_rnoise
    o_ped, o_crmag = fitopt.pedestal, fitopt.crmag
    suppress, save_opt = settings.suppress, settings.save_opt
    combined, chargeloss_rnoise = settings.combined, settings.chargeloss_rnoise
    tf, tg, t1, ped_tmp, sqrt2nf, _ = times
    npers = np.uint8(~np.uint8(_PERS))
    dnu_chg = np.uint8(_DNU | _CHARGELOSS)
    max_seg_slots = o_slope.shape[1]
    max_cr_slots = o_crmag.shape[1]
    for jx in range(ntodo):
        x = todo[jx]
        # ---------------- pixel set-up and one pass over its groups
        g = np.float64(gain[y, x])
        # stcal's in-place conversion: R = RN * gain / sqrt(2 nframes), rounded to float32
        rn = np.float64(np.float32(np.float64(rnoise[y, x]) * (g / sqrt2nf)))
        dk = np.float64(dark[y, x])
        pdq = np.uint32(pixeldq[y, x])
        if g <= 0.0 or math.isnan(g):
            pdq |= np.uint32(_DNU | _NO_GAIN)
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
                fj = (orq & _JUMP) != 0
                fp = (orq & _PERS) != 0
                fc = (orq & _CHARGELOSS) != 0
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
                    nd += (qq & _DNU) != 0
                    nds += (qq & _INVALID) != 0
                    if qq & _SAT:
                        d[k] = np.nan
                        ns += 1
                    if save_opt and gg > 0 and (qq & _JUMP):
                        if ncr >= max_cr_slots:
                            return _ROW_FEW_CRMAG
                        o_crmag[i, ncr, y, x] = np.float32(d[k] - d[k - 1])
                        ncr += 1
                if suppress == 1 and ngood == 1:
                    # suppress_one_group: exactly one usable group -> DO_NOT_USE everywhere
                    for k in range(base, base + ngroups):
                        q[k] |= _DNU
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
                idq[i] |= np.uint32(_JUMP)
                rdq |= np.uint32(_JUMP)
            if fp:
                idq[i] |= np.uint32(_PERS)
                rdq |= np.uint32(_PERS)
            cnt_sat[i] = ns
            cnt_dnu_sat[i] = nds
            has_cl[i] = fc
            if fc:
                any_cl = True

        # ---------------- median rate (for the Poisson variance)
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
                    r0 = np.nan if (q[base] & _DNU) else d[base] / tg
                    prev = r0
                    nm = np.int64(0)  # not a literal: median_prefix is compiled for int64
                    for kk in range(ngroups - 1):
                        qn = q[base + kk + 1]
                        cur = np.nan if (qn & _DNU) else d[base + kk + 1] / tg
                        if not (qn & _JUMP):
                            diff = cur - prev
                            if not math.isnan(diff):
                                mbuf[nm] = diff
                                nm += 1
                        prev = cur
                    if nm == 0:
                        mi = r0
                    else:
                        mi = median(mbuf, nm)
                if math.isnan(mi):
                    mi = 0.0
                acc += mi
            mrate = acc / float(nints)

        # ---------------- segments and integrations
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
                    q, base, ngroups, npers, _JUMP, _SAT, True, starts, ends, i
                )
            if sat0:
                idq[i] |= np.uint32(_INVALID)
                islope[i] = np.nan
            if save_opt and nrep > max_seg_slots:
                return _ROW_FEW_SEGMENTS
            if cnt_dnu_sat[i] == ngroups:
                idq[i] |= np.uint32(_DNU)
                if cnt_sat[i] == ngroups:
                    idq[i] |= np.uint32(_SAT)
            elif nk > 0:
                timing1 = _timing1(suppress, is_0th[i], is_zf[i], times)
                inv_r = 0.0
                inv_p = 0.0
                inv_e = 0.0
                num = 0.0
                for s in range(nk):
                    st = starts[i, s]
                    ln = ends[i, s] - st
                    _fit_segment(d, base, st, ln, timing1, rn, g, dk, mrate, tg, wtab, seg,
                                 save_opt)  # fmt: skip
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
                islope[i], ivp[i], ivr[i], ierr[i] = _integration_result(
                    inv_p, inv_r, inv_e, num, combined, (idq[i] & _INVALID) != 0
                )
                if inv_p > 0.0:
                    rate_p += inv_p
                rate_r += inv_r
                rate_num += num
                rate_den += inv_e
            # per-integration DQ and pedestal
            if idq[i] & _DNU:
                dnu_cnt += 1
                islope[i] = np.nan
            if save_opt:
                if idq[i] & _SAT:
                    o_ped[i, y, x] = 0.0
                else:
                    ped = d[base] - islope[i] * ped_tmp
                    if math.isnan(ped):
                        ped = 0.0
                    o_ped[i, y, x] = np.float32(ped)
            if idq[i] & _SAT:
                sat_cnt += 1
                islope[i] = np.nan
            if cnt_sat[i] > 0:
                idq[i] |= np.uint32(_SAT)
                rate_sat = True

        # ---------------- exposure
        if dnu_cnt == nints:
            rdq |= np.uint32(_DNU)
        if sat_cnt == nints:
            rdq |= np.uint32(_SAT)
        rslope, vp, vr, err = _exposure(rate_p, rate_r, rate_num, rate_den,
                                        (rdq & np.uint32(_INVALID)) != 0, combined)
        if rate_sat:
            rdq |= np.uint32(_SAT)

        # ---------------- stcal's CHARGELOSS read-noise recomputation
        if chargeloss_rnoise and any_cl:
            evar_r = 0.0
            for i in range(nints):
                base = i * ngroups
                if not has_cl[i]:
                    if ivr[i] > 0.0:
                        evar_r += 1.0 / ivr[i]
                    continue
                for k in range(base, base + ngroups):
                    # stcal's orig_gdq
                    v = cl_groupdq[i, k - base, y, x]
                    if v & _CHARGELOSS:
                        v ^= dnu_chg
                    oq[k] = v
                nk, _, _ = _segments_apart(oq, base, ngroups, npers, cstarts, cends)
                timing1 = _timing1(suppress, is_0th[i], is_zf[i], times)
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
    return _ROW_OK


# ------------------------------------------------------------------------------------------------
# the tile


@numba.njit(**_JIT)
def tile_times(st):
    """The :class:`TileTimes` of a :class:`RampSettings`."""
    tf = st.frame_time
    nframes = st.nframes
    return TileTimes(
        tf,
        st.group_time,
        (float(nframes) + 1.0) * tf / 2.0,
        ((nframes + 1) / 2.0 + st.drop_frames1) / (nframes + st.groupgap),
        math.sqrt(2.0 * nframes),
        1.0 / st.group_time if st.tg_reciprocal else 0.0,
    )


@numba.njit(**_JIT)
def fit_tile_core(inp, st, rate, rateints, fitopt, sc, mid, lane_row, pixel_row, median):
    """Fit every pixel of the tile ``inp`` (:class:`RampInputs`) with the settings ``st``
    (:class:`RampSettings`), writing every pixel of ``rate`` and ``rateints`` (named tuples of
    arrays with the fields sci, err, dq, var_poisson, var_rnoise: 2-D, and 3-D with the
    integration axis first) and, with ``save_opt``, of ``fitopt`` (fields slope, sigslope, yint,
    sigyint, weights, var_poisson, var_rnoise, pedestal, crmag, whose segment and CR axes must
    be large enough: ValueError otherwise). ``sc``: the :func:`pixel_scratch` of the tile's
    ramps.

    Row by row: first the pixels with no flag but JUMP_DET together (``lane_row``:
    :func:`_lane_row`), then the others, listed, one at a time (``pixel_row``:
    :func:`_pixel_row`, only for a row with such pixels); both
    are function-pointer arguments (:func:`row_fitters`), compiled apart from this function
    and from each other. ``mid`` is the float64 lane function
    (:func:`~stcal_dask.kernels._median_numba.lane_mid`) of ``ngroups - 1`` values keeping every
    value, called by :func:`_lane_row` only (a function-pointer argument too).
    """
    nints, ngroups, ny, nx = inp.data.shape
    times = tile_times(st)
    wtab = _weight_table(ngroups)
    rows = (not st.save_opt) and 2 <= ngroups <= SORT_MAX + 1
    done = np.zeros(nx, dtype=np.bool_)
    todo = np.empty(nx, dtype=np.int64)
    for y in range(ny):
        status = _ROW_OK
        if rows:
            status = lane_row(inp, st, times, y, wtab, rate, rateints, done, mid)
        # the columns left to the pixel-by-pixel path, listed (branch-free)
        ntodo = 0
        for x in range(nx):
            todo[ntodo] = x
            ntodo += not done[x]
        if status == _ROW_OK and ntodo > 0:
            status = pixel_row(inp, st, times, y, wtab, sc, rate, rateints, fitopt, todo,
                               ntodo, median)
        if status == _ROW_FEW_SEGMENTS:
            raise ValueError("n_segments is smaller than this tile needs")
        if status == _ROW_FEW_CRMAG:
            raise ValueError("n_crmag is smaller than this tile needs")
        if status != _ROW_OK:
            raise RuntimeError("the ramp fit of a row failed (the error is printed above)")


_ROW_FITTERS: dict = {}


def row_fitters(inp, st, rate, rateints, fitopt, sc, mid):
    """The ``lane_row`` and ``pixel_row`` arguments of :func:`fit_tile_core` for arguments of
    these types (:class:`~stcal_dask.kernels._median_numba.FunctionArg` of :func:`_lane_row` and
    :func:`_pixel_row`: each compiled once, on its own, instead of being linked into
    :func:`fit_tile_core` and optimised again there)."""
    key = tuple(numba.typeof(a) for a in (inp, st, rate, rateints, fitopt, sc, mid))
    found = _ROW_FITTERS.get(key)
    if found is None:
        tin, tst, trate, tints, topt, tsc, tmid = key
        times = numba.typeof(TileTimes(0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
        f64_3 = numba.types.Array(numba.types.float64, 3, "C")
        done = numba.types.Array(numba.types.boolean, 1, "C")
        i64 = numba.types.int64
        lane = numba.core.typing.signature(i64, tin, tst, times, i64, f64_3, trate,
                                           tints, done, tmid)
        median = median_function()
        todo = numba.types.Array(i64, 1, "C")
        pixel = numba.core.typing.signature(i64, tin, tst, times, i64, f64_3, tsc,
                                            trate, tints, topt, todo, i64,
                                            numba.typeof(median))
        found = _ROW_FITTERS[key] = (FunctionArg(_lane_row, lane), FunctionArg(_pixel_row, pixel),
                                     median)
    return found


lock_cache_writes(globals())  # one process at a time adds to a function's cache entries
