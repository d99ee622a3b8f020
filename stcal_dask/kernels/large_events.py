"""Large-event flagging (NIR snowballs, MIRI showers), faithful to stcal 1.20.0.

Re-implements the two optional stages of ``stcal.jump.jump.detect_jumps_data`` that follow the
two-point-difference detection: ``flag_large_events`` (snowballs, ``expand_large_events``) and
``find_faint_extended`` (showers, ``find_showers``), so that GROUPDQ is bit-identical to stcal's.
Both are whole-plane algorithms (connected regions of a whole (integration, group) plane, fitted
ellipses up to ``max_extended_width`` pixels wide, an FFT ring convolution of a whole plane), so
they are split here into functions a dataflow layer can run as **plane tasks** and **tile
tasks**; :func:`flag_large_events` runs them all on a whole exposure in memory.

Conventions
-----------
* An ellipse is stcal's ``((cen_x, cen_y), (h, w), theta_deg)`` held as :class:`Ellipse`:
  the region's centroid (column, row; pixels), its minor and major axis lengths minus one
  (pixels) and its orientation in degrees, as ``skimage.measure.regionprops`` gives them.
* A :class:`Raster` is an ellipse drawn (``skimage.draw.ellipse``) into a small sub-image whose
  frame coordinates it records, clipped at the frame's edges exactly as stcal draws it, so that a
  tile can paint the part that falls inside it (:func:`paint`) and get the whole-frame result.
* Planes are (ny, nx); cubes (ngroups, ny, nx) or (nints, ngroups, ny, nx); DQ values are those
  of :mod:`stcal_dask.dqflags`. Inputs are never modified.

Snowballs (per integration; groups g >= 1 in order)
---------------------------------------------------
stcal walks the groups of an integration in order and edits the group DQ as it goes, so a group
sees what earlier groups did. Only one thing crosses groups: the *saturation extension* of group
g (new-saturation cores with a minor axis > ``min_sat_radius_extend``, enlarged by ``sat_expand``)
**sets** the DQ of groups g, g+1, ... to SATURATED. Everything else in group g depends on the
input planes g-1, g, g+1 and the union of the extensions of groups < g. Hence three steps:

1. :func:`snowball_saturation` (one task per integration, sequential over its groups, needs only
   the SATURATED bits, which jump detection never changes): the new-saturation ellipses of every
   group and the next group, the extension rasters and the (unexpanded) cores that mask the next
   integration.
2. :func:`snowball_plane` (one task per (integration, group) plane, in parallel): the JUMP
   regions of the plane (minus earlier extensions), which of them are snowballs (centre within
   ``edge_size`` of an edge, or containing the centre of a new-saturation ellipse of this or the
   next group) and their expanded rasters.
3. :func:`apply_snowballs` (one task per spatial tile): paints the extensions (DQ set to
   SATURATED), the snowballs (JUMP OR-ed where not SATURATED) and the previous integration's
   cores (JUMP OR-ed into groups 1 .. ``persist_groups`` - 1).

Showers (MIRI)
--------------
:func:`shower_ratio_tile` (per tile, pixel-local): the masked signal-to-noise ratio of every
difference; :func:`shower_plane` (per plane): ring convolution of the whole plane, threshold,
regions >= ``extend_min_area``, ellipses; :func:`apply_showers` (per tile): JUMP in the
(expanded) ellipses over the group and the next ``grps_masked_after_shower`` groups, then the
per-pixel revert of pixels whose mean rate changed by more than ``max_shower_amplitude``.
:func:`shower_globals` takes the whole-plane decisions (enough differences, first usable group).

Deliberate differences from stcal
---------------------------------
* stcal raises ``UnboundLocalError`` for snowballs with 2 groups (the next group's saturation is
  never set); here the last group simply has no next group.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags

__all__ = [
    "Ellipse",
    "Raster",
    "SnowballSettings",
    "ShowerSettings",
    "SaturationResult",
    "SnowballPlane",
    "ShowerGlobals",
    "LargeEventsResult",
    "region_ellipses",
    "ellipse_raster",
    "paint",
    "point_inside_ellipse",
    "points_inside_ellipse",
    "ring_kernel",
    "snowball_saturation",
    "snowball_plane",
    "apply_snowballs",
    "shower_globals",
    "shower_ratio_tile",
    "shower_plane",
    "apply_showers",
    "flag_large_events",
]

SAT = dqflags.SATURATED
JUMP = dqflags.JUMP_DET
DNU = dqflags.DO_NOT_USE
REF = dqflags.REFERENCE_PIXEL


class Ellipse(NamedTuple):
    """A region's ellipse, in stcal's convention (see the module docstring)."""

    x: float
    """Centroid column (pixels)."""
    y: float
    """Centroid row (pixels)."""
    h: float
    """Minor axis length - 1 (pixels; -1 for a one-pixel-wide line)."""
    w: float
    """Major axis length - 1 (pixels)."""
    angle: float
    """Orientation (degrees), ``numpy.degrees(regionprops.orientation)``."""


class Raster(NamedTuple):
    """An ellipse drawn in frame coordinates: ``frame[y0:y1, x0:x1][mask]`` are its pixels."""

    y0: int
    y1: int
    x0: int
    x1: int
    mask: np.ndarray
    """(y1 - y0, x1 - x0) bool."""


class SnowballSettings(NamedTuple):
    """Snowball settings in stcal's ``JumpData`` units (see ``JumpParams.snowball_settings``)."""

    min_jump_area: float = 5.0
    min_sat_area: float = 1.0
    expand_factor: float = 2.0
    sat_required_snowball: bool = True
    min_sat_radius_extend: float = 2.5
    sat_expand: float = 4.0
    """Pixels added to a core's full axes (JWST passes twice its ``sat_expand`` parameter)."""
    edge_size: int = 25
    max_extended_width: float = 400.0
    """Cap of any extension's full axes (JWST passes twice ``max_extended_radius``)."""
    mask_persist_next_int: bool = True
    persist_groups: int = 25
    """Groups 1 .. persist_groups - 1 of the next integration get the cores as JUMP."""


