"""I/O of the engine: zarr stores and JWST FITS files (all outputs written atomically).

The names below are imported on first use (PEP 562), so that e.g. the CLI can check output names
(:mod:`stcal_dask.io.naming`) without loading astropy, xarray and zarr first.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "PendingWrite": "atomic",
    "atomic_outputs": "atomic",
    "output_name": "naming",
    "reference_paths": "naming",
    "open_ramp_fits": "fits_io",
    "write_fitopt_fits": "fits_io",
    "write_jump_fits": "fits_io",
    "write_ramp_fits": "fits_io",
    "write_rate_fits": "fits_io",
    "write_rateints_fits": "fits_io",
    "write_reference_fits": "fits_io",
    "open_product": "zarr_store",
    "open_ramp": "zarr_store",
    "write_dataset_atomic": "zarr_store",
    "write_ramp": "zarr_store",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))

