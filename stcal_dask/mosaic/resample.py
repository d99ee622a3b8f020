"""Drizzled mosaics as a dataflow over OUTPUT tiles (stcal 1.20.0's ``Resample``, tile by tile).

stcal's :class:`stcal.resample.Resample` drizzles whole exposures, one after the other, onto one
in-memory output image with :class:`drizzle.resample.Drizzle` (a running weighted mean, so an
output pixel's value depends on the order in which inputs are added). Here the output is cut into
tiles (the chunks of the output zarr arrays) and each tile is one task that

1. takes, in the **global input order**, every exposure the tile index says touches it,
2. reads only the rectangle of that exposure whose pixels can land on the tile (plus the two-pixel
   border drizzle's square kernel interpolates corners from) and the pixel map of that
   rectangle (:func:`stcal_dask.mosaic.alignment.calc_pixmap`, NaN outside the exposure's
   bounding box, as stcal; read from the exposure's whole map, :func:`write_pixmap`, computed
   once by one task per input, or computed for the rectangle alone), and drizzles it with
   ``drizzle`` onto a *window*: the tile plus a halo wider than the kernel's reach (drizzle
   only visits input pixels whose centres fall on its output array, so a pixel centred just
   outside the tile but overlapping it must still land on the window),
3. advances the context id for every exposure that does not touch it (context bits are numbered
   globally, exposure k sets bit k as in stcal),
4. combines the variances exactly as stcal does pixel by pixel, crops the window to the tile and
   writes the tile's block of every output array into the (partial) zarr store.

The tile index (which exposures reach which tile, and which input rectangle each needs) is built
once, one small task per exposure that maps a coarse grid of its pixels to the output. No task
allocates a full-mosaic array and no tile task reads more of an exposure than its rectangle.

Equality with stcal: the pixel map is bit-identical; the drizzle arrays start at the mosaic's
pixel (0, 0) (lazily allocated, only written pages exist), so drizzle's geometry rounds as on
stcal's whole mosaic. Along the output's OUTER edge, drizzle visits an input pixel centred within
a few hundredths of a pixel of the edge or not depending on the clip polygon it computes from the
whole rectangle it is given: a tile whose window reaches an outer side that clips an input
(:attr:`TileJob.whole`) gives drizzle that input's whole rectangle, with a pixel map exact on the
tile's rectangle and on every value the clip reads (:mod:`stcal_dask.mosaic.drizzle_clip`) and
NaN elsewhere, and zero weight outside its rectangle. The tests hold the results identical
(``tests/test_resample_oracle.py``, ``docs/mosaic.md``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stcal_dask.errors import UserInputError
from stcal_dask.mosaic import alignment as al
from stcal_dask.mosaic.params import (
    KERNELS,
    NON_CONSERVING_KERNELS,
    ResampleParams,
    good_bits_value,
)

__all__ = [
    "DEFAULT_MAX_OUTPUT_PIXELS",
    "KERNELS",
    "InputExposure",
    "PixelMapFile",
    "MosaicPlan",
    "ResampleParams",
    "TileJob",
    "build_tile_index",
    "choose_mosaic_tile",
    "drizzle_tile",
    "good_bits_value",
    "InputReach",
    "input_reach",
    "output_shape",
    "kernel_reach",
    "plan_mosaic",
    "read_input_exposure",
    "tile_grid",
    "write_pixmap",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_PIXELS = 2_000_000_000
"""Largest output (ny * nx) accepted without an explicit ``output_shape``: 2e9 pixels, about
40 GB of output arrays. An output WCS that asks for more is almost surely wrong (a bad pointing,
a degenerate footprint); jwst#5081 tried to allocate tens of TiB that way."""

VARIANCES = ("var_rnoise", "var_poisson", "var_flat")
"""stcal's ``Resample.variance_array_names`` (in its order)."""

_INDEX_STEP = 16
"""Input pixels between the grid points the tile index maps to the output (a tile's rectangle of
an input is a union of such cells: finer cells, less of the input drizzled twice)."""


def kernel_reach(params: ResampleParams, input_pixel: float, pixel_scale_ratio: float) -> float:
    """How far (output pixels) from an input pixel's mapped centre its kernel can deposit flux.

    ``input_pixel`` is the largest size of an input pixel in output pixels, ``pixel_scale_ratio``
    the ratio drizzle is given. Generous: the square pixel's half-diagonal, the turbo box, 2.5
    sigma of the gaussian (at least 1.2 input pixels, drizzle's floor), the lanczos support, plus
    half an output pixel.
    """
    pf = float(params.pixfrac)
    inv = 1.0 / float(pixel_scale_ratio)
    k = params.kernel
    if k == "point":
        r = 0.0
    elif k in ("square", "turbo"):
        r = max(input_pixel, inv) * pf * math.sqrt(0.5)
    elif k == "gaussian":
        r = max(2.5 * pf / 2.3548, 1.2) * inv
    else:
        order = 2 if k == "lanczos2" else 3
        r = max(order * pf, 1.2) * inv * 1.5
    return r + 1.0


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


class ZarrWindow:
    """Picklable lazy window source over one array of a zarr store (sliced on read)."""

    def __init__(self, store: str, name: str, shape: tuple[int, ...], dtype: str):
        self.store, self.name = store, name
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def __getitem__(self, key):
        import zarr

        return np.asarray(zarr.open_array(self.store, path=self.name, mode="r")[key])


class InputExposure(NamedTuple):
    """One input rate/cal product: its WCS, metadata and lazily read arrays (picklable)."""

    index: int
    """Position in the global input order (the context bit)."""
    path: str
    wcs: Any
    """gwcs with a bounding box."""
    shape: tuple[int, int]
    """(ny, nx)."""
    arrays: dict
    """name -> window source (``sci``, ``dq`` and whichever of ``err``, ``var_rnoise``,
    ``var_poisson``, ``var_flat`` the file has); slicing reads only that window."""
    units: str | None
    exposure_time: float | None
    """seconds (EFFEXPTM/EXPTIME), None when absent."""
    measurement_time: float | None
    """seconds (TMEASURE), None when absent."""
    pixelarea_steradians: float | None
    """nominal pixel area (PIXAR_SR), None when absent."""
    start_time: float | None = None
    end_time: float | None = None
    clip: Any = None
    """:class:`stcal_dask.mosaic.drizzle_clip.ClipReads` of this input on the output (set by
    :func:`plan_mosaic`): what a tile on an outer edge the input crosses needs to drizzle it
    with the whole exposure's clip, as stcal does."""


