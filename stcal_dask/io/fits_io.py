"""JWST FITS in and out, lazily and atomically.

Reading
-------
:func:`open_ramp_fits` opens a JWST ``_ramp.fits`` (SCI 4-D float32, PIXELDQ, GROUPDQ, optional
ZEROFRAME and AVDRKCUR; timing keywords in the primary header) and the gain / readnoise reference
files (SCI 2-D) as a ramp Dataset (:mod:`stcal_dask.engine.datamodel`). Nothing is loaded: each
extension becomes a dask array whose tasks memory-map just their window of the file (big-endian
and BZERO-unsigned encodings are converted per block). Full-frame (or larger subarray) references
are cut to the data's subarray with the SUBSTRT1/SUBSTRT2 keywords (1-based; axis 1 = x).

Writing
-------
The writers lay out the file themselves: headers are written first, the data regions are
allocated (sparse) and then filled block by block from numpy or dask arrays through a
memory-map of the output (``dask.array.store``), so a large product is never materialised in
memory and the blocks can be computed on any scheduler, including a distributed cluster sharing
the file system. The file is written under a temporary name in the destination directory and
renamed into place when complete (:func:`stcal_dask.io.atomic.atomic_outputs`). Layouts follow
the stdatamodels schemas:

* rate  -> ImageModel: SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE (2-D; BUNIT DN/s);
* rateints -> CubeModel: the same, 3-D;
* fitopt -> RampFitOutputModel: SLOPE, SIGSLOPE, VAR_POISSON, VAR_RNOISE, YINT, SIGYINT,
  PEDESTAL, WEIGHTS, CRMAG;
* ramp / jump -> RampModel: SCI, PIXELDQ, GROUPDQ (+ ZEROFRAME, AVDRKCUR);
* gain / readnoise reference files: SCI.

A ramp whose ASDF extension carries a gwcs (``meta.wcs``) gets it in its attrs (``wcs_asdf``,
``wcsinfo``), and a ramp, jump, rate or rateints Dataset carrying those attrs is written with an
ASDF extension holding ``meta.wcs`` / ``meta.wcsinfo`` (:mod:`stcal_dask.io.wcs_asdf`), so
stdatamodels opens it with the same WCS.

The primary header of each product copies the input's primary header (``header_from``: a FITS
path, an astropy Header or a dict; by default the ramp's ``source`` file if it is a FITS file, and
the Dataset's JWST keyword attrs), and sets DATAMODL, TELESCOP (default JWST), FILENAME and the
package version (STCDASKV), with the step parameters as HISTORY.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from astropy.io import fits

from stcal_dask.engine.datamodel import (
    DEFAULT_MEMORY_BUDGET,
    FITOPT_VARIABLES,
    RATE_VARIABLES,
    SUBARRAY_KEYWORDS,
    TIMING_KEYWORDS,
    check_subarray,
    check_timing,
    choose_tile_size,
    make_ramp_dataset,
    normalize_tile,
    package_version,
    validate_ramp,
)
from stcal_dask.errors import UserInputError
from stcal_dask.io.atomic import after_all, atomic_outputs, check_target, file_identity
from stcal_dask.io.fits_blocks import (
    FitsImage,
    FitsRegion,
    write_blocks,
)
from stcal_dask.io.fits_open import fits_image, image_source, open_fits
from stcal_dask.io.naming import JWST_SUFFIXES, output_name, reference_paths
from stcal_dask.io.wcs_asdf import asdf_extension, wcs_fits_meta

__all__ = [
    "JWST_SUFFIXES",
    "image_source",
    "open_ramp_fits",
    "output_name",
    "reference_paths",
    "write_fitopt_fits",
    "write_fits_images",
    "write_jump_fits",
    "write_ramp_fits",
    "write_rate_fits",
    "write_rateints_fits",
    "write_reference_fits",
]


_BLOCK = 2880
_STRUCTURAL = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|EXTNAME|EXTVER|BZERO|BSCALE|BLANK|"
    r"CHECKSUM|DATASUM|DATAMODL|FILENAME|STCDASKV|TFIELDS|THEAP|ZIMAGE)$"
)
_KEYWORD = re.compile(r"^[A-Z0-9_-]{1,8}$")


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Lazy reading
# ---------------------------------------------------------------------------------------------


def _as_dask(img: FitsImage, chunks, name: str) -> da.Array:
    st = os.stat(img.path)
    token = dask.base.tokenize(img.path, st.st_mtime_ns, st.st_size, img.offset, img.origin,
                               img.shape, chunks)
    return da.from_array(img, chunks=chunks, name=f"fits-{name}-{token}", lock=False,
                         asarray=False, fancy=False,
                         meta=np.empty((0,) * img.ndim, dtype=img.dtype))


def _check_ndim(img: FitsImage, ndim: int, p: Path, what: str, extname: str, dims: str) -> None:
    if img.ndim != ndim:
        raise UserInputError(
            f"{what} {p}: extension {extname} has {img.ndim} dimensions (shape {img.shape}); "
            f"expected {ndim} ({dims})"
        )


def _keywords(hdul: fits.HDUList) -> dict[str, Any]:
    """Timing and subarray keywords: primary header first, then the SCI header."""
    out: dict[str, Any] = {}
    headers = [hdul[0].header]
    if "SCI" in hdul:
        headers.append(hdul["SCI"].header)
    for key in (*TIMING_KEYWORDS, *SUBARRAY_KEYWORDS, "INSTRUME"):
        for h in headers:
            if key in h and h[key] is not None and not isinstance(h[key], fits.card.Undefined):
                out[key] = h[key]
                break
    return out


def _reference(path, reftype: str, ny: int, nx: int, sub: dict, ramp_path: Path) -> FitsImage:
    """The reference file's SCI image, cut to the ramp's (ny, nx) subarray if needed."""
    what = f"{reftype} reference file"
    p, hdul = open_fits(path, what)
    with hdul:
        img = fits_image(p, hdul, "SCI", what)
        _check_ndim(img, 2, p, what, "SCI", "ny, nx")
        ref_sub = check_subarray(
            {k: hdul[0].header[k] for k in ("SUBSTRT1", "SUBSTRT2") if k in hdul[0].header},
            f"{what} {p}",
        )
        ref_start = (ref_sub.get("SUBSTRT2", 1), ref_sub.get("SUBSTRT1", 1))
    if img.shape != (ny, nx):
        if "SUBSTRT1" not in sub or "SUBSTRT2" not in sub:
            raise UserInputError(
                f"{what} {p} has shape {img.shape} but the ramp {ramp_path} is {(ny, nx)} and "
                "has no SUBSTRT1/SUBSTRT2 keywords to cut it with"
            )
        y0 = sub["SUBSTRT2"] - ref_start[0]
        x0 = sub["SUBSTRT1"] - ref_start[1]
        if y0 < 0 or x0 < 0 or y0 + ny > img.shape[0] or x0 + nx > img.shape[1]:
            raise UserInputError(
                f"{what} {p} (shape {img.shape}, starting at x={ref_start[1]}, y={ref_start[0]}) "
                f"does not cover the ramp's subarray SUBSTRT1={sub['SUBSTRT1']}, "
                f"SUBSTRT2={sub['SUBSTRT2']} of shape {(ny, nx)}"
            )
        img = img.window((y0, x0), (ny, nx))
    return img


def _size(value, full: int) -> int:
    return full if value in (-1, None) else value


def open_ramp_fits(path, gain_path, readnoise_path, *, chunks="auto",
                   memory_budget_bytes: int | None = None) -> xr.Dataset:
    """Open a JWST ``_ramp.fits`` and its gain / readnoise reference files as a lazy ramp.

    Parameters
    ----------
    path: the ramp file (RampModel layout: SCI (nints, ngroups, ny, nx) DN, PIXELDQ, GROUPDQ,
        optional ZEROFRAME and AVDRKCUR; NINTS, NGROUPS, NFRAMES, GROUPGAP, TFRAME, TGROUP,
        DRPFRMS1 and optionally SUBSTRT1/2, SUBSIZE1/2 in the primary header).
    gain_path: GAIN reference file (SCI 2-D, electron/DN).
    readnoise_path: READNOISE reference file (SCI 2-D, CDS read noise in DN).
    chunks: ``"auto"`` (tile from ``memory_budget_bytes``, default
        :data:`~stcal_dask.engine.datamodel.DEFAULT_MEMORY_BUDGET`), ``(tile_y, tile_x)``, a dict
        ``{"y": tile_y, "x": tile_x}`` (-1 or absent: whole axis), or None (one chunk per array).
        Integrations and groups are never split.

    Returns
    -------
    xr.Dataset
        A validated ramp (schema in :mod:`stcal_dask.engine.datamodel`), every variable a dask array
        reading its window of the memory-mapped files on compute; ``attrs["source"]`` is the
        ramp path. References are cut to the data's subarray when their shapes differ.

    Raises
    ------
    UserInputError
        Missing file or extension, wrong number of dimensions, missing or invalid keyword,
        mismatched shapes, a reference that does not cover the subarray.
    """
    what = "ramp file"
    p, hdul = open_fits(path, what)
    with hdul:
        sci = fits_image(p, hdul, "SCI", what)
        _check_ndim(sci, 4, p, what, "SCI", "nints, ngroups, ny, nx")
        gdq = fits_image(p, hdul, "GROUPDQ", what)
        _check_ndim(gdq, 4, p, what, "GROUPDQ", "nints, ngroups, ny, nx")
        pdq = fits_image(p, hdul, "PIXELDQ", what)
        _check_ndim(pdq, 2, p, what, "PIXELDQ", "ny, nx")
        zf = fits_image(p, hdul, "ZEROFRAME", what, required=False)
        if zf is not None:
            _check_ndim(zf, 3, p, what, "ZEROFRAME", "nints, ny, nx")
        dark = fits_image(p, hdul, "AVDRKCUR", what, required=False)
        if dark is not None:
            _check_ndim(dark, 2, p, what, "AVDRKCUR", "ny, nx")
        keywords = _keywords(hdul)
        wcs_meta = wcs_fits_meta(hdul, f"{what} {p}")
    nints, ngroups, ny, nx = sci.shape
    source = f"{what} {p}"
    # Validate the keywords before building anything (clear one-line errors).
    timing = {k: v for k, v in keywords.items() if k in TIMING_KEYWORDS}
    check_timing(timing, source)
    sub = check_subarray(keywords, source)
    for key, n in (("SUBSIZE1", nx), ("SUBSIZE2", ny)):
        if key in sub and sub[key] != n:
            raise UserInputError(
                f"{what} {p}: keyword {key}={sub[key]} does not match the SCI "
                f"{'x' if key.endswith('1') else 'y'} size {n}"
            )
    gain = _reference(gain_path, "GAIN", ny, nx, sub, p)
    rnoise = _reference(readnoise_path, "READNOISE", ny, nx, sub, p)

    if chunks is None:
        ty, tx = ny, nx
    elif isinstance(chunks, str):
        if chunks != "auto":
            raise UserInputError(
                f"chunks must be 'auto', (tile_y, tile_x), a dict or None, got {chunks!r}"
            )
        ty, tx = choose_tile_size(nints, ngroups, ny, nx,
                                  memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
    elif isinstance(chunks, Mapping):
        ty, tx = normalize_tile((_size(chunks.get("y", -1), ny), _size(chunks.get("x", -1), nx)),
                                 ny, nx)
    else:
        ty, tx = normalize_tile(chunks, ny, nx)

    def arr(img, lead, name):
        return _as_dask(img, (*img.shape[:lead], ty, tx), name)

    ds = make_ramp_dataset(
        arr(sci, 2, "sci"), arr(gdq, 2, "groupdq"), arr(pdq, 0, "pixeldq"),
        arr(gain, 0, "gain"), arr(rnoise, 0, "readnoise"),
        timing=timing,
        zeroframe=None if zf is None else arr(zf, 1, "zeroframe"),
        average_dark_current=None if dark is None else arr(dark, 0, "avdrkcur"),
        subarray=sub, source=source,
    )
    ds.attrs["source"] = str(p)
    ds.attrs.update(wcs_meta)  # the exposure's gwcs (meta.wcs), carried to the products
    if isinstance(keywords.get("INSTRUME"), str):
        # the instrument changes ramp fitting (MIRI's first/last groups)
        ds.attrs["INSTRUME"] = keywords["INSTRUME"].strip()
    return ds


# ---------------------------------------------------------------------------------------------
# Block-wise writing
# ---------------------------------------------------------------------------------------------


def _store_grouped(arrays: list[da.Array], regions: list[FitsRegion]) -> list[da.Array]:
    """Graphs writing ``arrays`` block-wise into ``regions``: one task per block location for
    all arrays of the same shape and chunks (a rate product's five extensions of a tile are
    written by one task, fused with the tasks that produce them), not one task per block and
    array. Each returned array has one uint8 element per block; computing it writes."""
    groups: dict[tuple, list[int]] = {}
    for i, arr in enumerate(arrays):
        groups.setdefault((arr.shape, arr.chunks), []).append(i)
    stored = []
    for (_, chunks), members in groups.items():
        token = dask.base.tokenize(*(arrays[i].name for i in members), regions[members[0]].path)
        stored.append(da.map_blocks(
            write_blocks, *(arrays[i] for i in members),
            regions=[regions[i] for i in members],
            chunks=tuple((1,) * len(c) for c in chunks),
            meta=np.empty((0,) * len(chunks), dtype=np.uint8),
            name="stcal-dask-fits-write-" + token,
        ))
    return stored


def _bitpix(dtype: np.dtype) -> int:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -8 * dtype.itemsize
    return 8 * dtype.itemsize


def _extension_header(name: str, shape: tuple[int, ...], dtype: np.dtype,
                      extra: Mapping[str, Any] | None) -> fits.Header:
    h = fits.Header()
    h["XTENSION"] = ("IMAGE", "Image extension")
    h["BITPIX"] = _bitpix(dtype)
    h["NAXIS"] = len(shape)
    for i, n in enumerate(reversed(shape), start=1):
        h[f"NAXIS{i}"] = int(n)
    h["PCOUNT"] = 0
    h["GCOUNT"] = 1
    if np.dtype(dtype).kind == "u" and np.dtype(dtype).itemsize > 1:
        h["BSCALE"] = 1
        h["BZERO"] = 1 << (8 * np.dtype(dtype).itemsize - 1)
    h["EXTNAME"] = (name, "extension name")
    for k, v in dict(extra or {}).items():
        h[k] = v
    return h


def _header_source(header_from, ds: xr.Dataset | None) -> fits.Header:
    """Keywords to copy into a product's primary header."""
    out = fits.Header()
    src = header_from
    if src is None and ds is not None:
        s = ds.attrs.get("source")
        if isinstance(s, str) and s.lower().endswith((".fits", ".fit", ".fits.gz")) \
                and Path(s).is_file():
            src = s
    if isinstance(src, str | os.PathLike):
        p, hdul = open_fits(src, "header_from file")
        with hdul:
            src = hdul[0].header.copy()
    if isinstance(src, fits.Header):
        for card in src.cards:
            if card.keyword and _STRUCTURAL.match(card.keyword):
                continue
            try:
                out.append(card, end=True)
            except Exception:  # a card astropy cannot re-serialise: skip it
                continue
    elif isinstance(src, Mapping):
        _add_keywords(out, src)
    elif src is not None:
        raise TypeError(f"header_from must be a path, a Header or a dict, got {type(src)}")
    if ds is not None:
        _add_keywords(out, ds.attrs, only_missing=True)
    return out


