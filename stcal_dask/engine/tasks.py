"""What the workers run for the dataflow (:mod:`stcal_dask.engine.dataflow` builds the graphs).

The tile tasks (halo exchange, the jump and ramp-fit tile calls, the packing of their outputs)
and the frame-wide reductions' per-tile partials. This module imports only numpy, the kernels
and :mod:`stcal_dask.engine.threads`' thread pinning, never xarray: a worker whose tasks come
from here and from :mod:`stcal_dask.io.fits_blocks` does not load xarray and pandas at all,
which shortens a worker's start and lowers its memory.

Every function is a pure function of its arguments (tiles as numpy arrays); none mutates its
inputs.
"""

from __future__ import annotations

import numpy as np

from stcal_dask.engine.threads import limit_threads
from stcal_dask.kernels import jump as jk
from stcal_dask.kernels import ramp_fit as rk

RATE_FIELDS = ("sci", "err", "dq", "var_poisson", "var_rnoise")
SEG_FIELDS = ("slope", "sigslope", "yint", "sigyint", "weights", "var_poisson", "var_rnoise")


# The halo exchange. Every block publishes its border (``halo`` rows/columns on each side, copied
# so the block itself can be freed) in one small task per tile for all the kernel's inputs; a tile
# task then takes its own blocks plus the borders of its (up to 8) neighbours, assembles the
# windows, runs the kernel and crops. Two tasks per tile whatever the number of inputs, where
# ``dask.array.overlap`` makes ~9 slicing tasks and a concatenation per input and tile: with
# dask.distributed's per-task cost that halved the wall time of a jump + ramp-fit run.

NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def borders(*blocks, halo: int):
    """(top, bottom, left, right) borders, ``halo`` wide, of each block (copies)."""
    h = halo
    return tuple(
        (
            np.ascontiguousarray(b[..., :h, :]),
            np.ascontiguousarray(b[..., -h:, :]),
            np.ascontiguousarray(b[..., :, :h]),
            np.ascontiguousarray(b[..., :, -h:]),
        )
        for b in blocks
    )


def window(center: np.ndarray, nbrs, k: int, halo: int) -> np.ndarray:
    """Block ``center`` (input ``k``) with the neighbours' borders around it; no padding where
    there is no neighbour (frame edges). ``nbrs`` follows ``NEIGHBOURS``.

    The window is allocated once and every piece copied into it (the tile is copied once);
    a tile without neighbours is ``center`` itself (kernels never modify their inputs)."""
    h = halo

    def border(pos: int, side: int):
        packet = nbrs[pos]
        return None if packet is None else packet[k][side]

    # the neighbours' facing borders: N's bottom, S's top, W's right, E's left
    north, south, west, east = border(1, 1), border(6, 0), border(3, 3), border(4, 2)
    if north is None and south is None and west is None and east is None:
        return center
    ny, nx = center.shape[-2:]
    top = h if north is not None else 0
    left = h if west is not None else 0
    bottom = h if south is not None else 0
    right = h if east is not None else 0
    out = np.empty((*center.shape[:-2], top + ny + bottom, left + nx + right), center.dtype)
    rows = slice(top, top + ny)
    cols = slice(left, left + nx)
    out[..., rows, cols] = center
    if north is not None:
        out[..., :top, cols] = north
    if south is not None:
        out[..., top + ny:, cols] = south
    if west is not None:
        out[..., rows, :left] = west
    if east is not None:
        out[..., rows, left + nx:] = east
    # corners: the diagonal neighbours' bottom (NW, NE) or top (SW, SE) borders, cut to h columns
    for pos, side, ys, xs, cut in ((0, 1, slice(0, top), slice(0, left), slice(-h, None)),
                                   (2, 1, slice(0, top), slice(left + nx, None), slice(0, h)),
                                   (5, 0, slice(top + ny, None), slice(0, left),
                                    slice(-h, None)),
                                   (7, 0, slice(top + ny, None), slice(left + nx, None),
                                    slice(0, h))):
        piece = border(pos, side)
        if piece is not None:
            out[..., ys, xs] = piece[..., cut]
    return out


