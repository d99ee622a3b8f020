"""``distributed`` worker plugins of the clusters :func:`stcal_dask.engine.cluster.get_client`
connects to or starts (distributed accepts only subclasses of its ``WorkerPlugin``, hence this
module, imported only where distributed is loaded anyway)."""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

from stcal_dask.engine.logs import swap_log_handlers
from stcal_dask.engine.threads import THREAD_ENV

__all__ = ["LogToFile", "PinThreads", "WarmRestarted"]


class PinThreads(WorkerPlugin):
    """For clusters we did not start: set the thread environment variables in each worker.

    Libraries already loaded in the worker keep their pools, but numba's parallel regions are
    pinned per task by :func:`stcal_dask.engine.threads.limit_threads`, and BLAS is not used by
    the kernels.
    """

    name = "stcal-dask-pin-threads"

    def setup(self, worker):  # noqa: D401 - distributed plugin hook
        for key, value in THREAD_ENV.items():
            os.environ.setdefault(key, value)


class LogToFile(WorkerPlugin):
    """The worker process's distributed logging goes to the file ``path``, not the terminal.

    Needed for workers started as fresh interpreters (``spawn``, or a worker its nanny
    restarted); forked and in-process workers already have the client process's handlers
    (:func:`stcal_dask.engine.logs.logs_to_file`).

    Parameters
    ----------
    path: the log file (appended to; opened at the first record).
    """

    name = "stcal-dask-log-to-file"

    def __init__(self, path: str):
        self.path = str(path)

    def setup(self, worker):  # noqa: D401 - distributed plugin hook
        swap_log_handlers(self.path)


class WarmRestarted(WorkerPlugin):
    """A local cluster's worker that starts after the cluster did (its nanny restarted it after
    it died: a fresh interpreter) loads what the first workers loaded at the cluster's start,
    before its first task: see :func:`stcal_dask.engine.cluster.warm_restarted_worker`. The
    workers that were warmed at the start do nothing.

    Parameters
    ----------
    modules: the modules the cluster's workers import at start.
    trim: return freed memory to the OS promptly (workers with an explicit memory limit).
    """

    name = "stcal-dask-warm-restarted"

    def __init__(self, modules: tuple[str, ...], trim: bool):
        self.modules = tuple(modules)
        self.trim = bool(trim)

    def setup(self, worker):  # noqa: D401 - distributed plugin hook
        from stcal_dask.engine.cluster import warm_restarted_worker

        warm_restarted_worker(self.modules, self.trim)
