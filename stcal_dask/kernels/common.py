"""What the kernels' public modules share: lazy loading of their numba modules and the
conversion of inputs to what the compiled code takes (numba is loaded only by
:func:`compile_shared`)."""

from __future__ import annotations

import importlib

import numpy as np

__all__ = ["LazyModule", "compile_shared", "readonly_c"]


class LazyModule:
    """A module imported on first attribute access.

    The public kernel modules reach their numba modules through one of these, so that the
    parameter classes and helpers (used by the CLI and the dataflow layer to build graphs) do
    not load numba/llvmlite.

    Parameters
    ----------
    name : str
        Dotted name of the module.
    """

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


def compile_shared() -> None:
    """Compile (or load from the compiled-kernel cache) in this process the numba code that the
    jump and the ramp-fit kernels share: the median of a few values per pixel (the median
    networks and the sort behind ``_median_numba.median_function``).

    Two processes compiling the two kernels at once (see
    :func:`stcal_dask.engine.warmup.compile_kernels`) would otherwise both compile it: done
    first in one of them, the other loads it from the cache (it waits while it is compiled) and
    this one reuses it in place.
    """
    importlib.import_module("stcal_dask.kernels._median_numba").median_function(
    ).__wrapper_address__()


def readonly_c(a, dtype=None) -> np.ndarray:
    """``a`` as a read-only, C-contiguous view (copied only when needed).

    Every input reaches numba read-only and C-ordered, so there is one compiled specialisation
    whether the caller's arrays are writable or not (dask blocks often are not), and the kernel
    cannot write into the caller's arrays.

    Parameters
    ----------
    a : array_like
        The input.
    dtype : numpy.dtype, optional
        Convert to this dtype first (None: keep ``a``'s).

    Returns
    -------
    numpy.ndarray
        A non-writeable view, C-contiguous, of ``a`` or of a converted copy.
    """
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False
    return v
