"""What the workers run to read and write JWST FITS files (:mod:`stcal_dask.io.fits_io` builds the
graphs).

Blocks are read and written through read-only / read-write memory maps of the HDU data regions
with numpy alone: no astropy and no xarray in a worker (:mod:`stcal_dask.engine.tasks`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from stcal_dask.io.atomic import was_committed

BITPIX_RAW = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class FitsImage:
    """A picklable, lazily read window of one FITS image HDU (dask ``from_array`` source).

    Each ``__getitem__`` memory-maps the file read-only and converts just the requested block to
    native byte order and the physical dtype.
    """

    def __init__(self, path: str, offset: int, full_shape: tuple[int, ...], bitpix: int,
                 bscale: float, bzero: float, origin: tuple[int, ...] | None = None,
                 shape: tuple[int, ...] | None = None):
        self.path = path
        self.offset = int(offset)
        self.full_shape = tuple(int(n) for n in full_shape)
        self.bitpix = int(bitpix)
        self.bscale, self.bzero = float(bscale), float(bzero)
        self.origin = tuple(origin) if origin is not None else (0,) * len(self.full_shape)
        self.shape = tuple(shape) if shape is not None else self.full_shape
        self.ndim = len(self.shape)
        raw = np.dtype(BITPIX_RAW[self.bitpix])
        self._xor = 0
        if self.bscale == 1.0 and self.bitpix > 8 and self.bzero == 2.0 ** (self.bitpix - 1):
            self._raw = np.dtype(f">u{self.bitpix // 8}")
            self._xor = 1 << (self.bitpix - 1)
            self.dtype = np.dtype(f"u{self.bitpix // 8}")
        elif self.bscale == 1.0 and self.bitpix == 8 and self.bzero == -128.0:
            self._raw = raw
            self._xor = 0x80
            self.dtype = np.dtype(np.int8)
        elif self.bscale == 1.0 and self.bzero == 0.0:
            self._raw = raw
            self.dtype = raw.newbyteorder("=")
        else:
            self._raw = raw
            self.dtype = np.dtype(np.float32 if self.bitpix in (8, 16, -32) else np.float64)

    def _convert(self, raw: np.ndarray) -> np.ndarray:
        if self._xor:
            out = raw.astype(raw.dtype.newbyteorder("="))
            out ^= out.dtype.type(self._xor)
            return out.view(self.dtype)
        if self.bscale == 1.0 and self.bzero == 0.0:
            return raw.astype(self.dtype)
        return (raw.astype(np.float64) * self.bscale + self.bzero).astype(self.dtype)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) == self.ndim and all(isinstance(k, slice) for k in key):
            window = []
            for k, n, o in zip(key, self.shape, self.origin, strict=True):
                start, stop, step = k.indices(n)
                window.append(slice(start + o, max(stop, start) + o, step))
            rest = ()
        else:
            window = [slice(o, o + n) for o, n in zip(self.origin, self.shape, strict=True)]
            rest = key
        if any(s.stop <= s.start for s in window):
            block = np.empty([len(range(s.start, s.stop, s.step or 1)) for s in window],
                             self.dtype)
            return block[rest] if rest else block
        mm = np.memmap(self.path, dtype=self._raw, mode="r", offset=self.offset,
                       shape=self.full_shape)
        try:
            block = self._convert(np.asarray(mm[tuple(window)]))
        finally:
            del mm
        return block[rest] if rest else block

    def window(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> FitsImage:
        """A sub-window (offsets relative to this window)."""
        return FitsImage(
            self.path, self.offset, self.full_shape, self.bitpix, self.bscale, self.bzero,
            tuple(a + b for a, b in zip(self.origin, origin, strict=True)), shape,
        )


class FitsRegion:
    """A picklable ``dask.array.store`` target: one HDU data region of a FITS file on disk."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, *,
                 final: str | None = None, identity: tuple[int, int] | None = None):
        self.path, self.offset, self.shape = path, int(offset), tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._raw, self._xor = raw_dtype(self.dtype)
        # ``path`` is a temporary renamed to ``final`` once every block is written; a write task
        # running again after that (see stcal_dask.io.atomic) has nothing left to do
        self.final, self.identity = final, identity

    def _committed(self) -> bool:
        return self.final is not None and was_committed(self.final, self.identity)

    def __setitem__(self, key, value) -> None:
        if math.prod(self.shape) == 0:
            return
        runs = self._runs(key)
        if runs is not None:
            block_shape, starts, run_len = runs
            encoded = encode(np.broadcast_to(np.asarray(value), block_shape), self.dtype,
                              self._xor)
            flat = np.ascontiguousarray(encoded, dtype=self._raw).reshape(-1)
            try:
                fd = os.open(self.path, os.O_WRONLY)
            except FileNotFoundError:
                if self._committed():
                    return
                raise
            try:
                for n, start in enumerate(starts):
                    chunk = memoryview(flat[n * run_len:(n + 1) * run_len]).cast("B")
                    _pwrite_all(fd, chunk, self.offset + start * self._raw.itemsize)
            finally:
                os.close(fd)
            return
        try:
            mm = np.memmap(self.path, dtype=self._raw, mode="r+", offset=self.offset,
                           shape=self.shape)
        except FileNotFoundError:
            if self._committed():
                return
            raise
        try:
            # No msync: the page cache is coherent for every process on this machine, and the
            # file is renamed into place only after all blocks are written.
            mm[key] = encode(np.asarray(value), self.dtype, self._xor)
        finally:
            del mm

    def _runs(self, key):
        """For a block ``key`` of unit-step slices: ``(block shape, start element of each
        contiguous run in the region, run length in elements)``, when the runs are long enough
        for ``pwrite`` (>= :data:`_MIN_RUN_BYTES`; a full-width tile of an image is one run);
        else None (written through a memory map)."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) != self.ndim or not all(isinstance(k, slice) for k in key):
            return None
        bounds = []
        for k, n in zip(key, self.shape, strict=True):
            start, stop, step = k.indices(n)
            if step != 1 or stop <= start:
                return None
            bounds.append((start, stop))
        block_shape = tuple(b - a for a, b in bounds)
        # the trailing axes the block spans fully, plus the one before them, form each run
        k = self.ndim - 1
        while k > 0 and block_shape[k] == self.shape[k]:
            k -= 1
        run_len = math.prod(block_shape[k:])
        if run_len * self._raw.itemsize < _MIN_RUN_BYTES:
            return None
        strides = [math.prod(self.shape[i + 1:]) for i in range(self.ndim)]
        base = sum(a * st for (a, _), st in zip(bounds, strides, strict=True))
        # one run per index of the leading axes, in C order
        lead = block_shape[:k]
        starts = []
        for flat_index in range(math.prod(lead)):
            offset = base
            rem = flat_index
            for axis in range(k - 1, -1, -1):
                offset += (rem % lead[axis]) * strides[axis]
                rem //= lead[axis]
            starts.append(offset)
        return block_shape, starts, run_len


_MIN_RUN_BYTES = 64 * 1024
"""Shortest contiguous run written with ``os.pwrite`` (longer runs are faster this way than
through a shared memory map, whose every first-touched page is a page fault)."""


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < len(data):
        written = os.pwrite(fd, data[done:], offset + done)
        if written <= 0:
            raise OSError(f"short write at byte {offset + done}")
        done += written


def write_blocks(*blocks, regions, block_info=None):
    """Write one block of each array into its region (the blocks share their location)."""
    location = block_info[0]["array-location"]
    key = tuple(slice(start, stop) for start, stop in location)
    for region, block in zip(regions, blocks, strict=True):
        region[key] = block
    return np.ones((1,) * len(location), dtype=np.uint8)


def raw_dtype(dtype: np.dtype) -> tuple[np.dtype, int]:
    """On-disk dtype and the XOR that maps physical unsigned values to FITS BZERO storage."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.dtype("u1"), 0
    if dtype.kind == "u":
        return np.dtype(f">u{dtype.itemsize}"), 1 << (8 * dtype.itemsize - 1)
    return dtype.newbyteorder(">"), 0


def encode(value: np.ndarray, dtype: np.dtype, xor: int) -> np.ndarray:
    value = value.astype(dtype, copy=False)
    if xor:
        value = value ^ dtype.type(xor)
    return value
