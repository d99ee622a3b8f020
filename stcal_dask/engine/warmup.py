"""Compiling the numba kernels once per machine, ahead of the first tile, and saying so.

The kernels are numba functions cached on disk (the directory is chosen by
:mod:`stcal_dask.kernels.numba_cache`: ``$STCAL_DASK_CACHE_DIR``, else a per-user directory under
``/var/tmp``). A cold cache means about a minute or more of compilation before the first tile
runs; a warm one loads in a fraction of a second. This module makes that compilation happen once
per machine and visibly:

* :func:`compile_kernels` calls every kernel entry point on tiny inputs with the array types a
  run uses (each jump path, ramp fitting with and without the optional outputs), so every
  variant a run needs is compiled and stored;
* :func:`ensure_compiled` is what a worker (and ``stcal-dask warmup``) calls before its first
  tile: when the cache's stamp for this exact kernel source, numba version and CPU is present it
  only loads the kernels; else it takes an exclusive lock on the cache directory (``fcntl``), so
  that of several processes starting together (the workers of a LocalCluster, several runs, a
  node's ``dask worker`` processes) one compiles while the others wait and then load what it
  stored, announces the compilation on stderr, compiles, and writes the stamp last.

A process killed while compiling leaves no stamp (the next one compiles again; numba's cache
files are each written under a temporary name and renamed, so none is ever half written), and
its lock is released by the operating system.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path

__all__ = ["cache_dir", "cache_key", "compile_kernels", "compile_lock", "ensure_compiled",
           "is_warm", "lock_path", "stamp_path"]

_STAMP_PREFIX = "stcal-dask-kernels-"
_LOCK_NAME = ".stcal-dask-compile.lock"
_warm_in_process = False


def cache_dir() -> Path:
    """The directory of the compiled-kernel cache (see :mod:`stcal_dask.kernels.numba_cache`)."""
    from stcal_dask.kernels.numba_cache import configure

    return configure()


def cache_key() -> str:
    """Hex digest of what the compiled kernels depend on: the kernels' source files and where
    they are (numba keeps each source directory's functions apart), the numba, llvmlite and
    Python versions, and the CPU (numba compiles for the host CPU's features)."""
    import llvmlite
    import numba

    import stcal_dask.kernels as kernels_pkg
    from stcal_dask.kernels import numba_cache

    machine = numba_cache.machine()
    h = hashlib.sha256()
    for part in (numba.__version__, llvmlite.__version__, sys.version, machine):
        h.update(part.encode() + b"\0")
    source = Path(kernels_pkg.__file__).resolve().parent
    h.update(str(source).encode() + b"\0")
    for path in sorted(source.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def stamp_path(key: str | None = None) -> Path:
    """The file whose presence says the cache holds every kernel variant for :func:`cache_key`."""
    return cache_dir() / f"{_STAMP_PREFIX}{(key or cache_key())[:20]}"


def lock_path() -> Path:
    """The file locked while a process compiles the kernels into the cache
    (:func:`compile_lock`)."""
    return cache_dir() / _LOCK_NAME


def is_warm() -> bool:
    """Whether the kernels are already compiled in this machine's cache (no compilation needed)."""
    return stamp_path().exists()


def compile_kernels() -> None:
    """Compile (or load from the cache) every kernel variant a run uses, on tiny inputs."""
    import numpy as np

    from stcal_dask.kernels import jump as jk
    from stcal_dask.kernels import ramp_fit as rk

    def ramp(nints, ngroups):
        slope = np.arange(ngroups, dtype=np.float32)[None, :, None, None] * 50
        data = np.broadcast_to(slope, (nints, ngroups, 2, 2)).copy()
        data[..., 0, 0] += np.arange(ngroups, dtype=np.float32) ** 3  # a jump-like outlier
        return data

    gain, rn = np.full((2, 2), 2.0, np.float32), np.full((2, 2), 10.0, np.float32)
    pdq = np.zeros((2, 2), np.uint32)
    # nints x ngroups: the iterative path, the single-pass path, the sigma-clip path (>= 100
    # groups in all, JWST's minimum_sigclip_groups), the skipped exposure (one group)
    for nints, ngroups in ((1, 5), (1, 14), (5, 25), (1, 1)):
        data = ramp(nints, ngroups)
        gdq = np.zeros(data.shape, np.uint8)
        res = jk.detect_jumps(data, gdq, pdq, gain, rn, nframes=1, group_time=10.0)
        if ngroups < 2:
            continue
        for save_opt in (False, True):
            rk.fit_ramps_tile(data, res.groupdq, res.pixeldq, gain, rn,
                              params=rk.RampFitParams(save_opt=save_opt),
                              timing=rk.RampTiming(10.0, 10.0, 1))


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"stcal-dask: {message}", file=sys.stderr, flush=True)


def ensure_compiled(quiet: bool = False) -> float:
    """Make sure the kernels are compiled in this machine's cache and loaded in this process.

    Parameters
    ----------
    quiet : bool
        No message on stderr (else one when a compilation starts and when it ends, and one when
        waiting for another process that is compiling).

    Returns
    -------
    float
        Seconds spent compiling in this process (0.0 when the cache was warm).
    """
    global _warm_in_process
    if _warm_in_process:
        return 0.0
    key = cache_key()
    stamp = stamp_path(key)
    if stamp.exists():
        compile_kernels()  # loads from the cache
        _warm_in_process = True
        return 0.0
    lock = lock_path()
    spent = 0.0
    with compile_lock(lock, quiet):
        if not stamp.exists():
            _say(f"compiling the numba kernels for this machine (once; cached in {stamp.parent}, "
                 f"set STCAL_DASK_CACHE_DIR to move it; 'stcal-dask warmup' does this ahead "
                 "of time) ...", quiet)
            t0 = time.perf_counter()
            compile_kernels()
            spent = time.perf_counter() - t0
            tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
            tmp.write_text(f"{key}\n")
            os.replace(tmp, stamp)
            _say(f"kernels compiled in {spent:.0f} s", quiet)
        else:
            compile_kernels()
    _warm_in_process = True
    return spent


@contextlib.contextmanager
def compile_lock(lock: Path, quiet: bool = True):
    """Hold the machine-wide compile lock ``lock`` (a file, created if needed) for the block,
    saying so when another process holds it (it is compiling) unless ``quiet``: see
    :func:`stcal_dask.kernels.numba_cache.file_lock`."""
    from stcal_dask.kernels.numba_cache import file_lock

    def waiting():
        _say("waiting for another process compiling the numba kernels ...", quiet)

    with file_lock(lock, on_wait=waiting):
        yield
