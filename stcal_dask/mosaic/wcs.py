"""The mosaic-WCS workflow: many rate products -> footprints on a dask cluster -> output WCS.

Each input is a rate product carrying a gwcs in one of three documented ways:

* a **JWST FITS** file (``*_rate.fits``, ``*_cal.fits``, any ``.fits``) with the gwcs in its ASDF
  extension (``meta.wcs``) and ``meta.wcsinfo`` -- what the JWST pipeline writes and
  ``stdatamodels.jwst.datamodels.ImageModel(path).meta.wcs`` reads. We read the ASDF extension
  directly (no stdatamodels import needed on the workers); :func:`write_rate_fits_with_wcs`
  writes such files (needs stdatamodels).
* a **zarr rate store** (a directory) whose root attributes hold ``wcs_asdf`` (the gwcs as ASDF
  text, arrays inline, see :func:`wcs_to_asdf_text`) and ``wcsinfo`` (a dict). Add them to a
  Dataset's attrs before writing it (:func:`wcs_attrs`) or to an existing store
  (:func:`attach_wcs`). The array shape comes from the store's ``sci`` variable.
* a **sidecar ASDF** file whose tree has ``wcs`` and optionally ``wcsinfo`` and ``shape``.

:func:`compute_footprints` computes one footprint per exposure, one dask task each (``client.map``
on a distributed cluster, else ``dask.delayed`` on the current scheduler); only small arrays come
back. :func:`build_mosaic_wcs` turns them into the output WCS with
:func:`stcal_dask.mosaic.alignment.wcs_from_sregions` (the first input is the reference: frames,
pixel scale at its ``(ra_ref, dec_ref)``, orientation from its ``roll_ref, v3yangle, vparity``), and
:func:`write_mosaic_wcs` writes it as ASDF atomically (temporary name, then rename), with the
output shape, bounding box, CRPIX/CRVAL/pixel scale/PC, S_REGION and the inputs' footprints.

Command line: ``stcal-dask mosaic-wcs`` (:mod:`stcal_dask.cli.commands.mosaic_wcs`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import asdf
import gwcs
import numpy as np

from stcal_dask.errors import UserInputError
from stcal_dask.io.wcs_asdf import (
    WCS_ATTR,
    WCSINFO_ATTR,
    plain_wcsinfo,
    read_asdf_extension,
    wcs_attrs,
    wcs_from_asdf_text,
    wcs_to_asdf_text,
)
from stcal_dask.mosaic import alignment as al

__all__ = [
    "WCSINFO_ATTR",
    "WCS_ATTR",
    "ExposureFootprint",
    "MosaicWCS",
    "ProductWCS",
    "attach_wcs",
    "build_mosaic_wcs",
    "compute_footprints",
    "exposure_footprint",
    "read_exposure_wcs",
    "read_mosaic_wcs",
    "wcs_attrs",
    "wcs_from_asdf_text",
    "wcs_to_asdf_text",
    "write_mosaic_wcs",
    "write_rate_fits_with_wcs",
]


class ProductWCS(NamedTuple):
    """The WCS read from one rate product (FITS, zarr store or ASDF file), with where it came
    from (:func:`read_exposure_wcs`); for a synthetic exposure's WCS see
    :class:`stcal_dask.sim.wcs.SimulatedWCS`."""

    path: str
    wcs: gwcs.WCS
    """Bounding box set (from the array shape when the stored WCS has none)."""
    wcsinfo: dict | None
    """ra_ref, dec_ref, roll_ref, v3yangle (deg), vparity, ... or None when absent."""
    shape: tuple[int, int] | None
    """(ny, nx) of the science array, when known."""


class ExposureFootprint(NamedTuple):
    """What a footprint task sends back (small)."""

    path: str
    footprint: np.ndarray
    """(4, 2) (RA, Dec) degrees of the bounding-box corners (pixel edges), RA in [0, 360)."""
    wcsinfo: dict | None
    shape: tuple[int, int] | None
    wcs: gwcs.WCS | None
    """Only for the reference exposure (``with_wcs=True``), else None."""
    frame: str | None = None
    """Celestial reference system of the WCS's output frame (``"ICRS"``, ``"FK5"``, ...)."""


class MosaicWCS(NamedTuple):
    """The output WCS and what it was built from."""

    wcs: gwcs.WCS
    exposures: list[ExposureFootprint]


# ---------------------------------------------------------------------------------------------
# Serialising and attaching WCSs
# ---------------------------------------------------------------------------------------------