class ShowerSettings(NamedTuple):
    """Shower settings in stcal's ``JumpData`` units (see ``JumpParams.shower_settings``)."""

    extend_snr_threshold: float = 1.2
    extend_min_area: float = 90.0
    extend_inner_radius: float = 1.0
    extend_outer_radius: float = 2.6
    extend_ellipse_expand_ratio: float = 1.1
    grps_masked_after_shower: int = 5
    max_shower_amplitude: float = 6.0
    """electron per group (stcal compares rates of data already multiplied by the gain)."""
    max_extended_width: float = 400.0
    minimum_sigclip_groups: int = 100
    nframes: int = 1
    min_diffs_for_shower: int = 10


# ---------------------------------------------------------------------------------------------
# regions, ellipses, rasters


def _components(lin: np.ndarray, shape):
    """8-connected regions (the connectivity ``skimage.measure.label`` uses for 2-D images) of
    the pixels at sorted linear indices ``lin`` of a ``shape`` plane: ``(comp, bbox)`` of
    :func:`~stcal_dask.kernels._shower_numba.sparse_components` (regions numbered in label
    order)."""
    from stcal_dask.kernels import _shower_numba as snb

    return snb.sparse_components(np.ascontiguousarray(lin, dtype=np.int64), int(shape[0]),
                                 int(shape[1]))  # fmt: skip


def _shape_props(sub: np.ndarray, cache: dict):
    """regionprops of a region image (its bounding box, uint8 0/1): (axis_minor_length,
    axis_major_length, orientation, the RegionProperties). They depend on the region image
    alone (not on where it lies), so identical shapes -- most regions of a jump plane are the
    same few small patterns, e.g. the five-pixel cross of a neighbour-flagged cosmic ray -- are
    measured once per plane."""
    from skimage.measure import regionprops

    key = (sub.shape, sub.tobytes())
    hit = cache.get(key)
    if hit is None:
        (r,) = regionprops(sub)
        hit = (r.axis_minor_length, r.axis_major_length, r.orientation, r)
        cache[key] = hit
    return hit


def _centroid(sub: np.ndarray, y0: int, x0: int) -> np.ndarray:
    """regionprops' centroid of a region in the frame: the mean of its pixels' frame
    coordinates as float64 (the same values in the same order, so the same result)."""
    coords = (np.array([y0, x0]) + np.argwhere(sub)) * np.ones(2)
    return coords.mean(axis=0)