def halo_call(func, halo: int, loc: tuple[int, int], shape: tuple[int, int], n_blocks: int,
               nbrs, *args, **kwargs):
    """Run ``func(*windows, *rest, crop=(ys, xs), **kwargs)``: the first ``n_blocks`` arguments
    are the tile's blocks, given their halo; the rest pass through."""
    blocks, rest = args[:n_blocks], args[n_blocks:]
    if halo > 0:
        windows = [window(b, nbrs, k, halo) for k, b in enumerate(blocks)]
    else:
        windows = list(blocks)
    windows += list(rest)
    top = halo if loc[0] > 0 else 0
    left = halo if loc[1] > 0 else 0
    crop = (slice(top, top + shape[0]), slice(left, left + shape[1]))
    return func(*windows, crop=crop, **kwargs)


def pack(dtype: np.dtype, fields: dict[str, np.ndarray], ny: int, nx: int) -> dict:
    """A tile kernel's outputs as one dask block: a dict of C-contiguous arrays in their own
    layout (leading axes first, (y, x) last) and the field dtypes of the structured ``dtype``
    that the packed dask array declares (its ``meta``). Nothing is copied for an output that
    is already so (the rate products), and a cropped one is copied once; the block itself is
    never a numpy array, only :func:`stcal_dask.engine.dataflow._unpack` reads it. (A structured
    (y, x) array cost two copies of every output per tile: records packed pixel-major, then
    each field unpacked.)"""
    out = {}
    for name, arr in fields.items():
        sub = dtype[name]
        base = sub.base if sub.shape else sub
        arr = np.ascontiguousarray(arr, dtype=base)
        if arr.shape != (*sub.shape, ny, nx):
            raise ValueError(f"tile output {name}: shape {arr.shape}, expected "
                             f"{(*sub.shape, ny, nx)}")
        out[name] = arr
    return out


def field_block(block: dict, name: str) -> np.ndarray:
    return block[name]


def globals_partial(gdq, gain, with_gain=True):
    # the gain block stays an input either way: a task fed by a single block of a cloned,
    # rechunked array trips dask's low-level fusion ("Cannot fuse tasks with multiple outputs")
    gain = gain if with_gain else None
    limit_threads()
    return jk.jump_globals_partial(gdq, gain)


def finalize_globals(merged, params):
    return jk.finalize_jump_globals(merged, params=params)


def sigclip_partial(sci, gdq, gain, params, jump_globals):
    if jump_globals.path != "sigclip":
        return None
    limit_threads()
    return jk.sigclip_reset_partial(sci, gdq, gain, params=params, jump_globals=jump_globals)


def merge_sigclip(*parts):
    parts = [p for p in parts if p is not None]
    return jk.merge_sigclip_reset_partials(*parts) if parts else None


def attach_sigclip(jump_globals, reset):
    if jump_globals.path != "sigclip":
        return jump_globals
    return jk.with_sigclip_reset(jump_globals, reset)


def jump_block(sci, gdq, pdq, gain, rn, jump_globals, *, crop, params, nframes, group_time,
                out_dtype):
    limit_threads()
    res = jk.detect_jumps_tile(
        sci, gdq, pdq, gain, rn, params=params, nframes=nframes, group_time=group_time,
        jump_globals=jump_globals,
    )
    ys, xs = crop
    ny, nx = ys.stop - ys.start, xs.stop - xs.start
    return pack(
        out_dtype,
        {
            "groupdq": res.groupdq[..., ys, xs],
            "pixeldq": res.pixeldq[ys, xs],
            "primary": res.primary_count[ys, xs],
        },
        ny,
        nx,
    )


def primary_sum(block) -> int:
    """The primary jumps of one packed jump tile (the sum of its ``primary`` map)."""
    return int(block["primary"].sum(dtype=np.int64))


def primary_count(jump_globals, *sums) -> np.int64:
    """stcal's primary-jump count of the frame from the tiles' :func:`primary_sum`
    (:func:`stcal_dask.kernels.jump.total_primary_crs`)."""
    return np.int64(jk.total_primary_crs(sum(sums), jump_globals))


def all_of(*flags) -> np.bool_:
    """True when every (small) boolean array given is all True."""
    return np.bool_(all(bool(np.all(f)) for f in flags))


def nan_everywhere(plane) -> np.ndarray:
    """(1, 1) bool: every value of this tile is NaN."""
    return np.array([[bool(np.isnan(plane).all())]])


def group0_saturated(gdq) -> np.ndarray:
    """(1, 1) bool: :func:`stcal_dask.kernels.ramp_fit.all_group0_saturated` of this
    (nints, ngroups, ty, tx) tile."""
    return np.array([[rk.all_group0_saturated(gdq)]])


