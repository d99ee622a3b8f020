"""JWST-style file names of the engine's products (no heavy imports: used before any I/O)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["JWST_SUFFIXES", "output_name", "reference_paths"]

JWST_SUFFIXES = (
    "uncal", "dq_init", "saturation", "superbias", "refpix", "linearity", "dark", "dark_current",
    "ramp", "jump", "rate", "rateints", "fitopt", "trapsfilled", "cal", "calints", "gain",
    "readnoise",
)
"""File-name suffixes recognised (and replaced) by :func:`output_name`."""


def output_name(input_path, suffix: str, *, ext: str | None = None, output_dir=None) -> Path:
    """JWST-style output name: ``X_ramp.fits`` -> ``X_<suffix>.fits``.

    A trailing JWST suffix (:data:`JWST_SUFFIXES`, e.g. ``_ramp``, ``_uncal``) is replaced by
    ``_<suffix>``; otherwise ``_<suffix>`` is appended (``X.zarr`` -> ``X_rate.zarr``).

    Parameters
    ----------
    input_path: the input file or store.
    suffix: ``"rate"``, ``"rateints"``, ``"fitopt"``, ``"jump"``, ...
    ext: the output extension (``".fits"``, ``".zarr"``); default that of the input.
    output_dir: directory of the output; default the input's directory.
    """
    p = Path(os.fspath(input_path))
    name = p.name
    stem, in_ext = (name[: -len(p.suffix)], p.suffix) if p.suffix else (name, "")
    for known in sorted(JWST_SUFFIXES, key=len, reverse=True):
        if stem.endswith("_" + known) and len(stem) > len(known) + 1:
            stem = stem[: -len(known) - 1]
            break
    ext = in_ext if ext is None else (ext if ext.startswith(".") or not ext else "." + ext)
    out_dir = p.parent if output_dir is None else Path(os.fspath(output_dir))
    return out_dir / f"{stem}_{suffix}{ext}"


def reference_paths(ramp_path) -> tuple[Path, Path]:
    """Gain and readnoise reference file names that go with a ramp file: ``X_gain.fits``,
    ``X_readnoise.fits`` beside ``X_ramp.fits``."""
    return (output_name(ramp_path, "gain", ext=".fits"),
            output_name(ramp_path, "readnoise", ext=".fits"))