def attach_wcs(store, wcs: gwcs.WCS, wcsinfo) -> None:
    """Add the gwcs and wcsinfo to the root attributes of an existing zarr store."""
    import zarr

    p = Path(os.fspath(store))
    if not p.is_dir():
        raise UserInputError(f"zarr store {p} does not exist")
    from stcal_dask.io.zarr_store import consolidate_store

    group = zarr.open_group(str(p), mode="r+")
    group.attrs.update(wcs_attrs(wcs, wcsinfo))
    consolidate_store(str(p))  # keep the consolidated metadata (read by open_zarr) current


def write_rate_fits_with_wcs(
    path,
    sci: np.ndarray,
    wcs: gwcs.WCS,
    wcsinfo,
    *,
    err: np.ndarray | None = None,
    dq: np.ndarray | None = None,
    var_poisson: np.ndarray | None = None,
    var_rnoise: np.ndarray | None = None,
    overwrite: bool = False,
    exposure_time: float | None = None,
    pixelarea_steradians: float | None = None,
    units: str | None = None,
) -> Path:
    """Write a JWST-style ``_rate.fits`` (stdatamodels ImageModel) carrying ``meta.wcs``.

    ``sci``/``err`` in DN/s, ``dq`` uint32, variances in (DN/s)^2, all (ny, nx). Optional
    metadata: ``exposure_time`` (s, EFFEXPTM), ``pixelarea_steradians`` (PIXAR_SR) and the SCI
    ``units`` (BUNIT). Written under a temporary name and renamed into place. Requires the
    ``stdatamodels`` package.
    """
    from stcal_dask.io.atomic import atomic_outputs, check_target

    try:
        from stdatamodels.jwst.datamodels import ImageModel
    except ImportError as exc:  # pragma: no cover - stdatamodels is in the test extra
        raise UserInputError("writing JWST FITS with a WCS needs stdatamodels installed") from exc
    path = check_target(path, overwrite=overwrite)
    sci = np.asarray(sci, dtype=np.float32)
    if sci.ndim != 2:
        raise UserInputError(f"sci must be 2-D (ny, nx), got shape {sci.shape}")
    arrays = {"data": sci}
    for name, arr, dtype in (
        ("err", err, np.float32),
        ("dq", dq, np.uint32),
        ("var_poisson", var_poisson, np.float32),
        ("var_rnoise", var_rnoise, np.float32),
    ):
        if arr is not None:
            arr = np.asarray(arr, dtype=dtype)
            if arr.shape != sci.shape:
                raise UserInputError(f"{name} has shape {arr.shape}, sci has {sci.shape}")
            arrays[name] = arr
    model = ImageModel(**arrays)
    model.meta.wcs = wcs
    if exposure_time is not None:
        model.meta.exposure.exposure_time = float(exposure_time)
    if pixelarea_steradians is not None:
        model.meta.photometry.pixelarea_steradians = float(pixelarea_steradians)
    if units is not None:
        model.meta.bunit_data = str(units)
        model.meta.bunit_err = str(units)
    for key, value in plain_wcsinfo(wcsinfo).items():
        setattr(model.meta.wcsinfo, key, value)
    try:
        with atomic_outputs() as out:
            model.save(str(out.reserve(path, overwrite=overwrite, suffix=".fits")))
    finally:
        model.close()
    return path


# ---------------------------------------------------------------------------------------------
# Reading an exposure's WCS
# ---------------------------------------------------------------------------------------------


def _read_fits(p: Path) -> tuple[gwcs.WCS | None, dict | None, tuple[int, int] | None]:
    from astropy.io import fits

    try:
        with fits.open(p, memmap=False) as hdul:
            shape = None
            if "SCI" in hdul:
                h = hdul["SCI"].header
                if h.get("NAXIS", 0) >= 2:
                    shape = (int(h["NAXIS2"]), int(h["NAXIS1"]))
            if "ASDF" not in hdul:
                raise UserInputError(f"{p} has no ASDF extension, so no gwcs (meta.wcs)")
            wcs, wcsinfo = read_asdf_extension(hdul, str(p))
    except OSError as exc:
        raise UserInputError(f"{p} is not a readable FITS file ({exc})") from None
    return wcs, wcsinfo, shape


def _read_zarr(p: Path):
    import zarr

    try:
        group = zarr.open_group(str(p), mode="r")
    except Exception as exc:  # zarr raises a variety of errors for non-stores
        raise UserInputError(f"{p} is not a zarr store ({type(exc).__name__})") from None
    attrs = dict(group.attrs)
    if WCS_ATTR not in attrs:
        raise UserInputError(
            f"zarr store {p} has no '{WCS_ATTR}' attribute (attach one with "
            "stcal_dask.mosaic.wcs.attach_wcs)"
        )
    wcs = wcs_from_asdf_text(attrs[WCS_ATTR], f"{p} attribute '{WCS_ATTR}'")
    shape = None
    if "sci" in group:
        shape = tuple(int(s) for s in group["sci"].shape[-2:])
    return wcs, attrs.get(WCSINFO_ATTR), shape


