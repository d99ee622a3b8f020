"""Compiling the numba kernels once per machine, ahead of the first tile, and saying so.

The kernels are numba functions cached on disk (the directory is chosen by
:mod:`stcal_dask.kernels.numba_cache`: ``$STCAL_DASK_CACHE_DIR``, else a per-user directory under
``/var/tmp``). A cold cache means about a minute or more of compilation before the first tile
runs; a warm one loads in a fraction of a second. This module makes that compilation happen once
per machine and visibly:

* :func:`compile_kernels` calls every kernel entry point on tiny inputs with the array types a
  run uses (each jump path, ramp fitting with and without the optional outputs), so every
  variant a run needs is compiled and stored, except the lane medians: one small function per
  count of values (see :func:`stcal_dask.kernels._median_numba.lane_mid`), of which a run uses
  one or two, each compiled (a second or so) when a tile first needs it; ``lanes=True`` compiles
  those of every count too;
* :func:`ensure_compiled` is what a worker (and ``stcal-dask warmup``, with ``lanes=True``)
  calls before its first tile: when the cache's stamp for this exact kernel source, numba
  version and CPU is present it only loads the kernels; else it takes an exclusive lock on the
  cache directory (``fcntl``), so that of several processes starting together (the workers of a
  LocalCluster, several runs, a node's ``dask worker`` processes) one compiles while the others
  wait and then load what it stored, announces the compilation on stderr, compiles, and writes
  the stamp last (a second stamp for the lane medians of every count).

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

__all__ = ["PARTS", "cache_dir", "cache_key", "compile_kernels", "compile_lock",
           "ensure_compiled", "is_warm", "lock_path", "stamp_path"]

_STAMP_PREFIX = "stcal-dask-kernels-"
_LANES_PREFIX = "stcal-dask-lanes-"
_LOCK_NAME = ".stcal-dask-compile.lock"
_warm_in_process: set[bool] = set()  # the ``lanes`` values ensure_compiled has completed


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


def stamp_path(key: str | None = None, lanes: bool = False) -> Path:
    """The file whose presence says the cache holds every kernel variant for :func:`cache_key`
    (with ``lanes``: the lane medians of every count)."""
    return cache_dir() / f"{_LANES_PREFIX if lanes else _STAMP_PREFIX}{(key or cache_key())[:20]}"


def lock_path() -> Path:
    """The file locked while a process compiles the kernels into the cache
    (:func:`compile_lock`)."""
    return cache_dir() / _LOCK_NAME


def is_warm() -> bool:
    """Whether the kernels are already compiled in this machine's cache (no compilation needed)."""
    return stamp_path().exists()


PARTS = ("jump", "ramp")
"""The kernel sets :func:`compile_kernels` can compile apart (in two processes at once)."""


def compile_kernels(lanes: bool = False, parts: tuple[str, ...] = PARTS) -> None:
    """Compile (or load from the cache) every kernel variant a run uses, on tiny inputs.

    Parameters
    ----------
    lanes : bool
        Also the lane medians of every count the kernels use (else only those of the tiny
        inputs' counts, the smallest: a run compiles its own on first use).
    parts : tuple of str
        Which of :data:`PARTS`: the jump kernels, the ramp-fit kernels (they share only small
        helpers, so that two processes can compile one each).
    """
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
    timing = rk.RampTiming(10.0, 10.0, 1)

    def fit(data, gdq, pdq, save_opt=False):
        rk.fit_ramps_tile(data, gdq, pdq, gain, rn, params=rk.RampFitParams(save_opt=save_opt),
                          timing=timing)

    # nints x ngroups: the iterative path (2 differences: the smallest lane median), the
    # single-pass path, the sigma-clip path (>= 100 groups in all, JWST's
    # minimum_sigclip_groups), the skipped exposure (one group); 34 groups: no lane median in
    # the ramp fit (more than its row-wise fit takes) nor, beyond the iterative path, the jump
    for nints, ngroups in ((1, 3), (1, 34), (5, 34), (1, 1)):
        data = ramp(nints, ngroups)
        gdq = np.zeros(data.shape, np.uint8)
        if "jump" in parts:
            res = jk.detect_jumps(data, gdq, pdq, gain, rn, nframes=1, group_time=10.0)
            gdq, pdq_out = res.groupdq, res.pixeldq
        else:
            pdq_out = pdq
        if ngroups > 1 and "ramp" in parts:
            for save_opt in (False, True):
                fit(data, gdq, pdq_out, save_opt)
    if lanes:
        # the jump's iterative path at 2..12 differences and the network across rows (13..32),
        # and the ramp fit's flag-free rows at 1..12 differences and beyond (13..32)
        every = jk.JumpParams(min_diffs_single_pass=64)
        for ngroups in range(2, 15):
            data = ramp(1, ngroups)
            gdq = np.zeros(data.shape, np.uint8)
            if ngroups > 2 and "jump" in parts:
                jk.detect_jumps(data, gdq, pdq, gain, rn, params=every, nframes=1,
                                group_time=10.0)
            if "ramp" in parts:
                fit(data, gdq, pdq)


