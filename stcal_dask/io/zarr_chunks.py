"""Chunk-level integrity of zarr stores: every chunk present, every chunk readable.

zarr reads a chunk that is absent from the store as the array's fill value, so a partly copied
or partly written store would be indistinguishable from data. :func:`check_complete` compares the
store's keys (a directory listing, no chunk is read) with each array's chunk grid, and stores
written by this package contain every chunk (``write_empty_chunks=True``), so that check applies
to them too.

:class:`ChunkReader` is what dask tasks call to read a zarr array's chunks: a chunk that cannot
be decoded (corrupt bytes, truncated file, unreadable file) becomes one
:class:`~stcal_dask.errors.UserInputError` line naming the store, the array and the chunk. The
module imports only numpy and zarr (not xarray), so a worker that unpickles a reader loads no
more than it needs.
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np

from stcal_dask.errors import UserInputError

__all__ = ["ChunkReader", "chunk_grid", "check_complete", "consolidate_store", "missing_chunks"]

_METADATA_FILES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})


def chunk_grid(array) -> tuple[int, ...]:
    """Chunk shape of the keys a zarr array stores: its shards when sharded, else its chunks.

    Parameters
    ----------
    array: a ``zarr.Array``.

    Returns
    -------
    tuple of int, one per dimension (elements along that dimension per stored key).
    """
    return tuple(getattr(array, "shards", None) or array.chunks)


def missing_chunks(store, name: str, array) -> list[str]:
    """The chunk keys of ``array`` (named ``name`` in the local store ``store``) that the store
    lacks, in C order.

    Only the store's directory listing is read (no chunk data). An array with no element has
    no chunk to miss.

    Parameters
    ----------
    store: path of a local (directory) zarr store.
    name: the array's path inside the store.
    array: the opened ``zarr.Array``.

    Returns
    -------
    list of str: chunk keys relative to the array (``c/0/0/1/0`` in zarr v3, ``0.0.1.0`` in v2).
    """
    shape = tuple(array.shape)
    if any(n == 0 for n in shape):
        return []
    grid = chunk_grid(array)
    counts = [math.ceil(n / c) for n, c in zip(shape, grid, strict=True)]
    root = Path(store) / name
    present = set()
    for dirpath, _dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        for f in files:
            if f not in _METADATA_FILES:
                present.add((rel / f).as_posix())
    encode = array.metadata.encode_chunk_key
    return [
        key for key in (encode(idx) for idx in itertools.product(*map(range, counts)))
        if key not in present
    ]


def check_complete(store, names=None, *, what: str = "zarr store") -> None:
    """Raise :class:`UserInputError` unless every chunk of the arrays ``names`` is in ``store``.

    Parameters
    ----------
    store: path of a local (directory) zarr store.
    names: the arrays to check (default: every array of the root group).
    what: what to call the store in the message (``ramp store``, ``product store``, ...).

    Raises
    ------
    UserInputError: one line naming the store, the first missing chunk of the first incomplete
        array and how many chunks are missing in all.
    """
    import zarr

    group = zarr.open_group(str(store), mode="r", use_consolidated=False)
    names = list(group.array_keys()) if names is None else list(names)
    for name in names:
        missing = missing_chunks(store, name, group[name])
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UserInputError(
                f"{what} {store} is incomplete: array {name} chunk {missing[0]} is missing{more} "
                "(a partly copied or partly written store; every chunk must be present)"
            )


class ChunkReader:
    """Array-like over one zarr array whose reads name the failing chunk.

    ``dask.array.from_array(ChunkReader(...), chunks=...)`` gives tasks that read the store;
    a read that raises (a chunk zarr cannot decode or the OS cannot read) raises
    :class:`UserInputError` naming the store, the array and the chunk (when a read spans several
    chunks, each is read alone to find the first bad one; that only happens on the error path).

    Parameters
    ----------
    store: path of the local zarr store (for the message).
    name: the array's path inside the store.
    array: the opened ``zarr.Array`` (picklable: it reopens its store where it is unpickled).
    """

    def __init__(self, store, name: str, array):
        self.store = str(store)
        self.name = name
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        try:
            return self.array[key]
        except Exception as exc:
            raise self._error(key, exc) from None

    def _chunk_ranges(self, key) -> list[range]:
        key = key if isinstance(key, tuple) else (key,)
        grid = chunk_grid(self.array)
        ranges = []
        for dim, n in enumerate(self.shape):
            sl = key[dim] if dim < len(key) else slice(None)
            if isinstance(sl, slice):
                start, stop, _ = sl.indices(n)
            else:
                start = int(sl) % n if n else 0
                stop = start + 1
            c = grid[dim]
            ranges.append(range(start // c, max(start // c + 1, -(-stop // c))))
        return ranges

    def _error(self, key, exc: Exception) -> UserInputError:
        grid = chunk_grid(self.array)
        bad, reason = None, exc
        try:
            for idx in itertools.product(*self._chunk_ranges(key)):
                sel = tuple(
                    slice(i * c, min((i + 1) * c, n))
                    for i, c, n in zip(idx, grid, self.shape, strict=True)
                )
                try:
                    self.array[sel]
                except Exception as one:
                    bad, reason = idx, one
                    break
        except Exception:  # the key was not plain slices: name the read, not a chunk
            bad = None
        where = (f"chunk {self.array.metadata.encode_chunk_key(bad)}" if bad is not None
                 else "a chunk")
        text = str(reason).strip().splitlines()
        detail = text[0] if text else type(reason).__name__
        return UserInputError(
            f"zarr store {self.store}: array {self.name} {where} cannot be read "
            f"({type(reason).__name__}: {detail})"
        )


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