def _read_asdf(p: Path):
    try:
        with asdf.open(p, lazy_load=False, memmap=False) as af:
            tree = af.tree
            wcs = tree.get("wcs")
            info = tree.get("wcsinfo")
            shape = tree.get("shape")
            info = dict(info) if info is not None else None
            shape = tuple(int(s) for s in shape) if shape is not None else None
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{p} is not a readable ASDF file ({exc})") from None
    return wcs, info, shape


def read_exposure_wcs(path) -> ProductWCS:
    """Read the gwcs, wcsinfo and array shape of one input (FITS, zarr store or ASDF sidecar).

    A WCS without a bounding box gets the full-frame box of the array shape.
    """
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise UserInputError(f"input {p} does not exist")
    name = p.name.lower()
    if p.is_dir():
        wcs, info, shape = _read_zarr(p)
    elif name.endswith((".fits", ".fit", ".fits.gz")):
        wcs, info, shape = _read_fits(p)
    elif name.endswith(".asdf"):
        wcs, info, shape = _read_asdf(p)
    else:
        raise UserInputError(
            f"input {p}: expected a JWST .fits file, a zarr store directory or an .asdf file"
        )
    if not isinstance(wcs, gwcs.WCS):
        raise UserInputError(f"input {p} carries no gwcs (meta.wcs / '{WCS_ATTR}' / 'wcs')")
    if wcs.bounding_box is None:
        if shape is None and wcs.pixel_shape is not None:
            shape = tuple(wcs.pixel_shape[::-1])
        if shape is None:
            raise UserInputError(f"input {p}: its WCS has no bounding box and no array shape")
        wcs.bounding_box = al.wcs_bbox_from_shape(shape)
    if info is not None:
        info = plain_wcsinfo(info)
    return ProductWCS(str(p), wcs, info, shape)


def exposure_footprint(path, with_wcs: bool = False) -> ExposureFootprint:
    """One footprint task: read an input's WCS and return its footprint (pixel-edge corners)."""
    exp = read_exposure_wcs(path)
    try:
        fp = al.footprint(exp.wcs)[:, :2]
    except UserInputError as exc:
        raise UserInputError(f"input {exp.path}: {exc}") from None
    if fp.shape != (4, 2) or not np.all(np.isfinite(fp)):
        raise UserInputError(f"input {exp.path}: footprint is not 4 finite (RA, Dec) corners")
    fp = fp.copy()
    fp[:, 0] %= 360.0
    return ExposureFootprint(
        exp.path,
        fp,
        exp.wcsinfo,
        exp.shape,
        exp.wcs if with_wcs else None,
        al.celestial_frame_name(exp.wcs),
    )


# ---------------------------------------------------------------------------------------------
# On the cluster
# ---------------------------------------------------------------------------------------------


def compute_footprints(paths: Sequence, client=None, ref_index: int = 0) -> list[ExposureFootprint]:
    """Footprints of many inputs, one task per input (the reference also returns its gwcs).

    With a ``distributed.Client`` the tasks are submitted with ``client.map``; otherwise they are
    ``dask.delayed`` calls computed on the current dask scheduler (a default distributed client
    if one is active, else threads). Order follows ``paths``.
    """
    paths = [str(Path(os.fspath(p)).expanduser()) for p in paths]
    if not paths:
        raise UserInputError("no inputs given: need at least one rate product")
    if not 0 <= ref_index < len(paths):
        raise UserInputError(f"reference index {ref_index} outside the {len(paths)} inputs")
    flags = [i == ref_index for i in range(len(paths))]
    if client is not None:
        token = uuid.uuid4().hex[:12]
        futures = client.map(
            exposure_footprint,
            paths,
            flags,
            pure=False,
            # unique per call: files may have changed since an earlier call with the same names
            key=[f"mosaic-footprint-{i}-{token}" for i in range(len(paths))],
        )
        try:
            return list(client.gather(futures))
        finally:
            for f in futures:
                f.release()
    import dask

    token = uuid.uuid4().hex[:12]
    tasks = [
        dask.delayed(exposure_footprint)(p, flag, dask_key_name=f"mosaic-footprint-{i}-{token}")
        for i, (p, flag) in enumerate(zip(paths, flags, strict=True))
    ]
    return list(dask.compute(*tasks))


