"""One thread per worker thread: the environment and the per-task pin shared by both sides.

The client side (:mod:`stcal_dask.engine.cluster`) gives :data:`THREAD_ENV` to the worker
processes it starts; the worker side (:mod:`stcal_dask.engine.tasks`) calls
:func:`limit_threads` at the start of every tile task. Tasks that allocate and free large
arrays call :func:`lean_memory` at their start and :func:`trim_heap` at their end. Nothing here
imports numba or numpy, so the start-up sequence can load it before forking workers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["HEAP_TOP_KEPT", "M_TRIM_THRESHOLD", "THREAD_ENV", "glibc", "lean_memory",
           "limit_threads", "small_pages", "trim_heap"]

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


_LEAN: list = []
"""(process id, glibc's ``malloc_trim`` or None) once :func:`lean_memory` ran in a process."""

M_TRIM_THRESHOLD = -1
"""glibc's ``mallopt`` parameter of the free memory kept at the top of a heap."""
_M_MMAP_THRESHOLD = -3
HEAP_TOP_KEPT = 8 * 2**20
"""Free memory glibc may keep at the top of a heap (its trim threshold, fixed by
:func:`lean_memory`); blocks from this size up are mappings of their own, unmapped when
freed."""


def glibc():
    """This process's C library as a :class:`ctypes.CDLL` when it is glibc on Linux (with
    ``malloc_trim`` and ``mallopt``), else None: the one place the allocator calls load it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None)  # the process's C library
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None
    return libc


def lean_memory() -> None:
    """Fix glibc's thresholds in this process (once per process; cheap afterwards; unless the
    environment sets them), so that a task's freed memory can go back to the system. Called at
    the start of tasks that allocate and free large arrays, and by :func:`trim_heap`.

    By default the thresholds grow with the blocks freed, up to 32 MiB blocks served from the
    heaps and 64 MiB kept free at the top of a heap, and ``malloc_trim`` does not shrink the
    top of the heaps of threads other than the main one (a worker runs its tasks in one), so
    freed task temporaries stayed resident there. Fixed at :data:`HEAP_TOP_KEPT`, a large array
    is a mapping of its own (given back when freed; zero pages allocated only where written)
    and a heap keeps at most that much free memory at its top.
    """
    import os

    if _LEAN and _LEAN[0][0] == os.getpid():
        return
    libc = glibc()
    trim = None if libc is None else libc.malloc_trim
    if libc is not None:
        if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
            libc.mallopt(_M_MMAP_THRESHOLD, HEAP_TOP_KEPT)
        if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            libc.mallopt(M_TRIM_THRESHOLD, HEAP_TOP_KEPT)
    _LEAN[:] = [(os.getpid(), trim)]


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """Within the block, numpy allocates without asking the kernel for transparent huge pages.

    numpy advises 2 MiB pages for every array of 4 MiB or more; for a large zero-filled array
    of which only a window is ever written (a drizzle's output arrays over the mosaic) each
    page written then costs 2 MiB of memory instead of 4 KiB. Dense arrays keep the advice
    (fewer page faults). Only advice: another thread allocating meanwhile is unaffected in
    what it computes.
    """
    np = sys.modules.get("numpy")
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is None:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)


def trim_heap() -> None:
    """Return the memory this process's allocator holds free to the system (glibc's
    ``malloc_trim(0)``; nothing where the C library has no such call).

    Called at the end of a task that freed large temporaries: glibc keeps freed blocks in its
    heaps, so without it a worker's resident memory, what its memory limit and a user's
    monitor see, stays at the high-water mark of the tasks it ran while that memory is free.
    One pass per task costs far less than a low trim threshold, which unmaps every temporary
    as it is freed (the next task then faults its pages in again).
    """
    lean_memory()
    trim = _LEAN[0][1]
    if trim is not None:
        trim(0)
