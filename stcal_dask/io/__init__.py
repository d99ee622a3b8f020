"""I/O of the engine: zarr stores and JWST FITS files (all outputs written atomically)."""

from stcal_dask.io._atomic import PendingWrite
from stcal_dask.io.fits_io import (
    open_ramp_fits,
    output_name,
    reference_paths,
    write_fitopt_fits,
    write_jump_fits,
    write_ramp_fits,
    write_rate_fits,
    write_rateints_fits,
    write_reference_fits,
)
from stcal_dask.io.zarr_store import (
    open_product,
    open_ramp,
    simulate_ramp_lazy,
    simulate_to_zarr,
    write_dataset_atomic,
    write_ramp,
)

__all__ = [
    "PendingWrite",
    "open_product",
    "open_ramp",
    "open_ramp_fits",
    "output_name",
    "reference_paths",
    "simulate_ramp_lazy",
    "simulate_to_zarr",
    "write_dataset_atomic",
    "write_fitopt_fits",
    "write_jump_fits",
    "write_ramp",
    "write_ramp_fits",
    "write_rate_fits",
    "write_rateints_fits",
    "write_reference_fits",
]
