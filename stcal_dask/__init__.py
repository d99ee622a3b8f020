"""stcal_dask: stcal jump detection, OLS ramp fitting and alignment as a chunked dataflow engine."""

__all__ = ["__version__"]


def __getattr__(name: str):
    # looked up on first use: reading the installed distributions' metadata scans sys.path,
    # which every start of the command would otherwise pay before it can handle Ctrl-C
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("stcal_dask")
        except PackageNotFoundError:  # running from a source tree without install
            value = "0.0.0+unknown"
        globals()["__version__"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
