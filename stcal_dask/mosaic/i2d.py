"""The drizzled mosaic product (``X_i2d.zarr``, optionally ``X_i2d.fits``) built on a cluster.

:func:`build_mosaic` runs the whole dataflow:

1. one task per input reads its WCS and metadata and maps a coarse grid of its pixels onto the
   output (:func:`stcal_dask.mosaic.resample.read_input_exposure` and the tile index cells);
2. the client checks the inputs and builds the tile index
   (:func:`~stcal_dask.mosaic.resample.plan_mosaic`) and creates the zarr store's metadata under
   a temporary name, one zarr chunk per output tile;
3. one task per output tile drizzles its inputs (:func:`~stcal_dask.mosaic.resample.drizzle_tile`)
   and writes its block of every array straight into the store, returning only a few counts;
4. a last task consolidates the metadata and renames the store into place.

So the client never holds more than the WCSs and the index, and each worker only its tiles.

Store layout (zarr v3, opened lazily by ``xarray.open_zarr``): ``sci``, ``err`` (the inputs'
units), ``wht`` (weights), ``var_rnoise``, ``var_poisson`` (units squared), each ``(y, x)``
float32; ``con`` ``(ctx_plane, y, x)`` int32 (bit k of plane p: input 32 p + k contributed).
Attributes: ``product = "i2d"``, ``wcs_asdf`` (the output gwcs as ASDF text, the same attribute
``mosaic-wcs`` reads), ``units`` (JSON name -> unit), ``parameters`` (JSON of the
:class:`~stcal_dask.mosaic.resample.ResampleParams`), ``inputs``, ``skipped_inputs``,
``pixel_scale`` (arcsec), ``pixel_scale_ratio``, ``exposure_time``, ``tile``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stcal_dask.errors import UserInputError
from stcal_dask.mosaic import resample as rs

__all__ = [
    "MosaicResult",
    "build_mosaic",
    "index_input",
    "map_input",
    "open_i2d",
    "quicklook_png",
    "write_i2d_fits",
    "write_tile",
]


class MosaicResult(NamedTuple):
    """What :func:`build_mosaic` did."""

    path: Path
    shape: tuple[int, int]
    tiles: int
    tile: tuple[int, int]
    inputs_used: int
    skipped: list[str]
    covered_pixels: int
    """Output pixels with a positive weight."""
    written: Path | None = None
    """Where the store's data are: ``path`` once committed; within a caller's outputs block
    (``outputs=``), its temporary until that block ends."""

    @property
    def coverage(self) -> float:
        """Fraction of output pixels with a positive weight."""
        return self.covered_pixels / float(self.shape[0] * self.shape[1])


def index_input(path: str, index: int, out_wcs) -> tuple[rs.InputExposure, tuple]:
    """One index task: the input's metadata/readers and its coarse grid mapped to the output."""
    from stcal_dask.engine.threads import limit_threads, trim_heap

    limit_threads()
    exp = rs.read_input_exposure(path, index)
    reach = rs.input_reach(exp.wcs, out_wcs, exp.shape)
    trim_heap()
    return exp, reach


PIXMAP_MARGIN = 64
"""Output pixels (plus 8 input pixels' size) beyond the output within which an input's grid
cells must land for :func:`map_input` to compute its pixel map: more than the halo and slack
the tile index allows (an input the index nonetheless uses without a map gets it computed by
its tiles)."""


def map_input(indexed: tuple, out_wcs, path: str):
    """One pixel-map task, run as soon as the input's index task is done (while the client
    plans): :func:`~stcal_dask.mosaic.resample.write_pixmap` of the input (with the clip reads
    of its :class:`~stcal_dask.mosaic.resample.InputReach`, as the plan sets them), or None
    when none of its grid cells lands within :data:`PIXMAP_MARGIN` of the output."""
    exp, reach = indexed
    out_shape = rs.output_shape(out_wcs)
    if out_shape is not None:
        ob = reach.out_boxes[reach.valid]
        m = PIXMAP_MARGIN + 8.0 * max(float(reach.size), 1.0)
        ny, nx = out_shape
        near = ((ob[:, 1] >= -m) & (ob[:, 0] <= ny - 1 + m)
                & (ob[:, 3] >= -m) & (ob[:, 2] <= nx - 1 + m))
        if not near.any():
            return None
    exp = exp._replace(clip=reach.clip)
    return rs.write_pixmap(exp, out_wcs, path)


