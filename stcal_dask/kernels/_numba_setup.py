"""numba's one-time set-up of its CPU target, without scipy.

The first compile or cache load of any numba function registers numba's implementations of
numpy; one of them (``np.correlate``/``np.convolve``) imports ``scipy.linalg`` to decide whether
BLAS may be used (a large part of a worker's kernel loading). The kernels use no BLAS, so
the set-up runs once here with scipy hidden when it is not loaded yet (numba then uses its own
loop for those two functions; ``np.dot`` and ``np.linalg`` still find scipy on first use).
It also points numba's on-disk cache of compiled kernels at the directory that
:func:`stcal_dask.kernels.numba_cache.configure` chooses (numba fixes a function's cache directory
when the function is decorated). Imported by the numba kernel modules before they define anything.
"""

from __future__ import annotations

from stcal_dask.kernels.numba_cache import configure as configure_cache
from stcal_dask.optional_imports import skipping_optional_imports


def set_up_cpu_target() -> None:
    """Load numba's CPU target registries now (idempotent), with scipy hidden."""
    # numba imports scipy's top level itself (a version check) when it is installed
    with skipping_optional_imports(("scipy", "scipy.linalg")):
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()


configure_cache()
set_up_cpu_target()
