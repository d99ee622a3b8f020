"""WCS alignment utilities: fiducials, pixel scales, footprints and the output WCS of a mosaic.

A re-implementation of ``stcal.alignment`` (the 1.7.1 API documented in the seed docs plus the
1.20.0 functions built on footprints) that works with **gwcs** objects, **astropy FITS WCS**
objects and, where it makes sense, bare astropy transforms.

Conventions (the same as stcal's):

* pixel coordinates are 0-based; integer values are pixel centres, pixel edges are at +-0.5, so a
  full ``(ny, nx)`` frame has the bounding box ``((-0.5, nx - 0.5), (-0.5, ny - 0.5))``;
* bounding boxes are in ``(x, y)`` ("F") order, shapes in numpy ``(ny, nx)`` order;
* a footprint is an ``(N, 2)`` array of ``(lon, lat)`` vertices in degrees; :func:`footprint`
  returns the 4 bounding-box corners clockwise from ``(xlo, ylo)``: ``(xlo, ylo), (xlo, yhi),
  (xhi, yhi), (xhi, ylo)`` (gwcs' order);
* ``wcsinfo`` angles (``roll_ref``, ``v3yangle``, ``rotation``) are in degrees, the arguments of
  :func:`calc_rotation_matrix` in radians; pixel scales in degrees per pixel;
* ``pscale_ratio`` is output/input (0.5 gives pixels half the size, i.e. twice as many).

Where this module differs from stcal 1.20.0 on purpose (all listed in ``docs/alignment.md``):

* bad input raises :class:`stcal_dask.errors.UserInputError` (a ``ValueError``) with one line,
  where stcal raises ``TypeError``/``ValueError``/``AttributeError`` or silently returns garbage
  (empty list, vparity not +-1, no bounding box and no shape, mixed frames, output smaller than
  2 pixels, footprints entirely outside a user shape, NaN pixel scale);
* a WCS without a bounding box but with a pixel shape uses the full-frame box of that shape;
* :func:`reproject` works with gwcs (stcal 1.7.1's failed) and ignores bounding boxes;
  :func:`calc_pixmap` follows stcal 1.20.0 (NaN outside the input's bounding box) unless
  ``use_bounding_box=False``, and can compute a sub-region only;
* :func:`wcs_from_sregions` with a user ``transform`` returns a WCS that *uses* that transform
  (stcal 1.20.0 uses it only to size the grid, then builds the WCS from wcsinfo);
* ``align_edges=True`` (default False = stcal's numbers) removes the half-pixel edge loss: the
  union of footprints then spans pixel edges ``-0.5 .. n - 0.5`` exactly;
* :func:`sregion_to_footprint` accepts exponent notation; :func:`compute_s_region_keyword`
  writes every vertex (not just the first 4) and refuses non-finite values;
  :func:`compute_s_region_imaging` never mutates the WCS and ``center=True`` really means the
  outermost pixel centres (stcal shifts the polygon by +0.5 px).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import astropy.units as u
import gwcs
import numpy as np
from astropy import wcs as fitswcs
from astropy.coordinates import angular_separation
from astropy.modeling import Model
from astropy.modeling import models as astmodels
from gwcs import coordinate_frames as cf

from stcal_dask.errors import UserInputError

__all__ = [
    "WCSINFO_KEYS",
    "calc_pixmap",
    "map_pixels",
    "pixel_mapper",
    "calc_rotation_matrix",
    "compute_fiducial",
    "compute_scale",
    "compute_s_region_imaging",
    "compute_s_region_keyword",
    "footprint",
    "reproject",
    "sregion_to_footprint",
    "sregion_to_footprints",
    "wcs_bbox_from_shape",
    "wcs_from_footprints",
    "wcs_from_sregions",
    "wcsinfo_from",
    "without_bounding_box",
]

log = logging.getLogger(__name__)

WCSINFO_KEYS = ("ra_ref", "dec_ref", "roll_ref", "v3yangle", "vparity")
"""The ``wcsinfo`` keys the output-WCS algorithms read (degrees, except vparity = +-1)."""

_EDGE_TOL = 1e-6
"""Pixels: extents within this of an integer are treated as that integer (align_edges mode)."""


# ---------------------------------------------------------------------------------------------
# WCS kinds: gwcs, astropy FITS WCS, bare astropy transform
# ---------------------------------------------------------------------------------------------


def _kind(w: Any) -> str:
    if isinstance(w, gwcs.WCS):
        return "gwcs"
    if isinstance(w, fitswcs.WCS):
        return "fits"
    if isinstance(w, Model):
        return "model"
    return "other"


def _describe(w: Any) -> str:
    return type(w).__name__


def _require_wcs(w: Any, what: str = "WCS") -> str:
    kind = _kind(w)
    if kind not in ("gwcs", "fits"):
        raise UserInputError(
            f"{what} must be a gwcs.WCS or astropy.wcs.WCS object, got {_describe(w)}"
        )
    return kind


def _axes_types(w: Any) -> tuple[str, ...]:
    """Type of each world axis: ``"SPATIAL"``, ``"SPECTRAL"`` or another upper-case name."""
    kind = _require_wcs(w)
    if kind == "gwcs":
        if w.output_frame is None:
            # a legacy gwcs whose frames were stored as strings: a 2-output one is taken as
            # celestial (every imaging WCS of that era was)
            if w.forward_transform.n_outputs == 2:
                return ("SPATIAL", "SPATIAL")
            raise UserInputError(
                "WCS has no output frame (a legacy gwcs whose frames are strings) and "
                f"{w.forward_transform.n_outputs} outputs; give it real coordinate frames"
            )
        return tuple(str(t).upper() for t in w.output_frame.axes_type)
    types = []
    for i in range(w.wcs.naxis):
        if i in (w.wcs.lng, w.wcs.lat):
            types.append("SPATIAL")
        elif i == w.wcs.spec:
            types.append("SPECTRAL")
        else:
            types.append("OTHER")
    return tuple(types)


def celestial_frame_name(w: Any) -> str | None:
    """Name of the celestial reference system (e.g. ``"ICRS"``, ``"FK5"``), or None."""
    if _kind(w) == "gwcs":
        frame = w.output_frame
        frames = getattr(frame, "frames", [frame])
        for f in frames:
            ref = getattr(f, "reference_frame", None)
            if isinstance(f, cf.CelestialFrame) and ref is not None:
                return type(ref).__name__.upper()
        return None
    if w.wcs.lng >= 0:
        return (w.wcs.radesys or "ICRS").strip().upper()
    return None


def _n_pixel_axes(w: Any) -> int:
    if _kind(w) == "gwcs":
        if w.input_frame is not None:
            return int(w.input_frame.naxes)
        return int(w.forward_transform.n_inputs)
    return int(w.pixel_n_dim)


def _pixel_to_world(w: Any, *pixel) -> list[np.ndarray]:
    """Forward transform (0-based pixels -> world, degrees), bounding box ignored."""
    kind = _kind(w)
    if kind == "gwcs":
        out = w(*pixel, with_bounding_box=False)
    elif kind == "fits":
        out = w.all_pix2world(*pixel, 0)
    elif kind == "model":
        out = w(*pixel)
    else:
        raise TypeError(
            f"expected a gwcs.WCS, astropy.wcs.WCS or astropy model, got {_describe(w)}"
        )
    if not isinstance(out, (tuple, list)):
        out = [out]
    return [np.asarray(o, dtype=float) for o in out]


def _world_to_pixel(w: Any, *world) -> list[np.ndarray]:
    """Backward transform (world, degrees -> 0-based pixels), bounding box ignored."""
    kind = _kind(w)
    with warnings.catch_warnings():
        # NIRSpec-like models warn on sqrt of negative numbers far off the detector
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        if kind == "gwcs":
            out = w.invert(*world, with_bounding_box=False)
        elif kind == "fits":
            out = w.all_world2pix(*world, 0)
        elif kind == "model":
            try:
                inverse = w.inverse
            except NotImplementedError as exc:
                raise UserInputError(
                    f"transform {w.name or type(w).__name__} has no inverse"
                ) from exc
            out = inverse(*world)
        else:
            raise TypeError(
                f"expected a gwcs.WCS, astropy.wcs.WCS or astropy model, got {_describe(w)}"
            )
    if not isinstance(out, (tuple, list)):
        out = [out]
    return [np.asarray(o, dtype=float) for o in out]


# ---------------------------------------------------------------------------------------------
# Bounding boxes and footprints
# ---------------------------------------------------------------------------------------------


def wcs_bbox_from_shape(shape: Sequence[int]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Full-frame bounding box ``((-0.5, nx - 0.5), (-0.5, ny - 0.5))`` of an array shape.

    Only the last two entries of ``shape`` (numpy order, ``(..., ny, nx)``) are used, so a cube's
    shape gives the box of one plane.
    """
    if len(shape) < 2:
        raise UserInputError(f"shape must have at least 2 entries (ny, nx), got {tuple(shape)}")
    return ((-0.5, shape[-1] - 0.5), (-0.5, shape[-2] - 0.5))


