"""Zarr (v3) stores of ramps and products.

* :func:`write_ramp` stores a ramp with chunks ``(all integrations, all groups, tile_y, tile_x)``;
  the tile comes from a memory budget (:func:`stcal_dask.engine.datamodel.choose_tile_size`)
  unless given.
* :func:`open_ramp` opens one lazily (dask arrays over the zarr chunks) and validates it; the
  store must be complete (every chunk present, :func:`stcal_dask.io.zarr_chunks.check_complete`)
  and a chunk that cannot be decoded stops the computation with one line naming it
  (:class:`stcal_dask.io.zarr_chunks.ChunkReader`).
* :func:`write_dataset_atomic` writes any Dataset (rate, rateints, fitopt, a flagged ramp) under
  a temporary name and renames it into place when complete; with ``compute=False`` it returns a
  :class:`PendingWrite` whose ``delayed`` the caller computes (e.g. on a distributed cluster with a
  progress bar, together with the other outputs so the graph is shared).

Stores carry no coordinate variables and no CF ``_FillValue`` (NaN is data, not "missing"), so
every array reads back with its own dtype and values (stores are opened with
``mask_and_scale=False``). Every chunk is written, also one that equals the fill value
(``write_empty_chunks=True``): an absent chunk then always means an incomplete store, and a
store is verified complete before it is renamed into place.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from stcal_dask.engine.datamodel import (
    RAMP_VARIABLES,
    apply_chunks,
    plain,
    ramp_chunks,
    validate_ramp,
)
from stcal_dask.errors import UserInputError
from stcal_dask.io.atomic import (
    PendingWrite,
    atomic_outputs,
    file_identity,
    remove_path,
    was_committed,
)
from stcal_dask.io.zarr_chunks import ChunkReader, check_complete, consolidate_store

__all__ = ["PendingWrite", "finish_store", "open_product", "open_ramp", "write_dataset_atomic",
           "write_ramp"]


def _regular_chunks(chunks: tuple[int, ...]) -> bool:
    return all(c == chunks[0] for c in chunks[:-1]) and chunks[-1] <= chunks[0]


def _prepare_for_zarr(ds: xr.Dataset) -> tuple[xr.Dataset, dict]:
    """Drop stale encodings, make dask chunks zarr-compatible, JSON-clean attrs; encoding dict."""
    ds = ds.copy(deep=False)
    encoding = {}
    for name in list(ds.variables):
        var = ds[name]
        var.encoding = {}
        if isinstance(var.data, da.Array):
            chunks = var.data.chunks
            if not all(_regular_chunks(c) for c in chunks):
                var = var.chunk({d: max(c) for d, c in zip(var.dims, chunks, strict=True)})
                chunks = var.data.chunks
            zchunks = tuple(max(c[0], 1) for c in chunks)
        else:
            zchunks = tuple(max(n, 1) for n in var.shape)
        ds[name] = var
        encoding[name] = {"chunks": zchunks, "_FillValue": None}
    ds.attrs = {k: plain(v) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {
            k: plain(v) for k, v in ds[name].attrs.items() if k not in ("_FillValue",)
        }
    return ds, encoding


def write_dataset_atomic(ds: xr.Dataset, path, *, overwrite: bool = False, compute: bool = True,
                         encoding: dict | None = None):
    """Write a Dataset to a zarr v3 store atomically.

    The store is written to a temporary beside ``path`` and renamed to ``path`` when complete
    (:func:`stcal_dask.io.atomic.atomic_outputs`); with ``overwrite`` an existing store is
    replaced only then. Dask chunks become zarr chunks (irregular dask chunks are regularised
    first).

    Parameters
    ----------
    ds: any Dataset (numpy or dask backed).
    path: the store to create.
    overwrite: replace an existing ``path``; otherwise an existing ``path`` is an error.
    compute: True: write now on the active dask scheduler and return the final ``Path``
        (the partial store is removed if the write fails). False: write only the metadata now and
        return a :class:`PendingWrite` (add it to an ``atomic_outputs`` block, or compute its
        ``delayed``, which writes the chunks and renames the store into place;
        ``pending.abort()`` cleans up after a failure).
    encoding: extra per-variable zarr encoding merged over the defaults.

    Raises
    ------
    UserInputError: ``path`` exists and ``overwrite`` is False, or its directory does not exist.
    """
    with atomic_outputs() as out:
        partial = out.reserve(path, overwrite=overwrite)
        ds, enc = _prepare_for_zarr(ds)
        for name, extra in (encoding or {}).items():
            enc.setdefault(name, {}).update(extra)
        chunks = ds.to_zarr(
            partial, mode="w-", zarr_format=3, consolidated=False, encoding=enc, compute=False,
            write_empty_chunks=True,
        )
        written = dask.delayed(finish_store, pure=False)(
            str(partial), str(out.final_path(partial)), chunks,
            identity=file_identity(partial))
        pending = out.detach(written)
    return pending.compute() if compute else pending


def finish_store(partial: str, final: str, *_deps, identity=None) -> str:
    """Verify that the written store ``partial`` holds every chunk of every array, then
    consolidate its metadata (:func:`consolidate_store`); returns ``partial``.

    Extra positional arguments are ignored (they make the step depend on the write tasks).
    ``identity``: the partial store's :func:`~stcal_dask.io.atomic.file_identity`; when the
    store was already renamed to ``final`` (this task running again after the commit) there is
    nothing left to do but remove the chunks that the write tasks running again put in a new
    ``partial``.

    Raises
    ------
    UserInputError: a chunk is missing (e.g. removed by another process while writing); the
        caller removes the partial store, so nothing appears at ``final``.
    """
    if was_committed(final, identity):
        remove_path(partial)  # what the chunk writes running again recreated
        return partial
    check_complete(partial, what=f"written store for {final}")
    return consolidate_store(partial)


def write_ramp(ds: xr.Dataset, path, *, overwrite: bool = False, tile=None,
               memory_budget_bytes: int | None = None, compute: bool = True):
    """Validate a ramp and store it as zarr v3 with chunks (all ints, all groups, tile_y, tile_x).

    Parameters
    ----------
    ds: a ramp Dataset (schema in :mod:`stcal_dask.engine.datamodel`).
    path: the store to create (atomically, see :func:`write_dataset_atomic`).
    overwrite: replace an existing store.
    tile: ``(tile_y, tile_x)``; default chosen by
        :func:`~stcal_dask.engine.datamodel.choose_tile_size` from ``memory_budget_bytes``
        (default :data:`~stcal_dask.engine.datamodel.DEFAULT_MEMORY_BUDGET`).
    compute: as in :func:`write_dataset_atomic`.

    Returns the final ``Path`` (or a :class:`PendingWrite` with ``compute=False``).
    """
    source = str(ds.attrs.get("source", "ramp")) if isinstance(ds, xr.Dataset) else "ramp"
    ds = validate_ramp(ds, source=source)
    ds = ds[[n for n in RAMP_VARIABLES if n in ds.data_vars]]
    ds = ds.chunk(ramp_chunks(ds, tile=tile, memory_budget_bytes=memory_budget_bytes))
    return write_dataset_atomic(ds, path, overwrite=overwrite, compute=compute)


def _open_store(path, what: str) -> tuple[Path, xr.Dataset]:
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise UserInputError(f"{what} {p} does not exist")
    try:
        ds = xr.open_zarr(
            p, consolidated=False, chunks={}, mask_and_scale=False, decode_times=False
        )
    except Exception as exc:  # zarr raises a variety of errors for non-stores
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{p} is not a zarr {what} ({msg})") from None
    return p, ds


def _checked(p: Path, ds: xr.Dataset, names, what: str) -> xr.Dataset:
    """``ds`` with the variables ``names`` checked complete in the store ``p`` (a listing of its
    keys, no chunk read) and read through :class:`ChunkReader` (a chunk that cannot be decoded
    names itself)."""
    import zarr
    from dask.base import tokenize

    names = [n for n in names if isinstance(ds[n].data, da.Array)]
    check_complete(p, names, what=what)
    group = zarr.open_group(str(p), mode="r", use_consolidated=False)
    out = ds.copy(deep=False)
    for name in names:
        array = group[name]
        meta_file = p / name / "zarr.json"
        stamp = meta_file.stat().st_mtime_ns if meta_file.exists() else 0
        data = da.from_array(
            ChunkReader(p, name, array),
            chunks=ds[name].data.chunks,
            name=f"zarr-{name}-{tokenize(str(p.absolute()), name, stamp)}",
            lock=False,
            asarray=False,
            meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        )
        out[name] = ds[name].copy(data=data)
    return out


def open_ramp(path, *, chunks=None) -> xr.Dataset:
    """Open a zarr ramp store lazily and validate it.

    Every variable is a dask array over the store's chunks (nothing is read but metadata).
    ``chunks`` optionally re-chunks: ``(tile_y, tile_x)``, ``"auto"`` or a dict (see
    :func:`~stcal_dask.engine.datamodel.make_ramp_dataset`). ``attrs["source"]`` is set to the path.

    Raises
    ------
    UserInputError: the path does not exist, is not a zarr store, or is not a valid ramp.
    """
    p, ds = _open_store(path, "ramp store")
    ds.attrs["source"] = str(p)
    validate_ramp(ds, source=str(p))  # schema errors first (metadata only)
    ds = _checked(p, ds, [n for n in RAMP_VARIABLES if n in ds.data_vars], "ramp store")
    ds = validate_ramp(ds, source=str(p))
    return apply_chunks(ds, chunks)


def open_product(path) -> xr.Dataset:
    """Open a product store (rate, rateints, fitopt) lazily; raise UserInputError if missing."""
    p, ds = _open_store(path, "product store")
    return _checked(p, ds, list(ds.data_vars), "product store")
