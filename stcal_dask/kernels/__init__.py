"""Pure numpy/numba kernels on one tile or plane.

Importing the package chooses the directory of numba's on-disk cache of compiled kernels
(:func:`stcal_dask.kernels.numba_cache.configure`, quietly: a process that never compiles needs
none) and exports it as ``NUMBA_CACHE_DIR``, so every numba function, in this process and in the
worker processes it starts, is cached there.
"""

from stcal_dask.kernels.numba_cache import configure as _configure_cache

_configure_cache(required=False)

