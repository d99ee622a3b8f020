"""stcal_dask: stcal jump detection, OLS ramp fitting and alignment as a chunked dataflow engine."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stcal_dask")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
