"""JWST FITS image extensions opened for lazy, windowed reading: the header parsing that finds an
extension's data in the file (astropy.io.fits) and the picklable window source
(:class:`~stcal_dask.io.fits_blocks.FitsImage`) that reads only the requested block.

Kept apart from :mod:`stcal_dask.io.fits_io` (which builds dask graphs and loads dask.array and,
through it, xarray and pandas) so that a task that only reads windows of FITS images, such as
the mosaic's index and tile tasks, loads none of those.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from astropy.io import fits

from stcal_dask.errors import UserInputError
from stcal_dask.io.fits_blocks import BITPIX_RAW, FitsImage

__all__ = ["fits_image", "image_source", "open_fits"]


def open_fits(path, what: str) -> tuple[Path, fits.HDUList]:
    """Open a FITS file memory-mapped: ``(path, HDUList)`` (the caller closes it).

    ``what`` names the file in errors. Raises :class:`UserInputError` (one line) for a missing
    file, a directory, an unreadable, compressed or non-FITS file.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise UserInputError(f"{what} {p} does not exist")
    if p.is_dir():
        raise UserInputError(f"{what} {p} is a directory, not a FITS file")
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise UserInputError(f"{what} {p} cannot be read ({exc.strerror})") from None
    if magic[:2] in (b"\x1f\x8b", b"BZ", b"PK"):
        raise UserInputError(
            f"{what} {p} is a compressed file; decompress it first (it is read memory-mapped)"
        )
    if magic != b"SIMPLE":
        raise UserInputError(f"{what} {p} is not a FITS file (it does not start with SIMPLE)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # problems surface as our own one-line errors
            hdul = fits.open(p, memmap=True, lazy_load_hdus=False)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"{what} {p} is not a readable FITS file ({msg})") from None
    return p, hdul


def fits_image(p: Path, hdul: fits.HDUList, extname: str, what: str, *,
               required: bool = True) -> FitsImage | None:
    """The lazy window source of image extension ``extname`` of an open file (None when absent
    and not ``required``). Raises :class:`UserInputError` for a missing (required), compressed,
    non-image or truncated extension, or an unsupported BITPIX."""
    try:
        hdu = hdul[extname]
    except KeyError:
        if not required:
            return None
        raise UserInputError(f"{what} {p}: missing extension {extname}") from None
    if isinstance(hdu, fits.CompImageHDU) or not isinstance(hdu, fits.ImageHDU | fits.PrimaryHDU):
        raise UserInputError(
            f"{what} {p}: extension {extname} is not an uncompressed image "
            f"({type(hdu).__name__})"
        )
    hdr = hdu.header
    naxis = int(hdr.get("NAXIS", 0))
    shape = tuple(int(hdr[f"NAXIS{i}"]) for i in range(naxis, 0, -1))
    bitpix = int(hdr["BITPIX"])
    if bitpix not in BITPIX_RAW:
        raise UserInputError(f"{what} {p}: extension {extname} has unsupported BITPIX {bitpix}")
    offset = hdu.fileinfo()["datLoc"]
    nbytes = math.prod(shape) * abs(bitpix) // 8 if shape else 0
    if offset + nbytes > p.stat().st_size:
        raise UserInputError(
            f"{what} {p}: extension {extname} is truncated (the file ends before its "
            f"{nbytes} data bytes)"
        )
    return FitsImage(str(p), offset, shape, bitpix, hdr.get("BSCALE", 1.0),
                      hdr.get("BZERO", 0.0))


def image_source(path, extname: str, what: str = "input", *,
                 required: bool = True) -> FitsImage | None:
    """A picklable, lazily read window source (:class:`FitsImage`) for one image extension.

    Slicing it reads only the requested rows/columns (memory-mapped); ``None`` when the
    extension is absent and not ``required``. Raises :class:`UserInputError` for a missing file,
    a non-FITS file, a compressed or truncated extension.
    """
    p, hdul = open_fits(path, what)
    try:
        return fits_image(p, hdul, extname, what, required=required)
    finally:
        hdul.close()
