"""Zarr (v3) stores of ramps and products.

* :func:`write_ramp` stores a ramp with chunks ``(all integrations, all groups, tile_y, tile_x)``;
  the tile comes from a memory budget (:func:`stcal_dask.datamodel.choose_tile_size`) unless given.
* :func:`open_ramp` opens one lazily (dask arrays over the zarr chunks) and validates it.
* :func:`simulate_to_zarr` generates a synthetic exposure tile by tile straight into a store,
  so a cube larger than memory can be produced on any dask scheduler.
* :func:`write_dataset_atomic` writes any Dataset (rate, rateints, fitopt, a flagged ramp) under
  a temporary name and renames it into place when complete; with ``compute=False`` it returns a
  :class:`PendingWrite` whose ``delayed`` the caller computes (e.g. on a distributed cluster with a
  progress bar, together with the other outputs so the graph is shared).

Stores carry no coordinate variables and no CF ``_FillValue`` (NaN is data, not "missing"), so
every array reads back with its own dtype and values (stores are opened with
``mask_and_scale=False``).
"""

from __future__ import annotations

import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from stcal_dask.datamodel import (
    DEFAULT_MEMORY_BUDGET,
    RAMP_VARIABLES,
    _apply_chunks,
    _normalize_tile,
    _plain,
    choose_tile_size,
    ramp_chunks,
    validate_ramp,
)
from stcal_dask.errors import UserInputError
from stcal_dask.io._atomic import (
    PendingWrite,
    check_target,
    cleanup_failed,
    commit,
    partial_path,
    remove_path,
)

__all__ = ["PendingWrite", "open_ramp", "simulate_to_zarr", "write_dataset_atomic", "write_ramp"]


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
    ds.attrs = {k: _plain(v) for k, v in ds.attrs.items()}
    for name in ds.variables:
        ds[name].attrs = {
            k: _plain(v) for k, v in ds[name].attrs.items() if k not in ("_FillValue",)
        }
    return ds, encoding


def write_dataset_atomic(ds: xr.Dataset, path, *, overwrite: bool = False, compute: bool = True,
                         encoding: dict | None = None):
    """Write a Dataset to a zarr v3 store atomically.

    The store is written to ``.NAME.partial-<uuid>`` in the destination directory and renamed to
    ``path`` when complete; with ``overwrite`` an existing store is replaced only then. Dask
    chunks become zarr chunks (irregular dask chunks are regularised first).

    Parameters
    ----------
    ds: any Dataset (numpy or dask backed).
    path: the store to create.
    overwrite: replace an existing ``path``; otherwise an existing ``path`` is an error.
    compute: True: write now on the active dask scheduler and return the final ``Path``
        (the partial store is removed if the write fails). False: write only the metadata now and
        return a :class:`PendingWrite` whose ``delayed`` writes the chunks and renames the store
        into place when computed (``pending.abort()`` cleans up after a failure).
    encoding: extra per-variable zarr encoding merged over the defaults.

    Raises
    ------
    UserInputError: ``path`` exists and ``overwrite`` is False, or its directory does not exist.
    """
    path = check_target(path, overwrite=overwrite)
    partial = partial_path(path)
    ds, enc = _prepare_for_zarr(ds)
    for name, extra in (encoding or {}).items():
        enc.setdefault(name, {}).update(extra)
    try:
        delayed_write = ds.to_zarr(
            partial, mode="w-", zarr_format=3, consolidated=False, encoding=enc, compute=False
        )
    except BaseException:
        remove_path(partial)
        raise
    if compute:
        try:
            dask.compute(delayed_write)
            consolidate_store(str(partial))
            commit(partial, path, overwrite)
        except BaseException:
            cleanup_failed(partial)
            raise
        return path
    consolidated = dask.delayed(consolidate_store, pure=False)(str(partial), delayed_write)
    final = dask.delayed(commit, pure=False)(str(partial), str(path), overwrite, consolidated)
    return PendingWrite(path=path, partial=partial, delayed=final)


def consolidate_store(store: str, *_deps) -> str:
    """Write the store's consolidated metadata (one read instead of one per array when the store
    is opened; ``xarray.open_zarr`` looks for it first and warns without it). Zarr v3 keeps it as
    an extension, which zarr-python announces with a warning: silenced here, for that message
    only, by a process-wide filter (``warnings.catch_warnings`` is not thread-safe: with two
    stores consolidated by two threads at once, one thread's exit restored the filters while the
    other was still inside and the warning escaped)."""
    import warnings

    import zarr

    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    zarr.consolidate_metadata(store, zarr_format=3)
    return store


