"""Compiling the numba kernels once per machine, ahead of the first tile, and saying so.

The kernels are numba functions cached on disk (the directory is chosen by
:mod:`stcal_dask.kernels.numba_cache`: ``$STCAL_DASK_CACHE_DIR``, else a per-user directory under
``/var/tmp``). A cold cache means about a minute or more of compilation before the first tile
runs; a warm one loads in a fraction of a second. This module makes that compilation happen once
per machine and visibly:

* :func:`compile_kernels` calls the kernel entry points on tiny inputs with the array types a
  run uses, so that the variants of the usual run (the iterative jump path, ramp fitting
  without the optional outputs) are compiled and stored. The parts that depend on the
  exposure are functions passed to the kernels as function pointers (see
  :class:`stcal_dask.kernels._median_numba.FunctionArg`), compiled (a second or a few) when a
  tile first needs one: the lane medians of each count of values (see
  :func:`stcal_dask.kernels._median_numba.lane_mid`; a run uses one or two), the row
  detections of the other jump paths; ``every=True`` compiles all of them, and the ramp fit's
  optional outputs;
* :func:`ensure_compiled` is what a worker (and ``stcal-dask warmup``, with ``every=True``)
  calls before its first tile: when the cache's stamp for this exact kernel source, numba
  version and CPU is present it only loads the kernels; else it takes an exclusive lock on the
  cache directory (``fcntl``), so that of several processes starting together (the workers of a
  LocalCluster, several runs, a node's ``dask worker`` processes) one compiles while the others
  wait and then load what it stored, announces the compilation on stderr, compiles, and writes
  the stamp last (a second stamp for ``every``).

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
           "ensure_compiled", "exposure_kernels", "is_warm", "lock_path", "stamp_path"]

_STAMP_PREFIX = "stcal-dask-kernels-"
_EVERY_PREFIX = "stcal-dask-every-"
_EXPOSURE_PREFIX = "stcal-dask-exposure-"
_LOCK_NAME = ".stcal-dask-compile.lock"
_warm_in_process: set = set()  # the (every, exposures) ensure_compiled has completed


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


def stamp_path(key: str | None = None, every: bool = False, exposure: tuple | None = None
               ) -> Path:
    """The file whose presence says the cache holds the kernel variants for :func:`cache_key`
    of the usual run (with ``every``: every variant, see :func:`compile_kernels`; with
    ``exposure``: those of that :func:`exposure_kernels`)."""
    key = (key or cache_key())[:20]
    if exposure is not None:
        what = hashlib.sha256(repr(exposure).encode()).hexdigest()[:16]
        return cache_dir() / f"{_EXPOSURE_PREFIX}{key}-{what}"
    return cache_dir() / f"{_EVERY_PREFIX if every else _STAMP_PREFIX}{key}"


def exposure_kernels(nints: int, ngroups: int, jump=None, rampfit=None) -> tuple:
    """What decides the kernel variants a run of an exposure of ``nints`` x ``ngroups`` uses
    beyond the usual run's (its lane medians, its jump path's row detection, fitting with
    optional outputs), as a tuple for :func:`ensure_compiled` (``exposures``) and
    :func:`compile_kernels`: the shape, the jump parameters that choose the path
    (:class:`~stcal_dask.kernels.jump.JumpParams`, None: no jump detection) and whether the fit
    (:class:`~stcal_dask.kernels.ramp_fit.RampFitParams`, None: no fit) saves the optional
    outputs."""
    paths = None if jump is None else (int(jump.minimum_sigclip_groups),
                                       int(jump.min_diffs_single_pass), bool(jump.only_use_ints))
    return (int(nints), int(ngroups), paths, None if rampfit is None else bool(rampfit.save_opt))


def lock_path() -> Path:
    """The file locked while a process compiles the kernels into the cache
    (:func:`compile_lock`)."""
    return cache_dir() / _LOCK_NAME


def is_warm(exposures: tuple = ()) -> bool:
    """Whether the kernels (and those of ``exposures``, see :func:`exposure_kernels`) are
    already compiled in this machine's cache (no compilation needed)."""
    return all(p.exists() for p in _stamps(cache_key(), False, exposures))


