"""numba set up for the kernel modules, which import this before they define anything.

It points numba's on-disk cache of compiled kernels at the directory that
:func:`stcal_dask.kernels.numba_cache.configure` chooses (numba fixes a function's cache directory
when the function is decorated), and loads numba's CPU target without scipy
(:func:`stcal_dask.kernels.numba_cache.set_up_cpu_target`).
"""

from __future__ import annotations

from stcal_dask.kernels.numba_cache import configure, set_up_cpu_target

configure()
set_up_cpu_target()
