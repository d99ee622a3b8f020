"""The dataflow layer: the tile kernels mapped over chunked ramps with dask, lazily.

:func:`detect_jumps` and :func:`fit_ramps` take a ramp Dataset (schema in
:mod:`stcal_dask.engine.datamodel`; ``open_ramp``/``open_ramp_fits`` give lazy ones) and return
Datasets whose variables are dask arrays: **building them computes nothing** (except the fitopt
sizes, see below). Compute them on any scheduler, e.g. with
:func:`stcal_dask.engine.cluster.compute` inside :func:`stcal_dask.engine.cluster.get_client`.

Chunking
--------
Work is split into spatial tiles: chunks are ``(all integrations, all groups, tile_y, tile_x)``
(the ramp's own chunks, or ``tile=(ty, tx)``; integration/group chunks are merged). Results do not
depend on the tiling: each tile is given a halo of the kernel's declared width
(:func:`stcal_dask.kernels.jump.jump_halo`, 0 for ramp fitting) from its neighbours
(every block publishes its borders in one small task; a tile task assembles its window from its
own blocks and its neighbours' borders, with no padding at the frame edges), runs the kernel and
crops the halo off. A tile returns all its outputs as one dask block (a dict of arrays, see
:func:`stcal_dask.engine.tasks.pack`; the dask array declares a structured dtype with one field per
output) from which each output array takes its field, so every kernel runs once per tile however
many outputs are computed together. The functions the tasks run live in
:mod:`stcal_dask.engine.tasks`, which never imports xarray, so workers need not load it.

Frame-wide statistics
---------------------
stcal takes some decisions over the whole frame; they are computed once with dask reductions
(tree reductions of per-tile partials) and passed to every tile as a single graph node:

* jump: the nanmedian gain, the per-(integration, group) "every pixel DO_NOT_USE" planes and the
  detection path (pass 1); on the sigma-clip path, the planes whose every pixel is JUMP or
  DO_NOT_USE after detection (pass 1b, a second read of the data, built into the graph only when
  the shape makes the sigma-clip path possible); see :mod:`stcal_dask.kernels.jump`;
* ramp fit: the fitopt segment / cosmic-ray axis sizes (maxima over all tiles).

The pass-1 reductions read their inputs through cloned graph keys
(:func:`dask.graph_manipulation.clone`), so the scheduler does not keep every chunk that a
reduction has touched alive until the tile that needs it runs: memory stays bounded by a few tiles.
For the same reason the tasks after a large-event barrier (the ramp fit after the snowball or
shower stage, the shower ratios after the whole-frame decisions, the shower flagging after the
plane tasks) read their inputs again through keys bound to that barrier
(:func:`dask.graph_manipulation.bind`): they are read only once it is passed.

Compute several products of one graph **together** (one ``dask.compute`` call, or
:func:`stcal_dask.engine.cluster.compute`), so each tile kernel runs once. That function
also switches off dask's low-level task fusion: fusion renames tasks per consumer, and a kernel
fused into one consumer (e.g. the jump count) would run again for the others (e.g. a Delayed
write).

The fitopt arrays' sizes depend on the data (the largest number of segments), and an xarray needs
concrete sizes, so :func:`fit_ramps` with ``save_opt`` computes that small reduction (on
``groupdq`` only) when it is called, unless ``fitopt_dims`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.graph_manipulation import bind, clone
from dask.highlevelgraph import HighLevelGraph

from stcal_dask.engine import tasks
from stcal_dask.engine.datamodel import (
    WCS_ATTR,
    WCSINFO_ATTR,
    rate_dataset,
    rateints_dataset,
    timing_from_attrs,
    validate_ramp,
)
from stcal_dask.errors import UserInputError
from stcal_dask.kernels import jump as jk
from stcal_dask.kernels import ramp_fit as rk

__all__ = [
    "JUMP_COUNT_VARIABLE",
    "LARGE_EVENTS_VARIABLE",
    "RampFitProducts",
    "all_group0_saturated",
    "all_nan",
    "auto_tile",
    "detect_jumps",
    "fit_ramps",
    "frame_fitopt_dims",
    "jump_globals",
    "miri_group_trim",
    "prepare_ramp",
]

class RampFitProducts(NamedTuple):
    """The lazy products of :func:`fit_ramps` (Datasets, see
    :mod:`stcal_dask.engine.datamodel`)."""

    rate: xr.Dataset
    """(y, x): ``sci``, ``err`` (DN/s), ``dq``, ``var_poisson``, ``var_rnoise`` ((DN/s)^2)."""
    rateints: xr.Dataset
    """(integration, y, x): the same variables per integration."""
    fitopt: xr.Dataset | None = None
    """Per segment (``save_opt``), else None."""


JUMP_COUNT_VARIABLE = "primary_jumps"
"""0-d int64 variable of :func:`detect_jumps`' result: stcal's primary-jump count (-99 if the
exposure was skipped), computed on demand."""

LARGE_EVENTS_VARIABLE = "large_events"
"""0-d int64 variable of :func:`detect_jumps`' result when snowballs or showers are on: stcal's
``number_extended_events`` (the shower count when showers are on, else the snowball count)."""

_FAN_IN = 8

_LARGE_EVENTS_PREFIX = "stcal-dask-large-events-"
"""Name prefix of the large-event stage's packed array: a barrier (see :func:`fit_ramps`)."""

