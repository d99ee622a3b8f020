"""Start-up of a run: how the local cluster's workers start, and what this process imports before
they do.

A worker forked from this process starts with every module this process has loaded (no imports
of its own), but a fork taken while another thread of this process is importing a module can
leave the worker waiting forever on that module's lock. So the command line imports, in its main
thread, what the workers need *before* it starts the cluster (:func:`import_for_workers`), and
whatever else the graph needs only once every worker has been forked (:func:`import_for_graph`;
:class:`~stcal_dask.engine.cluster.BackgroundClient` returns after the forks).

Optional packages the run never uses are kept out of the process while these imports run
(:func:`stcal_dask.optional_imports.skipping_optional_imports`).
"""

from __future__ import annotations

import importlib
import os
import sys

from stcal_dask.errors import UserInputError
from stcal_dask.optional_imports import skipping_optional_imports

__all__ = ["GRAPH_IMPORTS", "START_METHOD_ENV", "freeze_loaded", "import_for_graph",
           "import_for_workers", "worker_start_method"]

START_METHOD_ENV = "STCAL_DASK_WORKER_START"
"""Environment variable choosing how local workers start: ``fork`` or ``spawn``."""

GRAPH_IMPORTS = ("stcal_dask.engine.dataflow", "stcal_dask.io.fits_io", "stcal_dask.io.naming")
"""What building a graph loads besides distributed: dask.array and xarray (through the
dataflow), astropy.io.fits (through the FITS I/O)."""


def worker_start_method() -> str | None:
    """``"fork"`` where the local cluster's workers are forked from this process, else None
    (distributed's own method: a fresh interpreter per worker).

    Linux forks by default (elsewhere a fork is unsafe or missing); ``STCAL_DASK_WORKER_START``
    (``fork`` or ``spawn``) overrides it. Any other value is a :class:`UserInputError`.
    """
    method = os.environ.get(START_METHOD_ENV, "").strip().lower()
    if method:
        if method not in ("fork", "spawn"):
            raise UserInputError(f"{START_METHOD_ENV} must be 'fork' or 'spawn', got {method!r}")
        return "fork" if method == "fork" else None
    return "fork" if sys.platform.startswith("linux") else None


def import_for_workers(lean: bool = False) -> None:
    """Import, in this thread, what workers forked from this process start with, so that no
    import is in progress at the moment of a fork.

    Parameters
    ----------
    lean : bool
        False (default): everything the graph and the tasks need (:data:`GRAPH_IMPORTS` too), so
        a forked worker starts with it loaded instead of importing it itself. True (the tasks
        need no xarray, see :data:`stcal_dask.engine.cluster.WORKER_IMPORTS_FITS`): distributed
        and the cluster code only; the workers are then forked early and load their few modules
        and the compiled kernels on the other cores while this process goes on importing
        xarray, astropy and dask.array (:func:`import_for_graph`) and builds the graph.
    """
    with skipping_optional_imports():
        import distributed  # noqa: F401

        from stcal_dask.engine import cluster  # noqa: F401
    if not lean:
        import_for_graph()


def import_for_graph() -> None:
    """Import what the graph needs besides distributed (:data:`GRAPH_IMPORTS`), without the
    unused optional packages."""
    with skipping_optional_imports():
        for name in GRAPH_IMPORTS:
            importlib.import_module(name)


def freeze_loaded() -> None:
    """Take every object alive now out of the garbage collector's view (:func:`gc.freeze`,
    after one collection so that no garbage is kept): call once a long-running process has
    loaded its libraries and kernels (a worker after its warm-up, the batch's process once
    its cluster has started).

    The libraries (numba, dask, distributed, numpy, astropy) leave a few hundred thousand
    container objects, and every full collection walks all of them again: in a batch, tens of
    milliseconds each, several times per exposure, in the threads that run the tasks and the
    scheduler. They stay alive for the whole run anyway; what is created afterwards is
    collected as usual.
    """
    import gc

    gc.collect()
    gc.freeze()
