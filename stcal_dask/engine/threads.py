"""One thread per worker thread: the environment and the per-task pin shared by both sides.

The client side (:mod:`stcal_dask.engine.cluster`) gives :data:`THREAD_ENV` to the worker
processes it starts; the worker side (:mod:`stcal_dask.engine.tasks`) calls
:func:`limit_threads` at the start of every tile task. Nothing here imports numba or numpy, so
the start-up sequence can load it before forking workers.
"""

from __future__ import annotations

import sys

__all__ = ["THREAD_ENV", "limit_threads"]

THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "MALLOC_TRIM_THRESHOLD_": "65536",
}
"""Environment given to spawned worker processes: one thread for every native thread pool."""


def limit_threads() -> None:
    """Pin numba's parallel regions and numpy's OpenBLAS to one thread for the calling thread
    (cheap; idempotent).

    Called at the start of every tile task so that a worker with N threads never runs more than
    N busy OS threads, whatever the worker's environment was.
    """
    _pin_blas()
    numba = sys.modules.get("numba")
    if numba is None:
        return
    try:
        if numba.get_num_threads() != 1:
            numba.set_num_threads(1)
    except Exception:  # threading layer not available: nothing to pin
        pass


_BLAS_PINNED: list[int] = []
"""The process id where :func:`_pin_blas` last ran (a forked child runs it again)."""


def _pin_blas() -> None:
    """numpy's bundled OpenBLAS to one thread. ``OPENBLAS_NUM_THREADS`` only counts when numpy
    loads: a worker forked from a process that had loaded it (the command line) would run every
    matrix product (astropy's affine transforms in each WCS evaluation) on one thread per core,
    the extra threads spinning on the cores the other workers need."""
    import os

    if _BLAS_PINNED == [os.getpid()] or "numpy" not in sys.modules:
        return
    _BLAS_PINNED[:] = [os.getpid()]
    import ctypes
    import glob

    site = os.path.dirname(os.path.dirname(sys.modules["numpy"].__file__))
    for path in glob.glob(os.path.join(site, "numpy.libs", "*openblas*")):
        try:
            lib = ctypes.CDLL(path)  # already loaded by numpy: the same library
        except OSError:
            continue
        for symbol in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                       "openblas_set_num_threads64_", "openblas_set_num_threads"):
            setter = getattr(lib, symbol, None)
            if setter is not None:
                setter(1)
                break
