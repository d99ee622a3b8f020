"""An exposure's gwcs carried through the products: ASDF text in a Dataset's attrs (zarr) and the
ASDF extension of a JWST FITS file.

Two conventions, one per format, both read by ``mosaic-wcs`` and ``mosaic``:

* **Dataset attrs / zarr store attributes**: ``wcs_asdf`` holds the gwcs as a self-contained ASDF
  document (text, arrays inline; tree ``{"wcs": gwcs}``) and ``wcsinfo`` the JWST
  ``meta.wcsinfo`` values as a plain dict (``ra_ref``, ``dec_ref``, ``roll_ref``, ``v3yangle``,
  ``vparity``, ``v2_ref``, ``v3_ref``; degrees and arcsec).
* **JWST FITS**: an ``ASDF`` binary-table extension whose single ``ASDF_METADATA`` cell holds an
  ASDF document with ``meta.wcs`` and ``meta.wcsinfo``, the layout stdatamodels writes and reads
  (``RampModel(path).meta.wcs``, ``ImageModel(path).meta.wcs``).

:func:`wcs_fits_meta` reads the FITS form into the attrs form (``open_ramp_fits`` puts it in the
ramp's attrs), and :func:`asdf_extension` writes the attrs form as the FITS extension (the FITS
writers append it when the Dataset carries a WCS), so a ramp's gwcs survives ``ingest`` and
``run`` in either format.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np

from stcal_dask.engine.datamodel import WCS_ATTR, WCSINFO_ATTR
from stcal_dask.errors import UserInputError

__all__ = [
    "ASDF_EXTNAME",
    "WCSINFO_ATTR",
    "WCS_ATTR",
    "asdf_extension",
    "plain_wcsinfo",
    "read_asdf_extension",
    "wcs_attrs",
    "wcs_fits_meta",
    "asdf_hdu",
    "read_asdf_bytes",
    "wcs_from_asdf_text",
    "wcs_to_asdf_text",
]

ASDF_EXTNAME = "ASDF"
"""EXTNAME of the JWST FITS extension holding the ASDF metadata tree."""
_COLUMN = "ASDF_METADATA"


def wcs_to_asdf_text(wcs) -> str:
    """A gwcs as a self-contained ASDF document (UTF-8 text, every array inline)."""
    import asdf

    buf = io.BytesIO()
    asdf.AsdfFile({"wcs": wcs}).write_to(buf, all_array_storage="inline")
    return buf.getvalue().decode("utf-8")


def wcs_from_asdf_text(text: str, what: str = WCS_ATTR):
    """The gwcs of :func:`wcs_to_asdf_text`'s document; ``what`` names it in errors.

    Raises
    ------
    UserInputError: not an ASDF document, or no ``gwcs.WCS`` under ``wcs``.
    """
    import asdf
    import gwcs

    try:
        with asdf.open(io.BytesIO(str(text).encode("utf-8")), lazy_load=False,
                       memmap=False) as af:
            wcs = af.tree["wcs"]
    except Exception as exc:  # asdf/yaml raise many kinds
        raise UserInputError(f"{what} is not a valid ASDF gwcs ({type(exc).__name__})") from None
    if not isinstance(wcs, gwcs.WCS):
        raise UserInputError(f"{what} holds a {type(wcs).__name__}, not a gwcs.WCS")
    return wcs


def plain_wcsinfo(wcsinfo) -> dict:
    """``meta.wcsinfo`` (a dict or a stdatamodels node) as a dict of plain scalars."""
    info = wcsinfo.instance if hasattr(wcsinfo, "instance") else wcsinfo
    out = {}
    for k, v in dict(info or {}).items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, int | float | str | bool) or v is None:
            out[str(k)] = v
    return out


def wcs_attrs(wcs, wcsinfo) -> dict:
    """The attrs (``wcs_asdf``, ``wcsinfo``) that carry ``wcs`` on a Dataset / zarr store."""
    import gwcs

    if not isinstance(wcs, gwcs.WCS):
        raise UserInputError(f"wcs must be a gwcs.WCS, got {type(wcs).__name__}")
    return {WCS_ATTR: wcs_to_asdf_text(wcs), WCSINFO_ATTR: plain_wcsinfo(wcsinfo)}


def read_asdf_extension(hdul, what: str) -> tuple[object | None, dict | None]:
    """``meta.wcs`` and ``meta.wcsinfo`` of an open FITS file's ASDF extension.

    Parameters
    ----------
    hdul: an open ``astropy.io.fits.HDUList``.
    what: names the file in errors.

    Returns
    -------
    (wcs, wcsinfo): ``(None, None)`` without an ASDF extension; either may be None when the
    tree lacks it. Array data referring to the FITS HDUs is not read.
    """
    import asdf

    if ASDF_EXTNAME not in hdul:
        return None, None
    try:
        raw = read_asdf_bytes(hdul)
        with warnings.catch_warnings():
            # arrays in the tree refer to the FITS HDUs; only the metadata is read here
            warnings.simplefilter("ignore", asdf.exceptions.AsdfConversionWarning)
            warnings.simplefilter("ignore", asdf.exceptions.AsdfWarning)
            with asdf.open(io.BytesIO(raw), lazy_load=False, memmap=False) as af:
                meta = af.tree.get("meta", {}) or {}
                wcs = meta.get("wcs")
                info = meta.get("wcsinfo")
                info = dict(info) if info is not None else None
    except Exception as exc:  # a corrupt table or ASDF document
        raise UserInputError(
            f"{what}: its ASDF extension cannot be read ({type(exc).__name__})"
        ) from None
    return wcs, info


def wcs_fits_meta(hdul, what: str) -> dict:
    """The ``wcs_asdf`` / ``wcsinfo`` attrs of an open FITS file whose ASDF extension carries a
    gwcs (``meta.wcs``); an empty dict when it carries none (without an ASDF extension, gwcs,
    a slow import, is not loaded)."""
    if ASDF_EXTNAME not in hdul:
        return {}
    import gwcs

    wcs, info = read_asdf_extension(hdul, what)
    if not isinstance(wcs, gwcs.WCS):
        return {}
    return wcs_attrs(wcs, info or {})


def asdf_extension(attrs: Mapping) -> bytes | None:
    """The FITS ``ASDF`` extension (header and data, padded to FITS blocks) carrying the gwcs of
    ``attrs`` (``wcs_asdf``, ``wcsinfo``) as ``meta.wcs`` / ``meta.wcsinfo``; None when
    ``attrs`` has no ``wcs_asdf``."""
    import asdf

    text = attrs.get(WCS_ATTR)
    if not text:
        return None
    wcs = wcs_from_asdf_text(text, f"attribute '{WCS_ATTR}'")
    meta = {"wcs": wcs}
    info = plain_wcsinfo(attrs.get(WCSINFO_ATTR) or {})
    if info:
        meta["wcsinfo"] = info
    buf = io.BytesIO()
    asdf.AsdfFile({"meta": meta}).write_to(buf)
    return asdf_hdu(buf.getvalue())


def asdf_hdu(data: bytes) -> bytes:
    """The FITS ``ASDF`` extension (header and data, padded to FITS blocks) holding the ASDF
    document ``data`` (one row of one byte column, as stdatamodels writes it)."""
    from astropy.io import fits

    column = fits.Column(name=_COLUMN, format=f"{len(data)}B",
                         array=np.frombuffer(data, np.uint8)[None, :])
    header = fits.BinTableHDU.from_columns([column], name=ASDF_EXTNAME).header
    block = 2880
    padded = data + b"\0" * (-len(data) % block)
    return header.tostring(padding=True).encode("ascii") + padded


def read_asdf_bytes(hdul) -> bytes:
    """The ASDF document held by an open FITS file's ``ASDF`` extension (KeyError if none)."""
    return bytes(hdul[ASDF_EXTNAME].data[_COLUMN][0])
