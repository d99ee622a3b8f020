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
    """Pin numba's parallel regions to one thread for the calling thread (cheap; idempotent).

    Called at the start of every tile task so that a worker with N threads never runs more than
    N busy OS threads, whatever the worker's environment was.
    """
    numba = sys.modules.get("numba")
    if numba is None:
        return
    try:
        if numba.get_num_threads() != 1:
            numba.set_num_threads(1)
    except Exception:  # threading layer not available: nothing to pin
        pass