def _region_images(lin, shape, min_area, keep=None):
    """The regions of the pixels ``lin`` (sorted linear indices in a ``shape`` plane) that can
    reach a filled area of ``min_area``, in label order: (y0, x0, region image uint8, pixel
    count) each. An 8-connected region of n pixels fits in an n x n box and its filled area is
    at most its box's, so smaller ones are left out before anything is built; so are those
    for which ``keep(y0, y1, x0, x1)`` is False (given the candidates' bounding boxes as int64
    arrays, it returns a bool array)."""
    if lin.size == 0:
        return []
    comp, bbox = _components(lin, shape)
    counts = np.bincount(comp, minlength=bbox.shape[0])
    areas = (bbox[:, 1] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 2])
    big = np.flatnonzero((counts.astype(np.float64) ** 2 >= min_area) & (areas >= min_area))
    if big.size and keep is not None:
        box = bbox[big]
        big = big[np.asarray(keep(box[:, 0], box[:, 1], box[:, 2], box[:, 3]), dtype=bool)]
    if big.size == 0:
        return []
    order = np.argsort(comp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    nx = int(shape[1])
    out = []
    for k, (y0, y1, x0, x1) in zip(big.tolist(), bbox[big].tolist(), strict=True):
        pix = lin[order[starts[k] : starts[k + 1]]]
        sub = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
        sub[pix // nx - y0, pix % nx - x0] = 1
        out.append((y0, x0, sub, int(counts[k])))
    return out


def region_ellipses(mask, min_area, *, keep=None, points=None) -> list[Ellipse]:
    """Ellipses of the 8-connected regions of ``mask`` whose filled area is >= ``min_area``.

    stcal's ``find_ellipses``/``_sk_filter_areas`` (``regionprops``: filled area, centroid, axis
    lengths, orientation), regions in label order. ``keep(y0, y1, x0, x1)``, given the bounding
    boxes of regions (int64 arrays: rows ``y0:y1``, columns ``x0:x1``), returns a bool array
    that may be False for regions whose
    ellipse cannot matter to the caller: their properties are then not computed (the costly
    part on planes with many regions). Regions with at least ``min_area`` pixels pass without
    filling their holes. ``points`` (sorted linear indices of the set pixels) may be given
    instead of ``mask`` as ``(lin, shape)``.
    """
    if points is None:
        mask = np.asarray(mask, dtype=bool)
        lin, shape = np.flatnonzero(mask), mask.shape
    else:
        lin, shape = points
    out = []
    cache: dict = {}
    for y0, x0, sub, n_px in _region_images(lin, shape, min_area, keep):
        hit = _shape_props(sub, cache)
        if n_px < min_area and hit[3].area_filled < min_area:
            continue
        cy, cx = _centroid(sub, y0, x0)
        out.append(Ellipse(float(cx), float(cy), hit[0] - 1, hit[1] - 1, np.degrees(hit[2])))
    return out


def ellipse_raster(x, y, axis1, axis2, angle, shape) -> Raster:
    """stcal's ``ellipse_subim``: the ellipse of full axes ``axis1`` (along columns before the
    rotation) and ``axis2`` centred on the rounded (``x``, ``y``), rotated by ``angle`` degrees,
    drawn with ``skimage.draw.ellipse`` into a sub-image clipped at the frame ``shape``."""
    from skimage.draw import ellipse as sk_ellipse

    xc, yc = round(x), round(y)
    r1, r2 = round(axis1 / 2), round(axis2 / 2)
    half = max(r1, r2) + 2
    x0, x1 = max(xc - half, 0), min(xc + half + 1, shape[1])
    y0, y1 = max(yc - half, 0), min(yc + half + 1, shape[0])
    sub = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=bool)
    if r1 != 0 and r2 != 0:
        rr, cc = sk_ellipse(yc - y0, xc - x0, r2, r1, sub.shape, np.radians(angle))
        sub[rr, cc] = True
    return Raster(int(y0), int(y1), int(x0), int(x1), sub)


def paint(rasters, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """(y1 - y0, x1 - x0) bool: the union of ``rasters`` inside the frame window."""
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for r in rasters:
        a0, a1 = max(r.y0, y0), min(r.y1, y1)
        b0, b1 = max(r.x0, x0), min(r.x1, x1)
        if a0 >= a1 or b0 >= b1:
            continue
        out[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0] |= r.mask[a0 - r.y0 : a1 - r.y0,
                                                            b0 - r.x0 : b1 - r.x0]
    return out


def point_inside_ellipse(px, py, e: Ellipse) -> bool:
    """stcal's ``point_inside_ellipse`` (float64 arithmetic; a zero semi-axis gives inf/NaN and
    so False, as there)."""
    xr, yr, a, b = _ellipse_frame(np.float64(px - e.x), np.float64(py - e.y), e)
    with np.errstate(all="ignore"):
        return bool((xr**2 / a**2) + (yr**2 / b**2) <= 1)


def _ellipse_frame(dx, dy, e: Ellipse):
    """Offsets (float64, scalars or arrays) from an ellipse's centre rotated into its frame, and
    its semi-major and semi-minor axes, in stcal's float64 operations."""
    t = np.radians(180 - e.angle)
    c, s = np.cos(t), np.sin(t)
    xr = dx * c - dy * s
    yr = dx * s + dy * c
    if e.w >= e.h:
        return xr, yr, np.float64(e.w * 0.5), np.float64(e.h * 0.5)
    return xr, yr, np.float64(e.h * 0.5), np.float64(e.w * 0.5)


_INSIDE_MARGIN = 1e-12
"""Relative margin around 1 within which :func:`points_inside_ellipse` redoes a point with
:func:`point_inside_ellipse`: squaring by multiplication and by ``**`` (libm ``pow``, what
stcal's scalar arithmetic calls) differ by at most an ulp or so, far below it."""


def points_inside_ellipse(px, py, e: Ellipse) -> np.ndarray:
    """:func:`point_inside_ellipse` of each point (``px``, ``py``: float64 arrays), as a bool
    array, with the same result for every point.

    The rotation and differences are the same float64 operations elementwise; the squares are
    taken by multiplication, which may differ from ``**`` in the last bit, so points whose
    value is within :data:`_INSIDE_MARGIN` of 1 (or NaN) are decided by the scalar function.
    """
    px = np.asarray(px, dtype=np.float64)
    py = np.asarray(py, dtype=np.float64)
    if px.size == 0:
        return np.zeros(0, dtype=bool)
    xr, yr, a, b = _ellipse_frame(px - np.float64(e.x), py - np.float64(e.y), e)
    with np.errstate(all="ignore"):
        rad = (xr * xr / a**2) + (yr * yr / b**2)
        inside = rad <= 1.0 - _INSIDE_MARGIN
        unsure = ~(inside | (rad > 1.0 + _INSIDE_MARGIN))
    for k in np.flatnonzero(unsure):
        inside[k] = point_inside_ellipse(px[k], py[k], e)
    return inside


def _expanded_axes(e: Ellipse, factor: float, cap: float) -> tuple[int, int]:
    """stcal's ``compute_axes`` with ``expand_by_ratio``: the minor axis times ``factor``, the
    major one plus (factor - 1) times the minor one, capped; returned as rounded semi-axes."""
    if e.w < e.h:
        a1 = e.h + (factor - 1.0) * e.w
        a2 = e.w * factor
    else:
        a1 = e.h * factor
        a2 = e.w + (factor - 1.0) * e.h
    return round(min(a1, cap) / 2), round(min(a2, cap) / 2)


def _expanded_raster(e: Ellipse, factor: float, cap: float, shape) -> Raster:
    s1, s2 = _expanded_axes(e, factor, cap)
    return ellipse_raster(e.x, e.y, s1 * 2, s2 * 2, e.angle, shape)


# ---------------------------------------------------------------------------------------------
# snowballs


class SaturationResult(NamedTuple):
    """:func:`snowball_saturation` of one integration (lists indexed by group)."""

    sat: list
    """sat[g]: the new-saturation ellipses of group g (empty for g = 0)."""
    next_sat: list
    """next_sat[g]: the ellipses of saturation new in group g + 1 (as group g sees it; empty
    for the last group)."""
    extensions: list
    """extensions[g]: rasters set to SATURATED in groups g, g+1, ... (empty for g = 0)."""
    cores: list
    """Rasters of the unexpanded cores (masks the next integration's first groups)."""


def snowball_saturation(sat_cube, *, settings: SnowballSettings) -> SaturationResult:
    """Step 1 of the snowballs for one integration (see the module docstring).

    ``sat_cube``: (ngroups, ny, nx) bool, the SATURATED bits of the integration's group DQ.
    """
    sat_cube = np.asarray(sat_cube, dtype=bool)
    ngroups, ny, nx = sat_cube.shape
    shape = (ny, nx)
    sat = [[] for _ in range(ngroups)]
    nxt = [[] for _ in range(ngroups)]
    ext = [[] for _ in range(ngroups)]
    cores: list = []
    if not settings.sat_required_snowball:
        return SaturationResult(sat, nxt, ext, cores)
    extended = np.zeros(shape, dtype=bool)  # union of the extensions of earlier groups
    for g in range(1, ngroups):
        free = ~extended
        sat[g] = region_ellipses(sat_cube[g] & ~sat_cube[g - 1] & free, settings.min_sat_area)
        if g < ngroups - 1:
            nxt[g] = region_ellipses(sat_cube[g + 1] & ~sat_cube[g] & free,
                                     settings.min_sat_area)
        for e in sat[g]:
            if min(e.w, e.h) > settings.min_sat_radius_extend:
                a1 = min(e.h + settings.sat_expand, settings.max_extended_width)
                a2 = min(e.w + settings.sat_expand, settings.max_extended_width)
                r = ellipse_raster(e.x, e.y, a1, a2, e.angle, shape)
                ext[g].append(r)
                extended[r.y0 : r.y1, r.x0 : r.x1] |= r.mask
                cores.append(ellipse_raster(e.x, e.y, e.h, e.w, e.angle, shape))
    return SaturationResult(sat, nxt, ext, cores)


def extended_before(satres: SaturationResult, group: int, shape) -> np.ndarray:
    """(ny, nx) bool: pixels set to SATURATED by the extensions of groups < ``group``."""
    rasters = [r for g in range(min(group, len(satres.extensions))) for r in satres.extensions[g]]
    return paint(rasters, 0, shape[0], 0, shape[1])


class SnowballPlane(NamedTuple):
    """:func:`snowball_plane` of one (integration, group) plane."""

    rasters: list
    """The snowballs' expanded rasters (JUMP where not SATURATED)."""
    count: int
    """Snowballs found (stcal's count)."""


def snowball_plane(jump_plane, extended, sat, next_sat, *, settings: SnowballSettings,
                   has_next: bool) -> SnowballPlane:  # fmt: skip
    """Step 2 of the snowballs: one (integration, group >= 1) plane.

    Parameters
    ----------
    jump_plane : (ny, nx) bool
        JUMP bits of the plane after two-point detection.
    extended : (ny, nx) bool
        ``extended_before(satres, group, shape)``: those pixels no longer carry JUMP.
    sat, next_sat : list of Ellipse
        ``satres.sat[group]`` and ``satres.next_sat[group]``.
    has_next : bool
        Whether a next group exists (``group < ngroups - 1``).
    """
    jump_plane = np.asarray(jump_plane, dtype=bool)
    ny, nx = jump_plane.shape
    mask = jump_plane & ~np.asarray(extended, dtype=bool)
    low = settings.edge_size
    high = max(0, ny - settings.edge_size)  # stcal uses the row count for both axes
    centres = [(e.x, e.y) for e in sat] + ([(e.x, e.y) for e in next_sat] if has_next else [])
    required = settings.sat_required_snowball
    keep = None
    if required:
        cx = np.array([c[0] for c in centres], dtype=np.float64)
        cy = np.array([c[1] for c in centres], dtype=np.float64)

        def keep(y0, y1, x0, x1):
            # the centroid lies in the bounding box (rows y0..y1-1, columns x0..x1-1)
            out = (x0 < low) | (y0 < low) | (x1 - 1 > high) | (y1 - 1 > high)
            if not cx.size:
                return out
            # an ellipse's semi-major axis, (4 sqrt(lambda_max) - 1) / 2, is below the box's
            # diagonal (lambda_max <= var(rows) + var(cols) <= ((y1-y0-1)^2 + (x1-x0-1)^2) / 4)
            d = np.hypot(y1 - y0, x1 - x0) + 1.0
            step = max(1, (1 << 20) // cx.size)
            for a in range(0, out.size, step):
                b = slice(a, a + step)
                dd = d[b, None]
                inside = ((cx >= x0[b, None] - dd) & (cx <= x1[b, None] + dd)
                          & (cy >= y0[b, None] - dd) & (cy <= y1[b, None] + dd))
                out[b] |= inside.any(axis=1)
            return out

    jumps = region_ellipses(mask, settings.min_jump_area, keep=keep)
    if required:
        px = np.array([c[0] for c in centres], dtype=np.float64)
        py = np.array([c[1] for c in centres], dtype=np.float64)
        snowballs = [j for j in jumps
                     if j.x < low or j.y < low or j.x > high or j.y > high
                     or points_inside_ellipse(px, py, j).any()]
    else:
        snowballs = jumps
    rasters = [
        _expanded_raster(j, settings.expand_factor, settings.max_extended_width, (ny, nx))
        for j in snowballs
    ]
    return SnowballPlane(rasters, len(snowballs))


def apply_snowballs(gdq, window, extensions, snowballs, cores, *,
                    settings: SnowballSettings) -> np.ndarray:  # fmt: skip
    """Step 3 of the snowballs on one tile; returns the new group DQ tile.

    Parameters
    ----------
    gdq : (nints, ngroups, ty, tx) unsigned
        Group DQ tile after two-point detection.
    window : (y0, y1, x0, x1)
        The tile's frame coordinates.
    extensions : list (per integration) of lists (per group) of Raster
        ``SaturationResult.extensions`` of every integration.
    snowballs : list (per integration) of lists (per group) of Raster
        ``SnowballPlane.rasters`` of every plane (anything for group 0).
    cores : list (per integration) of lists of Raster
        ``SaturationResult.cores`` of every integration.
    """
    y0, y1, x0, x1 = window
    out = np.array(gdq, copy=True)
    nints, ngroups = out.shape[:2]
    jump = out.dtype.type(JUMP)
    sat = out.dtype.type(SAT)
    for i in range(nints):
        extended = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        for g in range(1, ngroups):
            if extensions[i][g]:
                extended |= paint(extensions[i][g], y0, y1, x0, x1)
            plane = out[i, g]
            if snowballs[i][g]:
                sb = paint(snowballs[i][g], y0, y1, x0, x1)
                plane[sb & ((plane & sat) == 0)] |= jump
            plane[extended] = sat
    if settings.mask_persist_next_int and settings.persist_groups >= 1:
        last = min(settings.persist_groups, ngroups)
        for i in range(1, nints):
            if cores[i - 1] and last > 1:
                m = paint(cores[i - 1], y0, y1, x0, x1)
                out[i, 1:last][:, m] |= jump
    return out


# ---------------------------------------------------------------------------------------------
# showers


def ring_kernel(inner: float, outer_width: float) -> np.ndarray:
    """astropy's ``Ring2DKernel(inner, outer_width)`` array (what stcal convolves with, called
    with ``extend_inner_radius`` and ``extend_outer_radius``): 1 where inner^2 <= r^2 <=
    (inner + outer_width)^2 on an odd grid of ``2 * (inner + outer_width)`` rounded up, divided by
    its sum."""
    r_out = inner + outer_width
    size = int(np.ceil(2 * r_out))
    size += 1 - size % 2
    n = (size - 1) // 2
    amp = 1.0 / (np.pi * (r_out**2 - inner**2))
    y, x = np.mgrid[-n : n + 1, -n : n + 1].astype(np.float64)
    rr = x**2 + y**2
    k = np.where((rr >= inner**2) & (rr <= r_out**2), amp, 0.0)
    return k / k.sum()


class ShowerGlobals(NamedTuple):
    """Whole-frame decisions of the shower search (:func:`shower_globals`)."""

    run: bool
    """False when there are too few usable differences (stcal then leaves the DQ alone)."""
    first_good: np.ndarray
    """(nints,) int: per integration, the first group not DO_NOT_USE in every pixel (after
    reference pixels are set DO_NOT_USE); planes ``first_good + 1 ..`` are searched."""


def shower_globals(plane_dnu, plane_dnu_ref, *, settings: ShowerSettings) -> ShowerGlobals:
    """From (nints, ngroups) bool "every pixel DO_NOT_USE" flags of the group DQ before
    (``plane_dnu``) and after (``plane_dnu_ref``) reference pixels are made DO_NOT_USE."""
    plane_dnu = np.asarray(plane_dnu, dtype=bool)
    nints, ngroups = plane_dnu.shape
    total = nints * (ngroups - 1) - int(plane_dnu.sum())
    first = np.zeros(nints, dtype=np.int64)
    for i in range(nints):
        bad = np.asarray(plane_dnu_ref[i], dtype=bool)
        good = np.flatnonzero(~bad)
        first[i] = good[0] if good.size else 0
    return ShowerGlobals(total >= settings.min_diffs_for_shower, first)


def shower_dnu_partial(gdq, pdq) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile (nints, ngroups) "every pixel DO_NOT_USE" flags, without and with the reference
    pixels (PIXELDQ exactly REFERENCE_PIXEL) counted as DO_NOT_USE; merge with logical AND."""
    dnu = (np.asarray(gdq) & DNU) != 0
    ref = np.asarray(pdq) == REF
    a = dnu.all(axis=(2, 3))
    b = (dnu | ref).all(axis=(2, 3))
    return a, b


def _electrons(data, gain):
    return np.asarray(data) * np.asarray(gain)


def _nan_flagged(e, gdq):
    """stcal's ``nan_invalid_data``: NaN where the group DQ *equals* one of five values."""
    e = e.copy()
    for v in (JUMP + DNU, SAT + DNU, SAT, JUMP, DNU):
        e[gdq == v] = np.nan
    return e


def shower_ratio_tile(data, gdq, pdq, gain, readnoise, *, settings: ShowerSettings):
    """Per tile (pixel-local): the masked difference signal-to-noise ratios the shower search
    convolves, (nints, ngroups - 1, ty, tx) float32, NaN where masked.

    ``data`` DN, ``gdq`` the group DQ after jump detection (and snowballs), ``pdq`` the PIXELDQ
    after jump detection, ``gain`` electron/DN, ``readnoise`` CDS DN. Entry ``[i, g - 1]`` is
    the ratio of difference g - 1 -> g masked by group g's DQ, as stcal's ``get_bigellipses``.
    With fewer than ``minimum_sigclip_groups`` integrations and float32 inputs (JWST's) one
    compiled pass computes it (:func:`~stcal_dask.kernels._shower_numba.ratio_cube`, the same
    float32 arithmetic); otherwise numpy does, step by step as stcal.
    """
    gdq = np.asarray(gdq)
    pdq = np.asarray(pdq)
    nints = gdq.shape[0]
    f32 = np.dtype(np.float32)
    if (nints < settings.minimum_sigclip_groups
            and all(np.asarray(a).dtype == f32 for a in (data, gain, readnoise))):
        from stcal_dask.kernels import _shower_numba as snb
        from stcal_dask.kernels.common import readonly_c

        return snb.ratio_cube(readonly_c(data), readonly_c(gdq), readonly_c(pdq),
                              readonly_c(gain), readonly_c(readnoise), int(settings.nframes))
    return _ratio_numpy(data, gdq, pdq, gain, readnoise, settings)


def _ratio_numpy(data, gdq, pdq, gain, readnoise, settings: ShowerSettings):
    """:func:`shower_ratio_tile` with numpy, any dtypes and both of stcal's branches."""
    gain = np.asarray(gain)
    nints = gdq.shape[0]
    e = _nan_flagged(_electrons(data, gain), gdq)
    rn_e = np.asarray(readnoise) * gain
    ref = pdq == REF
    diffs = np.diff(e, axis=1)
    del e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if nints >= settings.minimum_sigclip_groups:
            median, stddev = _sigclip_median_std(diffs)
            ratio = np.abs(diffs - median[np.newaxis]) / stddev[np.newaxis]
        else:
            med = np.nanmedian(diffs, axis=(0, 1))
            sigma = np.sqrt(np.abs(med) + rn_e**2 / settings.nframes)
            ratio = np.abs(diffs - med[np.newaxis, np.newaxis]) / sigma[np.newaxis, np.newaxis]
    flagged = ((gdq[:, 1:] | pdq) & (JUMP | SAT | DNU)) != 0
    flagged |= ref  # reference pixels are DO_NOT_USE in every group here
    ratio = np.array(ratio, copy=True)
    ratio[flagged] = np.nan
    return ratio


def _sigclip_median_std(diffs):
    """astropy ``sigma_clipped_stats(diffs, sigma=5, axis=0)``'s median and population std
    (what stcal uses with >= ``minimum_sigclip_groups`` integrations): the clipping bounds of
    astropy's fast path per (difference, pixel), then numpy's nanmedian/nanstd of the float32
    values inside them."""
    from stcal_dask.kernels import _jump_numba as jnb

    d = np.ascontiguousarray(diffs)
    lo, hi = _clip_bounds(d, jnb.sigclip_bounds)
    clipped = d.copy()
    with np.errstate(invalid="ignore"):
        clipped[~np.isfinite(d) | (d < lo[np.newaxis]) | (d > hi[np.newaxis])] = np.nan
    return np.nanmedian(clipped, axis=0), np.nanstd(clipped, axis=0)


def _clip_bounds(d, sigclip_bounds):
    """(lo, hi) float64 arrays of shape d.shape[1:]: 5-sigma, 5-iteration bounds along axis 0."""
    n = d.shape[0]
    flat = d.reshape(n, -1)
    lo = np.empty(flat.shape[1])
    hi = np.empty(flat.shape[1])
    buf = np.empty(n, dtype=np.float64)
    for j in range(flat.shape[1]):
        col = flat[:, j]
        vals = col[np.isfinite(col)]
        buf[: vals.size] = vals
        lo[j], hi[j] = sigclip_bounds(buf, vals.size, 5.0, 5)
    return lo.reshape(d.shape[1:]), hi.reshape(d.shape[1:])


def _convolve_fast(arr, kernel):
    """stcal's ``convolve_fast`` (astropy ``convolve(preserve_nan=True)`` with FFTs): the same
    scipy calls on the same arrays, so the same values."""
    from scipy import signal

    arr = np.array(arr, copy=True)
    good = np.isfinite(arr)
    arr[~good] = 0
    conv = signal.oaconvolve(arr, kernel, mode="same")
    padded = np.ones((good.shape[0] + kernel.shape[0] - 1, good.shape[1] + kernel.shape[1] - 1))
    n = kernel.shape[0] // 2
    padded[n:-n, n:-n] = good
    norm = signal.oaconvolve(padded, kernel, mode="valid")
    good &= norm > 1e-3 * np.mean(kernel)
    conv /= norm
    conv[~good] = np.nan
    return conv


FFT_ERROR = 1e-10
"""Bound on the error of an FFT convolution (scipy ``oaconvolve``, float64) at any output pixel,
relative to the 2-norm of the whole input plane times the kernel's 1-norm. With L = log2 of the
transform size and eta about 7 unit roundoffs per butterfly stage (accurate twiddle factors),
the forward transform errs by at most L * eta in 2-norm, the kernel's transform by L * eta times
its 1-norm in every element, and the inverse transform by L * eta again: about 3 L eta in all,
below 1e-13 for L <= 40, and at most 4 overlapping blocks add up at a pixel. This is 250 times
that."""


def _kernel_runs(kernel: np.ndarray):
    """The non-zero taps of an odd square kernel for a 'same' convolution, as runs of equal
    weight along rows: output (y, x) takes ``w * input[y + dy, x + dx + j]`` for ``j < n``;
    (dy, dx, n, w) int64, int64, int64, float64 arrays."""
    h = kernel.shape[0] // 2
    runs = []
    for a in range(kernel.shape[0]):
        row = kernel[a, ::-1]  # column b of the row is offset dx = h - b
        b = 0
        while b < row.size:
            if row[b] == 0:
                b += 1
                continue
            e = b
            while e + 1 < row.size and row[e + 1] == row[b]:
                e += 1
            runs.append((h - a, b - h, e - b + 1, float(row[b])))
            b = e + 1
    dy, dx, n, w = zip(*runs, strict=True) if runs else ((), (), (), ())
    return (np.array(dy, np.int64), np.array(dx, np.int64), np.array(n, np.int64),
            np.array(w, np.float64))  # fmt: skip


def _emission(ratio_plane, kernel, threshold: float, min_area: float) -> np.ndarray:
    """Sorted linear indices of the pixels where stcal's ``convolve_fast(ratio_plane, kernel) >
    threshold``, as far as the regions of filled area >= ``min_area`` can tell.

    The ring sums are taken directly (:func:`~stcal_dask.kernels._shower_numba.ring_states`);
    pixels whose exact value lies within the FFT's rounding reach (:data:`FFT_ERROR`) of the
    threshold are undecided. They cannot change the regions when every region of the plane
    with them counted as emission that contains one has a filled area below ``min_area`` (a
    region's filled area only shrinks when pixels are removed): then they are left out.
    Otherwise the plane is convolved with FFTs exactly as stcal does.
    """
    from stcal_dask.kernels import _shower_numba as snb

    plane = np.ascontiguousarray(ratio_plane)
    above, undecided = snb.ring_states(plane, *_kernel_runs(kernel), float(threshold),
                                       float(1e-3 * np.mean(kernel)), FFT_ERROR)
    if undecided.size and _undecided_matter(above, undecided, plane.shape, min_area):
        with np.errstate(all="ignore"):
            above = np.flatnonzero(_convolve_fast(plane, kernel) > threshold)
    return above


def _undecided_matter(above, undecided, shape, min_area) -> bool:
    """True when a region of the pixels ``above`` and ``undecided`` (sorted linear indices)
    holding an undecided pixel has a filled area >= ``min_area``."""
    both = np.union1d(above, undecided)
    cache: dict = {}
    nx = shape[1]
    for y0, x0, sub, _ in _region_images(both, shape, min_area):
        ys, xs = np.nonzero(sub)
        if not np.isin((ys + y0) * nx + xs + x0, undecided).any():
            continue
        if _shape_props(sub, cache)[3].area_filled >= min_area:
            return True
    return False


def shower_plane(ratio_plane, *, settings: ShowerSettings) -> list[Ellipse]:
    """Per (integration, group) plane: the shower ellipses (whole-plane ring convolution,
    threshold, regions of filled area >= ``extend_min_area``), those of stcal's
    ``get_bigellipses``."""
    kernel = ring_kernel(settings.extend_inner_radius, settings.extend_outer_radius)
    above = _emission(ratio_plane, kernel, settings.extend_snr_threshold,
                      settings.extend_min_area)
    return region_ellipses(None, settings.extend_min_area,
                           points=(above, np.shape(ratio_plane)))


def apply_showers(data, gdq, pdq, gain, window, showers, *, settings: ShowerSettings,
                  shape) -> np.ndarray:  # fmt: skip
    """Per tile: the group DQ after the showers (JUMP over the expanded ellipses, then the
    revert of pixels whose mean rate changed too much). ``showers`` is a list of
    ``(integration, group, ellipses)`` in (integration, group) order; ``shape`` is the frame's
    (ny, nx); ``window`` the tile's (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = window
    gdq_in = np.asarray(gdq)
    out = np.array(gdq_in, copy=True)
    pdq = np.asarray(pdq)
    ref = pdq == REF
    out[:, :, ref] = DNU
    nints, ngroups = out.shape[:2]
    jump = out.dtype.type(JUMP)
    sat = out.dtype.type(SAT)
    for i, g, ellipses in showers:
        for e in ellipses:
            r = _expanded_raster(e, settings.extend_ellipse_expand_ratio,
                                 settings.max_extended_width, shape)
            m = paint([r], y0, y1, x0, x1)
            if not m.any():
                continue
            for fg in range(g, min(g + settings.grps_masked_after_shower + 1, ngroups)):
                plane = out[i, fg]
                m &= (plane & sat) != sat
                plane[m] |= jump
    return _revert_showers(data, gain, gdq_in, out, settings)


def _revert_showers(data, gain, gdq_in, gdq, settings: ShowerSettings) -> np.ndarray:
    """stcal's ``max_flux_showers``: per integration, pixels whose mean difference (flagged
    groups excluded) changed by more than ``max_shower_amplitude`` or became NaN get the input
    flags back.

    Only pixels whose group DQ the showers changed are evaluated: elsewhere both means are the
    same computation, so they differ by 0 or are NaN, and restoring the input flags there
    changes nothing. The means are numpy's ``nanmean`` over the differences (axis 0) of the
    gathered (ngroups, npixels) columns, npixels >= 2 (so numpy sums plane by plane, in the
    order it does on the whole cube).
    """
    data = np.asarray(data)
    gain = np.asarray(gain)
    bad = DNU | SAT | JUMP
    nints = gdq.shape[0]
    for i in range(nints):
        changed = (gdq[i] != gdq_in[i]).any(axis=0)
        yy, xx = np.nonzero(changed)
        if yy.size == 0:
            continue
        if yy.size == 1:  # a second column (a copy) keeps the sum's order that of the cube
            yy, xx = np.repeat(yy, 2), np.repeat(xx, 2)
        e = data[i][:, yy, xx] * gain[yy, xx]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            t = e.copy()
            t[(gdq_in[i][:, yy, xx] & bad) != 0] = np.nan
            before = np.nanmean(np.diff(t, axis=0), axis=0)
            t = e
            t[(gdq[i][:, yy, xx] & bad) != 0] = np.nan
            after = np.nanmean(np.diff(t, axis=0), axis=0)
            d = np.abs(before - after)
            rev = ~np.isfinite(d) | (d > settings.max_shower_amplitude)
        ry, rx = yy[rev], xx[rev]
        gdq[i][:, ry, rx] = gdq_in[i][:, ry, rx]
    return gdq


# ---------------------------------------------------------------------------------------------
# whole exposure in memory


class LargeEventsResult(NamedTuple):
    """:func:`flag_large_events` output."""

    groupdq: np.ndarray
    """(nints, ngroups, ny, nx): group DQ after snowballs and/or showers (new array)."""
    n_snowballs: int
    n_showers: int


def flag_large_events(data, gdq, pdq, gain, readnoise, *, snowballs: SnowballSettings | None,
                      showers: ShowerSettings | None) -> LargeEventsResult:  # fmt: skip
    """Snowballs then showers on a whole exposure held in memory (after jump detection).

    ``data`` (nints, ngroups, ny, nx) DN; ``gdq`` the group DQ after two-point detection;
    ``pdq`` the PIXELDQ after jump detection; ``gain`` electron/DN; ``readnoise`` CDS DN. None
    settings switch a stage off.
    """
    gdq = np.asarray(gdq)
    nints, ngroups, ny, nx = gdq.shape
    shape = (ny, nx)
    window = (0, ny, 0, nx)
    out = gdq
    n_sb = n_sh = 0
    if snowballs is not None:
        sats = [snowball_saturation((gdq[i] & SAT) != 0, settings=snowballs)
                for i in range(nints)]
        planes = [[[] for _ in range(ngroups)] for _ in range(nints)]
        for i in range(nints):
            for g in range(1, ngroups):
                p = snowball_plane(
                    (gdq[i, g] & JUMP) != 0, extended_before(sats[i], g, shape),
                    sats[i].sat[g], sats[i].next_sat[g], settings=snowballs,
                    has_next=g < ngroups - 1,
                )
                planes[i][g] = p.rasters
                n_sb += p.count
        out = apply_snowballs(gdq, window, [s.extensions for s in sats], planes,
                              [s.cores for s in sats], settings=snowballs)
    if showers is not None:
        a, b = shower_dnu_partial(out, pdq)
        glob = shower_globals(a, b, settings=showers)
        if glob.run:
            ratio = shower_ratio_tile(data, out, pdq, gain, readnoise, settings=showers)
            found = []
            for i in range(nints):
                for g in range(int(glob.first_good[i]) + 1, ngroups):
                    ell = shower_plane(ratio[i, g - 1], settings=showers)
                    if ell:
                        found.append((i, g, ell))
                        n_sh += len(ell)
            out = apply_showers(data, out, pdq, gain, window, found, settings=showers,
                                shape=shape)
    if out is gdq:
        out = np.array(gdq, copy=True)
    return LargeEventsResult(out, n_sb, n_sh)
