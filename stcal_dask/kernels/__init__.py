"""Kernels: pure numpy/numba code on one tile or plane (no dask, no I/O, no logging).

One algorithm per pair of modules, split by one rule:

* the **public module** (:mod:`~stcal_dask.kernels.jump`, :mod:`~stcal_dask.kernels.ramp_fit`)
  holds the documented API: the step's parameter dataclass (JWST names and defaults), the
  validation and conversion of every input (shapes, dtypes, read-only C-contiguous arrays via
  :func:`~stcal_dask.kernels.common.readonly_c`), the whole-frame rules a dataflow layer needs
  (path choice, partials and their merges, skip/early-exit tests), the allocation of the outputs
  and the named results (NamedTuples). It reaches its numba module through a
  :class:`~stcal_dask.kernels.common.LazyModule`, so importing it does not load numba;
* the **numba module** (``_jump_numba``, ``_ramp_numba``) holds compiled code only: it takes
  validated arrays and plain scalars, grouped in its own named tuples where a call takes many
  (``RampInputs``, ``RampSettings``; ``FrameInputs``,
  ``DetectSettings``, ``FlagSettings``), reads the DQ bit values from
  :mod:`stcal_dask.dqflags`, and never imports from its public module.

Inputs are never modified. Shared helpers: :mod:`~stcal_dask.kernels.common` (lazy loading,
input conversion), ``_median_numba`` (medians of a few values per pixel, from the comparator
lists of :mod:`~stcal_dask.kernels.median_networks`), ``_numba_setup`` (numba's CPU target set
up without scipy).

Importing the package chooses the directory of numba's on-disk cache of compiled kernels
(:func:`stcal_dask.kernels.numba_cache.configure`, quietly: a process that never compiles needs
none) and exports it as ``NUMBA_CACHE_DIR``, so every numba function, in this process and in the
worker processes it starts, is cached there.
"""

from stcal_dask.kernels.numba_cache import configure as _configure_cache

_configure_cache(required=False)