def _normalise_bbox(bb: Any, naxes: int, what: str) -> tuple[tuple[float, float], ...]:
    try:
        arr = np.asarray(bb, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{what}: bounding box {bb!r} is not numeric") from exc
    if arr.shape == (2,) and naxes == 1:
        arr = arr[None, :]
    if arr.shape != (naxes, 2) or not np.all(np.isfinite(arr)):
        raise UserInputError(
            f"{what}: bounding box must be {naxes} finite (low, high) pairs in (x, y) order, "
            f"got {bb!r}"
        )
    if np.any(arr[:, 1] <= arr[:, 0]):
        raise UserInputError(f"{what}: bounding box {bb!r} has high <= low")
    return tuple((float(lo), float(hi)) for lo, hi in arr)


def _resolve_bbox(w: Any, bounding_box=None, what: str = "WCS") -> tuple[tuple[float, float], ...]:
    """The bounding box to use for ``w``: the override, its own, or the full frame of its shape."""
    naxes = _n_pixel_axes(w)
    if bounding_box is not None:
        return _normalise_bbox(bounding_box, naxes, what)
    kind = _kind(w)
    if kind == "gwcs":
        if w.bounding_box is not None:
            return _normalise_bbox(w.bounding_box.bounding_box(order="F"), naxes, what)
        pshape = w.pixel_shape
    else:
        if w.pixel_bounds is not None:
            return _normalise_bbox(w.pixel_bounds, naxes, what)
        pshape = w.pixel_shape
    if pshape is None:
        raise UserInputError(
            f"{what} has neither a bounding box nor a pixel shape; "
            "set wcs.bounding_box (or wcs.pixel_shape) or pass bounding_box/shape"
        )
    return tuple((-0.5, float(n) - 0.5) for n in pshape)


def _bbox_vertices(bb: tuple[tuple[float, float], ...], all_spatial: bool) -> np.ndarray:
    """Corner pixel coordinates, shape (naxes, nvertices); gwcs' vertex order."""
    if len(bb) == 2 and all_spatial:
        (xlo, xhi), (ylo, yhi) = bb
        return np.array([[xlo, xlo, xhi, xhi], [ylo, yhi, yhi, ylo]], dtype=float)
    return np.array(list(itertools.product(*bb)), dtype=float).T


def footprint(w: Any, bounding_box=None, center: bool = False, *, what: str = "WCS") -> np.ndarray:
    """World coordinates of the corners of a WCS's bounding box.

    Parameters
    ----------
    w : gwcs.WCS or astropy.wcs.WCS
        The WCS. Without a bounding box its pixel shape gives the full-frame box.
    bounding_box : ((xlo, xhi), (ylo, yhi), ...), optional
        Override of the WCS's own box, pixels, (x, y) order.
    center : bool
        False (stcal's and jwst's imaging convention): the corners are the pixel *edges* of the
        box. True: the centres of the outermost pixels (each edge moved 0.5 px inwards).
    what : str
        Name of the WCS in error messages.

    Returns
    -------
    ndarray, shape (nvertices, n_world_axes), degrees (or the world units)
        For a 2-D celestial WCS the 4 corners clockwise from ``(xlo, ylo)``, as gwcs'
        ``WCS.footprint``; otherwise the product of the (low, high) corners of every axis.
    """
    types = _axes_types(w)
    bb = _resolve_bbox(w, bounding_box, what=what)
    if center:
        bb = tuple((lo + 0.5, hi - 0.5) for lo, hi in bb)
    vertices = _bbox_vertices(bb, all(t == "SPATIAL" for t in types))
    world = _pixel_to_world(w, *vertices)
    return np.array(world, dtype=float).T


# ---------------------------------------------------------------------------------------------
# Fiducial, scale, rotation
# ---------------------------------------------------------------------------------------------


def _fiducial_from_lonlat(lon_deg: np.ndarray, lat_deg: np.ndarray) -> tuple[float, float]:
    """Centre of the 3-D axis-aligned box around the unit vectors of the vertices (degrees).

    This mid-range is insensitive to the RA wrap at 0/360 and stays well defined near the poles
    (the result there is the pole's neighbourhood; its longitude is then arbitrary but finite).
    """
    lon, lat = np.deg2rad(np.asarray(lon_deg, float)), np.deg2rad(np.asarray(lat_deg, float))
    coslat = np.cos(lat)
    x, y, z = coslat * np.cos(lon), coslat * np.sin(lon), np.sin(lat)
    xm = (x.max() + x.min()) / 2.0
    ym = (y.max() + y.min()) / 2.0
    zm = (z.max() + z.min()) / 2.0
    lon_f = float(np.rad2deg(np.arctan2(ym, xm)) % 360.0)
    lat_f = float(np.rad2deg(np.arctan2(zm, np.hypot(xm, ym))))
    return lon_f, lat_f


def _as_list(items: Any, what: str) -> list:
    if items is None or isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
        raise UserInputError(f"{what} must be a list, got {_describe(items)}")
    items = list(items)
    if not items:
        raise UserInputError(f"{what} is empty: give at least one")
    return items


def _check_same_frames(wcslist: list, what: str = "wcslist") -> tuple[str, ...]:
    types0 = _axes_types(wcslist[0])
    frame0 = celestial_frame_name(wcslist[0])
    for i, w in enumerate(wcslist[1:], start=1):
        types = _axes_types(w)
        frame = celestial_frame_name(w)
        if types != types0 or frame != frame0:
            raise UserInputError(
                f"{what}[{i}] has output axes {list(types)} in frame {frame} but {what}[0] has "
                f"{list(types0)} in frame {frame0}; all WCSs must share one output frame"
            )
    return types0


def _validate_wcs_list(wcs_list: Any, what: str = "wcslist") -> list:
    """Check a list of WCS objects: non-empty, each gwcs or FITS WCS. Returns it as a list."""
    items = _as_list(wcs_list, what)
    for i, w in enumerate(items):
        _require_wcs(w, f"{what}[{i}]")
    return items


def compute_fiducial(wcslist: Sequence, bounding_box=None) -> np.ndarray:
    """World coordinates of the fiducial point of a list of WCS objects.

    Celestial axes: the centre of the union of the footprints (the Cartesian mid-range of the
    corner unit vectors, robust to the RA wrap and the poles). Spectral (and any other
    non-celestial) axes: the beginning (minimum) of the range.

    Parameters
    ----------
    wcslist : list of gwcs.WCS or astropy.wcs.WCS
        All must share one output frame (same axis types and celestial system).
    bounding_box : ((xlo, xhi), (ylo, yhi), ...), optional
        Applied to every WCS instead of its own box (pixels, (x, y) order).

    Returns
    -------
    ndarray, shape (n_world_axes,)
        Degrees for celestial axes, the world unit of the others.
    """
    wcslist = _validate_wcs_list(wcslist)
    types = np.array(_check_same_frames(wcslist))
    fps = np.vstack(
        [
            footprint(w, bounding_box=bounding_box, what=f"wcslist[{i}]")
            for i, w in enumerate(wcslist)
        ]
    )  # (nvertices, naxes)
    fiducial = np.zeros(len(types))
    spatial = np.flatnonzero(types == "SPATIAL")
    if len(spatial) == 2:
        fiducial[spatial] = _fiducial_from_lonlat(fps[:, spatial[0]], fps[:, spatial[1]])
    elif len(spatial):
        raise UserInputError(f"WCS has {len(spatial)} celestial axes; expected 0 or 2")
    for i in np.flatnonzero(types != "SPATIAL"):
        fiducial[i] = np.min(fps[:, i])
    return fiducial


def compute_scale(
    wcs: Any,
    fiducial: Sequence[float],
    disp_axis: int | None = None,
    pscale_ratio: float | None = None,
) -> float:
    """Pixel scale (degrees/pixel) of a WCS at a world position, by one-pixel finite differences.

    The fiducial is inverted to a pixel position p0 (bounding box ignored, so a point off the
    detector works); the scale along x and y is the great-circle distance from the world position
    of p0 to that of p0 + 1 pixel along the first and second celestial pixel axes.

    Parameters
    ----------
    wcs : gwcs.WCS or astropy.wcs.WCS
    fiducial : (lon, lat) or (lon, lat, wavelength), degrees
    disp_axis : int, optional
        Dispersion axis (1 = along x, 2 = along y), required for a spectral WCS; the scale in the
        cross-dispersion direction is returned.
    pscale_ratio : float, optional
        Output/input scale ratio; multiplies the result.

    Returns
    -------
    float
        Imaging: sqrt(xscale * yscale). Spectral: yscale if ``disp_axis == 1`` else xscale.
    """
    types = np.array(_axes_types(wcs))
    spectral = "SPECTRAL" in types
    if spectral and disp_axis is None:
        raise UserInputError("the WCS is spectral: give disp_axis (1 = along x, 2 = along y)")
    spatial = np.flatnonzero(types == "SPATIAL")
    if len(spatial) != 2:
        raise UserInputError(f"compute_scale needs a WCS with 2 celestial axes, got {list(types)}")
    if pscale_ratio is not None and not (np.isfinite(pscale_ratio) and pscale_ratio > 0):
        raise UserInputError(f"pscale_ratio must be a finite number > 0, got {pscale_ratio}")
    fiducial = [float(v) for v in np.ravel(fiducial)]
    if len(fiducial) != len(types):
        raise UserInputError(
            f"fiducial has {len(fiducial)} values but the WCS has {len(types)} world axes"
        )
    p0 = np.array([float(np.squeeze(p)) for p in _world_to_pixel(wcs, *fiducial)])
    delta = np.zeros_like(p0)
    delta[spatial[0]] = 1.0
    pix = np.vstack((p0, p0 + delta, p0 + np.roll(delta, 1))).T  # (naxes, 3)
    world = _pixel_to_world(wcs, *pix)
    lon, lat = world[spatial[0]] * u.deg, world[spatial[1]] * u.deg
    # great-circle distances (Vincenty), evaluated in degrees as astropy's SkyCoord does
    xscale = abs(float(angular_separation(lon[0], lat[0], lon[1], lat[1]).to_value(u.deg)))
    yscale = abs(float(angular_separation(lon[0], lat[0], lon[2], lat[2]).to_value(u.deg)))
    if pscale_ratio is not None:
        xscale *= pscale_ratio
        yscale *= pscale_ratio
    if spectral:
        return float(yscale) if disp_axis == 1 else float(xscale)
    return float(np.sqrt(xscale * yscale))


def calc_rotation_matrix(roll_ref: float, v3i_yangle: float, vparity: int = 1) -> list[float]:
    """PC rotation matrix from the telescope roll and the instrument's V3 angle.

    Parameters
    ----------
    roll_ref : float
        Roll angle of V3 (North over East) at the reference point, **radians**.
    v3i_yangle : float
        Angle between the ideal Y axis and V3, **radians**.
    vparity : int
        Parity of the x axis, +1 or -1 (SIAF ``VIdlParity``).

    Returns
    -------
    list of 4 floats
        With ``theta = roll_ref - vparity * v3i_yangle``:
        ``[vparity * cos(theta), sin(theta), -vparity * sin(theta), cos(theta)]``. Reshaped
        row-major (``np.reshape(m, (2, 2))``) this is the FITS matrix
        ``[[PC1_1, PC1_2], [PC2_1, PC2_2]]``, i.e. the elements of the transpose in column order
        (stcal's "column order" wording; its docstring matrix is printed transposed).
    """
    if isinstance(vparity, bool) or vparity not in (1, -1):
        raise UserInputError(f"vparity must be 1 or -1, got {vparity!r}")
    vparity = int(vparity)
    theta = float(roll_ref) - vparity * float(v3i_yangle)
    c, s = math.cos(theta), math.sin(theta)
    return [vparity * c, s, -vparity * s, c]


# ---------------------------------------------------------------------------------------------
# Pixel-to-pixel mapping
# ---------------------------------------------------------------------------------------------


def reproject(wcs1: Any, wcs2: Any):
    """Function mapping pixel coordinates of ``wcs1`` to pixel coordinates of ``wcs2``.

    Forward transform of ``wcs1`` followed by the backward transform of ``wcs2``, 0-based pixels,
    bounding boxes ignored on both sides (points off either detector still map).

    Parameters
    ----------
    wcs1, wcs2 : gwcs.WCS, astropy.wcs.WCS or astropy.modeling.Model
        A bare model is used as a pixel -> world transform (its ``inverse`` for ``wcs2``). A gwcs
        without an analytic inverse is inverted numerically by gwcs.

    Returns
    -------
    callable ``f(x, y) -> (x2, y2)``
        ``x`` and ``y`` are scalars or arrays of one shape; the results have that shape.
    """
    for name, w in (("wcs1", wcs1), ("wcs2", wcs2)):
        if _kind(w) == "other":
            raise TypeError(
                f"{name}: expected astropy.wcs.WCS, gwcs.WCS or an astropy model, "
                f"got {_describe(w)}"
            )

    def _reproject(x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.shape != y.shape:
            raise UserInputError(f"x and y must have the same shape, got {x.shape} and {y.shape}")
        world = _pixel_to_world(wcs1, x.ravel(), y.ravel())
        pix = _world_to_pixel(wcs2, *world)
        return tuple(np.reshape(p, x.shape) for p in pix[:2])

    return _reproject


def calc_pixmap(
    wcs_from: Any,
    wcs_to: Any,
    shape: Sequence[int] | None = None,
    *,
    use_bounding_box: bool = True,
    region: Sequence[int] | None = None,
    mapper=None,
) -> np.ndarray:
    """Output-pixel coordinates of every input pixel centre (for drizzling).

    Parameters
    ----------
    wcs_from, wcs_to : gwcs.WCS or astropy.wcs.WCS
        Input and output WCS. The output WCS's bounding box is always ignored (input pixels that
        fall outside the output still get coordinates).
    shape : (ny, nx), optional
        Input array shape; default ``wcs_from.array_shape``, else ``ceil(hi + 0.5)`` of its
        bounding box (numpy order, unlike stcal 1.7.1 which transposed ``pixel_shape``).
    use_bounding_box : bool
        True (default, stcal 1.20.0's ``calc_pixmap``): input pixels outside ``wcs_from``'s
        bounding box map to NaN, so drizzle skips them. False: they get coordinates too (this
        module's behaviour before it followed stcal).
    region : (y0, y1, x0, x1), optional
        Compute only the input pixels ``[y0:y1, x0:x1]`` (absolute 0-based indices, ends
        exclusive); each value equals the full map's value for the same pixel.
    mapper : callable, optional
        :func:`pixel_mapper` of these two WCSs (and ``use_bounding_box``), built once by a
        caller computing a map region by region; default: built here.

    Returns
    -------
    ndarray, shape (ny, nx, 2) or (y1 - y0, x1 - x0, 2), float64
        ``[..., 0]`` = x and ``[..., 1]`` = y in ``wcs_to`` (0-based).
    """
    if shape is None:
        shape = getattr(wcs_from, "array_shape", None)
    if shape is None:
        bb = _resolve_bbox(wcs_from, what="wcs_from")
        shape = tuple(math.ceil(hi + 0.5) for _, hi in bb)[::-1]
    ny, nx = (int(s) for s in tuple(shape)[-2:])
    y0, y1, x0, x1 = (0, ny, 0, nx) if region is None else (int(v) for v in region)
    if not (0 <= y0 <= y1 <= ny and 0 <= x0 <= x1 <= nx):
        raise UserInputError(f"region {tuple(region)} is not inside the input shape {(ny, nx)}")
    yy, xx = np.indices((y1 - y0, x1 - x0), dtype=np.float64)
    if y0:
        yy += y0
    if x0:
        xx += x0
    if mapper is None:
        mapper = pixel_mapper(wcs_from, wcs_to, use_bounding_box=use_bounding_box)
    return np.dstack(mapper(xx, yy))


def map_pixels(
    wcs_from: Any, wcs_to: Any, x: np.ndarray, y: np.ndarray, *, use_bounding_box: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`calc_pixmap`'s values at arbitrary input pixels.

    ``x``, ``y``: float64 arrays of one shape (0-based input pixel coordinates). Returns the
    output-pixel ``(x, y)`` arrays of that shape, computed by the same calls as
    :func:`calc_pixmap` (the value at a pixel does not depend on which other pixels are mapped
    with it; NaN outside the input's bounding box unless ``use_bounding_box=False``). To map
    many batches of pixels between the same two WCSs, build :func:`pixel_mapper` once.
    """
    return pixel_mapper(wcs_from, wcs_to, use_bounding_box=use_bounding_box)(x, y)


def pixel_mapper(wcs_from: Any, wcs_to: Any, *, use_bounding_box: bool = True):
    """:func:`map_pixels` for one pair of WCSs, as a function ``f(x, y) -> (ox, oy)`` to call
    on many batches of pixels.

    For two gwcs without units (what stcal's ``calc_pixmap`` sees), the input's forward
    transform (with its bounding box: NaN outside) and the output's backward transform are
    built once here, and each call evaluates them as gwcs's ``pixel_to_world_values`` and
    ``world_to_pixel_values`` do (the same models, arguments and keywords, so the same
    values); gwcs builds both compound models anew on every call, a fixed cost that dominates
    when a map is computed a few rows at a time. Any other pair (quantities, no analytic
    inverse, FITS WCSs, models) goes through the WCS objects' own calls each time.
    """
    if use_bounding_box and _kind(wcs_from) == "gwcs" and _kind(wcs_to) == "gwcs":
        # the same calls as stcal: the input's box applies (NaN outside), the output's does not
        to = without_bounding_box(wcs_to)
        fast = _prebuilt_transforms(wcs_from, to)
        if fast is not None:
            forward, backward = fast

            def _mapped(x, y):
                ox, oy = backward(*forward(x, y, with_bounding_box=True, fill_value=np.nan),
                                  with_bounding_box=True, fill_value=np.nan)
                return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)

            direct = _direct_mapper(forward, backward, _mapped)
            return direct if direct is not None else _mapped

        def _generic(x, y):
            ox, oy = to.world_to_pixel_values(*wcs_from.pixel_to_world_values(x, y))
            return np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)

        return _generic
    return reproject(wcs_from, wcs_to)


def _prebuilt_transforms(wcs_from: Any, wcs_to: Any):
    """(forward of ``wcs_from``, backward of ``wcs_to``) when evaluating them directly is what
    gwcs's ``pixel_to_world_values`` / ``world_to_pixel_values`` do for plain float arrays:
    2-D frames, no units anywhere, an analytic inverse and no bounding box on ``wcs_to``
    (which gwcs would apply to the world coordinates first); else None."""
    try:
        frames = (wcs_from.input_frame, wcs_from.output_frame, wcs_to.input_frame,
                  wcs_to.output_frame)
        if any(f is None or f.naxes != 2 for f in frames) or wcs_to.bounding_box is not None:
            return None
        forward = wcs_from.forward_transform
        backward = wcs_to.backward_transform
    except NotImplementedError:  # no analytic inverse: gwcs inverts numerically
        return None
    if forward.uses_quantity or backward.uses_quantity:
        return None
    return forward, backward


_DIRECT_LEAVES = (
    astmodels.Shift, astmodels.Scale, astmodels.Multiply, astmodels.AffineTransformation2D,
    astmodels.Rotation2D, astmodels.Mapping, astmodels.Polynomial1D, astmodels.Polynomial2D,
    astmodels.RotateNative2Celestial, astmodels.RotateCelestial2Native,
    astmodels.Pix2SkyProjection, astmodels.Sky2PixProjection,
)
"""Models whose ``__call__`` (on float64 arrays, one parameter set, no units) only validates and
broadcasts around ``evaluate``: :func:`_direct` calls their ``evaluate`` itself."""


def _direct(model):
    """``f(*arrays) -> tuple of arrays``: ``model`` evaluated by calling each leaf's
    ``evaluate`` with the parameter values ``Model.__call__`` passes it (``_param_sets(raw=True)``,
    taken once here), chained as ``|`` and ``&`` chain them; None for anything else (other
    operators, parameters with units, parameter sets, other leaves). Called with plain float64
    arrays (no quantities: the leaves' input units play no part). Every leaf works element by
    element, so each value is the one the model's own call gives; astropy's per-call input
    checks, broadcasting and parameter copies (a fixed cost per call of each of the ~20
    leaves) are not repeated."""
    from astropy.modeling import CompoundModel

    if isinstance(model, CompoundModel):
        if model.op not in ("|", "&"):
            return None
        left, right = _direct(model.left), _direct(model.right)
        if left is None or right is None:
            return None
        if model.op == "|":
            return lambda *a: right(*left(*a))
        n = model.left.n_inputs
        return lambda *a: left(*a[:n]) + right(*a[n:])
    if not isinstance(model, _DIRECT_LEAVES) or len(model) != 1 or model._has_units:
        return None
    if model.n_inputs != len(model.inputs):
        return None
    params = tuple(model._param_sets(raw=True, units=False))
    evaluate, single = model.evaluate, model.n_outputs == 1
    if single:
        return lambda *a: (evaluate(*a, *params),)
    return lambda *a: tuple(evaluate(*a, *params))


def _box_limits(model):
    """((xlo, xhi), (ylo, yhi)) of a 2-input model's plain bounding box (None: no box; False:
    a box :func:`_direct_mapper` does not apply itself: selectors, ignored inputs, units)."""
    from astropy.modeling.bounding_box import ModelBoundingBox

    try:
        bbox = model.bounding_box
    except NotImplementedError:
        return None
    if type(bbox) is not ModelBoundingBox or bbox.ignored or model.n_inputs != 2:
        return False
    limits = []
    for i in range(2):
        lo, hi = bbox[i].lower, bbox[i].upper
        if isinstance(lo, u.Quantity) or isinstance(hi, u.Quantity):
            return False
        limits.append((float(lo), float(hi)))
    return tuple(limits)


def _direct_mapper(forward, backward, reference):
    """The pixel map ``backward(forward(x, y))`` as ``reference`` computes it (forward with its
    bounding box: NaN outside), evaluated through :func:`_direct`; None when a model or the
    box is not one it handles, or when a check of a few pixels against ``reference`` differs.

    The bounding box is applied as astropy applies it (a pixel is outside when a coordinate is
    below the lower or above the upper limit; all its outputs are then NaN), after evaluating
    every pixel rather than before: the values inside are the same, and a map is almost all
    inside."""
    fwd, bwd = _direct(forward), _direct(backward)
    box = _box_limits(forward)
    if fwd is None or bwd is None or box is False or _box_limits(backward) is not None:
        return None
    if forward.n_outputs != 2 or backward.n_inputs != 2 or backward.n_outputs != 2:
        return None

    def mapped(x, y):
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        shape = np.shape(x)
        with np.errstate(all="ignore"):
            wx, wy = (np.reshape(v, shape) for v in fwd(x, y))
            if box is not None:
                (xlo, xhi), (ylo, yhi) = box
                outside = (x < xlo) | (x > xhi) | (y < ylo) | (y > yhi)
                if outside.any():
                    wx = np.where(outside, np.nan, wx)
                    wy = np.where(outside, np.nan, wy)
            ox, oy = bwd(wx, wy)
        return (np.reshape(np.asarray(ox, dtype=np.float64), shape),
                np.reshape(np.asarray(oy, dtype=np.float64), shape))

    # a guard, not the proof (the tests compare whole maps): a few pixels, in and out of the box
    if box is None:
        (xlo, xhi), (ylo, yhi) = (0.0, 1000.0), (0.0, 1000.0)
    else:
        (xlo, xhi), (ylo, yhi) = box
    t = np.linspace(0.0, 1.0, 7)
    xs = np.concatenate([xlo + (xhi - xlo) * t, [xlo - 1.0, xhi + 1.0, xlo, xhi]])
    ys = np.concatenate([ylo + (yhi - ylo) * t[::-1], [ylo, yhi, ylo - 1.0, yhi + 1.0]])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want, got = reference(xs, ys), mapped(xs, ys)
    except Exception:  # noqa: BLE001 - any failure: use the models' own calls
        return None
    same = all(np.array_equal(np.ravel(a), np.ravel(b), equal_nan=True)
               for a, b in zip(want, got, strict=True))
    if not same:
        return None
    mapped.direct = True  # what the tests check: this path is the one taken
    return mapped


def without_bounding_box(w: Any) -> Any:
    """``w`` itself when it has no bounding box, else a copy of it without one (gwcs)."""
    if _kind(w) != "gwcs" or w.bounding_box is None:
        return w
    import copy

    out = copy.deepcopy(w)
    out.bounding_box = None
    return out


# ---------------------------------------------------------------------------------------------
# S_REGION strings
# ---------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)(?![a-z])", re.I)
_POLYGON = re.compile(r"polygon", re.I)


def _parse_vertices(text: str, what: str) -> np.ndarray:
    tokens = _NUMBER.findall(text)
    if len(tokens) % 2 or not tokens:
        raise UserInputError(
            f"{what}: expected an even, non-zero count of numbers (lon lat pairs), "
            f"got {len(tokens)}"
        )
    return np.array([float(t) for t in tokens], dtype=float).reshape(-1, 2)


def _strip_frame_words(text: str) -> str:
    # drop the frame name after POLYGON (ICRS, FK5, ...), keep numbers (including 1e-05)
    return re.sub(r"\b(?!e[-+]?\d)(?!nan\b)(?!inf\b)[A-Za-z_][A-Za-z0-9_]*\b", " ", text)


def sregion_to_footprints(s_region: str) -> list[np.ndarray]:
    """Split an S_REGION string into its polygons, each an ``(N, 2)`` array of (lon, lat) degrees.

    ``"POLYGON ICRS  1 2 3 4 5 6  POLYGON ICRS  7 8 9 10 11 12"`` gives two (3, 2) arrays. A
    string without the word POLYGON is read as one polygon. Exponent notation is accepted.
    """
    if not isinstance(s_region, str):
        raise UserInputError(f"S_REGION must be a string, got {_describe(s_region)}")
    parts = [p for p in _POLYGON.split(s_region) if p.strip()]
    if not parts:
        raise UserInputError(f"S_REGION {s_region!r} holds no vertices")
    return [_parse_vertices(_strip_frame_words(p), f"S_REGION {s_region!r}") for p in parts]


def sregion_to_footprint(s_region: str) -> np.ndarray:
    """All vertices of an S_REGION string as one ``(N, 2)`` array of (lon, lat) degrees.

    Like stcal's: case-insensitive, shape and frame words ignored, several POLYGON blocks merged
    into one vertex list (use :func:`sregion_to_footprints` to keep them apart). Unlike stcal's,
    exponent notation (``1.0e-05``) is parsed correctly.
    """
    return np.vstack(sregion_to_footprints(s_region))


def compute_s_region_keyword(footprint: np.ndarray) -> str | None:
    """Format a footprint as an S_REGION value: ``"POLYGON ICRS  lon lat lon lat ..."``.

    Every vertex is written with ``%.9f`` (stcal writes only the first 4). Returns None (and
    logs at INFO) when a coordinate is not finite; raises for fewer than 3 vertices.
    """
    fp = np.asarray(footprint, dtype=float)
    if fp.ndim != 2 or fp.shape[1] != 2 or fp.shape[0] < 3:
        raise UserInputError(f"footprint must be an (N>=3, 2) array of (lon, lat), got {fp.shape}")
    if not np.all(np.isfinite(fp)):
        log.info("There are NaNs in s_region, S_REGION not updated.")
        return None
    s_region = "POLYGON ICRS  " + " ".join(f"{v:.9f}" for v in fp.ravel())
    log.info("Update S_REGION to %s", s_region)
    return s_region


def compute_s_region_imaging(
    wcs: Any, shape: Sequence[int] | None = None, center: bool = True
) -> str | None:
    """S_REGION string of an imaging WCS's footprint (RA wrapped to [0, 360)).

    The bounding box of ``wcs`` is used, or the full frame of ``shape`` (numpy order) when the
    WCS has none; the WCS itself is never modified. ``center=False`` (jwst's imaging choice)
    uses the pixel edges, ``center=True`` the centres of the outermost pixels.
    """
    box = None
    if shape is not None and (_kind(wcs) != "gwcs" or wcs.bounding_box is None):
        box = wcs_bbox_from_shape(shape)
    fp = footprint(wcs, bounding_box=box, center=center)[:, :2].copy()
    fp[:, 0] %= 360.0
    return compute_s_region_keyword(fp)


# ---------------------------------------------------------------------------------------------
# Output (mosaic) WCS
# ---------------------------------------------------------------------------------------------


def wcsinfo_from(obj: Any, what: str = "ref_wcsinfo") -> dict[str, float]:
    """Read ``ra_ref, dec_ref, roll_ref, v3yangle, vparity`` from a mapping or attribute object.

    Accepts a dict, an object with those attributes (``model.meta.wcsinfo``) or an object with an
    ``instance`` dict (stdatamodels nodes). Angles in degrees; vparity must be +-1.
    """
    if obj is None:
        raise UserInputError(f"{what} is missing: need {', '.join(WCSINFO_KEYS)}")
    inst = getattr(obj, "instance", None)
    if isinstance(inst, Mapping):
        obj = inst
    out: dict[str, float] = {}
    for key in WCSINFO_KEYS:
        if isinstance(obj, Mapping):
            value = obj.get(key)
        else:
            value = getattr(obj, key, None)
        if value is None:
            raise UserInputError(f"{what} has no '{key}' (need {', '.join(WCSINFO_KEYS)})")
        try:
            value = float(value)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"{what}['{key}'] must be a number, got {value!r}") from exc
        if not math.isfinite(value):
            raise UserInputError(f"{what}['{key}'] must be finite, got {value}")
        out[key] = value
    if out["vparity"] not in (1.0, -1.0):
        raise UserInputError(f"{what}['vparity'] must be 1 or -1, got {out['vparity']}")
    out["vparity"] = int(out["vparity"])
    return out


def _as_footprint(item: Any, i: int) -> np.ndarray:
    if isinstance(item, str):
        return sregion_to_footprint(item)
    try:
        fp = np.asarray(item, dtype=float)
    except (TypeError, ValueError) as exc:
        raise UserInputError(
            f"footprints[{i}] must be an (N, 2) array of (RA, Dec) or an S_REGION string, "
            f"got {_describe(item)}"
        ) from exc
    if fp.ndim != 2 or fp.shape[1] != 2 or fp.shape[0] < 1:
        raise UserInputError(
            f"footprints[{i}] must be an (N, 2) array of (RA, Dec), got shape {fp.shape}"
        )
    if not np.all(np.isfinite(fp)):
        raise UserInputError(f"footprints[{i}] has non-finite vertices")
    return fp


def _pair(values: Any, what: str, integer: bool = False) -> tuple:
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{what} must be 2 numbers, got {values!r}") from exc
    if arr.shape != (2,) or not np.all(np.isfinite(arr)):
        raise UserInputError(f"{what} must be 2 finite numbers, got {values!r}")
    if integer:
        if np.any(arr != np.round(arr)) or np.any(arr < 1):
            raise UserInputError(f"{what} must be 2 positive integers (ny, nx), got {values!r}")
        return tuple(int(v) for v in arr)
    return tuple(float(v) for v in arr)


def _default_frames() -> tuple[cf.CoordinateFrame, cf.CoordinateFrame]:
    from astropy.coordinates import ICRS

    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg))
    return detector, world


def _bbox_with_offsets(
    footprints: list[np.ndarray],
    transform: Model,
    fiducial: tuple[float, float],
    crpix: tuple[float, float] | None,
    shape: tuple[int, int] | None,
    align_edges: bool,
):
    """Bounding box, shape (ny, nx) and CRPIX offsets (0-based) of the output grid.

    ``transform.inverse`` maps world -> native pixel coordinates (the fiducial maps to ~0).
    """
    inverse = transform.inverse
    native = np.hstack([np.array(inverse(*fp.T), dtype=float).reshape(2, -1) for fp in footprints])
    if not np.all(np.isfinite(native)):
        raise UserInputError(
            "some footprint vertices cannot be projected onto the output grid "
            "(more than 90 degrees from the fiducial?)"
        )
    dmin, dmax = native.min(axis=1), native.max(axis=1)
    ncrp = np.array(inverse(*fiducial), dtype=float)
    if crpix is None:
        offsets = ncrp - dmin - (0.5 if align_edges else 0.0)
    else:
        offsets = np.asarray(crpix, dtype=float) - ncrp
    dmin = dmin + offsets
    dmax = dmax + offsets
    if shape is None:
        if align_edges:
            nxy = [max(math.ceil(d + 0.5 - _EDGE_TOL), 0) for d in dmax]
        else:
            nxy = [int(d + 0.5) for d in dmax]
        shape = (nxy[1], nxy[0])
        bbox = tuple((-0.5, n - 0.5) for n in nxy)
    else:
        bbox = []
        for lo, hi, size in zip(dmin, dmax, shape[::-1], strict=True):
            if align_edges:
                blo = max(0, math.floor(lo + 0.5 + _EDGE_TOL)) - 0.5
                bhi = min(math.ceil(hi + 0.5 - _EDGE_TOL), size) - 0.5
            else:
                blo = max(0, int(lo + 0.5)) - 0.5
                bhi = min(int(hi + 0.5), size) - 0.5
            bbox.append((float(blo), float(bhi)))
        bbox = tuple(bbox)
        if any(hi <= lo for lo, hi in bbox):
            raise UserInputError(
                f"the footprints fall outside the requested output shape {tuple(shape)} "
                f"(bounding box would be {bbox}); change shape or crpix"
            )
    return bbox, tuple(int(s) for s in shape), tuple(float(o) for o in offsets)


def _imaging_transform(crpix, crval, cdelt, pc, use_fits_transform: bool = True) -> Model:
    """Shift(-crpix) | PC | Scale(cdelt) | TAN | RotateNative2Celestial(crval, 180)."""
    if use_fits_transform and hasattr(gwcs, "FITSImagingWCSTransform"):
        return gwcs.FITSImagingWCSTransform(
            astmodels.Pix2Sky_TAN(), crpix=list(crpix), crval=list(crval), cdelt=list(cdelt), pc=pc
        )
    return (
        (astmodels.Shift(-crpix[0], name="crpix1") & astmodels.Shift(-crpix[1], name="crpix2"))
        | astmodels.AffineTransformation2D(matrix=pc, name="pc_rotation_matrix")
        | (astmodels.Scale(cdelt[0], name="cdelt1") & astmodels.Scale(cdelt[1], name="cdelt2"))
        | astmodels.Pix2Sky_TAN()
        | astmodels.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )


def wcs_from_sregions(
    footprints: Sequence[np.ndarray | str],
    ref_wcs: Any,
    ref_wcsinfo: Mapping | Any,
    transform: Model | None = None,
    pscale_ratio: float | None = None,
    pscale: float | None = None,
    rotation: float | None = None,
    shape: Sequence[int] | None = None,
    crpix: Sequence[float] | None = None,
    crval: Sequence[float] | None = None,
    *,
    align_edges: bool = False,
) -> gwcs.WCS:
    """Output (mosaic) imaging WCS covering a set of footprints (stcal 1.20.0's algorithm).

    Nothing but the footprints is read from the inputs, so this suits very large mosaics.

    Parameters
    ----------
    footprints : list of (N, 2) arrays or S_REGION strings
        (RA, Dec) vertices in degrees of every input exposure (may be mixed).
    ref_wcs : gwcs.WCS or astropy.wcs.WCS
        Gives the pixel scale (measured at ``(ra_ref, dec_ref)``) and the input/output frames
        (a FITS WCS, or a gwcs without real frames, gets ``detector`` -> ICRS ``world``).
    ref_wcsinfo : mapping or object
        ``ra_ref, dec_ref, roll_ref, v3yangle`` (degrees) and ``vparity`` (+-1).
    transform : astropy model, optional
        Full native-pixel -> world transform (fiducial at native pixel ~(0, 0)); its inverse
        sizes the grid and the returned WCS is ``Shift(-crpix) | transform``. Overrides
        ``pscale``, ``pscale_ratio`` and ``rotation``.
    pscale_ratio : float, optional
        Output/input pixel-scale ratio (ignored when ``pscale`` is given).
    pscale : float, optional
        Output pixel scale, degrees/pixel (0 or None: measured from ``ref_wcs``).
    rotation : float, optional
        Position angle (degrees) of the output +y axis from North; None keeps the reference
        detector orientation (PC from ``roll_ref``, ``v3yangle``, ``vparity``).
    shape : (ny, nx), optional
        Output array shape; the bounding box is trimmed to it.
    crpix : (x, y), optional
        0-based pixel of the fiducial (default: the lowest vertex lands on pixel 0, or on the
        pixel edge -0.5 with ``align_edges``).
    crval : (RA, Dec), optional
        World coordinates (degrees) of the fiducial (default: centre of the union).
    align_edges : bool
        False: stcal's numbers (the union spans output coordinates 0 .. extent, a half-pixel strip
        on the high side is lost). True: the union spans pixel edges -0.5 .. n - 0.5, n = ceil.

    Returns
    -------
    gwcs.WCS
        Two steps (``ref`` input frame -> ``ref`` output frame); ``bounding_box`` ((-0.5,
        nx - 0.5), (-0.5, ny - 0.5)) (or trimmed to the footprints for a user shape) and
        ``pixel_shape`` (nx, ny). Without ``transform`` the forward transform is a
        ``gwcs.FITSImagingWCSTransform`` with ``crpix`` (0-based), ``crval``, ``cdelt``, ``pc``.
    """
    fps = [_as_footprint(f, i) for i, f in enumerate(_as_list(footprints, "footprints"))]
    if transform is None:
        _require_wcs(ref_wcs, "ref_wcs")
    wcsinfo = wcsinfo_from(ref_wcsinfo)
    if crval is None:
        allv = np.vstack(fps)
        fiducial = _fiducial_from_lonlat(allv[:, 0], allv[:, 1])
    else:
        fiducial = _pair(crval, "crval")
    shape = None if shape is None else _pair(shape, "shape", integer=True)
    crpix = None if crpix is None else _pair(crpix, "crpix")
    if rotation is not None and not math.isfinite(float(rotation)):
        raise UserInputError(f"rotation must be finite degrees, got {rotation}")

    pc = cdelt = None
    if transform is None:
        v3y = math.radians(wcsinfo["v3yangle"])
        vparity = wcsinfo["vparity"]
        if rotation is None:
            roll = math.radians(wcsinfo["roll_ref"])
        else:
            roll = math.radians(float(rotation)) + vparity * v3y
        pc = np.reshape(calc_rotation_matrix(roll, v3y, vparity), (2, 2))
        if not pscale:
            pscale = compute_scale(
                ref_wcs, (wcsinfo["ra_ref"], wcsinfo["dec_ref"]), pscale_ratio=pscale_ratio
            )
        pscale = float(pscale)
        if not (math.isfinite(pscale) and pscale > 0):
            raise UserInputError(
                f"output pixel scale must be finite and > 0 degrees, got {pscale} "
                "(is (ra_ref, dec_ref) valid for ref_wcs?)"
            )
        cdelt = (pscale, pscale)
        work = (
            astmodels.AffineTransformation2D(matrix=pc)
            | astmodels.Scale(pscale) & astmodels.Scale(pscale)
            | astmodels.Pix2Sky_TAN()
            | astmodels.RotateNative2Celestial(fiducial[0], fiducial[1], 180.0)
        )
    else:
        if not isinstance(transform, Model) or transform.n_inputs != 2 or transform.n_outputs != 2:
            raise UserInputError("transform must be a 2-input, 2-output astropy model")
        try:
            transform.inverse  # noqa: B018 - probe
        except NotImplementedError as exc:
            raise UserInputError(
                "transform has no inverse; give one with an analytic inverse"
            ) from exc
        work = transform

    bbox, shape, offsets = _bbox_with_offsets(fps, work, fiducial, crpix, shape, align_edges)
    if any(d < 2 for d in shape):
        raise UserInputError(
            f"computed output shape {shape} (ny, nx) is too small (need >= 2 pixels per axis); "
            "check pscale/pscale_ratio, shape and crpix"
        )

    if transform is None:
        forward = _imaging_transform(offsets, fiducial, cdelt, pc)
    else:
        forward = (
            astmodels.Shift(-offsets[0], name="crpix1")
            & astmodels.Shift(-offsets[1], name="crpix2")
        ) | transform

    input_frame = output_frame = None
    if _kind(ref_wcs) == "gwcs":
        input_frame, output_frame = ref_wcs.input_frame, ref_wcs.output_frame
    if input_frame is None or output_frame is None:
        input_frame, output_frame = _default_frames()
    new = gwcs.WCS([(input_frame, forward), (output_frame, None)])
    new.bounding_box = bbox
    new.pixel_shape = shape[::-1]
    return new


def _model_wcs(item: Any, what: str) -> tuple[Any, Any]:
    """(wcs, wcsinfo or None) from a datamodel-like object, a (wcs, wcsinfo) pair or a WCS."""
    meta = getattr(item, "meta", None)
    if meta is not None and hasattr(meta, "wcs"):
        return meta.wcs, getattr(meta, "wcsinfo", None)
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    if _kind(item) in ("gwcs", "fits"):
        return item, None
    raise UserInputError(
        f"{what} must be a datamodel with meta.wcs/meta.wcsinfo, a (wcs, wcsinfo) pair or a WCS, "
        f"got {_describe(item)}"
    )


def _data_bbox(item: Any, w: Any):
    """Full-frame box of a datamodel's ``data`` when its WCS has no bounding box or pixel shape
    (what jwst's resample does before building the output WCS); None otherwise."""
    has_box = w.bounding_box is not None if _kind(w) == "gwcs" else w.pixel_bounds is not None
    if has_box or w.pixel_shape is not None:
        return None
    shape = getattr(getattr(item, "data", None), "shape", None)
    if shape is None or len(shape) < 2:
        return None
    return wcs_bbox_from_shape(shape)


def wcs_from_footprints(
    dmodels: Sequence,
    refmodel: Any = None,
    transform: Model | None = None,
    bounding_box: Sequence | None = None,
    pscale_ratio: float | None = None,
    pscale: float | None = None,
    rotation: float | None = None,
    shape: Sequence[int] | None = None,
    crpix: Sequence[float] | None = None,
    crval: Sequence[float] | None = None,
    *,
    align_edges: bool = False,
) -> gwcs.WCS:
    """Output WCS covering the footprints of a list of exposures (the seed docs' API).

    Parameters
    ----------
    dmodels : list
        Each a datamodel-like object with ``meta.wcs`` (gwcs or FITS WCS with a bounding box, a
        pixel shape, or a ``data`` array whose shape gives the full frame) and ``meta.wcsinfo``,
        a ``(wcs, wcsinfo_dict)`` pair, or a bare WCS.
    refmodel : optional
        Same kinds; gives the frames, the pixel scale (at its ``ra_ref, dec_ref``) and the
        orientation (``roll_ref, v3yangle, vparity``). Default: ``dmodels[0]``.
    transform : astropy model, optional
        The linear part, intermediate pixel offsets -> projection-plane degrees (the ``PC |
        Scale`` replacement). The output WCS is ``Shift(-crpix) | transform | TAN |
        RotateNative2Celestial(fiducial, 180)``; ``pscale``, ``pscale_ratio`` and ``rotation``
        are then ignored.
    bounding_box : ((xlo, xhi), (ylo, yhi)), optional
        Bounding box of the output WCS (output pixels), as the seed docs describe; the shape,
        unless given, is ``(int(yhi + 0.5), int(xhi + 0.5))``. Default: the union of the inputs.
    pscale_ratio, pscale, rotation, shape, crpix, crval, align_edges
        As :func:`wcs_from_sregions` (``crval``: RA, Dec of the fiducial).

    Returns
    -------
    gwcs.WCS
        Same numbers as stcal 1.20.0's ``wcs_from_sregions`` on the inputs' footprints (its
        deprecated ``wcs_from_footprints`` did exactly that).
    """
    items = _as_list(dmodels, "dmodels")
    pairs = [_model_wcs(m, f"dmodels[{i}]") for i, m in enumerate(items)]
    wcslist = _validate_wcs_list([p[0] for p in pairs], "dmodels wcs")
    ref_wcs, ref_info = pairs[0] if refmodel is None else _model_wcs(refmodel, "refmodel")
    _require_wcs(ref_wcs, "refmodel wcs")
    types = _check_same_frames([ref_wcs, *wcslist], "wcs")
    if types != ("SPATIAL", "SPATIAL"):
        raise UserInputError(f"wcs_from_footprints supports 2-D celestial WCSs, got {list(types)}")
    fps = [
        footprint(w, bounding_box=_data_bbox(m, w), what=f"dmodels[{i}] wcs")
        for i, (m, w) in enumerate(zip(items, wcslist, strict=True))
    ]

    full = None
    if transform is not None:
        if crval is None:
            allv = np.vstack(fps)
            fid = _fiducial_from_lonlat(allv[:, 0], allv[:, 1])
        else:
            fid = _pair(crval, "crval")
        full = (
            transform
            | astmodels.Pix2Sky_TAN()
            | astmodels.RotateNative2Celestial(fid[0], fid[1], 180.0)
        )
        crval = fid
    out_bbox = None
    if bounding_box is not None:
        out_bbox = _normalise_bbox(bounding_box, 2, "bounding_box")
        if shape is None:
            shape = (int(out_bbox[1][1] + 0.5), int(out_bbox[0][1] + 0.5))
    new = wcs_from_sregions(
        fps,
        ref_wcs,
        ref_info,
        transform=full,
        pscale_ratio=pscale_ratio,
        pscale=pscale,
        rotation=rotation,
        shape=shape,
        crpix=crpix,
        crval=crval,
        align_edges=align_edges,
    )
    if out_bbox is not None:
        new.bounding_box = out_bbox
    return new