def dims_partial(gdq, zf, params, trim=None):
    limit_threads()
    zf = None if zf is None else zf[:, 0]
    suppressed = False
    if trim is not None and (trim.first > 0 or trim.stop < gdq.shape[1]):
        suppressed = rk.effective_suppress(params, gdq.shape[1])
        _, gdq, _ = _miri_trim(None, gdq, trim, params)
    d = rk.fitopt_dims(gdq, params=params, zeroframe=zf, suppressed=suppressed)
    return (int(d.n_segments), int(d.n_crmag))


def miri_trim_partial(gdq, params):
    """Per tile: MIRI's "every pixel DO_NOT_USE" flags per group (see kernels.miri_groups)."""
    from stcal_dask.kernels import miri_groups as mg

    limit_threads()
    return mg.trim_partial(gdq, suppress=rk.effective_suppress(params, gdq.shape[1]))


def miri_trim_decide(*parts):
    from stcal_dask.kernels import miri_groups as mg

    trim = mg.decide_trim(mg.merge_trim_partials(*parts))
    if not trim.ok:
        from stcal_dask.errors import UserInputError

        raise UserInputError(
            "MIRI exposure: fewer than 2 groups remain once the groups that are DO_NOT_USE in "
            "every pixel are dropped (stcal's ramp fitting produces no rate for it)"
        )
    return trim


def _miri_trim(sci, gdq, trim, params):
    from stcal_dask.kernels import miri_groups as mg

    sup = rk.effective_suppress(params, gdq.shape[1])
    if sci is None:
        sci = np.empty((*gdq.shape[:2], 0, 0), dtype=np.float32)
    return mg.apply_trim(sci, gdq, trim, suppress=sup)


def dims_merge(*parts):
    return (max(p[0] for p in parts), max(p[1] for p in parts))


def fit_block_jumped(sci, jumped, gain, rn, *rest, **kwargs):
    """:func:`fit_block` on a jump tile's packed output (its ``groupdq`` and ``pixeldq``)."""
    return fit_block(sci, jumped["groupdq"], jumped["pixeldq"], gain, rn, *rest, **kwargs)


def fit_block(sci, gdq, pdq, gain, rn, *rest, params, timing, has_zf, has_dark, dims, out_dtype,
              has_trim=False):  # fmt: skip
    limit_threads()
    rest = list(rest)
    zf = rest.pop(0)[:, 0] if has_zf else None
    dark = rest.pop(0) if has_dark else None
    trim = rest.pop(0) if has_trim else None
    nseg, ncr = dims if dims is not None else (None, None)
    suppressed = False
    cl_gdq = None
    if trim is not None and (trim.first > 0 or trim.stop < gdq.shape[1]):
        # MIRI: stcal suppresses one-group ramps on the whole ramp, then drops the groups
        suppressed = rk.effective_suppress(params, gdq.shape[1])
        sci, gdq, cl_gdq = _miri_trim(sci, gdq, trim, params)
    res = rk.fit_ramps_tile(
        sci, gdq, pdq, gain, rn, params=params, timing=timing, zeroframe=zf,
        average_dark_current=dark, n_segments=nseg, n_crmag=ncr, suppressed=suppressed,
        chargeloss_groupdq=cl_gdq,
    )
    ny, nx = pdq.shape
    fields = {}
    for f in RATE_FIELDS:
        fields["rate_" + f] = getattr(res.rate, f)
        fields["ints_" + f] = getattr(res.rateints, f)
    if res.fitopt is not None:
        for f in (*SEG_FIELDS, "pedestal", "crmag"):
            fields["opt_" + f] = getattr(res.fitopt, f)
    return pack(out_dtype, fields, ny, nx)


# Large events (snowballs, showers): whole-plane tasks over the jump tiles' packed blocks (see
# stcal_dask.engine.dataflow._large_events). ``layout`` is the (row heights, column widths) of
# the tiling; ``blocks`` come in row-major order.


def assemble_plane(blocks, layout, get) -> np.ndarray:
    """The whole (ny, nx) plane made of ``get(block)`` of every tile."""
    ychunks, xchunks = layout
    first = get(blocks[0])
    out = np.empty((sum(ychunks), sum(xchunks)), dtype=first.dtype)
    k = 0
    y = 0
    for cy in ychunks:
        x = 0
        for cx in xchunks:
            out[y : y + cy, x : x + cx] = first if k == 0 else get(blocks[k])
            k += 1
            x += cx
        y += cy
    return out