_FITS_EXT = {
    "sci": "SCI",
    "dq": "DQ",
    "err": "ERR",
    "var_rnoise": "VAR_RNOISE",
    "var_poisson": "VAR_POISSON",
    "var_flat": "VAR_FLAT",
}


def _number(*values) -> float | None:
    for v in values:
        if v is None:
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            return f
    return None


def _fits_meta(p: Path) -> tuple[dict, str | None]:
    from astropy.io import fits

    with fits.open(p, memmap=False) as hdul:
        keys = {}
        for hdu in hdul[:1] + [hdul[e] for e in ("SCI",) if e in hdul]:
            for k in ("EFFEXPTM", "EXPTIME", "TMEASURE", "PIXAR_SR", "EXPSTART", "EXPEND",
                      "NINTS", "NGROUPS", "TGROUP"):
                if k in hdu.header and k not in keys:
                    keys[k] = hdu.header[k]
        units = hdul["SCI"].header.get("BUNIT") if "SCI" in hdul else None
    return keys, units


def _exposure_time(keys: dict) -> float | None:
    t = _number(keys.get("EFFEXPTM"), keys.get("EXPTIME"))
    if t is None:
        n, g, tg = (_number(keys.get(k)) for k in ("NINTS", "NGROUPS", "TGROUP"))
        if n and g and tg and g > 1:
            t = n * (g - 1) * tg
    return t if t is not None and t > 0 else None


def read_input_exposure(path, index: int = 0) -> InputExposure:
    """Read one input's WCS and metadata and set up lazy window readers of its arrays.

    Inputs are JWST FITS rate/cal files (gwcs in the ASDF extension; SCI, DQ, ERR, VAR_*) or
    zarr rate stores (``wcs_asdf`` attribute; ``sci``, ``dq``, ``err``, ``var_*`` arrays). Raises
    :class:`UserInputError` (one line) for a missing WCS, a missing SCI/DQ array or 3-D data.
    """
    from stcal_dask.mosaic.wcs import read_exposure_wcs

    exp = read_exposure_wcs(path)
    p = Path(exp.path)
    arrays: dict[str, Any] = {}
    if p.is_dir():
        import zarr

        group = zarr.open_group(str(p), mode="r")
        attrs = {str(k).upper(): v for k, v in dict(group.attrs).items()}
        keys = attrs
        units = None
        for name in _FITS_EXT:
            if name in group:
                a = group[name]
                arrays[name] = ZarrWindow(str(p), name, a.shape, str(a.dtype))
                if name == "sci":
                    units = dict(a.attrs).get("units")
    else:
        from stcal_dask.io.fits_open import image_source

        keys, units = _fits_meta(p)
        for name, ext in _FITS_EXT.items():
            src = image_source(p, ext, "input", required=False)
            if src is not None:
                arrays[name] = src
    # an ImageModel writes an absent array as an empty extension (NAXIS = 0): not there
    arrays = {n: a for n, a in arrays.items() if len(a.shape) and math.prod(a.shape)}
    for name in ("sci", "dq"):
        if name not in arrays:
            raise UserInputError(f"input {p} has no {name.upper()} array")
    shape = tuple(int(s) for s in arrays["sci"].shape)
    if len(shape) != 2:
        raise UserInputError(
            f"input {p}: SCI has shape {shape}; the mosaic needs 2-D rate or cal images"
        )
    for name, src in arrays.items():
        if tuple(src.shape) != shape:
            raise UserInputError(
                f"input {p}: {name.upper()} has shape {tuple(src.shape)}, SCI has {shape}"
            )
    if exp.shape is not None and tuple(exp.shape) != shape:
        raise UserInputError(f"input {p}: the WCS is for shape {exp.shape}, SCI has {shape}")
    return InputExposure(
        index=int(index),
        path=str(p),
        wcs=exp.wcs,
        shape=shape,
        arrays=arrays,
        units=None if units is None else str(units),
        exposure_time=_exposure_time(keys),
        measurement_time=_number(keys.get("TMEASURE")),
        pixelarea_steradians=_number(keys.get("PIXAR_SR")),
        start_time=_number(keys.get("EXPSTART")),
        end_time=_number(keys.get("EXPEND")),
    )


# ---------------------------------------------------------------------------------------------
# Output tiles and the tile index
# ---------------------------------------------------------------------------------------------