def _helper(parts: tuple[str, ...], lanes: bool):
    """A process compiling ``parts`` of the kernels (see :func:`compile_kernels`) beside this
    one, or None where this process may use only one core. It ends with this process (it
    watches its parent) and says nothing; if it fails (e.g. it cannot import this package),
    what it left is compiled here."""
    import subprocess

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if cores < 2:
        return None
    code = (
        "import os, sys, threading, time\n"
        "parent = os.getppid()\n"
        "def watch():\n"
        "    while os.getppid() == parent:\n"
        "        time.sleep(0.5)\n"
        "    os._exit(1)\n"
        "threading.Thread(target=watch, daemon=True).start()\n"
        "from stcal_dask.engine.warmup import compile_kernels\n"
        f"compile_kernels(lanes={lanes!r}, parts={parts!r})\n"
    )
    try:
        # the environment carries the cache directory (NUMBA_CACHE_DIR, set by numba_cache)
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _compile_all(lanes: bool) -> None:
    """Compile every kernel variant (:func:`compile_kernels`), the ramp-fit kernels in a helper
    process (:func:`_helper`) while this one compiles the jump kernels, where two cores are
    there: they are about as much work."""
    helper = _helper(("ramp",), lanes)
    try:
        compile_kernels(lanes=lanes, parts=("jump",) if helper else PARTS)
    finally:
        if helper is not None:
            helper.wait()
    if helper is not None:
        compile_kernels(lanes=lanes)  # loads what the helper stored (compiles what it did not)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"stcal-dask: {message}", file=sys.stderr, flush=True)


def ensure_compiled(quiet: bool = False, lanes: bool = False) -> float:
    """Make sure the kernels are compiled in this machine's cache and loaded in this process.

    Parameters
    ----------
    quiet : bool
        No message on stderr (else one when a compilation starts and when it ends, and one when
        waiting for another process that is compiling).
    lanes : bool
        The lane medians of every count too (see :func:`compile_kernels`).

    Returns
    -------
    float
        Seconds spent compiling in this process (0.0 when the cache was warm).
    """
    if lanes in _warm_in_process:
        return 0.0
    key = cache_key()
    stamps = [stamp_path(key), *([stamp_path(key, lanes=True)] if lanes else [])]
    if all(stamp.exists() for stamp in stamps):
        compile_kernels()  # loads from the cache (the lane medians load on first use)
        _warm_in_process.add(lanes)
        return 0.0
    lock = lock_path()
    spent = 0.0
    with compile_lock(lock, quiet):
        if not all(stamp.exists() for stamp in stamps):
            _say(f"compiling the numba kernels for this machine (once; cached in "
                 f"{stamps[0].parent}, set STCAL_DASK_CACHE_DIR to move it; 'stcal-dask warmup' "
                 "does this ahead of time) ...", quiet)
            t0 = time.perf_counter()
            _compile_all(lanes)
            spent = time.perf_counter() - t0
            for stamp in stamps:
                tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
                tmp.write_text(f"{key}\n")
                os.replace(tmp, stamp)
            _say(f"kernels compiled in {spent:.0f} s", quiet)
        else:
            compile_kernels()
    _warm_in_process.add(lanes)
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