def build_mosaic_wcs(
    paths: Sequence,
    *,
    client=None,
    pscale: float | None = None,
    pscale_ratio: float | None = None,
    rotation: float | None = None,
    crval: Sequence[float] | None = None,
    crpix: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    align_edges: bool = False,
) -> MosaicWCS:
    """Output WCS of a mosaic of ``paths`` (footprints computed on the cluster).

    Parameters are those of :func:`stcal_dask.mosaic.alignment.wcs_from_sregions`: ``pscale`` in
    degrees/pixel, ``rotation`` degrees, ``crval`` (RA, Dec) degrees, ``crpix`` 0-based (x, y),
    ``shape`` (ny, nx). The first input is the reference and must carry wcsinfo.
    """
    records = compute_footprints(paths, client=client)
    ref = records[0]
    for r in records[1:]:
        if r.frame != ref.frame:
            raise UserInputError(
                f"input {r.path} is in celestial frame {r.frame} but the reference {ref.path} is "
                f"in {ref.frame}; all inputs must share one frame"
            )
    if ref.wcsinfo is None:
        raise UserInputError(
            f"reference input {ref.path} has no wcsinfo (ra_ref, dec_ref, roll_ref, v3yangle, "
            "vparity)"
        )
    try:
        al.wcsinfo_from(ref.wcsinfo)
    except UserInputError as exc:
        raise UserInputError(f"reference input {ref.path}: {exc}") from None
    wcs = al.wcs_from_sregions(
        [r.footprint for r in records],
        ref.wcs,
        ref.wcsinfo,
        pscale_ratio=pscale_ratio,
        pscale=pscale,
        rotation=rotation,
        shape=shape,
        crpix=crpix,
        crval=crval,
        align_edges=align_edges,
    )
    return MosaicWCS(wcs, records)


def write_mosaic_wcs(
    mosaic: MosaicWCS | gwcs.WCS, path, *, overwrite: bool = False, parameters=None
) -> Path:
    """Write the output WCS as ASDF, atomically (:func:`stcal_dask.io.atomic.atomic_outputs`).

    Tree: ``wcs`` (gwcs with bounding box and pixel shape), ``shape`` [ny, nx],
    ``bounding_box`` [[xlo, xhi], [ylo, yhi]], ``crpix`` (0-based), ``crval`` (deg), ``pixel_scale``
    (deg/pixel), ``pc``, ``s_region`` (pixel edges), and when known ``inputs`` and
    ``input_footprints`` ((4, 2) RA/Dec each) plus the ``parameters`` used.
    """
    from stcal_dask import __version__
    from stcal_dask.io.atomic import atomic_outputs, check_target

    wcs, records = (mosaic.wcs, mosaic.exposures) if isinstance(mosaic, MosaicWCS) else (mosaic, [])
    path = check_target(path, overwrite=overwrite, what="output WCS")
    bbox = wcs.bounding_box.bounding_box(order="F")
    tree: dict[str, Any] = {
        "wcs": wcs,
        "shape": [int(s) for s in wcs.array_shape],
        "bounding_box": [[float(lo), float(hi)] for lo, hi in bbox],
        "s_region": al.compute_s_region_keyword(_wrap(al.footprint(wcs))),
        "software": {"name": "stcal_dask", "version": __version__},
    }
    ft = wcs.forward_transform
    if hasattr(ft, "crpix"):
        tree["crpix"] = [float(v) for v in np.ravel(ft.crpix.value)]
        tree["crval"] = [float(v) for v in np.ravel(ft.crval.value)]
        tree["pixel_scale"] = float(np.ravel(ft.cdelt.value)[0])
        tree["pc"] = np.asarray(ft.pc.value, dtype=float).tolist()
    if records:
        tree["inputs"] = [r.path for r in records]
        tree["input_footprints"] = [np.asarray(r.footprint, float).tolist() for r in records]
    if parameters:
        tree["parameters"] = {k: v for k, v in dict(parameters).items() if v is not None}
    with atomic_outputs() as out:
        partial = out.reserve(path, overwrite=overwrite, what="output WCS")
        asdf.AsdfFile(tree).write_to(str(partial), all_array_storage="inline")
    return path


def _wrap(fp: np.ndarray) -> np.ndarray:
    fp = np.array(fp[:, :2], dtype=float)
    fp[:, 0] %= 360.0
    return fp


def read_mosaic_wcs(path) -> gwcs.WCS:
    """Read the gwcs written by :func:`write_mosaic_wcs`."""
    wcs, _, _ = _read_asdf(Path(os.fspath(path)))
    if not isinstance(wcs, gwcs.WCS):
        raise UserInputError(f"{path} holds no 'wcs' gwcs")
    return wcs