def write_ramp(ds: xr.Dataset, path, *, overwrite: bool = False, tile=None,
               memory_budget_bytes: int | None = None, compute: bool = True):
    """Validate a ramp and store it as zarr v3 with chunks (all ints, all groups, tile_y, tile_x).

    Parameters
    ----------
    ds: a ramp Dataset (schema in :mod:`stcal_dask.datamodel`).
    path: the store to create (atomically, see :func:`write_dataset_atomic`).
    overwrite: replace an existing store.
    tile: ``(tile_y, tile_x)``; default chosen by
        :func:`~stcal_dask.datamodel.choose_tile_size` from ``memory_budget_bytes``
        (default :data:`~stcal_dask.datamodel.DEFAULT_MEMORY_BUDGET`).
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


def open_ramp(path, *, chunks=None) -> xr.Dataset:
    """Open a zarr ramp store lazily and validate it.

    Every variable is a dask array over the store's chunks (nothing is read but metadata).
    ``chunks`` optionally re-chunks: ``(tile_y, tile_x)``, ``"auto"`` or a dict (see
    :func:`~stcal_dask.datamodel.make_ramp_dataset`). ``attrs["source"]`` is set to the path.

    Raises
    ------
    UserInputError: the path does not exist, is not a zarr store, or is not a valid ramp.
    """
    p, ds = _open_store(path, "ramp store")
    ds.attrs["source"] = str(p)
    ds = validate_ramp(ds, source=str(p))
    return _apply_chunks(ds, chunks)


def _simulated_tile(cfg, y0, y1, x0, x1):
    from stcal_dask.simulate import simulate_region

    return simulate_region(cfg, y0, y1, x0, x1)


def _field(exposure, name):
    return getattr(exposure, name)


def simulated_arrays(cfg, tile: tuple[int, int], fields: dict) -> dict[str, da.Array]:
    """Dask arrays of the fields of ``simulate_region(cfg, ...)``, one shared task per tile.

    ``fields`` maps a field name of the simulated exposure to ``(leading shape, dtype)``; every
    array is (*leading, ny, nx), chunked by ``tile = (ty, tx)``.
    """
    nints, ngroups, ny, nx = cfg.shape
    ty, tx = tile
    blocks = {n: [] for n in fields}
    for y0 in range(0, ny, ty):
        y1 = min(y0 + ty, ny)
        rows = {n: [] for n in fields}
        for x0 in range(0, nx, tx):
            x1 = min(x0 + tx, nx)
            tile_task = dask.delayed(_simulated_tile, pure=True)(cfg, y0, y1, x0, x1)
            for n, (lead, dtype) in fields.items():
                part = dask.delayed(_field, pure=True)(tile_task, n)
                rows[n].append(
                    da.from_delayed(part, shape=(*lead, y1 - y0, x1 - x0), dtype=dtype)
                )
        for n in fields:
            blocks[n].append(rows[n])
    return {n: da.block(b) for n, b in blocks.items()}


def simulation_timing(cfg) -> dict:
    """The JWST timing keywords of a simulated exposure."""
    nints, ngroups = cfg.shape[:2]
    return {
        "NINTS": nints, "NGROUPS": ngroups, "NFRAMES": cfg.nframes, "GROUPGAP": cfg.groupgap,
        "TFRAME": cfg.frame_time, "TGROUP": cfg.group_time, "DRPFRMS1": cfg.drop_frames1,
    }


def simulate_ramp_lazy(cfg, *, tile=None, memory_budget_bytes: int | None = None) -> xr.Dataset:
    """A lazy ramp Dataset of the synthetic exposure ``cfg``, one dask task per tile.

    Each tile is produced by :func:`stcal_dask.simulate.simulate_region` (once per tile, shared
    by all variables), so the values equal :func:`stcal_dask.simulate.simulate_exposure` bit for
    bit whatever the tile. Default tiles come from the memory budget, rounded to multiples of the
    generator's 128-pixel cells where possible.
    """
    from stcal_dask.datamodel import make_ramp_dataset
    from stcal_dask.simulate import CELL

    try:
        cfg.validate()
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    nints, ngroups, ny, nx = cfg.shape
    if tile is None:
        ty, tx = choose_tile_size(nints, ngroups, ny, nx,
                                  memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
        ty = ty - ty % CELL if CELL <= ty < ny else ty
        tx = tx - tx % CELL if CELL <= tx < nx else tx
    else:
        ty, tx = _normalize_tile(tile, ny, nx)
    names = {
        "data": ((nints, ngroups), np.float32),
        "groupdq": ((nints, ngroups), np.uint8),
        "pixeldq": ((), np.uint32),
        "gain": ((), np.float32),
        "readnoise": ((), np.float32),
    }
    if cfg.zeroframe:
        names["zeroframe"] = ((nints,), np.float32)
    arrays = simulated_arrays(cfg, (ty, tx), names)
    timing = simulation_timing(cfg)
    return make_ramp_dataset(
        arrays["data"], arrays["groupdq"], arrays["pixeldq"], arrays["gain"],
        arrays["readnoise"], timing=timing, zeroframe=arrays.get("zeroframe"),
        source=f"simulate(seed={cfg.seed}, shape={nints}x{ngroups}x{ny}x{nx})",
    )


def simulate_to_zarr(cfg, path, *, tile=None, overwrite: bool = False,
                     memory_budget_bytes: int | None = None, compute: bool = True):
    """Generate the synthetic exposure ``cfg`` tile by tile into a zarr ramp store.

    Works on whatever dask scheduler is active (threads, processes, a distributed client); peak
    memory is a few tiles, not the cube. The store equals ``simulate_exposure(cfg)`` bit for bit.
    ``tile``/``memory_budget_bytes`` as in :func:`simulate_ramp_lazy`; the zarr chunks are the
    tiles. Returns the final ``Path`` (or a :class:`PendingWrite` with ``compute=False``).
    """
    ds = simulate_ramp_lazy(cfg, tile=tile, memory_budget_bytes=memory_budget_bytes)
    return write_dataset_atomic(ds, path, overwrite=overwrite, compute=compute)


def open_product(path) -> xr.Dataset:
    """Open a product store (rate, rateints, fitopt) lazily; raise UserInputError if missing."""
    p, ds = _open_store(path, "product store")
    return ds
