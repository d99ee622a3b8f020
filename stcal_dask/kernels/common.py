"""What the kernels' public modules share: lazy loading of their numba modules and the
conversion of inputs to what the compiled code takes (no numba here)."""

from __future__ import annotations

import importlib

import numpy as np

__all__ = ["LazyModule", "readonly_c"]


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
