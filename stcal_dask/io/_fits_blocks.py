"""What the workers run to read and write JWST FITS files (:mod:`stcal_dask.io.fits_io` builds the
graphs).

Blocks are read and written through read-only / read-write memory maps of the HDU data regions
with numpy alone: no astropy and no xarray in a worker (:mod:`stcal_dask._tasks`).
"""

from __future__ import annotations

import math

import numpy as np

_BITPIX_RAW = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class _FitsImage:
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
        raw = np.dtype(_BITPIX_RAW[self.bitpix])
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

    def window(self, origin: tuple[int, ...], shape: tuple[int, ...]) -> _FitsImage:
        """A sub-window (offsets relative to this window)."""
        return _FitsImage(
            self.path, self.offset, self.full_shape, self.bitpix, self.bscale, self.bzero,
            tuple(a + b for a, b in zip(self.origin, origin, strict=True)), shape,
        )


class _FitsRegion:
    """A picklable ``dask.array.store`` target: one HDU data region of a FITS file on disk."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape = path, int(offset), tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._raw, self._xor = _raw_dtype(self.dtype)

    def __setitem__(self, key, value) -> None:
        if math.prod(self.shape) == 0:
            return
        mm = np.memmap(self.path, dtype=self._raw, mode="r+", offset=self.offset,
                       shape=self.shape)
        try:
            # No msync: the page cache is coherent for every process on this machine, and the
            # file is renamed into place only after all blocks are written.
            mm[key] = _encode(np.asarray(value), self.dtype, self._xor)
        finally:
            del mm


def _write_blocks(*blocks, regions, block_info=None):
    """Write one block of each array into its region (the blocks share their location)."""
    location = block_info[0]["array-location"]
    key = tuple(slice(start, stop) for start, stop in location)
    for region, block in zip(regions, blocks, strict=True):
        region[key] = block
    return np.ones((1,) * len(location), dtype=np.uint8)


def _raw_dtype(dtype: np.dtype) -> tuple[np.dtype, int]:
    """On-disk dtype and the XOR that maps physical unsigned values to FITS BZERO storage."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.dtype("u1"), 0
    if dtype.kind == "u":
        return np.dtype(f">u{dtype.itemsize}"), 1 << (8 * dtype.itemsize - 1)
    return dtype.newbyteorder(">"), 0


def _encode(value: np.ndarray, dtype: np.dtype, xor: int) -> np.ndarray:
    value = value.astype(dtype, copy=False)
    if xor:
        value = value ^ dtype.type(xor)
    return value