_PLANES_PER_TASK = 4
"""(integration, group) planes per large-event plane task: fewer, larger tasks on exposures
with many groups (every distributed task has a fixed CPU cost in the scheduler and worker)."""


# ------------------------------------------------------------------------------------------------
# helpers


def _tree_reduce(items: Sequence[Any], merge: Callable, fan_in: int = _FAN_IN):
    """Delayed tree reduction ``merge(*group)`` of a list of Delayed objects."""
    items = list(items)
    if not items:
        raise ValueError("nothing to reduce")
    level = 0
    while len(items) > 1:
        items = [
            dask.delayed(merge, pure=True)(*items[i : i + fan_in])
            for i in range(0, len(items), fan_in)
        ]
        level += 1
    if level == 0:
        items = [dask.delayed(merge, pure=True)(items[0])]
    return items[0]


def auto_tile(
    nints: int,
    ngroups: int,
    ny: int,
    nx: int,
    *,
    n_workers: int = 1,
    tiles_per_worker: int = 4,
    memory_budget_bytes: int | None = None,
    align: int = 16,
) -> tuple[int, int]:
    """A tile that fits the per-tile memory budget *and* keeps every worker busy.

    Starts from :func:`stcal_dask.engine.datamodel.choose_tile_size` (largest tile within the
    budget, full-width strips when possible) and shrinks the strip height until the frame has at
    least ``tiles_per_worker * n_workers`` tiles (never below ``align`` rows), rounding heights to
    multiples of ``align``. ``n_workers`` counts the threads that run tiles.

    Four tiles per thread: every distributed task has a fixed CPU cost (scheduler and worker
    together) and a jump + ramp-fit run makes about a dozen tasks per tile, so fewer, larger
    tiles save wall time, at the price of more peak memory per tile; four per thread keeps the
    threads busy to the end of a single exposure (a batch, whose next exposure fills the
    threads one leaves idle, takes fewer). Where the budget's tile already gives enough tiles,
    the strip heights are evened out (e.g. 4 x 512 rows rather than 3 x 624 + 176), so that no
    tile holds a thread much longer than the others.
    """
    from stcal_dask.engine.datamodel import DEFAULT_MEMORY_BUDGET, choose_tile_size

    ty, tx = choose_tile_size(nints, ngroups, ny, nx, memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
    want = max(1, int(n_workers) * int(tiles_per_worker))
    rows = -(-ny // ty)
    ntiles = rows * -(-nx // tx)
    if ntiles >= want:
        even = -(-ny // rows)
        if even > align:
            even = -(-even // align) * align
        if even < ty and -(-ny // even) == rows:
            ty = even
        return int(ty), int(tx)
    per_row = -(-nx // tx)
    rows_needed = -(-want // per_row)
    new_ty = -(-ny // rows_needed)
    if new_ty > align:
        new_ty = -(-new_ty // align) * align
    new_ty = max(min(align, ny), min(new_ty, ty))
    return int(new_ty), int(tx)


def prepare_ramp(ramp: xr.Dataset, tile=None) -> xr.Dataset:
    """Validate a ramp and give every variable consistent dask chunks.

    Chunks are ``(all integrations, all groups, tile_y, tile_x)``: ``tile=(ty, tx)`` if given,
    else the chunks of ``sci`` along y and x (or an automatic tile when ``sci`` is not chunked).
    Nothing is computed.
    """
    from stcal_dask.engine.datamodel import ramp_chunks

    source = str(ramp.attrs.get("source", "ramp")) if isinstance(ramp, xr.Dataset) else "ramp"
    ramp = validate_ramp(ramp, source=source)
    sci = ramp["sci"].data
    if tile is not None:
        chunks = ramp_chunks(ramp, tile=tile)
    elif isinstance(sci, da.Array):
        chunks = {"integration": -1, "group": -1, "y": sci.chunks[2], "x": sci.chunks[3]}
    else:
        chunks = ramp_chunks(ramp)
    full = {"integration": -1, "group": -1}
    chunks = {**chunks, **full}
    out = ramp.copy(deep=False)
    for name, var in ramp.data_vars.items():
        if not set(var.dims) <= {"integration", "group", "y", "x"}:
            continue
        want = {d: chunks[d] for d in var.dims}
        out[name] = var.chunk(want)
    return out


def _arr(ramp: xr.Dataset, name: str) -> da.Array | None:
    if name not in ramp.data_vars:
        return None
    return ramp[name].data


def _min_tile(ramp: xr.Dataset, halo: int) -> xr.Dataset:
    """Merge tiles thinner than ``halo`` into their neighbours (results do not depend on it)."""
    if halo <= 0:
        return ramp
    yc, xc = ramp["sci"].data.chunks[2:]
    if min(yc) >= halo and min(xc) >= halo:
        return ramp
    from dask.array.overlap import ensure_minimum_chunksize

    ny_c = ensure_minimum_chunksize(halo, yc)
    nx_c = ensure_minimum_chunksize(halo, xc)
    return ramp.chunk({"y": ny_c, "x": nx_c})


def _block_key(a: da.Array, i: int, j: int):
    """Key of the spatial block (i, j) of an array chunked only along its last two axes."""
    return (a.name, *(0,) * (a.ndim - 2), i, j)


def _tile_chunks(arrays: Sequence[da.Array]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (y, x) chunks that ``arrays`` share (ValueError when they do not, or when one is
    chunked along a leading axis)."""
    ref = arrays[0]
    for a in arrays:
        if a.chunks[-2:] != ref.chunks[-2:] or any(len(c) != 1 for c in a.chunks[:-2]):
            raise ValueError("inputs must share spatial chunks and not be chunked otherwise")
    return ref.chunks[-2:]


def _map_tiles(func, inputs: Sequence[Any], *, name: str, dtype, chunks=None,
               **kwargs) -> da.Array:
    """A (y, x) dask array whose block (i, j) is ``func(*blocks, **kwargs)`` (of the inputs'
    (y, x) chunks, or of ``chunks``: e.g. one element per tile).

    Each dask array of ``inputs`` (sharing their spatial chunks, one chunk along leading axes)
    gives its block (i, j) as it is; any other input (a Delayed) passes through. One task per
    tile that references the blocks' keys: ``map_blocks`` with ``drop_axis`` would first
    concatenate (copy) every block of an input with leading axes, a (nints, ngroups) tile.
    """
    arrays = [a for a in inputs if isinstance(a, da.Array)]
    ychunks, xchunks = _tile_chunks(arrays)
    call = partial(func, **kwargs)
    dsk = {
        (name, i, j): (call, *[_block_key(a, i, j) if isinstance(a, da.Array) else a.key
                               for a in inputs])
        for i in range(len(ychunks))
        for j in range(len(xchunks))
    }
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=list(inputs))
    return da.Array(graph, name, chunks=chunks or (ychunks, xchunks), dtype=dtype,
                    meta=np.empty((0, 0), dtype=dtype))


def _map_tiles_with_halo(func, arrays: Sequence[da.Array], *, halo: int, name: str, dtype,
                         extra: Sequence[Any] = (), **kwargs) -> da.Array:
    """A (y, x) dask array whose block (i, j) is ``func(*windows, *extra, crop=..., **kwargs)``.

    ``arrays`` share their spatial chunks and have a single chunk along leading axes; ``extra``
    are Delayed objects (e.g. frame-wide statistics) passed to every tile. ``func`` returns the
    cropped (block-shaped) result.
    """
    ychunks, xchunks = _tile_chunks(arrays)
    edge_name = "stcal-dask-borders-" + dask.base.tokenize(name, halo)
    dsk: dict = {}
    if halo > 0:
        for i in range(len(ychunks)):
            for j in range(len(xchunks)):
                dsk[(edge_name, i, j)] = (
                    partial(tasks.borders, halo=halo), *[_block_key(a, i, j) for a in arrays]
                )
    extra_keys = [e.key for e in extra]
    for i, cy in enumerate(ychunks):
        for j, cx in enumerate(xchunks):
            nbrs = []
            for di, dj in tasks.NEIGHBOURS:
                ii, jj = i + di, j + dj
                inside = 0 <= ii < len(ychunks) and 0 <= jj < len(xchunks)
                nbrs.append((edge_name, ii, jj) if (halo > 0 and inside) else None)
            dsk[(name, i, j)] = (
                partial(tasks.halo_call, func, halo, (i, j), (cy, cx), len(arrays), **kwargs),
                nbrs,
                *[_block_key(a, i, j) for a in arrays],
                *extra_keys,
            )
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[*arrays, *extra])
    return da.Array(graph, name, chunks=(ychunks, xchunks), dtype=dtype,
                    meta=np.empty((0, 0), dtype=dtype))


def _unpack(packed: da.Array, name: str) -> da.Array:
    """The field ``name`` of a packed (y, x) dask array (blocks made by
    :func:`stcal_dask.engine.tasks.pack`), leading axes first."""
    sub = packed.dtype[name]
    lead = sub.shape
    base = sub.base if sub.shape else sub
    chunks = tuple((n,) for n in lead) + packed.chunks
    return packed.map_blocks(
        tasks.field_block,
        name,
        dtype=base,
        chunks=chunks,
        new_axis=list(range(len(lead))) if lead else None,
        meta=np.empty((0,) * (len(lead) + 2), dtype=base),
        name=_unpack_name(packed.name, name),
    )


def _unpack_name(packed_name: str, field: str) -> str:
    return f"stcal-dask-unpack-{field}-" + dask.base.tokenize(packed_name, field)


def _packed_source(arrays: dict[str, da.Array]) -> da.Array | None:
    """The packed (y, x) array whose fields ``arrays`` (field name -> dask array) are, made by
    :func:`_unpack` and unchanged since (the names say so), or None. A consumer of several
    fields can then take the packed blocks themselves: one task per tile and field fewer (each
    distributed task has a fixed CPU cost)."""
    sources = set()
    for field, a in arrays.items():
        deps = a.dask.dependencies.get(a.name, set())
        if len(deps) != 1:
            return None
        (packed_name,) = deps
        if a.name != _unpack_name(packed_name, field):
            return None
        sources.add(packed_name)
    if len(sources) != 1:
        return None
    first = next(iter(arrays.values()))
    # its blocks are dicts of arrays (tasks.pack): the dtype is nominal
    return da.Array(first.dask, sources.pop(), chunks=first.chunks[-2:], dtype=object,
                    meta=np.empty((0, 0), dtype=object))


# ------------------------------------------------------------------------------------------------
# jump detection


def jump_globals(ramp: xr.Dataset, params: jk.JumpParams | None = None):
    """The frame-wide :class:`~stcal_dask.kernels.jump.JumpGlobals` of a ramp, as a Delayed.

    ``ramp`` must already be prepared (:func:`prepare_ramp`). Pass 1 (median gain, whole-plane
    DO_NOT_USE, path) is a tree reduction over the tiles; the median gain is gathered only
    when after-jump flagging is on (otherwise it is NaN:
    :func:`~stcal_dask.kernels.jump.needs_median_gain`). On the sigma-clip path pass 1b (the
    reset planes) follows. Nothing is computed.
    """
    params = jk.JumpParams() if params is None else params
    sci, gdq, gain = _arr(ramp, "sci"), _arr(ramp, "groupdq"), _arr(ramp, "gain")
    nints, ngroups = sci.shape[:2]
    gdq_c = clone(gdq, assume_layers=False)
    gdq_b = gdq_c.to_delayed()
    gain_b = gain.to_delayed(optimize_graph=False)
    nby, nbx = gain_b.shape
    # the median gain only scales after-jump flagging: not gathered when that is off
    with_gain = jk.needs_median_gain(params)
    parts = [
        dask.delayed(tasks.globals_partial, pure=True)(
            gdq_b[0, 0, i, j], gain_b[i, j], with_gain
        )
        for i in range(nby)
        for j in range(nbx)
    ]
    merged = _tree_reduce(parts, jk.merge_jump_globals_partials)
    glob = dask.delayed(tasks.finalize_globals, pure=True)(merged, params)
    if jk.uses_sigclip(nints, nints * ngroups, params):  # can the path be chosen at all?
        sci_c, gdq_c2 = clone(sci, gdq, assume_layers=False)
        sci_b, gdq_b2 = sci_c.to_delayed(), gdq_c2.to_delayed()
        sparts = [
            dask.delayed(tasks.sigclip_partial, pure=True)(
                sci_b[0, 0, i, j], gdq_b2[0, 0, i, j], gain_b[i, j], params, glob
            )
            for i in range(nby)
            for j in range(nbx)
        ]
        reset = _tree_reduce(sparts, tasks.merge_sigclip)
        glob = dask.delayed(tasks.attach_sigclip, pure=True)(glob, reset)
    return glob


def detect_jumps(ramp: xr.Dataset, params: jk.JumpParams | None = None, *, tile=None
                 ) -> xr.Dataset:
    """Flag jumps in a ramp, lazily: stcal 1.20.0 ``detect_jumps_data`` over dask tiles.

    Parameters
    ----------
    ramp:
        A ramp Dataset (``sci`` DN, ``groupdq``, ``pixeldq``, ``gain`` electron/DN, ``readnoise``
        DN; attrs NFRAMES and TGROUP are used). numpy- or dask-backed.
    params:
        :class:`~stcal_dask.kernels.jump.JumpParams` (JWST defaults if None).
    tile:
        Optional ``(tile_y, tile_x)`` to re-tile; default the ramp's own chunks.

    Returns
    -------
    xr.Dataset
        The ramp with ``groupdq`` (JUMP_DET added; uint8, (integration, group, y, x)) and
        ``pixeldq`` (NO_GAIN_VALUE | DO_NOT_USE for bad gains; uint32, (y, x)) replaced by lazy
        arrays, plus the 0-d int64 variable ``primary_jumps`` (stcal's primary count, -99 when
        the exposure is skipped) and ``attrs["jump_parameters"]`` (JSON); with snowballs or
        showers on, the 0-d int64 ``large_events`` (stcal's ``number_extended_events``).
        Nothing is computed.
    """
    params = jk.JumpParams() if params is None else params
    if not isinstance(params, jk.JumpParams):
        raise UserInputError(f"jump parameters must be a JumpParams, got {type(params).__name__}")
    ramp = prepare_ramp(ramp, tile)
    halo = jk.jump_halo(params)
    ramp = _min_tile(ramp, halo)
    timing = timing_from_attrs(ramp.attrs)
    sci, gdq, pdq = _arr(ramp, "sci"), _arr(ramp, "groupdq"), _arr(ramp, "pixeldq")
    gain, rn = _arr(ramp, "gain"), _arr(ramp, "readnoise")
    nints, ngroups = sci.shape[:2]
    glob = jump_globals(ramp, params)

    dtype = np.dtype(
        [
            ("groupdq", gdq.dtype, (nints, ngroups)),
            ("pixeldq", pdq.dtype),
            ("primary", np.int32),
        ]
    )
    packed = _map_tiles_with_halo(
        tasks.jump_block,
        [sci, gdq, pdq, gain, rn],
        extra=[glob],
        halo=halo,
        name="stcal-dask-jump-tile-" + dask.base.tokenize(sci, gdq, pdq, gain, rn, params, halo),
        dtype=dtype,
        params=params,
        nframes=int(timing["NFRAMES"]),
        group_time=float(timing["TGROUP"]),
        out_dtype=dtype,
    )
    final, n_events = _large_events(packed, sci, gain, rn, params, timing)
    new_gdq = _unpack(final, "groupdq")
    new_pdq = _unpack(final, "pixeldq")
    # the count: one small task per tile (so each tile's packed block can be freed once the
    # fit has read it) and one aggregation, with no partial-reduction tree (each distributed
    # task has a fixed CPU cost). The blocks enter the Delayed unoptimized (an optimized dask
    # array would fuse and rename the tile tasks and run every kernel twice), and the result
    # is a dask array again.
    blocks = packed.to_delayed(optimize_graph=False).ravel().tolist()
    sums = [dask.delayed(tasks.primary_sum, pure=True)(b) for b in blocks]
    count = da.from_delayed(
        dask.delayed(tasks.primary_count, pure=True)(glob, *sums), shape=(), dtype=np.int64,
        meta=np.empty((), dtype=np.int64),
    )
    out = ramp.copy(deep=False)
    out["groupdq"] = xr.Variable(ramp["groupdq"].dims, new_gdq, ramp["groupdq"].attrs)
    out["pixeldq"] = xr.Variable(ramp["pixeldq"].dims, new_pdq, ramp["pixeldq"].attrs)
    out[JUMP_COUNT_VARIABLE] = xr.Variable((), count, {"long_name": "primary jumps flagged"})
    if n_events is not None:
        out[LARGE_EVENTS_VARIABLE] = xr.Variable(
            (), n_events, {"long_name": "snowballs (or, with showers on, showers) flagged"}
        )
    out.attrs["jump_parameters"] = json.dumps(params.to_dict(), sort_keys=True)
    return out


def _packed_like(name: str, like: da.Array, blocks) -> da.Array:
    """A packed (y, x) array with ``like``'s chunks and dtype whose block (i, j) is the Delayed
    ``blocks[i][j]`` (a dict of arrays, :func:`stcal_dask.engine.tasks.pack`)."""
    dsk = {(name, i, j): blocks[i][j].key
           for i in range(len(blocks)) for j in range(len(blocks[0]))}
    deps = [b for row in blocks for b in row]
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    return da.Array(graph, name, chunks=like.chunks, dtype=like.dtype,
                    meta=np.empty((0, 0), dtype=like.dtype))


def _plane_chunks(ngroups: int) -> list[range]:
    return [range(g, min(g + _PLANES_PER_TASK, ngroups))
            for g in range(1, ngroups, _PLANES_PER_TASK)]


def _large_events(packed: da.Array, sci, gain, rn, params: jk.JumpParams, timing):
    """The snowball and shower stage after two-point detection (stcal's order), or
    ``(packed, None)`` when both are off.

    Not a spatial halo: connected regions, ellipses of up to ``2 * max_extended_radius`` pixels
    and the ring convolution are whole-plane operations. Tasks (see
    :mod:`stcal_dask.kernels.large_events` for what each computes):

    * snowballs: one saturation task per integration (sequential over its groups: a core's
      extension is SATURATED in every later group) over all jump tiles; one task per few
      (integration, group) planes (the JUMP regions of the whole plane, given its integration's
      saturation result); one painting task per tile, given every integration's saturation
      result and every plane's snowballs (the next integration's core masking is painted there);
    * showers: per-tile "every pixel DO_NOT_USE" flags reduced to the whole-frame decisions, a
      ratio task per tile (pixel-local), one task per few planes (convolution and regions of the
      whole plane), one flagging task per tile given every plane's ellipses (groups after a
      shower are flagged there).

    Results do not depend on the tiling: plane tasks see whole planes, tile tasks paint
    whole-frame rasters cropped to their window.
    """
    if not params.large_events:
        return packed, None
    group_time = float(timing["TGROUP"])
    nframes = int(timing["NFRAMES"])
    nints, ngroups = sci.shape[:2]
    ychunks, xchunks = packed.chunks
    layout = (tuple(ychunks), tuple(xchunks))
    shape = (int(sum(ychunks)), int(sum(xchunks)))
    y_off = np.concatenate([[0], np.cumsum(ychunks)]).astype(int)
    x_off = np.concatenate([[0], np.cumsum(xchunks)]).astype(int)
    windows = [[(int(y_off[i]), int(y_off[i + 1]), int(x_off[j]), int(x_off[j + 1]))
                for j in range(len(xchunks))] for i in range(len(ychunks))]
    delayed = dask.delayed
    tok = dask.base.tokenize(packed.name, params, group_time, nframes)
    blocks = packed.to_delayed(optimize_graph=False).tolist()
    n_events = None
    sb = params.snowball_settings(group_time)
    if sb is not None and ngroups >= 2:
        flat = [b for row in blocks for b in row]
        sats = [delayed(tasks.snowball_saturation, pure=True)(i, sb, layout, *flat)
                for i in range(nints)]
        planes = [delayed(tasks.snowball_planes, pure=True)(i, tuple(gs), sb, layout, sats[i],
                                                            *flat)
                  for i in range(nints) for gs in _plane_chunks(ngroups)]
        new = [[delayed(tasks.snowball_apply, pure=True)(blocks[i][j], windows[i][j], sb, sats,
                                                         *planes)
                for j in range(len(xchunks))] for i in range(len(ychunks))]
        blocks = new
        n_events = delayed(tasks.count_events, pure=True)(*planes)
    sh = params.shower_settings(group_time, nframes)
    if sh is not None and ngroups >= 2:
        # the ratio tasks wait for the whole-frame decisions and the flagging tasks for every
        # plane: they read their own copies of the inputs, once those are done, rather than
        # keep the jump tiles' inputs alive across those barriers (see fit_ramps)
        flat = [b for row in blocks for b in row]
        parts = [delayed(tasks.shower_dnu, pure=True)(b) for b in flat]
        glob = delayed(tasks.shower_globals, pure=True)(sh, *parts)
        sci_b, gain_b, rn_b = (a.to_delayed(optimize_graph=False)
                               for a in bind([sci, gain, rn], glob, assume_layers=False))
        ratios = [delayed(tasks.shower_ratio, pure=True)(sci_b[0, 0, i, j], blocks[i][j],
                                                         gain_b[i, j], rn_b[i, j], glob, sh)
                  for i in range(len(ychunks)) for j in range(len(xchunks))]
        planes = [delayed(tasks.shower_planes, pure=True)(i, tuple(gs), sh, layout, glob,
                                                          *ratios)
                  for i in range(nints) for gs in _plane_chunks(ngroups)]
        sci_a, gain_a = (a.to_delayed(optimize_graph=False)
                         for a in bind([sci, gain], planes, assume_layers=False))
        blocks = [[delayed(tasks.shower_apply, pure=True)(sci_a[0, 0, i, j], blocks[i][j],
                                                          gain_a[i, j], windows[i][j], shape,
                                                          sh, *planes)
                   for j in range(len(xchunks))] for i in range(len(ychunks))]
        n_events = delayed(tasks.count_events, pure=True)(*planes)
    if n_events is None:
        return packed, None
    final = _packed_like(_LARGE_EVENTS_PREFIX + tok, packed, blocks)
    count = da.from_delayed(n_events, shape=(), dtype=np.int64,
                            meta=np.empty((), dtype=np.int64))
    return final, count


# ------------------------------------------------------------------------------------------------
# ramp fitting

def _timing(attrs) -> rk.RampTiming:
    t = timing_from_attrs(attrs)
    return rk.RampTiming(
        frame_time=float(t["TFRAME"]),
        group_time=float(t["TGROUP"]),
        nframes=int(t["NFRAMES"]),
        groupgap=int(t["GROUPGAP"]),
        drop_frames1=int(t["DRPFRMS1"]),
    )


def miri_group_trim(ramp: xr.Dataset, params: rk.RampFitParams | None = None):
    """Lazy (Delayed) :class:`~stcal_dask.kernels.miri_groups.GroupTrim` of a MIRI ramp (the
    groups stcal's ramp fitting keeps), or None when the ramp is not MIRI (``INSTRUME`` attr) or
    has one group. A tree reduction of per-tile flags over ``groupdq``; nothing is computed."""
    from stcal_dask.kernels.miri_groups import is_miri

    params = rk.RampFitParams() if params is None else params
    if not is_miri(ramp.attrs.get("INSTRUME")):
        return None
    gdq = _arr(ramp, "groupdq")
    if gdq.shape[1] < 2:
        return None
    gdq_b = gdq.to_delayed(optimize_graph=False)
    parts = [dask.delayed(tasks.miri_trim_partial, pure=True)(gdq_b[0, 0, i, j], params)
             for i in range(gdq_b.shape[2]) for j in range(gdq_b.shape[3])]
    merged = _tree_reduce(parts, _and_flags)
    return dask.delayed(tasks.miri_trim_decide, pure=True)(merged)


def _and_flags(*parts):
    return np.logical_and.reduce([np.asarray(p, dtype=bool) for p in parts])


def frame_fitopt_dims(ramp: xr.Dataset, params: rk.RampFitParams | None = None, trim=None):
    """Lazy (Delayed) frame-wide fitopt sizes ``(n_segments, n_crmag)``: the max over tiles
    (of the groups ``trim``, a Delayed GroupTrim from :func:`miri_group_trim`, keeps)."""
    params = rk.RampFitParams(save_opt=True) if params is None else params
    ramp = prepare_ramp(ramp)
    gdq = _arr(ramp, "groupdq")
    zf = _arr(ramp, "zeroframe")
    gdq_b = gdq.to_delayed(optimize_graph=False)
    zf_b = zf[:, None].to_delayed(optimize_graph=False) if zf is not None else None
    parts = [
        dask.delayed(tasks.dims_partial, pure=True)(
            gdq_b[0, 0, i, j], None if zf_b is None else zf_b[0, 0, i, j], params, trim
        )
        for i in range(gdq_b.shape[2])
        for j in range(gdq_b.shape[3])
    ]
    return _tree_reduce(parts, tasks.dims_merge)


def _all_tiles(array: da.Array, per_tile_task, *, name: str) -> da.Array:
    """Lazy 0-d bool: ``per_tile_task(block)`` (a (1, 1) bool per spatial tile of ``array``,
    chunked along its last two axes only) is True for every tile. One small task per tile
    and one aggregation (every distributed task has a fixed scheduling cost, so no
    elementwise layer or reduction tree)."""
    per_tile = _map_tiles(per_tile_task, [array], dtype=bool,
                          chunks=tuple((1,) * n for n in array.numblocks[-2:]),
                          name=f"stcal-dask-{name}-" + dask.base.tokenize(array.name))
    blocks = per_tile.to_delayed(optimize_graph=False).ravel().tolist()
    return da.from_delayed(dask.delayed(tasks.all_of, pure=True)(*blocks), shape=(),
                           dtype=bool, meta=np.empty((), dtype=bool))


def all_group0_saturated(ramp: xr.Dataset) -> da.Array:
    """Lazy 0-d bool: group 0 is SATURATED in every pixel of every integration.

    stcal's ``ramp_fit_data`` returns no product at all in that case (the JWST step skips);
    :func:`fit_ramps` still gives per-pixel results, so callers check this.
    """
    gdq = ramp["groupdq"].data
    if not isinstance(gdq, da.Array):
        gdq = da.from_array(gdq)
    if gdq.numblocks[0] != 1 or gdq.numblocks[1] != 1:
        gdq = gdq.rechunk({0: -1, 1: -1})
    return _all_tiles(gdq, tasks.group0_saturated, name="group0-saturated")


def all_nan(plane: da.Array) -> da.Array:
    """Lazy 0-d bool: every value of the 2-D (y, x) dask array ``plane`` is NaN (e.g. a rate
    whose every pixel has a bad gain)."""
    return _all_tiles(plane, tasks.nan_everywhere, name="all-nan")


def fit_ramps(
    ramp: xr.Dataset,
    params: rk.RampFitParams | None = None,
    *,
    tile=None,
    fitopt_dims: tuple[int, int] | None = None,
    parameters: dict | None = None,
) -> RampFitProducts:
    """Fit the ramps (OLS_C, optimal weighting), lazily: stcal 1.20.0 ``ramp_fit_data`` on tiles.

    Parameters
    ----------
    ramp:
        A ramp Dataset (usually the output of :func:`detect_jumps`); timing from its attrs
        (TFRAME, TGROUP, NFRAMES, GROUPGAP, DRPFRMS1); optional ``zeroframe`` and
        ``average_dark_current`` are used when present.
    params:
        :class:`~stcal_dask.kernels.ramp_fit.RampFitParams` (JWST defaults if None).
    tile:
        Optional ``(tile_y, tile_x)`` to re-tile.
    fitopt_dims:
        ``(n_segments, n_crmag)`` of the fitopt product. With ``params.save_opt`` and None they
        are computed now by a dask reduction over ``groupdq`` (the only computation done here:
        the sizes of the arrays depend on the data).
    parameters:
        Extra entries for the products' ``parameters`` attr (e.g. the jump parameters; taken from
        ``ramp.attrs["jump_parameters"]`` when present).

    Returns
    -------
    RampFitProducts
        ``rate``, ``rateints`` and, with ``params.save_opt``, ``fitopt`` (else None).
    """
    from stcal_dask.engine.datamodel import fitopt_dataset

    params = rk.RampFitParams() if params is None else params
    if not isinstance(params, rk.RampFitParams):
        raise UserInputError(
            f"ramp fit parameters must be a RampFitParams, got {type(params).__name__}"
        )
    ramp = prepare_ramp(ramp, tile)
    timing = _timing(ramp.attrs)
    sci, gdq, pdq = _arr(ramp, "sci"), _arr(ramp, "groupdq"), _arr(ramp, "pixeldq")
    gain, rn = _arr(ramp, "gain"), _arr(ramp, "readnoise")
    zf, dark = _arr(ramp, "zeroframe"), _arr(ramp, "average_dark_current")
    nints = sci.shape[0]

    trim = miri_group_trim(ramp, params)
    dims = None
    if params.save_opt:
        if fitopt_dims is None:
            (dims,) = dask.compute(frame_fitopt_dims(ramp, params, trim))
        else:
            dims = fitopt_dims
        try:
            dims = (int(dims[0]), int(dims[1]))
        except (TypeError, ValueError, IndexError):
            raise UserInputError(
                f"fitopt_dims must be (n_segments, n_crmag), got {dims!r}"
            ) from None
        if min(dims) < 0:
            raise UserInputError(f"fitopt_dims must be >= 0, got {dims}")

    f32, u32 = np.dtype(np.float32), np.dtype(np.uint32)
    spec = []
    for f in tasks.RATE_FIELDS:
        spec.append(("rate_" + f, u32 if f == "dq" else f32))
    for f in tasks.RATE_FIELDS:
        spec.append(("ints_" + f, u32 if f == "dq" else f32, (nints,)))
    if dims is not None:
        for f in tasks.SEG_FIELDS:
            spec.append(("opt_" + f, f32, (nints, dims[0])))
        spec.append(("opt_pedestal", f32, (nints,)))
        spec.append(("opt_crmag", f32, (nints, dims[1])))
    dtype = np.dtype(spec)

    # from detect_jumps: the jump tiles' packed blocks themselves, not their unpacked fields
    jumped = _packed_source({"groupdq": gdq, "pixeldq": pdq})
    if _after_barrier(gdq):
        # Every tile's group DQ waits for the whole large-event stage, which reads every tile:
        # inputs the fit shared with jump detection would all be held in memory across it.
        # The fit reads its own copies, once the stage is done (bound to its result: read
        # earlier, e.g. by a thread the stage leaves idle, they would be held as long).
        sci, gain, rn, zf, dark = bind([sci, gain, rn, zf, dark],
                                       jumped if jumped is not None else gdq,
                                       assume_layers=False)

    if jumped is not None and jumped.chunks != sci.chunks[2:]:
        jumped = None
    inputs = [sci, jumped, gain, rn] if jumped is not None else [sci, gdq, pdq, gain, rn]
    if zf is not None:
        inputs.append(zf[:, None])
    if dark is not None:
        inputs.append(dark)
    if trim is not None:
        inputs.append(trim)
    packed = _map_tiles(
        tasks.fit_block_jumped if jumped is not None else tasks.fit_block,
        inputs,
        params=params,
        timing=timing,
        has_zf=zf is not None,
        has_dark=dark is not None,
        has_trim=trim is not None,
        dims=dims,
        out_dtype=dtype,
        dtype=dtype,
        name="stcal-dask-fit-tile-" + dask.base.tokenize(*inputs, params, timing, dims),
    )

    record: dict[str, Any] = {}
    if "jump_parameters" in ramp.attrs:
        record["jump"] = json.loads(ramp.attrs["jump_parameters"])
    record["rampfit"] = {k: _plain_param(v) for k, v in vars(params).items()}
    record.update(parameters or {})
    keep = ("NINTS", "NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP", "DRPFRMS1",
            "SUBSTRT1", "SUBSTRT2", "SUBSIZE1", "SUBSIZE2", "INSTRUME", "source",
            WCS_ATTR, WCSINFO_ATTR)  # the exposure's gwcs travels to the rate products
    attrs = {k: ramp.attrs[k] for k in keep if k in ramp.attrs}

    def rate_args(prefix):
        # RateProduct and rate_dataset share the JWST names and order
        return [_unpack(packed, prefix + f) for f in tasks.RATE_FIELDS]

    rate = rate_dataset(*rate_args("rate_"), parameters=record, attrs=attrs)
    rateints = rateints_dataset(*rate_args("ints_"), parameters=record, attrs=attrs)
    if dims is None:
        return RampFitProducts(rate, rateints)
    opt = {f: _unpack(packed, "opt_" + f) for f in (*tasks.SEG_FIELDS, "pedestal", "crmag")}
    fitopt = fitopt_dataset(
        opt["slope"], opt["sigslope"], opt["yint"], opt["sigyint"], opt["weights"],
        opt["var_poisson"], opt["var_rnoise"], opt["pedestal"], opt["crmag"],
        parameters=record, attrs=attrs,
    )
    return RampFitProducts(rate, rateints, fitopt)


def _after_barrier(a: da.Array) -> bool:
    """Whether the dask array ``a`` comes out of the large-event stage (its graph holds it)."""
    return any(str(name).startswith(_LARGE_EVENTS_PREFIX) for name in a.dask.layers)


def _plain_param(v):
    if isinstance(v, np.generic):
        return v.item()
    return v

