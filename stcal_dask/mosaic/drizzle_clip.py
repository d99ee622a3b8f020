"""Which pixel-map values drizzle reads to clip an input to its output (a model of its set-up).

Before it visits any input pixel, ``drizzle`` (2.x, the C kernels behind
:class:`drizzle.resample.Drizzle`) decides which input pixels it will visit: it maps the corners
of the input rectangle it is given (``xmin..xmax``, ``ymin..ymax``, after shrinking them to the
finite part of the pixel map) to the output by bilinear interpolation of the pixel map, clips
that quadrilateral to the output array's rectangle, maps the clipped polygon's vertices back to
the input by a golden-section search over the pixel map (accurate to a few hundredths of a
pixel), and scans the input rows between that polygon's edges. Input pixels centred within a
few hundredths of a pixel of the output's outer edge are therefore visited or not depending on
the whole rectangle given and on every pixel-map value that search reads.

stcal's ``Resample`` gives drizzle the whole exposure; a mosaic tile gives it only the
rectangle of the exposure that lands on the tile, so along the mosaic's outer edge the two can
visit different pixels. To visit exactly stcal's pixels, a tile that reaches an outer edge
which clips an exposure gives drizzle the exposure's whole rectangle (arrays of the full input
shape) with a pixel map that is exact on the tile's rectangle and on every value the set-up
reads, and NaN elsewhere (drizzle skips such pixels at once). :func:`clip_reads` finds those
values by running the same arithmetic here, in the same order (IEEE double precision, no
fused operations), on a pixel map evaluated on demand; it returns every pixel it evaluated (a
superset of what drizzle reads: extra exact values change nothing).

Assumption: the finite part of the pixel map within the rectangle is itself a rectangle (NaN
only outside the input's bounding box, as :func:`stcal_dask.mosaic.alignment.calc_pixmap`
gives).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["ClipReads", "clip_reads"]

_GOLDEN = 0.6180339887498948482
_INVERSION_TOLERANCE = 0.03
"""drizzle's stopping size of the search bracket (input pixels)."""
_MAX_ITERATIONS = 50
_SAME_VERTEX = 1.0e-12
_TINY_AREA = 1.0e3 * sys.float_info.min


class ClipReads(NamedTuple):
    """What drizzle's set-up reads for one input, and which output sides clip the input."""

    xmin: int
    xmax: int
    ymin: int
    ymax: int
    """The input rectangle drizzle works on after shrinking it to the finite pixel map."""
    sides: tuple[bool, bool, bool, bool]
    """(x low, x high, y low, y high): output sides the input's mapped rectangle reaches or
    crosses (the clip then places polygon vertices on that side)."""
    pixels: np.ndarray | None
    """(n, 2) int64: (row, column) of every pixel-map value evaluated (None: sides only)."""
    values: np.ndarray | None
    """(n, 2) float64: the pixel map (x, y) at those pixels (NaN outside the bounding box)."""


class _Map:
    """The pixel map on demand: values fetched in batches and kept."""

    def __init__(self, fetch: Callable, shape: tuple[int, int]):
        self.fetch = fetch
        self.ny, self.nx = shape
        self.known: dict[tuple[int, int], tuple[float, float]] = {}

    def load(self, pixels) -> None:
        todo = sorted({p for p in pixels if p not in self.known})
        if not todo:
            return
        j = np.array([p[0] for p in todo], dtype=np.float64)
        i = np.array([p[1] for p in todo], dtype=np.float64)
        x, y = self.fetch(i, j)
        for p, a, b in zip(todo, np.asarray(x, np.float64), np.asarray(y, np.float64), strict=True):
            self.known[p] = (float(a), float(b))

    def anchor(self, xin: float, yin: float) -> tuple[int, int]:
        """Lower-left pixel of the 2x2 block interpolated at (xin, yin) (clamped, C casts)."""
        i0 = min(max(int(xin), 0), self.nx - 2)
        j0 = min(max(int(yin), 0), self.ny - 2)
        return i0, j0

    def block(self, xin: float, yin: float) -> list[tuple[int, int]]:
        i0, j0 = self.anchor(xin, yin)
        return [(j0, i0), (j0, i0 + 1), (j0 + 1, i0), (j0 + 1, i0 + 1)]

    def interpolate(self, xin: float, yin: float) -> tuple[float, float] | None:
        """Bilinear value at (xin, yin) (extrapolated from the edge block outside); None when
        NaN."""
        self.load(self.block(xin, yin))
        i0, j0 = self.anchor(xin, yin)
        fx, fy = xin - i0, yin - j0
        gx, gy = 1.0 - fx, 1.0 - fy
        a00 = self.known[(j0, i0)]
        a10 = self.known[(j0, i0 + 1)]
        a01 = self.known[(j0 + 1, i0)]
        a11 = self.known[(j0 + 1, i0 + 1)]
        out = tuple(
            a00[c] * gx * gy + a10[c] * fx * gy + a01[c] * gx * fy + a11[c] * fx * fy
            for c in (0, 1)
        )
        if math.isnan(out[0]) or math.isnan(out[1]):
            return None
        return out