def write_tile(job: rs.TileJob, exposures, out_wcs, params, psr: float, variances, store: str,
               pixmaps: dict | None = None, after=None):
    """One tile task: drizzle the tile and write its block of every array; returns counts.
    ``pixmaps``: input index -> its pixel-map file (:func:`.resample.write_pixmap`).
    ``after``: ignored (the result of a task this one must follow in the graph)."""
    import zarr

    from stcal_dask.engine.threads import trim_heap

    out = rs.drizzle_tile(job, exposures, out_wcs, params, psr, variances, pixmaps)
    y0, y1, x0, x1 = job.tile
    group = zarr.open_group(store, mode="r+")
    for name in list(out):
        group[name][..., y0:y1, x0:x1] = out[name]
    covered = int(np.count_nonzero(out["wht"] > 0))
    del out
    trim_heap()  # the task's temporaries go back to the system, not into the worker's heap
    return covered, len(job.regions)


def _units(plan: rs.MosaicPlan) -> dict[str, str]:
    u = plan.units or ""
    sq = f"({u})^2" if u else ""
    units = {"sci": u, "wht": "", "err": u}
    for n in plan.variances:
        units[n] = sq
    if plan.params.enable_ctx:
        units["con"] = ""
    return units


STORE_CODEC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
"""Compression of every output array (Blosc: LZ4 on byte-shuffled values): about as small as
zarr's default (Zstandard) on mosaic tiles, at about a third of its CPU time in the tile tasks."""


def _create_store(partial: Path, plan: rs.MosaicPlan, extra_attrs: dict) -> list[str]:
    """Metadata of every output array (no chunk written); returns the array names.

    Written with zarr alone (no xarray, dask.array or pandas in this process while the cluster
    runs): the layout ``xarray.open_zarr`` reads, dimension names in each array's metadata,
    NaN (float) or 0 (context) fill values, the attributes on the group."""
    import zarr
    from zarr.codecs import BloscCodec

    from stcal_dask.engine.datamodel import plain
    from stcal_dask.mosaic.wcs import WCS_ATTR, wcs_to_asdf_text

    ny, nx = plan.out_shape
    ty, tx = plan.tile
    units = _units(plan)
    names = ["sci", "wht"]
    if plan.params.compute_err is not None and (
        plan.params.compute_err == "driz_err" or plan.variances
    ):
        names.append("err")
    names += list(plan.variances)
    attrs = {
        "product": "i2d",
        WCS_ATTR: wcs_to_asdf_text(plan.out_wcs),
        "units": json.dumps(units),
        "parameters": json.dumps(plan.params.as_dict()),
        "inputs": [e.path for e in plan.exposures],
        "skipped_inputs": list(plan.skipped),
        "pixel_scale": plan.output_pixel_scale,
        "pixel_scale_ratio": plan.pixel_scale_ratio,
        "exposure_time": float(sum(e.exposure_time or 0.0 for e in plan.exposures
                                   if e.path not in plan.skipped)),
        "tile": list(plan.tile),
    }
    attrs.update(extra_attrs)
    group = zarr.open_group(str(partial), mode="w-", zarr_format=3,
                            attributes={k: plain(v) for k, v in attrs.items()})
    codec = [BloscCodec(typesize=4, **STORE_CODEC)]
    for n in names:
        group.create_array(n, shape=(ny, nx), chunks=(ty, tx), dtype=np.float32,
                           fill_value=np.nan, dimension_names=("y", "x"), compressors=codec,
                           attributes={"units": units.get(n, "")})
    if plan.params.enable_ctx:
        npl = plan.n_planes
        group.create_array("con", shape=(npl, ny, nx), chunks=(npl, ty, tx), dtype=np.int32,
                           fill_value=0, dimension_names=("ctx_plane", "y", "x"),
                           compressors=codec, attributes={})
        names.append("con")
    return names