def tile_grid(shape: Sequence[int], tile: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """Row-major list of tiles ``(y0, y1, x0, x1)`` (ends exclusive) covering ``shape``."""
    ny, nx = (int(s) for s in shape)
    ty, tx = (int(t) for t in tile)
    return [
        (y0, min(y0 + ty, ny), x0, min(x0 + tx, nx))
        for y0 in range(0, ny, ty)
        for x0 in range(0, nx, tx)
    ]


def choose_mosaic_tile(
    shape: Sequence[int], memory_budget_bytes: int, n_inputs: int = 1, *, minimum: int = 256
) -> tuple[int, int]:
    """Square output tile from a per-task memory budget (bytes).

    A tile task holds, per output pixel of its window: sci, wht (float32), the context planes
    (int32 each 32 inputs), per variance the drizzled error, its running sum and weight (float32)
    and a float64 weight; and per input pixel it reads about 40 bytes (data, dq, weight, two
    variances, float64 pixel map): about 140 bytes per output pixel at equal pixel scales.
    """
    ny, nx = (int(s) for s in shape)
    per_pixel = 140 + 4 * (n_inputs // 32 + 1)
    side = int(math.sqrt(max(memory_budget_bytes, 1) / per_pixel))
    side = max(minimum, min(4096, side))
    side = (side // 64) * 64 or minimum
    return (min(side, ny), min(side, nx))


class TileJob(NamedTuple):
    """What one tile task drizzles: its tile, window, and the input rectangles in global order."""

    tile: tuple[int, int, int, int]
    """(y0, y1, x0, x1) in the output."""
    window: tuple[int, int, int, int]
    """The tile plus the halo, clipped to the output."""
    regions: tuple[tuple[int, tuple[int, int, int, int]], ...]
    """(input index, (y0, y1, x0, x1) input pixels to drizzle), input indices increasing."""
    whole: tuple[int, ...] = ()
    """Inputs drizzled with the whole exposure's clip (the window reaches an outer side of the
    output that clips them): drizzle then visits exactly stcal's pixels along that side."""


def _grid(n: int, step: int) -> np.ndarray:
    g = np.arange(0, n, step, dtype=np.float64)
    if g[-1] != n - 1:
        g = np.append(g, n - 1)
    return g


def _cell_boxes(
    wcs, out_wcs, shape: tuple[int, int], step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Map a coarse grid of an input to the output; per grid cell its input and output boxes.

    Returns (input boxes (n, 4) [y0, y1, x0, x1] ends exclusive, output boxes (n, 4) [ymin, ymax,
    xmin, xmax] of the cell's mapped corners, valid mask (n,), largest input pixel size in output
    pixels); cells in row-major order.
    """
    ny, nx = shape
    gy, gx = _grid(ny, step), _grid(nx, step)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    # no input bounding box here: coordinates everywhere (the drizzle itself honours the box)
    ox, oy = al.reproject(wcs, out_wcs)(xx, yy)
    # the four corners of every cell (j, i): grid points [j:j+2, i:i+2]
    cx = np.stack([ox[:-1, :-1], ox[:-1, 1:], ox[1:, :-1], ox[1:, 1:]])
    cy = np.stack([oy[:-1, :-1], oy[:-1, 1:], oy[1:, :-1], oy[1:, 1:]])
    valid = np.isfinite(cx).all(axis=0) & np.isfinite(cy).all(axis=0)
    nj, ni = valid.shape
    jj, ii = np.meshgrid(np.arange(nj), np.arange(ni), indexing="ij")
    in_boxes = np.stack([gy[jj], gy[jj + 1] + 1, gx[ii], gx[ii + 1] + 1], axis=-1)
    with np.errstate(invalid="ignore"):
        out_boxes = np.stack([cy.min(axis=0), cy.max(axis=0), cx.min(axis=0), cx.max(axis=0)],
                             axis=-1)
    out_boxes[~valid] = np.nan
    size = 0.0
    if valid.any():
        dx = np.maximum(np.diff(gx), 1.0)[ii]
        dy = np.maximum(np.diff(gy), 1.0)[jj]
        along_x = np.hypot(cx[1] - cx[0], cy[1] - cy[0]) / dx
        along_y = np.hypot(cx[2] - cx[0], cy[2] - cy[0]) / dy
        size = float(max(along_x[valid].max(), along_y[valid].max()))
    return (in_boxes.reshape(-1, 4).astype(np.int64), out_boxes.reshape(-1, 4),
            valid.reshape(-1), size)


class InputReach(NamedTuple):
    """Where one input lands on the output (:func:`input_reach`)."""

    in_boxes: np.ndarray
    """(n, 4) [y0, y1, x0, x1] input grid cells (ends exclusive)."""
    out_boxes: np.ndarray
    """(n, 4) [ymin, ymax, xmin, xmax] of each cell's mapped corners (output pixels)."""
    valid: np.ndarray
    """(n,) bool: the cell maps to finite coordinates."""
    size: float
    """Largest input pixel size in output pixels."""
    clip: Any = None
    """:class:`stcal_dask.mosaic.drizzle_clip.ClipReads`, sides only (None without an output
    shape)."""


def output_shape(out_wcs) -> tuple[int, int] | None:
    """(ny, nx) of the output: its ``array_shape``, else from its bounding box, else None."""
    if out_wcs.array_shape is not None:
        return tuple(int(s) for s in out_wcs.array_shape)
    if out_wcs.bounding_box is None:
        return None
    (_, xhi), (_, yhi) = out_wcs.bounding_box.bounding_box(order="F")
    return (int(yhi + 0.5), int(xhi + 0.5))


def input_reach(in_wcs, out_wcs, shape, step: int = _INDEX_STEP) -> InputReach:
    """One index task: the grid cells of one input in the output frame (small arrays), and the
    pixel-map values drizzle's clip of the whole input reads
    (:func:`stcal_dask.mosaic.drizzle_clip.clip_reads`)."""
    from stcal_dask.mosaic.drizzle_clip import clip_reads

    in_boxes, out_boxes, valid, size = _cell_boxes(in_wcs, out_wcs, shape, step)
    oshape = output_shape(out_wcs)
    clip = None
    if oshape is not None:
        to = al.without_bounding_box(out_wcs)
        ob = out_boxes[valid]
        reach = (True,) * 4
        if len(ob):  # pixel centres within a pixel of an outer side, or beyond it
            reach = (ob[:, 2].min() < 0.5, ob[:, 3].max() > oshape[1] - 1.5,
                     ob[:, 0].min() < 0.5, ob[:, 1].max() > oshape[0] - 1.5)
        clip = clip_reads(
            al.pixel_mapper(in_wcs, to),
            tuple(shape), _resample_range(tuple(shape), _bbox_f(in_wcs)), oshape,
            unclipped_sides=reach, sides_only=True,
        )
    return InputReach(in_boxes, out_boxes, valid, size, clip)


def build_tile_index(
    cells: Sequence[tuple],
    shapes: Sequence[tuple[int, int]],
    out_shape: tuple[int, int],
    tile: Sequence[int],
    halo: int,
    slack: float,
) -> list[TileJob]:
    """Which inputs touch which tile, and the rectangle of each input a tile needs.

    ``cells[k]`` is :func:`input_reach`'s result for input k; an input's grid cell is needed by
    a tile when the cell's mapped box, widened by ``slack`` output pixels (the curvature of the
    map inside a cell), meets the tile's window (tile + ``halo``, which holds the kernel's
    reach). The rectangle is the bounding box of the needed cells. The tiles are
    :func:`tile_grid`'s for ``tile`` (ny, nx), in its order.

    The windows' edges only grow along a row (column) of tiles, so the tiles a cell meets are a
    range of tile rows times a range of tile columns, found by binary search with the same
    comparisons as testing each window; the rectangles are then reduced over (cell, tile) pairs
    at once per input, not tile by tile.
    """
    ny, nx = out_shape
    ty, tx = (int(t) for t in tile)
    y0s, x0s = np.arange(0, ny, ty), np.arange(0, nx, tx)
    # window edges of each tile row / column (non-decreasing), as the comparisons use them
    wy_lo = np.maximum(0, y0s - halo) - 0.5
    wy_hi = np.minimum(ny, np.minimum(y0s + ty, ny) + halo) - 0.5
    wx_lo = np.maximum(0, x0s - halo) - 0.5
    wx_hi = np.minimum(nx, np.minimum(x0s + tx, nx) + halo) - 0.5
    ncol = len(x0s)
    ntiles = len(y0s) * ncol
    regions: list[list] = [[] for _ in range(ntiles)]
    whole: list[list] = [[] for _ in range(ntiles)]
    for k, cell in enumerate(cells):
        in_boxes, out_boxes, valid = cell[0], cell[1], cell[2]
        if not valid.any():
            continue
        ob, ib = out_boxes[valid], in_boxes[valid]
        # a cell meets row r when ob[1] + slack >= wy_lo[r] and ob[0] - slack <= wy_hi[r]
        r0 = np.searchsorted(wy_hi, ob[:, 0] - slack, side="left")
        r1 = np.searchsorted(wy_lo, ob[:, 1] + slack, side="right")
        c0 = np.searchsorted(wx_hi, ob[:, 2] - slack, side="left")
        c1 = np.searchsorted(wx_lo, ob[:, 3] + slack, side="right")
        nr, nc = np.maximum(r1 - r0, 0), np.maximum(c1 - c0, 0)
        count = nr * nc
        if not count.any():
            continue
        cell_of = np.repeat(np.arange(len(count)), count)
        offset = np.arange(cell_of.size) - np.repeat(np.cumsum(count) - count, count)
        tile_of = (r0[cell_of] + offset // nc[cell_of]) * ncol + c0[cell_of] + offset % nc[cell_of]
        order = np.argsort(tile_of, kind="stable")
        tile_of, cell_of = tile_of[order], cell_of[order]
        first = np.flatnonzero(np.r_[True, tile_of[1:] != tile_of[:-1]])
        box = ib[cell_of]
        lo = np.minimum.reduceat(box[:, [0, 2]], first)
        hi = np.maximum.reduceat(box[:, [1, 3]], first)
        iy, ix = shapes[k]
        clip = cell[4] if len(cell) > 4 else None
        for t, (by0, bx0), (by1, bx1) in zip(tile_of[first].tolist(), lo.tolist(), hi.tolist(),
                                             strict=True):
            regions[t].append((k, (max(0, by0), min(iy, by1), max(0, bx0), min(ix, bx1))))
            if clip is not None:
                r, c = divmod(t, ncol)
                touches = (wx_lo[c] < 0, wx_hi[c] == nx - 0.5, wy_lo[r] < 0,
                           wy_hi[r] == ny - 0.5)
                if any(a and b for a, b in zip(clip.sides, touches, strict=True)):
                    whole[t].append(k)
    jobs = []
    for t, (y0, y1, x0, x1) in enumerate(tile_grid(out_shape, (ty, tx))):
        win = (max(0, y0 - halo), min(ny, y1 + halo), max(0, x0 - halo), min(nx, x1 + halo))
        jobs.append(TileJob((y0, y1, x0, x1), win, tuple(regions[t]), tuple(whole[t])))
    return jobs


# ---------------------------------------------------------------------------------------------
# The tile task
# ---------------------------------------------------------------------------------------------


def _resample_range(shape, bbox) -> tuple[int, int, int, int]:
    """Input pixels drizzle may use (stcal's ``resample_range``): xmin, xmax, ymin, ymax."""
    ny, nx = shape
    if bbox is None:
        return 0, max(nx - 1, 0), 0, max(ny - 1, 0)
    (x1, x2), (y1, y2) = bbox
    xmin = max(0, int(x1 + 0.5))
    ymin = max(0, int(y1 + 0.5))
    xmax = max(xmin, min(nx - 1, int(x2 + 0.5)))
    ymax = max(ymin, min(ny - 1, int(y2 + 0.5)))
    return xmin, xmax, ymin, ymax


def _bbox_f(wcs):
    bb = wcs.bounding_box
    if bb is None:
        return None
    try:
        return bb.bounding_box(order="F")
    except AttributeError:
        return tuple(bb)


def _driz_weight(exp: InputExposure, dq, rnoise, weight_type: str, good_bits) -> np.ndarray:
    """stcal's ``build_driz_weight`` on a window: DQ mask times 1/var_rnoise or the time."""
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    dqmask = bitfield_to_boolean_mask(dq, good_bits, good_mask_value=1, dtype=np.uint8)
    if weight_type == "ivm":
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / rnoise
        inv[~np.isfinite(inv)] = 0
        result = inv * dqmask
    else:
        t = exp.measurement_time if exp.measurement_time is not None else exp.exposure_time
        result = np.float32(t) * dqmask
    return result.astype(np.float32)


def _lazy_zeros(shape, dtype) -> np.ndarray:
    """A zero-filled array whose memory pages exist only once written (an anonymous mapping:
    the operating system hands out zero pages on first touch)."""
    import mmap

    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buf = mmap.mmap(-1, max(n, 1))
    return np.frombuffer(buf, dtype=dtype, count=n // np.dtype(dtype).itemsize).reshape(shape)


def _fill_value(fillval) -> np.float32:
    """Drizzle's initial output value for ``fillval`` (NaN for None, INDEF or NAN)."""
    if fillval is None or str(fillval).strip().upper() in ("INDEF", "NAN"):
        return np.float32(np.nan)
    return np.float32(float(fillval))


class _TileState:
    """Per-tile accumulators (drizzles over the window, tile-sized variance sums).

    The drizzles' output arrays start at the mosaic's pixel (0, 0) and end at the window's far
    corner, so the pixel map is the mosaic's own, unshifted: drizzle's geometry (pixel corners,
    overlap areas) then rounds exactly as stcal's does on the whole mosaic, which it does not
    with coordinates relative to the window (a few ulp in a few pixels far from the origin).
    Only the pages those arrays' written pixels lie in are ever allocated (:func:`_lazy_zeros`:
    the window, plus whatever input pixels of the tile's regions fall outside it), so the
    memory stays that of the window. Where the system refuses such a mapping (strict
    overcommit accounting), the arrays cover the window alone and the pixel map is shifted by
    :attr:`origin` (exact, but drizzle may then round a few pixels a few ulp differently)."""

    def __init__(self, job: TileJob, params: ResampleParams, n_inputs: int, variances,
                 out_shape: tuple[int, int] | None = None):
        wy0, wy1, wx0, wx1 = job.window
        ty0, ty1, tx0, tx1 = job.tile
        tshape = (ty1 - ty0, tx1 - tx0)
        self.kernel = params.kernel
        self.fill = _fill_value(params.fillval)
        planes = (max(n_inputs - 1, 0) // 32 + 1) if params.enable_ctx else 0
        # a tile that drizzles inputs with their whole clip needs the output's outer sides
        far = tuple(out_shape) if job.whole and out_shape is not None else (wy1, wx1)
        for lazy, (oy, ox) in ((True, (0, 0)), (False, (wy0, wx0))):
            self.lazy = lazy
            self.origin = (oy, ox)
            self.wshape = (far[0] - oy, far[1] - ox) if lazy else (wy1 - oy, wx1 - ox)
            self.window = (slice(wy0 - oy, wy1 - oy), slice(wx0 - ox, wx1 - ox))
            self.crop = (slice(ty0 - oy, ty1 - oy), slice(tx0 - ox, tx1 - ox))
            try:
                self.driz = self.drizzle(self.fill, ctx_planes=planes)
                break
            except (OSError, MemoryError):
                if not lazy:
                    raise
        self.ctx = bool(params.enable_ctx)
        self.driz_err = None
        if params.compute_err == "driz_err":
            self.driz_err = self.drizzle(self.fill)
        self.var = {
            name: {
                "wsum": np.full(tshape, np.nan, dtype=np.float32),
                "wt": np.zeros(tshape, dtype=np.float32),
            }
            for name in variances
        }

    def drizzle(self, fill: np.float32, ctx_planes: int = 0):
        """A ``drizzle.resample.Drizzle`` onto lazily allocated arrays of :attr:`wshape`, the
        window initialised to ``fill`` (pixels outside it are cropped away, never read)."""
        from drizzle.resample import Drizzle

        from stcal_dask.engine.threads import small_pages

        img = (_lazy_zeros if self.lazy else np.zeros)(self.wshape, np.float32)
        img[self.window] = fill
        # weights and context: drizzle's own np.zeros (calloc: large ones are fresh, lazily
        # zero-filled mappings too, in 4 KiB pages); given arrays of them, it would check their
        # consistency with whole-array temporaries
        with small_pages():
            return Drizzle(
                kernel=self.kernel,
                fillval="INDEF",  # the image given is used as it is
                out_img=img,
                begin_ctx_id=0,
                max_ctx_id=max(ctx_planes * 32 - 1, 0),
                disable_ctx=not ctx_planes,
            )


class PixelMapFile(NamedTuple):
    """An input's whole pixel map on disk (:func:`write_pixmap`)."""

    path: str
    clip: Any = None
    """:class:`stcal_dask.mosaic.drizzle_clip.ClipReads` with the values drizzle's clip of the
    whole input reads (None when no output side clips the input)."""


def _clip_values(exp: InputExposure, out_shape, fetch):
    """``exp.clip`` completed with the pixel-map values drizzle's clip reads (None when no
    side clips the input)."""
    from stcal_dask.mosaic.drizzle_clip import clip_reads

    if exp.clip is None or not any(exp.clip.sides):
        return None
    full = clip_reads(fetch, tuple(exp.shape), _resample_range(exp.shape, _bbox_f(exp.wcs)),
                      out_shape, exp.clip.sides)
    return None if full is None else full._replace(sides=exp.clip.sides)


def write_pixmap(exp: InputExposure, out_wcs, path, rows: int = 32) -> PixelMapFile:
    """One input's whole pixel map, computed once, into a ``.npy`` file (float64,
    (ny, nx, 2)) that tile tasks read their rectangles of (:func:`drizzle_tile`'s ``pixmaps``).

    Computed ``rows`` input rows at a time (the WCS evaluation's temporaries stay small); each
    value equals :func:`stcal_dask.mosaic.alignment.calc_pixmap`'s for that pixel. When an
    output side clips the input, the values drizzle's clip of the whole input reads are taken
    from the file too (:func:`stcal_dask.mosaic.drizzle_clip.clip_reads`).
    """
    from stcal_dask.engine.threads import limit_threads, trim_heap

    limit_threads()  # astropy's affine transforms are matrix products: one BLAS thread
    out_shape = output_shape(out_wcs)
    out_wcs = al.without_bounding_box(out_wcs)
    ny, nx = exp.shape
    mapper = al.pixel_mapper(exp.wcs, out_wcs)  # the transforms built once, not per block
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (ny, nx, 2)})
        for y0 in range(0, ny, rows):
            y1 = min(ny, y0 + rows)
            block = al.calc_pixmap(exp.wcs, out_wcs, exp.shape, region=(y0, y1, 0, nx),
                                   mapper=mapper)
            f.write(np.ascontiguousarray(block, dtype="<f8").tobytes())
            del block
    result = PixelMapFile(str(path), _clip_values(exp, out_shape, _file_values(str(path))))
    trim_heap()
    return result


def _file_values(path: str):
    """``fetch(x, y)`` of pixel-map values from a :func:`write_pixmap` file."""

    def fetch(x, y):
        mapped = np.load(path, mmap_mode="r")
        try:
            v = np.array(mapped[np.asarray(y, np.intp), np.asarray(x, np.intp)])
        finally:
            del mapped
        return v[:, 0], v[:, 1]

    return fetch


def _read_pixmap(path: str, region: tuple[int, int, int, int]) -> np.ndarray:
    """The rectangle ``(y0, y1, x0, x1)`` of a :func:`write_pixmap` file, read row by row into
    one array (a memory map of the file would also map, for every row touched, the pages
    around the rectangle's part of it: about the whole width of those rows)."""
    y0, y1, x0, x1 = region
    with open(path, "rb") as f:
        fmt = np.lib.format
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran, dtype = read(f)
        if fortran or np.dtype(dtype) != np.dtype("<f8") or len(shape) != 3:
            raise ValueError(f"{path}: not a pixel-map file")
        start = f.tell()
        nx = int(shape[1])
        out = np.empty((y1 - y0, x1 - x0, 2), dtype=np.float64)
        row_bytes = (x1 - x0) * 16
        for r in range(y1 - y0):
            f.seek(start + ((y0 + r) * nx + x0) * 16)
            if f.readinto(out[r]) != row_bytes:
                raise ValueError(f"{path}: pixel-map file is truncated")
    return out


def _as_drizzled(a: np.ndarray) -> np.ndarray:
    return a


class _WholeInput:
    """Drizzle one input's rectangle as part of the whole exposure (stcal's clip).

    Arrays of the input's full shape: the rectangle's data (and, for the weights, only the
    pixels to drizzle; zero weight elsewhere adds nothing, not even a context bit) in lazily
    allocated zero pages; the pixel map exact on the rectangle and on the values drizzle's
    clip reads (:class:`stcal_dask.mosaic.drizzle_clip.ClipReads`), NaN elsewhere so drizzle
    passes over those pixels at once. Given the whole rectangle stcal gives it, drizzle then
    clips the input exactly as on stcal's whole mosaic.
    """

    def __init__(self, exp: InputExposure, clip, mapped, drizzled):
        self.shape = tuple(exp.shape)
        self.clip = clip
        self.exp = exp
        py0, py1, px0, px1 = mapped
        self.win = (slice(py0, py1), slice(px0, px1))
        ry0, ry1, rx0, rx1 = drizzled
        self.region = (slice(ry0, ry1), slice(rx0, rx1))
        self.inner = (slice(ry0 - py0, ry1 - py0), slice(rx0 - px0, rx1 - px0))

    def __call__(self, a: np.ndarray) -> np.ndarray:
        out = _lazy_zeros(self.shape, np.float32)
        out[self.win] = a
        return out

    def kwargs(self, pixmap: np.ndarray, weight: np.ndarray) -> dict:
        full = np.full(self.shape + (2,), np.nan)
        c = self.clip
        full[c.pixels[:, 0], c.pixels[:, 1]] = c.values
        full[self.win] = pixmap
        w = _lazy_zeros(self.shape, np.float32)
        w[self.region] = weight[self.inner]
        xmin, xmax, ymin, ymax = _resample_range(self.shape, _bbox_f(self.exp.wcs))
        return {"pixmap": full, "weight_map": w, "xmin": xmin, "xmax": xmax, "ymin": ymin,
                "ymax": ymax}


_SKIP_PIXMAP = np.dstack(np.indices((2, 2), dtype=np.float64)[::-1])
_SKIP_DATA = np.zeros((2, 2), dtype=np.float32)


def _skip(state: _TileState, exptime: float) -> None:
    """Advance the context id past an input that does not touch the tile (nothing drizzled)."""
    if not state.ctx:
        return
    # zero weights: drizzle returns before touching any output pixel or context bit
    state.driz.add_image(
        _SKIP_DATA, exptime=exptime, pixmap=_SKIP_PIXMAP, weight_map=_SKIP_DATA
    )


def drizzle_tile(
    job: TileJob,
    exposures: Sequence[InputExposure],
    out_wcs,
    params: ResampleParams,
    pixel_scale_ratio: float,
    variances: Sequence[str],
    pixmaps: dict | None = None,
) -> dict[str, np.ndarray]:
    """Drizzle every input region of ``job`` in global order; the tile's output arrays.

    Parameters
    ----------
    job : TileJob
    exposures : all inputs, in global order (``exposures[k].index == k``).
    out_wcs : the output gwcs.
    params : ResampleParams
    pixel_scale_ratio : output / first input's pixel scale (stcal's ``pixel_scale_ratio``).
    variances : names of the variance arrays to drizzle (each input has them, or the output of
        that variance is all NaN as in stcal).
    pixmaps : input index -> :class:`PixelMapFile` of its whole pixel map (:func:`write_pixmap`),
        read instead of evaluating the WCSs here (inputs not in it are mapped here).

    Returns
    -------
    dict of tile-sized arrays (ny_t, nx_t): ``sci``, ``wht`` (float32); ``con`` (int32,
    (planes, ny_t, nx_t)) when ``enable_ctx``; each variance (float32) when drizzled; ``err``
    (float32) when ``compute_err`` is set.
    """
    from stcal_dask.engine.threads import lean_memory, limit_threads

    limit_threads()
    lean_memory()  # large temporaries are given back when freed
    out_shape = output_shape(out_wcs)
    # (a map computed here goes through al.pixel_mapper, which leaves the output's bounding box
    # out itself: no copy of the output WCS per tile)
    state = _TileState(job, params, len(exposures), variances, out_shape)
    good_bits = params.good_bits_int
    regions = dict(job.regions)
    iscale = 1.0
    for exp in exposures:
        k = exp.index
        exptime = exp.exposure_time if exp.exposure_time is not None else 1.0
        if k not in regions:
            _skip(state, exptime)
            continue
        ry0, ry1, rx0, rx1 = regions[k]
        ny, nx = exp.shape
        # the square kernel interpolates a pixel's corners from its neighbours only when it is
        # >= 1 pixel from the map's first and >= 2 from its last row/column: keep 2 more pixels
        # of map (but not of drizzled pixels) so interior pixels take the same path as stcal's
        py0, py1 = max(0, ry0 - 2), min(ny, ry1 + 2)
        px0, px1 = max(0, rx0 - 2), min(nx, rx1 + 2)
        xmin, xmax, ymin, ymax = _resample_range(exp.shape, _bbox_f(exp.wcs))
        xmin, xmax = max(xmin, rx0), min(xmax, rx1 - 1)
        ymin, ymax = max(ymin, ry0), min(ymax, ry1 - 1)
        if xmin > xmax or ymin > ymax:
            _skip(state, exptime)
            continue
        win = (slice(py0, py1), slice(px0, px1))
        data = np.asarray(exp.arrays["sci"][win])
        dq = np.asarray(exp.arrays["dq"][win])
        var = {n: np.asarray(exp.arrays[n][win]) for n in variances if n in exp.arrays}
        rnoise = var.get("var_rnoise")
        if rnoise is None and params.weight_type == "ivm":
            rnoise = np.asarray(exp.arrays["var_rnoise"][win])
        weight = _driz_weight(exp, dq, rnoise, params.weight_type, good_bits)
        entry = pixmaps.get(k) if pixmaps else None
        if entry is not None:
            pixmap = _read_pixmap(entry.path, (py0, py1, px0, px1))
        else:
            pixmap = al.calc_pixmap(exp.wcs, out_wcs, exp.shape, region=(py0, py1, px0, px1))
        if state.origin != (0, 0):
            pixmap[..., 0] -= state.origin[1]
            pixmap[..., 1] -= state.origin[0]
        kwargs = {
            "exptime": exptime,
            "pixmap": pixmap,
            "pixel_scale_ratio": pixel_scale_ratio,
            "iscale": iscale,
            "weight_map": weight,
            "wht_scale": 1.0,
            "pixfrac": params.pixfrac,
            "in_units": "cps",
            "xmin": xmin - px0,
            "xmax": xmax - px0,
            "ymin": ymin - py0,
            "ymax": ymax - py0,
        }
        frame = _as_drizzled
        if k in job.whole and exp.clip is not None and state.origin == (0, 0):
            if entry is not None:
                clip = entry.clip
            else:  # no pixel-map file: the values the clip reads are evaluated here
                clip = _clip_values(exp, out_shape, al.pixel_mapper(exp.wcs, out_wcs))
            if clip is not None:
                frame = _WholeInput(exp, clip, (py0, py1, px0, px1), (ry0, ry1, rx0, rx1))
                kwargs.update(frame.kwargs(pixmap, weight))
        state.driz.add_image(frame(data), **kwargs)
        if state.driz_err is not None:
            state.driz_err.add_image(frame(np.asarray(exp.arrays["err"][win])), **kwargs)
        if variances:
            _add_variances(state, exp, var, params, kwargs, frame)
    return _finish(state, params, pixel_scale_ratio, variances)


def _finite_box(img: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest rectangle holding every finite pixel of ``img`` (None when there is none)."""
    ok = np.isfinite(img)
    rows = np.flatnonzero(ok.any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(ok.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _union_box(a, b):
    if a is None or b is None:
        return a or b
    return (slice(min(a[0].start, b[0].start), max(a[0].stop, b[0].stop)),
            slice(min(a[1].start, b[1].start), max(a[1].stop, b[1].stop)))


def _add_variances(state: _TileState, exp, var: dict, params, kwargs, frame) -> None:
    """stcal's ``resample_variance_arrays`` on one window (cropped to the tile).

    A fresh drizzle per variance leaves every tile pixel the input does not reach NaN, which
    the combination skips; so it runs on the rectangle of the tile that the input reaches (the
    union of its variances' finite pixels), not on the whole tile: the same values."""
    drizzled = {}
    box = None
    for name, v in var.items():
        d = state.drizzle(np.float32(np.nan))
        d.add_image(data=frame(np.sqrt(v)), **kwargs)
        # the tile's part copied out and the drizzle's window-sized arrays freed at once
        drizzled[name] = np.array(d.out_img[state.crop])
        del d
        box = _union_box(box, _finite_box(drizzled[name]))
    if box is None:
        return
    # every step is pixel by pixel: combined in blocks of rows, the float64 temporaries stay a
    # few MiB (the values are those of the whole rectangle at once)
    rows = range(box[0].start, box[0].stop)
    for r0 in range(0, len(rows), _COMBINE_ROWS):
        block = (slice(rows[r0], rows[min(r0 + _COMBINE_ROWS, len(rows)) - 1] + 1), box[1])
        _combine_variances(state, exp, {n: img[block] for n, img in drizzled.items()}, params,
                           block)


_COMBINE_ROWS = 64
"""Rows of a tile combined at a time by :func:`_add_variances`."""


def _combine_variances(state: _TileState, exp, drizzled: dict, params, box) -> None:
    """Add one input's drizzled standard deviations (``drizzled``: name -> the ``box`` of the
    tile) into the tile's weighted variance sums, as stcal's ``resample_variance_arrays``.

    The same arithmetic on the pixels stcal updates (a finite, non-negative variance and a
    positive weight): the float32 squares, the float64 weight (ivm: the float32 reciprocal of
    the read-noise variance), the float64 term ``var * w * w`` added to the float32 sum, each
    taken as 0 where it is NaN (stcal's ``nansum`` of the pair: the same sum, one rounding to
    float32), and ``w`` added to the float32 weight sum (in float64, one rounding). Computed on
    the whole block and stored where stcal updates (``np.copyto``): a few dense passes instead
    of gathering and scattering those pixels (several times slower per pixel)."""
    driz_var = {name: img ** 2 for name, img in drizzled.items()}
    shape = next(iter(driz_var.values())).shape
    if params.weight_type == "ivm":
        rn = driz_var.get("var_rnoise")
        if rn is None:
            return  # zero weight everywhere: stcal updates no pixel
        good = (rn > 0) & np.isfinite(rn)
        with np.errstate(divide="ignore", invalid="ignore"):
            weight = np.where(good, np.reciprocal(rn), np.float32(0)).astype(np.float64)
    else:
        t = exp.measurement_time if exp.measurement_time is not None else exp.exposure_time
        weight = np.full(shape, t, dtype=np.float64)
    positive = weight > 0
    for name, v in driz_var.items():
        update = (v >= 0) & np.isfinite(v) & positive
        wsum = state.var[name]["wsum"][box]  # views: np.copyto writes through
        wt = state.var[name]["wt"][box]
        with np.errstate(all="ignore"):
            term = v * weight * weight
            term[np.isnan(term)] = 0.0
            total = wsum.astype(np.float64)
            total[np.isnan(total)] = 0.0
            total += term
            np.copyto(wsum, total, casting="same_kind", where=update)
            np.copyto(wt, wt + weight, casting="same_kind", where=update)


def _finish(state: _TileState, params, psr: float, variances) -> dict[str, np.ndarray]:
    crop = state.crop
    out = {
        "sci": np.ascontiguousarray(state.driz.out_img[crop]),
        "wht": np.ascontiguousarray(state.driz.out_wht[crop]),
    }
    if params.enable_ctx:
        out["con"] = np.ascontiguousarray(state.driz.out_ctx[(slice(None),) + crop])
    # a numpy float64 as in stcal (its ratio comes out of np.rad2deg): the float32 sums are then
    # scaled in float64 and rounded once
    psr = np.float64(psr)
    scaling_var = 1.0 / psr**2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "invalid value*", RuntimeWarning)
        warnings.filterwarnings("ignore", "divide by zero*", RuntimeWarning)
        for name in variances:
            acc = state.var[name]
            out[name] = (acc["wsum"] * scaling_var / acc["wt"] / acc["wt"]).astype(np.float32)
    if params.compute_err == "driz_err":
        out["err"] = (state.driz_err.out_img[crop] / psr).astype(np.float32)
    elif params.compute_err == "from_var" and variances:
        comps = [out[n] for n in VARIANCES if n in out]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            err = np.sqrt(np.nansum(comps, axis=0))
        err[np.all(np.isnan(comps), axis=0)] = np.nan
        out["err"] = err
    return out


# ---------------------------------------------------------------------------------------------
# Planning a mosaic
# ---------------------------------------------------------------------------------------------


@dataclass
class MosaicPlan:
    """Everything the tile tasks need, decided once on the client."""

    exposures: list[InputExposure]
    out_wcs: Any
    out_shape: tuple[int, int]
    params: ResampleParams
    pixel_scale_ratio: float
    output_pixel_scale: float
    """arcsec."""
    variances: tuple[str, ...]
    tile: tuple[int, int]
    jobs: list[TileJob]
    halo: int
    skipped: list[str]
    """Inputs that do not overlap the output (warned about, not drizzled)."""
    units: str | None

    @property
    def n_planes(self) -> int:
        """Context planes (32 inputs each)."""
        return (len(self.exposures) - 1) // 32 + 1


def _pixel_scale_arcsec(w) -> float:
    bb = w.bounding_box.bounding_box(order="F") if w.bounding_box is not None else None
    if bb is None:
        ny, nx = w.array_shape
        centre = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    else:
        centre = tuple((lo + hi) / 2.0 for lo, hi in bb)
    world = w(*centre, with_bounding_box=False)
    return float(al.compute_scale(w, world)) * 3600.0


def plan_mosaic(
    exposures: Sequence[InputExposure],
    out_wcs,
    params: ResampleParams,
    *,
    cells: Sequence[tuple] | None = None,
    tile: Sequence[int] | None = None,
    memory_budget_bytes: int = 256 * 2**20,
    output_pixel_scale: float | None = None,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> MosaicPlan:
    """Check the inputs against the output WCS and build the tile index.

    ``cells[k]`` (from :func:`input_reach`, e.g. computed on the cluster) is computed here when
    not given. ``output_pixel_scale`` (arcsec) defaults to the output WCS's scale at its centre.
    Raises :class:`UserInputError` for mixed units, ivm weighting without ``var_rnoise``,
    exptime weighting without exposure times, no overlapping input, or an output larger than
    ``max_output_pixels`` without ``params.output_shape``.
    """
    exposures = list(exposures)
    if not exposures:
        raise UserInputError("no inputs given: need at least one rate or cal product")
    if out_wcs.array_shape is None:
        if out_wcs.bounding_box is None:
            raise UserInputError("the output WCS has neither an array shape nor a bounding box")
        out_wcs.array_shape = output_shape(out_wcs)
    out_shape = tuple(int(s) for s in out_wcs.array_shape)
    npix = out_shape[0] * out_shape[1]
    if npix > max_output_pixels and params.output_shape is None:
        raise UserInputError(
            f"the output WCS asks for a {out_shape[0]} x {out_shape[1]} mosaic ({npix:.3g} "
            f"pixels, more than the {max_output_pixels:.3g} accepted); check the inputs' WCSs "
            "or give --resample.output_shape NY NX to allow it"
        )
    units = {e.units for e in exposures if e.units}
    if len(units) > 1:
        names = ", ".join(f"{Path(e.path).name}: {e.units}" for e in exposures)
        raise UserInputError(f"inputs have mixed SCI units ({names}); resample them separately")
    for e in exposures:
        if params.weight_type == "ivm" and "var_rnoise" not in e.arrays:
            raise UserInputError(
                f"input {e.path} has no VAR_RNOISE array, which weight_type=ivm needs "
                "(use --resample.weight_type exptime)"
            )
        if params.weight_type == "exptime" and e.exposure_time is None and (
            e.measurement_time is None
        ):
            raise UserInputError(
                f"input {e.path} has no exposure time (EFFEXPTM, EXPTIME or TMEASURE), which "
                "weight_type=exptime needs"
            )
        if params.compute_err == "driz_err" and "err" not in e.arrays:
            raise UserInputError(
                f"input {e.path} has no ERR array, which compute_err=driz_err needs"
            )
    if params.kernel in NON_CONSERVING_KERNELS:
        warnings.warn(
            f"the {params.kernel} kernel does not conserve flux", UserWarning, stacklevel=2
        )
    if output_pixel_scale is None:
        output_pixel_scale = _pixel_scale_arcsec(out_wcs)
    first = exposures[0]
    area = first.pixelarea_steradians
    if area is None or area <= 0:
        area = math.radians(_pixel_scale_arcsec(first.wcs) / 3600.0) ** 2
    psr = float(output_pixel_scale / (3600.0 * np.rad2deg(math.sqrt(area))))
    if cells is None:
        cells = [input_reach(e.wcs, out_wcs, e.shape) for e in exposures]
    exposures = [e._replace(clip=c[4] if len(c) > 4 else None)
                 for e, c in zip(exposures, cells, strict=True)]
    reach = max((c[3] for c in cells if c[2].any()), default=1.0)
    halo = int(math.ceil(kernel_reach(params, reach, psr))) + 2
    # the window (tile + halo) already holds the kernel's reach: the slack covers only the
    # curvature of the map inside a cell and rounding
    slack = 2.0 + 0.02 * _INDEX_STEP * max(reach, 1.0)
    if tile is None:
        tile = choose_mosaic_tile(out_shape, memory_budget_bytes, len(exposures))
    tile = (min(int(tile[0]), out_shape[0]), min(int(tile[1]), out_shape[1]))
    if min(tile) < 1:
        raise UserInputError(f"tile must be two positive integers, got {tile}")
    jobs = build_tile_index(cells, [e.shape for e in exposures], out_shape, tile, halo, slack)
    used = {k for j in jobs for k, _ in j.regions}
    skipped = [e.path for e in exposures if e.index not in used]
    if not used:
        raise UserInputError(
            f"none of the {len(exposures)} inputs overlaps the output WCS "
            f"({out_shape[0]} x {out_shape[1]} pixels)"
        )
    for p in skipped:
        warnings.warn(f"input {p} does not overlap the output WCS; skipped", UserWarning,
                      stacklevel=2)
    variances: tuple[str, ...] = ()
    if params.variances_on:
        variances = tuple(n for n in VARIANCES if any(n in e.arrays for e in exposures))
    return MosaicPlan(
        exposures=exposures,
        out_wcs=out_wcs,
        out_shape=out_shape,
        params=params,
        pixel_scale_ratio=psr,
        output_pixel_scale=float(output_pixel_scale),
        variances=variances,
        tile=tile,
        jobs=jobs,
        halo=halo,
        skipped=skipped,
        units=next(iter(units)) if units else None,
    )