def _cross(a, b) -> float:
    return a[0] * b[1] - a[1] * b[0]


def _left_of(point, start, end) -> bool:
    """drizzle's strict half-plane test, with its argument roles."""
    return (_cross(end, point) - _cross(start, point) - _cross(end, start)) > 0.0


def _counter_clockwise(poly: list) -> list:
    n = len(poly)
    if n < 3:
        return poly
    cx = cy = 0.0
    for v in poly:
        cx += v[0]
        cy += v[1]
    cx /= n
    cy /= n
    a = (poly[0][0] - cx, poly[0][1] - cy)
    b = (poly[1][0] - cx, poly[1][1] - cy)
    if _cross(a, b) >= 0.0:
        return poly
    out = list(poly)
    for k in range(n // 2):
        out[k], out[n - 1 - k] = out[n - 1 - k], out[k]
    return out


def _add_vertex(poly: list, v) -> None:
    def same(a, b):
        return abs(a[0] - b[0]) < _SAME_VERTEX and abs(a[1] - b[1]) < _SAME_VERTEX

    if poly and (same(poly[-1], v) or same(poly[0], v)):
        return
    poly.append(v)


def _drop_midpoints(poly: list) -> list:
    n = len(poly)
    if n < 3:
        return poly
    kept = []
    for k in range(n):
        prev, cur, nxt = poly[k - 1], poly[k], poly[(k + 1) % n]
        dp = (nxt[0] - prev[0], nxt[1] - prev[1])
        dq = (cur[0] - prev[0], cur[1] - prev[1])
        if abs(_cross(dp, dq)) > _TINY_AREA and math.sqrt(dp[0] * dp[0] + dp[1] * dp[1]) > (
            _SAME_VERTEX
        ):
            kept.append(cur)
    return kept


def _clip(poly: list, window: list) -> list | None:
    """Sutherland-Hodgman clip of ``poly`` to the convex ``window`` as drizzle computes it."""
    if len(poly) < 3 or len(window) < 3:
        return None
    poly = _counter_clockwise(poly)
    window = _counter_clockwise(window)
    cur = list(poly)
    w_prev = window[-1]
    for w in window:
        dw = (w[0] - w_prev[0], w[1] - w_prev[1])
        src, cur = cur, []
        if src:
            p_prev = src[-1]
            for p in src:
                dp = (p[0] - p_prev[0], p[1] - p_prev[1])
                prev_in = _left_of(w_prev, w, p_prev)
                here_in = _left_of(w_prev, w, p)
                if here_in != prev_in:
                    d = _cross(dp, dw)
                    app = _cross(p, p_prev)
                    aww = _cross(w, w_prev)
                    with np.errstate(all="ignore"):
                        vx = np.float64(app * dw[0] - aww * dp[0]) / np.float64(d)
                        vy = np.float64(app * dw[1] - aww * dp[1]) / np.float64(d)
                    if math.isfinite(vx) and math.isfinite(vy):
                        _add_vertex(cur, (float(vx), float(vy)))
                    if here_in:
                        _add_vertex(cur, p)
                elif prev_in:
                    _add_vertex(cur, p)
                p_prev = p
        w_prev = w
    return _drop_midpoints(_counter_clockwise(cur))


def _invert(pm: _Map, rect, target) -> bool:
    """drizzle's golden-section search for the input point mapping to ``target``; False when
    an interpolation on the way is NaN (drizzle then gives up on the clip)."""
    xlo, xhi = rect[0] - 0.5, rect[1] + 0.5
    ylo, yhi = rect[2] - 0.5, rect[3] + 0.5
    dx, dy = xhi - xlo, yhi - ylo
    n = 0
    while (dx > _INVERSION_TOLERANCE or dy > _INVERSION_TOLERANCE) and n < _MAX_ITERATIONS:
        n += 1
        x1, x2 = xhi - _GOLDEN * dx, xlo + _GOLDEN * dx
        y1, y2 = yhi - _GOLDEN * dy, ylo + _GOLDEN * dy
        points = ((x1, y1), (x1, y2), (x2, y1), (x2, y2))
        pm.load([p for pt in points for p in pm.block(*pt)])
        dist = []
        for pt in points:
            v = pm.interpolate(*pt)
            if v is None:
                return False
            ex, ey = v[0] - target[0], v[1] - target[1]
            dist.append(ex * ex + ey * ey)
        d11, d12, d21, d22 = dist
        if d11 < d12 and d11 < d21 and d11 < d22:
            xhi, yhi = x2, y2
        elif d12 < d11 and d12 < d21 and d12 < d22:
            xhi, ylo = x2, y1
        elif d21 < d11 and d21 < d12 and d21 < d22:
            xlo, yhi = x1, y2
        else:
            xlo, ylo = x1, y1
        dx, dy = xhi - xlo, yhi - ylo
    return n < _MAX_ITERATIONS


def _shrink(pm: _Map, rect) -> tuple[int, int, int, int] | None:
    """drizzle's shrink of the rectangle to the finite pixel map, for a rectangular finite part:
    step in from each side until a row/column has a finite value."""
    xmin, xmax, ymin, ymax = rect

    def finite_row(j):
        pm.load([(j, i) for i in range(xmin, xmax + 1)])
        return [i for i in range(xmin, xmax + 1) if not any(map(math.isnan, pm.known[(j, i)]))]

    j0 = ymin
    while j0 <= ymax and not finite_row(j0):
        j0 += 1
    j1 = ymax
    while j1 >= j0 and not finite_row(j1):
        j1 -= 1
    if j1 <= j0:
        return None
    cols = finite_row(j0) + finite_row(j1)
    i0, i1 = min(cols), max(cols)
    if i1 <= i0:
        return None
    return i0, i1, j0, j1


def clip_reads(
    fetch: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    shape: tuple[int, int],
    rect: tuple[int, int, int, int],
    out_shape: tuple[int, int],
    unclipped_sides: tuple[bool, bool, bool, bool] = (True, True, True, True),
    *,
    sides_only: bool = False,
) -> ClipReads | None:
    """Model drizzle's clip of one whole input to the output and collect the values it reads.

    Parameters
    ----------
    fetch : callable ``(x, y) -> (X, Y)``
        The pixel map at input pixels (float64 arrays of column and row indices); must give the
        same values as the full pixel map handed to drizzle.
    shape : (ny, nx) of the input.
    rect : (xmin, xmax, ymin, ymax), inclusive, the input rectangle given to drizzle (stcal's
        resample range).
    out_shape : (ny, nx) of drizzle's output arrays.
    unclipped_sides : the ``sides`` to report when a corner of the rectangle maps to NaN:
        drizzle then clips nothing and visits every input pixel, so the output sides the input's
        pixels reach matter (the caller knows them; default all).
    sides_only : only find which sides clip the input (no inversion: ``pixels`` and ``values``
        are None); a handful of map evaluations instead of hundreds.

    Returns
    -------
    ClipReads, or None when drizzle would find too few finite values to drizzle at all.
    """
    ny, nx = (int(s) for s in shape)
    if ny < 2 or nx < 2:
        return None
    pm = _Map(fetch, (ny, nx))
    rect = _shrink(pm, tuple(int(v) for v in rect))
    if rect is None:
        return None
    xmin, xmax, ymin, ymax = rect
    corners = [(xmin - 0.5, ymin - 0.5), (xmax + 0.5, ymin - 0.5), (xmax + 0.5, ymax + 0.5),
               (xmin - 0.5, ymax + 0.5)]
    pm.load([p for c in corners for p in pm.block(*c)])
    mapped = [pm.interpolate(*c) for c in corners]
    oy, ox = (float(s) for s in out_shape)
    if any(v is None for v in mapped):
        sides = tuple(bool(s) for s in unclipped_sides)
    else:
        xs = [v[0] for v in mapped]
        ys = [v[1] for v in mapped]
        sides = (min(xs) <= -0.5, max(xs) >= ox - 0.5, min(ys) <= -0.5, max(ys) >= oy - 0.5)
        if sides_only:
            return ClipReads(xmin, xmax, ymin, ymax, sides, None, None)
        window = [(-0.5, -0.5), (ox - 0.5, -0.5), (ox - 0.5, oy - 0.5), (-0.5, oy - 0.5)]
        clipped = _clip(list(mapped), window)
        for v in clipped or ():
            if not _invert(pm, rect, v):
                break
    pixels = np.array(sorted(pm.known), dtype=np.int64).reshape(-1, 2)
    values = np.array([pm.known[tuple(p)] for p in pixels], dtype=np.float64).reshape(-1, 2)
    return ClipReads(xmin, xmax, ymin, ymax, sides, pixels, values)