def _add_keywords(out: fits.Header, mapping: Mapping[str, Any], only_missing=False) -> None:
    for k, v in mapping.items():
        if not isinstance(k, str) or not _KEYWORD.match(k) or _STRUCTURAL.match(k):
            continue
        if only_missing and k in out:
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool | int | float | str):
            try:
                out[k] = v
            except (ValueError, TypeError):
                continue


def fits_filename(name: str) -> tuple[str, str | None]:
    """A file name as a FITS header string, and its exact form when that differs.

    FITS strings hold printable ASCII only, while a file name may be any characters the OS
    accepts (UTF-8, or undecodable bytes that Python keeps as surrogate escapes). The card gets
    the name with every other character replaced by ``?``; the exact name is then returned
    %-escaped (RFC 3986, of its UTF-8 / OS bytes) for a HISTORY record.

    Parameters
    ----------
    name: the file name (no directory).

    Returns
    -------
    (ascii_name, escaped): ``escaped`` is None when ``ascii_name == name``.
    """
    from urllib.parse import quote

    if all(" " <= ch <= "~" for ch in name):
        return name, None
    ascii_name = "".join(ch if " " <= ch <= "~" else "?" for ch in name)
    return ascii_name, quote(os.fsencode(name), safe="")


_CAL_STEPS = {"jump": ("S_JUMP", "Jump Detection"), "rampfit": ("S_RAMP", "Ramp Fitting")}