def snowball_saturation(i, settings, layout, *blocks):
    """Step 1 of the snowballs for integration ``i`` (SATURATED bits of every group)."""
    from stcal_dask.kernels import large_events as le

    limit_threads()
    ngroups = blocks[0]["groupdq"].shape[1]
    sat = le.SAT
    cube = np.stack([
        assemble_plane(blocks, layout, lambda b, g=g: (b["groupdq"][i, g] & sat) != 0)
        for g in range(ngroups)
    ])
    return le.snowball_saturation(cube, settings=settings)


def snowball_planes(i, groups, settings, layout, satres, *blocks):
    """Step 2 of the snowballs for planes (``i``, g in ``groups``): (i, [(g, SnowballPlane)])."""
    from stcal_dask.kernels import large_events as le

    limit_threads()
    ngroups = blocks[0]["groupdq"].shape[1]
    jump = le.JUMP
    out = []
    for g in groups:
        plane = assemble_plane(blocks, layout, lambda b, g=g: (b["groupdq"][i, g] & jump) != 0)
        ext = le.extended_before(satres, g, plane.shape)
        out.append((g, le.snowball_plane(plane, ext, satres.sat[g], satres.next_sat[g],
                                         settings=settings, has_next=g < ngroups - 1)))
    return i, out


def snowball_apply(block, window, settings, sats, *planes):
    """Step 3 of the snowballs on one packed jump tile: the block with its new group DQ."""
    from stcal_dask.kernels import large_events as le

    limit_threads()
    gdq = block["groupdq"]
    nints, ngroups = gdq.shape[:2]
    balls = [[[] for _ in range(ngroups)] for _ in range(nints)]
    for i, part in planes:
        for g, res in part:
            balls[i][g] = res.rasters
    new = le.apply_snowballs(gdq, window, [s.extensions for s in sats], balls,
                             [s.cores for s in sats], settings=settings)
    return {**block, "groupdq": new}


def count_events(*parts) -> np.int64:
    """Total snowballs of :func:`snowball_planes` results, or showers of :func:`shower_planes`
    results."""
    n = 0
    for _, part in parts:
        for _, res in part:
            n += len(res) if isinstance(res, list) else int(res.count)
    return np.int64(n)


def shower_dnu(block):
    from stcal_dask.kernels import large_events as le

    return le.shower_dnu_partial(block["groupdq"], block["pixeldq"])


def shower_globals(settings, *parts):
    from stcal_dask.kernels import large_events as le

    a = np.logical_and.reduce([p[0] for p in parts])
    b = np.logical_and.reduce([p[1] for p in parts])
    return le.shower_globals(a, b, settings=settings)


def shower_ratio(sci, block, gain, rn, glob, settings):
    """Per tile: the masked difference ratios (None when the search does not run)."""
    from stcal_dask.kernels import large_events as le

    if not glob.run:
        return None
    limit_threads()
    return le.shower_ratio_tile(sci, block["groupdq"], block["pixeldq"], gain, rn,
                                settings=settings)


def shower_planes(i, groups, settings, layout, glob, *ratios):
    """Shower ellipses of planes (``i``, g in ``groups``): (i, [(g, [Ellipse])])."""
    from stcal_dask.kernels import large_events as le

    out = []
    if glob.run:
        limit_threads()
        for g in groups:
            if g < int(glob.first_good[i]) + 1:
                continue
            plane = assemble_plane(ratios, layout, lambda r, g=g: r[i, g - 1])
            ell = le.shower_plane(plane, settings=settings)
            if ell:
                out.append((g, ell))
    return i, out


def shower_apply(sci, block, gain, window, shape, settings, *planes):
    """Per packed jump tile: the block with the showers flagged (unchanged when none)."""
    from stcal_dask.kernels import large_events as le

    found = sorted(((i, g, ell) for i, part in planes for g, ell in part), key=lambda t: t[:2])
    if not found:
        return block
    limit_threads()
    new = le.apply_showers(sci, block["groupdq"], block["pixeldq"], gain, window, found,
                           settings=settings, shape=shape)
    return {**block, "groupdq": new}
