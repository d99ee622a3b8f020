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
rounding of either computation can reach: 0 (below), 1 (above) or 2 (too close to call). The
caller settles the pixels in state 2 (see ``large_events.shower_plane``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from stcal_dask import dqflags
from stcal_dask.kernels import _numba_setup  # noqa: F401  (numba set up without scipy)
from stcal_dask.kernels._median_numba import median_prefix

_DNU = dqflags.DO_NOT_USE
_SAT = dqflags.SATURATED
_JUMP = dqflags.JUMP_DET
_REF = dqflags.REFERENCE_PIXEL
_BAD = _DNU | _SAT | _JUMP
# the group DQ values stcal's nan_invalid_data turns into NaN (exact equality)
_NAN_VALUES = (_JUMP | _DNU, _SAT | _DNU, _SAT, _JUMP, _DNU)


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
    diffs = np.empty((nints, nd, nx), dtype=np.float32)
    e_prev = np.empty(nx, dtype=np.float32)
    buf = np.empty(max(nints * nd, 1), dtype=np.float32)
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
        for x in range(nx):
            m = 0
            for i in range(nints):
                for k in range(nd):
                    v = diffs[i, k, x]
                    buf[m] = v
                    m += v == v  # NaN is left out (infinities stay, as in nanmedian)
            med = np.float32(median_prefix(buf, m)) if m > 0 else nan32
            rn_e = readnoise[y, x] * gain[y, x]
            sig = np.sqrt(abs(med) + rn_e * rn_e / fr)
            p = pdq[y, x]
            ref = p == _REF
            for i in range(nints):
                for k in range(nd):
                    flagged = ref | (((gdq[i, k + 1, y, x] | p) & _BAD) != 0)
                    r = abs(diffs[i, k, x] - med) / sig
                    out[i, k, y, x] = nan32 if flagged else r
    return out


@njit(cache=True, nogil=True)
def ring_states(plane, dy, dx, w, thr, norm_min, fft_error):
    """(ny, nx) uint8 states of the threshold test on the ring-convolved plane.

    Parameters
    ----------
    plane : (ny, nx) float
        Ratios (NaN or infinite = not usable; they count as 0 and carry no weight).
    dy, dx, w : (ntaps,) int64, int64, float64
        The kernel's non-zero taps: output (y, x) takes ``w * plane[y + dy, x + dx]``. Taps
        outside the frame carry weight (value 0), as stcal's normalisation pads with ones.
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
    (ny, nx) uint8
        0 below the threshold (or unusable), 1 above, 2 too close to call: the weighted sum
        ``s`` and weight ``n`` of a pixel's usable taps (float64, rounding below 1e-12 of the
        sum of the terms' magnitudes) are compared as ``s - thr * n`` with a margin covering
        the FFT's error on both (``fft_error`` times the 2-norms of the plane's usable values
        and of the padded 0/1 usable map) and the rounding of both computations.
    """
    ny, nx = plane.shape
    ntaps = dy.size
    acc = np.empty(nx, dtype=np.float64)
    nrm = np.empty(nx, dtype=np.float64)
    val = np.empty((ny, nx), dtype=np.float64)
    good = np.empty((ny, nx), dtype=np.float64)
    sq = 0.0
    amax = 0.0
    for y in range(ny):
        for x in range(nx):
            v = np.float64(plane[y, x])
            ok = (v - v) == 0.0  # finite
            v = v if ok else 0.0
            val[y, x] = v
            good[y, x] = 1.0 if ok else 0.0
            sq += v * v
            amax = max(amax, abs(v))
    k1 = 0.0
    nmax = 0
    for t in range(ntaps):
        k1 += abs(w[t])
        nmax = max(nmax, abs(dy[t]), abs(dx[t]))
    pad = np.sqrt(np.float64((ny + 2 * nmax) * (nx + 2 * nmax)))
    norm_margin = (fft_error * pad + 1e-12) * k1
    margin = fft_error * np.sqrt(sq) * k1 + thr * norm_margin + 1e-12 * (amax + thr) * k1
    out = np.zeros((ny, nx), dtype=np.uint8)
    for y in range(ny):
        acc[:] = 0.0
        nrm[:] = 0.0
        for t in range(ntaps):
            yy = y + dy[t]
            wt = w[t]
            if yy < 0 or yy >= ny:
                for x in range(nx):
                    nrm[x] += wt
                continue
            sx = dx[t]
            lo = max(0, -sx)
            hi = min(nx, nx - sx)
            for x in range(0, min(lo, nx)):
                nrm[x] += wt
            for x in range(max(hi, 0), nx):
                nrm[x] += wt
            if hi <= lo:
                continue
            # slices: non-negative indices, so the loop vectorises
            a = acc[lo:hi]
            m = nrm[lo:hi]
            vr = val[yy, lo + sx : hi + sx]
            gr = good[yy, lo + sx : hi + sx]
            for j in range(hi - lo):
                a[j] += wt * vr[j]
                m[j] += wt * gr[j]
        for x in range(nx):
            if good[y, x] == 0.0:
                continue
            n = nrm[x]
            if n <= norm_min - norm_margin:
                continue
            d = acc[x] - thr * n
            if n <= norm_min + norm_margin:
                out[y, x] = 2 if d >= -margin else 0
            elif d > margin:
                out[y, x] = 1
            elif d >= -margin:
                out[y, x] = 2
    return out