def cal_step_keywords(parameters: str | None) -> dict[str, tuple[str, str]]:
    """The JWST calibration-step status keywords of a product: ``S_JUMP`` / ``S_RAMP`` =
    ``COMPLETE`` for each step whose parameters the product records (as the JWST pipeline's
    JumpStep and RampFitStep set ``meta.cal_step``); they replace a copied ``SKIPPED``.

    Parameters
    ----------
    parameters: the product's parameter record (JSON object with ``jump`` / ``rampfit`` keys),
        or None.

    Returns
    -------
    dict: keyword -> (value, comment).
    """
    import json

    try:
        record = json.loads(parameters) if parameters else {}
    except (TypeError, ValueError):
        record = {}
    if not isinstance(record, dict):
        return {}
    return {key: ("COMPLETE", comment) for step, (key, comment) in _CAL_STEPS.items()
            if step in record}


def _primary_header(copy: fits.Header, datamodl: str, filename: str,
                    parameters: str | None) -> fits.Header:
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = 8
    h["NAXIS"] = 0
    h["EXTEND"] = True
    h["DATAMODL"] = (datamodl, "Type of data model")
    ascii_name, escaped = fits_filename(filename)
    h["FILENAME"] = (ascii_name, "Name of the file")
    if "TELESCOP" not in copy:
        h["TELESCOP"] = ("JWST", "Telescope used to acquire the data")
    for card in copy.cards:
        h.append(card, end=True)
    h["STCDASKV"] = (package_version(), "stcal_dask version that wrote this file")
    for key, value in cal_step_keywords(parameters).items():
        h[key] = value
    if escaped is not None:
        text = f"FILENAME in full (UTF-8, %-escaped): {escaped}"
        for i in range(0, len(text), 70):
            h.add_history(text[i:i + 70])
    if parameters and parameters != "{}":
        text = f"stcal_dask {package_version()} parameters: {parameters}"
        for i in range(0, len(text), 70):
            h.add_history(text[i:i + 70])
    return h