TILE_TASK_BUDGET = 64 * 2**20
"""Most bytes an automatically sized tile task is planned to use (about 640 x 640 output
pixels): larger tiles only hold more memory (a worker's peak is its start-up memory plus its
largest task). Each input's pixel map is computed once, not per tile, so smaller tiles add
little work (their inputs' rectangles overlap by the kernel's reach and one cell of the index
grid)."""


def _cluster_shape(client) -> tuple[int, int]:
    """(bytes one tile task may use: a quarter of a worker thread's share of its memory limit,
    at most :data:`TILE_TASK_BUDGET`; total threads)."""
    default = TILE_TASK_BUDGET
    if client is None:
        return default, os.cpu_count() or 1
    try:
        workers = list(client.scheduler_info()["workers"].values())
        per_thread = [w["memory_limit"] / max(w["nthreads"], 1) for w in workers
                      if w.get("memory_limit")]
        threads = sum(int(w["nthreads"]) for w in workers) or 1
    except Exception:  # an unusual scheduler: fall back to the defaults
        return default, 1
    budget = int(min(per_thread) / 4) if per_thread else default
    return min(budget, TILE_TASK_BUDGET), threads


def _auto_tile(shape, budget: int, threads: int, n_inputs: int) -> tuple[int, int]:
    """The budget's tile, smaller when that leaves fewer than 4 tiles per thread (keeping every
    thread busy), never below 256 pixels a side."""
    ty, tx = rs.choose_mosaic_tile(shape, budget, n_inputs)
    ny, nx = shape
    want = 4 * max(threads, 1)
    while math.ceil(ny / ty) * math.ceil(nx / tx) < want and max(ty, tx) > 256:
        ty, tx = max(256, ty // 2), max(256, tx // 2)
    return min(ty, ny), min(tx, nx)


def build_mosaic(
    inputs: Sequence,
    out_wcs,
    output,
    params: rs.ResampleParams | None = None,
    *,
    client=None,
    tile: Sequence[int] | None = None,
    overwrite: bool = False,
    output_pixel_scale: float | None = None,
    max_output_pixels: int = rs.DEFAULT_MAX_OUTPUT_PIXELS,
    quiet: bool = True,
    outputs=None,
    temporary: bool = False,
) -> MosaicResult:
    """Drizzle ``inputs`` onto ``out_wcs`` tile by tile and write the ``_i2d.zarr`` store.

    Parameters
    ----------
    inputs : paths of rate/cal products (JWST FITS or zarr stores) carrying a gwcs, in the
        order they are added (it matters: drizzle keeps a running weighted mean).
    out_wcs : gwcs.WCS with an array shape or bounding box (from ``mosaic-wcs``).
    output : the store to write (``X_i2d.zarr``); written under a temporary name and renamed
        into place when complete, never partially visible
        (:func:`stcal_dask.io.atomic.atomic_outputs`).
    params : ResampleParams (default: ResampleStep's defaults).
    client : a ``distributed.Client``; None runs on the current dask scheduler.
    tile : (ny, nx) output tile (= zarr chunk); default from the workers' memory limit.
    output_pixel_scale : arcsec; default the output WCS's scale at its centre.
    outputs : a caller's :class:`~stcal_dask.io.atomic.Outputs` block: the store is committed
        with that block's other outputs (the FITS product, the PNGs), not here.
    temporary : with ``outputs``, the store is a scratch store in ``output``'s folder, removed
        when that block ends (a FITS-only run); named like the outputs' temporaries, so a later
        run there removes it if this process is killed.

    Returns
    -------
    MosaicResult
    """
    from stcal_dask.io.atomic import atomic_outputs

    params = params or rs.ResampleParams()
    paths = [str(Path(os.fspath(p)).expanduser()) for p in inputs]
    output = Path(os.fspath(output)).expanduser().absolute()
    if temporary and outputs is None:
        raise ValueError("temporary=True needs the caller's outputs block (outputs=)")
    with atomic_outputs(inputs=paths, within=outputs) as out:
        if temporary:
            partial = out.scratch(output.parent, output.name)
        else:
            partial = out.reserve(output, overwrite=overwrite)
        pixmaps = out.scratch(output.parent, output.name + ".pixmaps")
        plan, counts = _build(paths, out_wcs, partial, params, client, tile, output_pixel_scale,
                              max_output_pixels, quiet, pixmaps)
    covered = int(sum(c for c, _ in counts))
    used = len(plan.exposures) - len(plan.skipped)
    return MosaicResult(output, plan.out_shape, len(plan.jobs), plan.tile, used,
                        list(plan.skipped), covered,
                        output if outputs is None else Path(partial))


def _plan(indexed, out_wcs, params, client, tile, output_pixel_scale, max_output_pixels):
    """The plan from the index tasks' results (the tile from the cluster's memory limits unless
    given); its warnings are re-issued for the caller."""
    exposures = [e for e, _ in indexed]
    cells = [c for _, c in indexed]
    budget, threads = _cluster_shape(client)
    if tile is None and out_wcs.array_shape is not None:
        tile = _auto_tile(out_wcs.array_shape, budget, threads, len(exposures))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        plan = rs.plan_mosaic(
            exposures, out_wcs, params, cells=cells, tile=tile,
            memory_budget_bytes=budget, output_pixel_scale=output_pixel_scale,
            max_output_pixels=max_output_pixels,
        )
    for w in caught:
        warnings.warn(str(w.message), w.category, stacklevel=4)
    return plan


def _build_pipelined(paths, out_wcs, partial, params, client, tile, output_pixel_scale,
                     max_output_pixels, quiet, pixmaps: Path, token: str):
    """:func:`_build` on a distributed client, with no pause between the phases: each input's
    pixel-map task (:func:`map_input`) is submitted with its index task and runs as soon as
    that is done, while the client gathers the index, plans and creates the store; each tile
    task then starts as soon as the maps of its inputs are written."""
    from stcal_dask.engine.threads import trim_heap
    from stcal_dask.io.zarr_chunks import consolidate_store

    n = len(paths)
    # a key of its own (hash=False): a key hashed from the WCS would be the one of an equal WCS
    # scattered by an earlier mosaic on this client, whose release may still be under way
    wcs_future = client.scatter(out_wcs, broadcast=True, hash=False)
    index = client.map(index_input, paths, range(n), [wcs_future] * n,
                       key=[f"mosaic-index-{i}-{token}" for i in range(n)], pure=False)
    Path(pixmaps).mkdir()
    maps = [client.submit(map_input, f, wcs_future, str(Path(pixmaps) / f"{k}.npy"),
                          key=f"mosaic-pixmap-{k}-{token}", pure=False)
            for k, f in enumerate(index)]
    tiles: list = []
    try:
        indexed = client.gather(index)
        for f in index:
            f.release()  # the pixel-map tasks hold them until they ran
        plan = _plan(indexed, out_wcs, params, client, tile, output_pixel_scale,
                     max_output_pixels)
        del indexed
        _create_store(partial, plan, {})
        [shared_exps] = client.scatter([plan.exposures], broadcast=True, hash=False)
        previous_whole = None
        for i, job in enumerate(plan.jobs):
            task = client.submit(
                write_tile, job, shared_exps, wcs_future, plan.params, plan.pixel_scale_ratio,
                plan.variances, str(partial), {k: maps[k] for k, _ in job.regions},
                # the tiles that drizzle an input with its whole clip hold its whole pixel map:
                # one after the other, never two at once in the cluster
                after=previous_whole if job.whole else None,
                key=f"mosaic-tile-{i}-{token}", pure=False,
            )
            if job.whole:
                previous_whole = task
            tiles.append(task)
        trim_heap()  # what the index and the plan freed, before the tiles run
        if not quiet:
            from distributed import progress

            progress(tiles, notebook=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        counts = client.gather(tiles)
    finally:
        client.cancel(index + maps + tiles)
    consolidate_store(str(partial))
    return plan, counts


def _build(paths, out_wcs, partial, params, client, tile, output_pixel_scale, max_output_pixels,
           quiet, pixmaps: Path):
    """The index, the plan, the store's metadata, one task per input writing its whole pixel
    map once into the folder ``pixmaps`` (removed at the end) and the tile tasks, which read
    their rectangles of those maps (into ``partial``)."""
    import dask

    from stcal_dask.engine.cluster import compute
    from stcal_dask.io.atomic import remove_path
    from stcal_dask.io.zarr_chunks import consolidate_store

    if not paths:
        raise UserInputError("no inputs given: need at least one rate or cal product")
    for p in paths:
        if not Path(p).exists():
            raise UserInputError(f"input {p} does not exist")
    token = uuid.uuid4().hex[:10]
    if client is not None:
        try:
            return _build_pipelined(paths, out_wcs, partial, params, client, tile,
                                    output_pixel_scale, max_output_pixels, quiet, pixmaps, token)
        finally:
            remove_path(pixmaps)
    indexed = dask.compute(*[
        dask.delayed(index_input, pure=False)(p, i, out_wcs)
        for i, p in enumerate(paths)
    ])
    plan = _plan(indexed, out_wcs, params, client, tile, output_pixel_scale, max_output_pixels)
    del indexed  # the index grids (~1 MiB per input) are in the plan's jobs
    _create_store(partial, plan, {})
    shared_exps = dask.delayed(plan.exposures, traverse=False)
    shared_wcs = dask.delayed(out_wcs, traverse=False)
    Path(pixmaps).mkdir()
    maps = {
        k: dask.delayed(rs.write_pixmap, pure=False)(
            plan.exposures[k], shared_wcs, str(Path(pixmaps) / f"{k}.npy"),
            dask_key_name=f"mosaic-pixmap-{k}-{token}",
        )
        for k in sorted({k for job in plan.jobs for k, _ in job.regions})
    }
    tasks = []
    previous_whole = None
    for i, job in enumerate(plan.jobs):
        task = dask.delayed(write_tile, pure=False)(
            job, shared_exps, shared_wcs, plan.params, plan.pixel_scale_ratio,
            plan.variances, str(partial), {k: maps[k] for k, _ in job.regions},
            # the tiles that drizzle an input with its whole clip hold its whole pixel map:
            # one after the other, never two at once in the cluster
            after=previous_whole if job.whole else None,
            dask_key_name=f"mosaic-tile-{i}-{token}",
        )
        if job.whole:
            previous_whole = task
        tasks.append(task)
    from stcal_dask.engine.threads import trim_heap

    trim_heap()  # what the index and the plan freed, before the tiles run
    try:
        counts = compute(*tasks, quiet=quiet, client=client)
    finally:
        remove_path(pixmaps)
    consolidate_store(str(partial))
    return plan, counts


def open_i2d(path):
    """Open an ``_i2d.zarr`` store lazily (xarray Dataset of dask arrays) with its gwcs in
    ``attrs["wcs"]``."""
    import xarray as xr

    from stcal_dask.mosaic.wcs import WCS_ATTR, wcs_from_asdf_text

    p = Path(os.fspath(path)).expanduser()
    if not p.is_dir():
        raise UserInputError(f"mosaic {p} does not exist or is not a zarr store")
    ds = xr.open_zarr(str(p), mask_and_scale=False)
    if ds.attrs.get("product") != "i2d":
        raise UserInputError(f"{p} is not an i2d mosaic store (attribute product != 'i2d')")
    ds.attrs["wcs"] = wcs_from_asdf_text(ds.attrs[WCS_ATTR], f"{p} attribute '{WCS_ATTR}'")
    return ds


_I2D_EXTENSIONS = {"SCI": ("data", "sci"), "ERR": ("err", "err"), "WHT": ("wht", "wht"),
                   "CON": ("con", "con"), "VAR_RNOISE": ("var_rnoise", "var_rnoise"),
                   "VAR_POISSON": ("var_poisson", "var_poisson"),
                   "VAR_FLAT": ("var_flat", "var_flat")}
"""FITS extension -> (ImageModel attribute, store array)."""

_STRUCTURAL = {"XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "PCOUNT", "GCOUNT",
               "EXTNAME"}


def _asdf_with_shapes(asdf_bytes: bytes, shapes: dict, headers) -> bytes:
    """stdatamodels' ASDF document of a model saved with 1-pixel arrays, made to describe the
    full arrays: each FITS-linked array's ``shape``, and the ``_fits_hash`` (stdatamodels' hash
    of every header but the ASDF one's) of the headers actually written. Binary blocks after
    the tree are kept; their optional index (byte offsets the longer tree would shift) is
    dropped."""
    import hashlib
    import re

    end = asdf_bytes.index(b"\n...\n") + 5  # the YAML tree; binary blocks may follow
    text = asdf_bytes[:end].decode("utf-8")
    blocks = asdf_bytes[end:]
    index = blocks.find(b"#ASDF BLOCK INDEX")
    if index >= 0:  # optional, and its offsets would be off: readers then scan the blocks
        blocks = blocks[:index]
    for ext, shape in shapes.items():
        pattern = rf"(source: fits:{ext},1\n(?:[ \t]+\w+: [^\n]*\n)*?[ \t]+shape: )\[[^\]]*\]"
        text, n = re.subn(pattern, lambda m, s=shape: m.group(1) + str(list(s)), text)
        if n != 1:
            raise RuntimeError(f"the ASDF tree has {n} arrays linked to extension {ext}")
    digest = hashlib.sha256("".join(str(h) for h in headers).encode()).hexdigest()
    text, n = re.subn(r"_fits_hash: [0-9a-f]+", f"_fits_hash: {digest}", text)
    if n != 1:
        raise RuntimeError("the ASDF tree has no _fits_hash")
    return text.encode("utf-8") + blocks


def write_i2d_fits(store, path, *, overwrite: bool = False, outputs=None) -> Path:
    """Write an ``_i2d.zarr`` store as a JWST ``_i2d.fits`` (stdatamodels ImageModel layout).

    Extensions SCI, ERR, CON, WHT, VAR_RNOISE, VAR_POISSON in stdatamodels' order and the gwcs in
    the ASDF extension (``meta.wcs``). The headers and the ASDF tree are stdatamodels' own (a
    model with the same metadata and 1-pixel arrays, saved in memory; the ASDF tree then told
    the full shapes); the data are copied from the store one zarr chunk at a time into their
    places in the file (:func:`stcal_dask.io.fits_io.write_fits_images`), so this process never
    holds a whole mosaic array. Written under a temporary name and renamed (when a caller's
    ``outputs`` block is given: when that block ends, with its other outputs).
    """
    import io as _io

    from astropy.io import fits

    from stcal_dask.io.fits_io import write_fits_images
    from stcal_dask.io.wcs_asdf import asdf_hdu, read_asdf_bytes

    try:
        from stdatamodels.jwst.datamodels import ImageModel
    except ImportError:  # pragma: no cover - stdatamodels is in the test extra
        raise UserInputError("writing the i2d FITS product needs stdatamodels installed") from None
    ds = open_i2d(store)
    ones = {}
    for attr, name in _I2D_EXTENSIONS.values():
        if name in ds:
            lead = ds[name].shape[:-2]
            ones[attr] = np.zeros(lead + (1, 1), np.int32 if name == "con" else np.float32)
    model = ImageModel(**ones)
    try:
        model.meta.wcs = ds.attrs["wcs"]
        units = json.loads(ds.attrs.get("units", "{}"))
        if units.get("sci"):
            model.meta.bunit_data = units["sci"]
            model.meta.bunit_err = units["sci"]
        params = json.loads(ds.attrs.get("parameters", "{}"))
        model.meta.resample.pixfrac = params.get("pixfrac")
        model.meta.resample.pixel_scale_ratio = float(ds.attrs.get("pixel_scale_ratio", 1.0))
        model.meta.resample.weight_type = params.get("weight_type")
        model.meta.resample.product_exposure_time = float(ds.attrs.get("exposure_time", 0.0))
        model.meta.asn.pool_name = ""
        area = math.radians(float(ds.attrs["pixel_scale"]) / 3600.0) ** 2
        model.meta.photometry.pixelarea_steradians = area
        model.meta.photometry.pixelarea_arcsecsq = float(ds.attrs["pixel_scale"]) ** 2
        model.meta.filename = Path(os.fspath(path)).name
        buf = _io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.to_fits(buf)
    finally:
        model.close()
    buf.seek(0)
    with fits.open(buf) as small:
        primary = small[0].header.copy()
        extensions, shapes = [], {}
        for hdu in small[1:]:
            if hdu.name == "ASDF":
                continue
            arr = ds[_I2D_EXTENSIONS[hdu.name][1]].data
            extra = {c.keyword: (c.value, c.comment) for c in hdu.header.cards
                     if c.keyword not in _STRUCTURAL}
            extensions.append((hdu.name, arr, hdu.data.dtype.newbyteorder("="), extra))
            shapes[hdu.name] = tuple(int(n) for n in arr.shape)
        asdf_bytes = read_asdf_bytes(small)

    def tail(headers):
        return asdf_hdu(_asdf_with_shapes(asdf_bytes, shapes, headers))

    return write_fits_images(path, primary, extensions, tail=tail, overwrite=overwrite,
                             inputs=[store], outputs=outputs)


def _decimated(arr, max_side: int) -> np.ndarray:
    """Every k-th pixel (k so both sides fit in ``max_side``), read chunk by chunk."""
    ny, nx = arr.shape[-2:]
    k = max(1, math.ceil(max(ny, nx) / max_side))
    return np.asarray(arr.data[..., ::k, ::k].compute(scheduler="threads"), dtype=np.float64)


def _stretch(img: np.ndarray, kind: str) -> np.ndarray:
    """0..1 display values: ``asinh`` (soft knee at the sky noise) or ``zscale`` (linear)."""
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return np.zeros_like(img)
    if kind == "zscale":
        from astropy.visualization import ZScaleInterval

        lo, hi = ZScaleInterval().get_limits(finite)
        out = (img - lo) / max(hi - lo, 1e-30)
    else:
        lo, med, hi = np.percentile(finite, [0.5, 50.0, 99.8])
        noise = max(np.percentile(finite, 84.0) - med, 1e-30)
        a = np.arcsinh((img - lo) / noise)
        out = a / max(np.arcsinh((hi - lo) / noise), 1e-30)
    out = np.clip(out, 0.0, 1.0)
    out[~np.isfinite(img)] = 0.0
    return out


def quicklook_png(store, path, *, array: str = "sci", stretch: str = "asinh",
                  max_side: int = 2048, outputs=None) -> Path:
    """A PNG preview of one mosaic array (decimated to ``max_side`` pixels, north as stored).

    ``stretch``: ``asinh`` (default for ``sci``) or ``zscale``; the weight map is shown linearly
    between 0 and its 99.5th percentile. ``outputs``: as in :func:`write_i2d_fits`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stcal_dask.io.atomic import atomic_outputs

    if stretch not in ("asinh", "zscale"):
        raise UserInputError(f"stretch must be asinh or zscale, got {stretch!r}")
    ds = open_i2d(store)
    if array not in ds:
        raise UserInputError(f"mosaic {store} has no array {array!r}")
    img = _decimated(ds[array], max_side)
    if img.ndim == 3:  # context: number of contributing inputs
        img = np.sum([np.unpackbits(p.astype(">u4").view(np.uint8).reshape(p.shape + (4,)),
                                    axis=-1).sum(-1) for p in img.astype(np.uint32)], axis=0)
    if array == "sci":
        disp = _stretch(img, stretch)
    else:
        finite = img[np.isfinite(img)]
        hi = np.percentile(finite, 99.5) if finite.size else 1.0
        disp = np.clip(np.nan_to_num(img) / (hi or 1.0), 0.0, 1.0)
    path = Path(os.fspath(path)).expanduser().absolute()
    with atomic_outputs(inputs=[store], within=outputs) as out:
        partial = out.reserve(path, overwrite=True, suffix=".png")
        plt.imsave(str(partial), disp, cmap="gray", origin="lower", vmin=0.0, vmax=1.0)
    return path