def _stamps(key: str, every: bool, exposures: tuple) -> list[Path]:
    """The stamps that say the variants of ``every`` and ``exposures`` are in the cache (those
    of every exposure are there when every variant is)."""
    full = stamp_path(key, every=True)
    if every or (exposures and full.exists()):
        return [stamp_path(key), full]
    return [stamp_path(key), *(stamp_path(key, exposure=e) for e in exposures)]


PARTS = ("jump", "ramp")
"""The kernel sets :func:`compile_kernels` can compile apart (in two processes at once)."""


def compile_kernels(every: bool = False, parts: tuple[str, ...] = PARTS,
                    exposures: tuple = ()) -> None:
    """Compile (or load from the cache) the kernel variants a run uses, on tiny inputs.

    Parameters
    ----------
    every : bool
        Every variant: the lane medians of every count the kernels use, the row detections of
        every jump path (single-pass, sigma-clip, pixel by pixel) and the ramp fit's optional
        outputs. Else those of the usual run only (the iterative jump path, the ramp fit
        without optional outputs; lane medians of the smallest count): a run that needs
        another compiles it on first use (see
        :class:`~stcal_dask.kernels._median_numba.FunctionArg`).
    parts : tuple of str
        Which of :data:`PARTS`: the jump kernels, the ramp-fit kernels (they share only small
        helpers, so that two processes can compile one each).
    exposures : tuple
        Also the variants runs of these exposures use (each an :func:`exposure_kernels`).
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
    # skipped exposure (one group); with ``every`` also the single-pass path and the sigma-clip
    # path (>= 100 groups in all, JWST's minimum_sigclip_groups); 34 groups: no lane median in
    # the ramp fit (more than its row-wise fit takes) nor, beyond the iterative path, the jump.
    # The usual run's ramp fit is compiled at 34 groups only: a run compiles the lane median of
    # its exposure's count (``exposures``), so one of 2 differences would be compiled for nothing
    shapes = ((1, 3), (1, 34), (5, 34), (1, 1)) if every else ((1, 3), (1, 34), (1, 1))
    for nints, ngroups in shapes:
        data = ramp(nints, ngroups)
        gdq = np.zeros(data.shape, np.uint8)
        jump = "jump" in parts and (every or ngroups < 34)
        if jump:
            res = jk.detect_jumps(data, gdq, pdq, gain, rn, nframes=1, group_time=10.0)
            gdq, pdq_out = res.groupdq, res.pixeldq
        else:
            pdq_out = pdq
        if ngroups > 1 and "ramp" in parts and (every or ngroups == 34):
            for save_opt in (False, True) if every else (False,):
                fit(data, gdq, pdq_out, save_opt)
    for nints, ngroups, paths, save_opt in exposures:
        # a tiny exposure of that shape, with the parameters that choose the jump path
        data = ramp(nints, ngroups)
        gdq = np.zeros(data.shape, np.uint8)
        if paths is not None and "jump" in parts:
            chosen = jk.JumpParams(minimum_sigclip_groups=paths[0],
                                   min_diffs_single_pass=paths[1], only_use_ints=paths[2])
            gdq = jk.detect_jumps(data, gdq, pdq, gain, rn, params=chosen, nframes=1,
                                  group_time=10.0).groupdq
        if save_opt is not None and ngroups > 1 and "ramp" in parts:
            fit(data, gdq, pdq, save_opt)
    if every:
        # the jump's iterative path at 2..12 differences and the network across rows (13..32),
        # and the ramp fit's flag-free rows at 1..12 differences and beyond (13..32)
        iterative = jk.JumpParams(min_diffs_single_pass=64)
        for ngroups in range(2, 15):
            data = ramp(1, ngroups)
            gdq = np.zeros(data.shape, np.uint8)
            if ngroups > 2 and "jump" in parts:
                jk.detect_jumps(data, gdq, pdq, gain, rn, params=iterative, nframes=1,
                                group_time=10.0)
            if "ramp" in parts:
                fit(data, gdq, pdq)


def _helper(parts: tuple[str, ...], every: bool, exposures: tuple):
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
    # the package this process runs, first on the helper's path: else the directory it starts
    # in (first on a "python -c" path) could hold another copy, whose compiled code numba files
    # under that copy's directory, where this process would never find it
    root = str(Path(__file__).parents[2])
    code = (
        "import os, sys, threading, time\n"
        f"sys.path.insert(0, {root!r})\n"
        "parent = os.getppid()\n"
        "def watch():\n"
        "    while os.getppid() == parent:\n"
        "        time.sleep(0.5)\n"
        "    os._exit(1)\n"
        "threading.Thread(target=watch, daemon=True).start()\n"
        "from stcal_dask.engine.warmup import compile_kernels\n"
        f"compile_kernels(every={every!r}, parts={parts!r}, exposures={exposures!r})\n"
    )
    try:
        # the environment carries the cache directory (NUMBA_CACHE_DIR, set by numba_cache)
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def _compile_all(every: bool, exposures: tuple, base_ready: bool = False) -> None:
    """Compile the kernel variants (:func:`compile_kernels`), the ramp-fit kernels in a helper
    process (:func:`_helper`) while this one compiles the code both call
    (:func:`stcal_dask.kernels.common.compile_shared`), then the jump kernels, where two cores
    are there: they are about as much work. With ``base_ready`` (the usual run's variants are
    in the cache already: only those of ``exposures`` are left, a few small functions) all in
    this process: a helper would cost more than it saves (its start loads the libraries and
    every kernel again)."""
    from stcal_dask.kernels.common import compile_shared

    if base_ready:
        compile_kernels(every=every, exposures=exposures)
        return
    helper = _helper(("ramp",), every, exposures)
    try:
        if helper is not None:
            # what both parts call, once, here, while the helper starts (it loads it)
            compile_shared()
        compile_kernels(every=every, parts=("jump",) if helper else PARTS, exposures=exposures)
    finally:
        if helper is not None:
            helper.wait()
    if helper is not None:
        # loads what the helper stored (compiles what it did not)
        compile_kernels(every=every, exposures=exposures)


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"stcal-dask: {message}", file=sys.stderr, flush=True)


def ensure_compiled(quiet: bool = False, every: bool = False, exposures: tuple = ()) -> float:
    """Make sure the kernels are compiled in this machine's cache and loaded in this process.

    Parameters
    ----------
    quiet : bool
        No message on stderr (else one when a compilation starts and when it ends, and one when
        waiting for another process that is compiling).
    every : bool
        Every variant (see :func:`compile_kernels`), not only the usual run's.
    exposures : tuple
        Also the variants runs of these exposures use (each an :func:`exposure_kernels`; one
        stamp each).

    Returns
    -------
    float
        Seconds spent compiling in this process (0.0 when the cache was warm).
    """
    exposures = tuple(exposures)
    if (every, exposures) in _warm_in_process:
        return 0.0
    key = cache_key()
    stamps = _stamps(key, every, exposures)
    if all(stamp.exists() for stamp in stamps):
        # loads from the cache (another exposure's lane medians load on first use)
        compile_kernels(exposures=exposures)
        _warm_in_process.add((every, exposures))
        return 0.0
    lock = lock_path()
    spent = 0.0
    with compile_lock(lock, quiet):
        if not all(stamp.exists() for stamp in stamps):
            _say(f"compiling the numba kernels for this machine (once; cached in "
                 f"{stamps[0].parent}, set STCAL_DASK_CACHE_DIR to move it; 'stcal-dask warmup' "
                 "does this ahead of time) ...", quiet)
            t0 = time.perf_counter()
            base = _stamps(key, every, ())
            _compile_all(every, exposures, base_ready=all(stamp.exists() for stamp in base))
            spent = time.perf_counter() - t0
            for stamp in stamps:
                tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
                tmp.write_text(f"{key}\n")
                os.replace(tmp, stamp)
            _say(f"kernels compiled in {spent:.0f} s", quiet)
        else:
            compile_kernels(exposures=exposures)
    _warm_in_process.add((every, exposures))
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