def _lay_out(out, partial, primary: fits.Header, extensions, tail) -> list[da.Array]:
    """Write the headers (and ``tail``) of primary + image extensions into ``partial`` at their
    final places; numpy data is written now, dask arrays are returned as graphs writing them
    block by block (see :func:`_write_fits`)."""
    layout = []
    pos = 0
    headers = [primary.tostring(padding=True).encode("ascii")]
    ext_headers = [primary]
    pos += len(headers[0])
    for name, arr, dtype, extra in extensions:
        shape = tuple(int(n) for n in arr.shape)
        ext_headers.append(_extension_header(name, shape, dtype, extra))
        headers.append(ext_headers[-1].tostring(padding=True).encode("ascii"))
        pos += len(headers[-1])
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        layout.append((pos - len(headers[-1]), pos, shape, arr, dtype))
        pos += -(-nbytes // _BLOCK) * _BLOCK
    if callable(tail):
        tail = tail(ext_headers)
    with open(partial, "wb") as f:
        f.write(headers[0])
        for (hdr_pos, _, _, _, _), hdr in zip(layout, headers[1:], strict=True):
            f.seek(hdr_pos)
            f.write(hdr)
        if tail:
            f.seek(pos)
            f.write(tail)
        f.truncate(pos + len(tail or b""))
    final, identity = str(out.final_path(partial)), file_identity(partial)
    stores_src, stores_dst = [], []
    for _, data_pos, shape, arr, dtype in layout:
        target = FitsRegion(str(partial), data_pos, shape, dtype, final=final,
                            identity=identity)
        if isinstance(arr, da.Array):
            stores_src.append(arr)
            stores_dst.append(target)
        else:
            target[...] = np.asarray(arr)
    return _store_grouped(stores_src, stores_dst)


def _write_fits(path, primary: fits.Header, extensions: list[tuple[str, Any, np.dtype, dict]],
                *, overwrite: bool, compute: bool, tail: bytes | None = None):
    """Write primary + image extensions (name, array, dtype, extra keywords) atomically;
    ``tail``: one more complete HDU (header and padded data, e.g. the ASDF extension) after
    them."""
    with atomic_outputs() as out:
        partial = out.reserve(path, overwrite=overwrite)
        stored = _lay_out(out, partial, primary, extensions, tail)
        # the arrays' graph is optimised here for this file alone, without low-level fusion
        # (see after_all): a tile kernel feeding two files must not be inlined into both
        pending = out.detach(after_all(tuple(stored)))
    return pending.compute() if compute else pending


def write_fits_images(path, primary: fits.Header,
                      extensions: list[tuple[str, Any, np.dtype, Mapping]], *,
                      tail=None, overwrite: bool = False, inputs=(), outputs=None) -> Path:
    """Write a FITS file of a primary header and image extensions, dask arrays block by block.

    Parameters
    ----------
    path : the FITS file (written under a temporary name, see :mod:`stcal_dask.io.atomic`).
    primary : the primary header (no data).
    extensions : (EXTNAME, array, dtype, extra keywords) per image extension, in file order;
        a dask array is computed and written one block at a time (a block's rows of the file
        region by ``pwrite``), so no whole array is ever held in memory.
    tail : bytes, or a callable taking the list of headers written (primary first, as
        :class:`astropy.io.fits.Header`) and returning bytes: one more complete HDU after the
        images (e.g. the ASDF extension, :func:`stcal_dask.io.wcs_asdf.asdf_hdu`).
    inputs : paths the output must not overwrite.
    outputs : a caller's :func:`~stcal_dask.io.atomic.atomic_outputs` block to join (the file
        is then renamed into place when that block ends).

    Returns
    -------
    Path : the final path.
    """
    with atomic_outputs(inputs=inputs, within=outputs) as out:
        partial = out.reserve(path, overwrite=overwrite, suffix=".fits")
        stored = _lay_out(out, partial, primary, extensions, tail)
        dask.compute(*stored, optimize_graph=False)
    return Path(os.fspath(path)).expanduser().absolute()


def _data(var: xr.DataArray):
    return var.data


def _check_product(ds: xr.Dataset, names, ndim: int, product: str) -> None:
    if not isinstance(ds, xr.Dataset):
        raise UserInputError(f"{product}: expected an xarray Dataset, got {type(ds).__name__}")
    for n in names:
        if n not in ds.data_vars:
            raise UserInputError(f"{product} Dataset: missing array {n}")
        if ndim and ds[n].ndim != ndim:
            raise UserInputError(
                f"{product} Dataset: array {n} has {ds[n].ndim} dimensions; expected {ndim}"
            )


_EXT_RATE = {"sci": "SCI", "err": "ERR", "dq": "DQ", "var_poisson": "VAR_POISSON",
             "var_rnoise": "VAR_RNOISE"}


def _write_rate_like(ds, path, header_from, overwrite, compute, ndim, product, datamodl):
    _check_product(ds, RATE_VARIABLES, ndim, product)
    exts = []
    for n, ext in _EXT_RATE.items():
        dtype, units = RATE_VARIABLES[n]
        exts.append((ext, _data(ds[n]), dtype, {"BUNIT": units} if units else {}))
    copy = _header_source(header_from, ds)
    primary = _primary_header(copy, datamodl, Path(path).name, ds.attrs.get("parameters"))
    return _write_fits(path, primary, exts, overwrite=overwrite, compute=compute,
                       tail=asdf_extension(ds.attrs))


def write_rate_fits(rate_ds: xr.Dataset, path, *, header_from=None, overwrite: bool = False,
                    compute: bool = True):
    """Write a rate Dataset as a JWST ``_rate.fits`` (ImageModel).

    Extensions SCI, ERR (BUNIT DN/s), DQ (uint32), VAR_POISSON, VAR_RNOISE ((DN/s)^2), 2-D.
    ``header_from``: a FITS path, astropy Header or dict whose primary keywords are copied (default:
    the Dataset's ``source`` FITS file if any, plus its JWST keyword attrs). Written atomically;
    dask arrays are computed block-wise into the file. Returns the final ``Path``, or a
    :class:`~stcal_dask.io.PendingWrite` with ``compute=False``.

    Raises UserInputError if ``path`` exists and ``overwrite`` is False.
    """
    return _write_rate_like(rate_ds, path, header_from, overwrite, compute, 2, "rate",
                            "ImageModel")


def write_rateints_fits(rateints_ds: xr.Dataset, path, *, header_from=None,
                        overwrite: bool = False, compute: bool = True):
    """Write a rateints Dataset as a JWST ``_rateints.fits`` (CubeModel); the same extensions
    as :func:`write_rate_fits`, 3-D (nints, ny, nx)."""
    return _write_rate_like(rateints_ds, path, header_from, overwrite, compute, 3, "rateints",
                            "CubeModel")


def write_fitopt_fits(fitopt_ds: xr.Dataset, path, *, header_from=None, overwrite: bool = False,
                      compute: bool = True):
    """Write a fitopt Dataset as a JWST ``_fitopt.fits`` (RampFitOutputModel).

    Extensions in the schema's order: SLOPE, SIGSLOPE, VAR_POISSON, VAR_RNOISE, YINT, SIGYINT
    (4-D: nints, nsegments, ny, nx), PEDESTAL (3-D), WEIGHTS (4-D), CRMAG (nints, ncr, ny, nx);
    all float32. Other arguments as in :func:`write_rate_fits`.
    """
    _check_product(fitopt_ds, FITOPT_VARIABLES, 0, "fitopt")
    exts = []
    for n, (dims, dtype, units) in FITOPT_VARIABLES.items():
        if fitopt_ds[n].ndim != len(dims):
            raise UserInputError(
                f"fitopt Dataset: array {n} has {fitopt_ds[n].ndim} dimensions; expected "
                f"{len(dims)} {dims}"
            )
        exts.append((n.upper(), _data(fitopt_ds[n]), dtype, {"BUNIT": units}))
    copy = _header_source(header_from, fitopt_ds)
    primary = _primary_header(copy, "RampFitOutputModel", Path(path).name,
                              fitopt_ds.attrs.get("parameters"))
    return _write_fits(path, primary, exts, overwrite=overwrite, compute=compute)


def _ramp_extensions(ds: xr.Dataset) -> list:
    exts = [
        ("SCI", _data(ds["sci"]), np.dtype(np.float32), {"BUNIT": "DN"}),
        ("PIXELDQ", _data(ds["pixeldq"]), np.dtype(np.uint32), {}),
        ("GROUPDQ", _data(ds["groupdq"]), np.dtype(np.uint8), {}),
    ]
    if "zeroframe" in ds.data_vars:
        exts.append(("ZEROFRAME", _data(ds["zeroframe"]), np.dtype(np.float32), {"BUNIT": "DN"}))
    if "average_dark_current" in ds.data_vars:
        exts.append(("AVDRKCUR", _data(ds["average_dark_current"]), np.dtype(np.float32),
                     {"BUNIT": "DN/s"}))
    return exts


def write_ramp_fits(ds: xr.Dataset, path, *, overwrite: bool = False, header_from=None,
                    references: bool = False, compute: bool = True):
    """Write a ramp Dataset as a JWST ``_ramp.fits`` (RampModel: SCI, PIXELDQ, GROUPDQ, optional
    ZEROFRAME and AVDRKCUR; timing / subarray keywords in the primary header).

    With ``references=True`` the ``gain`` and ``readnoise`` arrays are also written as reference
    files at :func:`reference_paths` (``X_gain.fits``, ``X_readnoise.fits``; same ``overwrite``
    rule, all targets checked before anything is written), in the same dask computation as the
    ramp (so a lazily simulated ramp is generated once). Atomic and block-wise as
    :func:`write_rate_fits`. Returns the ramp's final ``Path``, or with ``compute=False`` one
    :class:`~stcal_dask.io.PendingWrite` covering all files.
    """
    source = str(ds.attrs.get("source", "ramp")) if isinstance(ds, xr.Dataset) else "ramp"
    ds = validate_ramp(ds, source=source)
    refs = reference_paths(path) if references else ()
    check_target(path, overwrite=overwrite)
    for r in refs:
        check_target(r, overwrite=overwrite)
    copy = _header_source(header_from, ds)
    jump = ds.attrs.get("jump_parameters")
    primary = _primary_header(copy, "RampModel", Path(path).name,
                              f'{{"jump": {jump}}}' if jump else None)
    with atomic_outputs() as out:
        out.add(_write_fits(path, primary, _ramp_extensions(ds), overwrite=overwrite,
                            compute=False, tail=asdf_extension(ds.attrs)))
        if references:
            sub = {k: ds.attrs[k] for k in SUBARRAY_KEYWORDS if k in ds.attrs}
            for r, name, reftype in zip(refs, ("gain", "readnoise"), ("GAIN", "READNOISE"),
                                        strict=True):
                out.add(write_reference_fits(
                    ds[name].data, r, reftype=reftype, overwrite=overwrite, header=sub,
                    compute=False,
                ))
        pending = out.detach()
    return pending.compute() if compute else pending


def write_jump_fits(ds: xr.Dataset, path, *, header_from=None, overwrite: bool = False,
                    compute: bool = True):
    """Write the jump-flagged ramp as a JWST ``_jump.fits`` (RampModel layout, see
    :func:`write_ramp_fits`; gain / readnoise are not written)."""
    return write_ramp_fits(ds, path, overwrite=overwrite, header_from=header_from,
                           references=False, compute=compute)


_REF_UNITS = {"GAIN": ("electron/DN", "GainModel"), "READNOISE": ("DN", "ReadnoiseModel")}


def write_reference_fits(array, path, reftype: str = "GAIN", *, overwrite: bool = False,
                         header: Mapping[str, Any] | None = None, compute: bool = True):
    """Write a gain or readnoise reference file (SCI 2-D float32) atomically.

    Parameters
    ----------
    array: (ny, nx) numpy or dask array: gain in electron/DN, or CDS read noise in DN.
    reftype: ``"GAIN"`` or ``"READNOISE"``.
    header: extra primary keywords, e.g. ``SUBSTRT1, SUBSTRT2, SUBSIZE1, SUBSIZE2`` when the
        reference is itself a subarray (default: full frame starting at 1, 1).
    compute: as in :func:`write_rate_fits`.
    """
    reftype = str(reftype).upper()
    if reftype not in _REF_UNITS:
        raise UserInputError(f"reftype must be 'GAIN' or 'READNOISE', got {reftype!r}")
    if not hasattr(array, "ndim"):
        array = np.asarray(array)
    if array.ndim != 2:
        raise UserInputError(
            f"{reftype} reference array has {array.ndim} dimensions; expected 2 (ny, nx)"
        )
    units, model = _REF_UNITS[reftype]
    copy = fits.Header()
    copy["REFTYPE"] = reftype
    ny, nx = array.shape
    _add_keywords(copy, {"SUBSTRT1": 1, "SUBSTRT2": 1, "SUBSIZE1": nx, "SUBSIZE2": ny,
                         **dict(header or {})})
    primary = _primary_header(copy, model, Path(path).name, None)
    return _write_fits(path, primary, [("SCI", array, np.dtype(np.float32), {"BUNIT": units})],
                       overwrite=overwrite, compute=compute)
