"""Where numba keeps the compiled kernels on disk.

Every numba function of the kernels is compiled with ``cache=True``: the machine code is stored
on disk the first time and loaded (in a fraction of a second) by every later process. numba's own
default stores it beside the package (``__pycache__``), else under ``$HOME/.cache``, and fails
(``cannot cache function ...: no locator available``) when neither is writable, e.g. a package
installed read-only, shared by several users, with a read-only HOME. This module chooses the
directory instead, before any kernel is defined (numba picks a function's cache directory when
the function is decorated), from the first usable of:

1. ``$STCAL_DASK_CACHE_DIR`` (set it to put the cache anywhere, e.g. a directory warmed when a
   container image is built, or node-local disk on a cluster);
2. ``$NUMBA_CACHE_DIR`` (numba's own setting);
3. ``/var/tmp/stcal-dask-<uid>/numba``: the same for every process of the user on this machine
   (every worker of every run, every install), whatever the package directory or HOME, and
   kept across reboots;
4. ``<temporary directory>/stcal-dask-<uid>/numba`` (``$TMPDIR``, else ``/tmp``);
5. ``$XDG_CACHE_HOME/stcal-dask/numba`` (else ``~/.cache/stcal-dask/numba``).

A directory is usable when it exists or can be created and a file can be written in it. The
defaults (3-5) are per user and must belong to the user and not be writable by others: numba
loads machine code from its cache, so a cache another account can write into would run that
account's code. An explicit directory (1, 2) is taken as given (an administrator may share a
directory warmed once; it must then be writable by its users, as numba writes new variants
into it). An explicit directory that is unusable is reported on stderr and skipped.

The chosen directory is also exported as ``NUMBA_CACHE_DIR``, so worker processes started from
this one (a LocalCluster) use the same cache. numba writes every cache file under a temporary
name and renames it, so concurrent processes never read a partly written entry; compiling once
per machine rather than once per process is arranged by :mod:`stcal_dask.engine.warmup`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import threading
from pathlib import Path

from stcal_dask.errors import UserInputError
from stcal_dask.optional_imports import skipping_optional_imports

__all__ = ["CACHE_ENV", "candidate_dirs", "compiled", "configure", "file_lock",
           "lock_cache_writes", "machine", "set_up_cpu_target", "usable_dir"]

CACHE_ENV = "STCAL_DASK_CACHE_DIR"
"""Environment variable that sets the directory of the compiled-kernel cache."""

_configured: Path | None = None
_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _default_dirs() -> list[Path]:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [
        Path("/var/tmp") / f"stcal-dask-{uid}" / "numba",
        Path(tempfile.gettempdir()) / f"stcal-dask-{uid}" / "numba",
        Path(xdg) / "stcal-dask" / "numba",
    ]


def candidate_dirs() -> list[tuple[Path, bool]]:
    """The cache directories to try, in order, as (directory, explicit) pairs: ``explicit`` when
    the directory comes from ``$STCAL_DASK_CACHE_DIR`` or ``$NUMBA_CACHE_DIR``."""
    found = []
    for env in (CACHE_ENV, "NUMBA_CACHE_DIR"):
        value = os.environ.get(env)
        if value:
            found.append((Path(value).expanduser().absolute(), True))
    found.extend((d, False) for d in _default_dirs())
    return found


def _private_enough(path: Path, root: Path) -> bool:
    """Every directory from ``root`` (the per-user top) down to ``path`` belongs to this user and
    is not writable by group or others."""
    if not hasattr(os, "getuid"):
        return True
    for part in (root, *[p for p in path.parents if root in p.parents], path):
        st = part.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return False
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def usable_dir(path: Path, explicit: bool = True) -> str | None:
    """Why ``path`` cannot hold the cache (None when it can), creating it if needed.

    Parameters
    ----------
    path : Path
        The candidate directory.
    explicit : bool
        Chosen by the user (only writability is checked); else a per-user default, which must
        also belong to the user and not be writable by others (created with mode 0700).
    """
    try:
        if explicit:
            path.mkdir(parents=True, exist_ok=True)
        else:
            # the per-user top directory (stcal-dask-<uid> or stcal-dask) is created private
            root = path.parent
            root.parent.mkdir(parents=True, exist_ok=True)
            root.mkdir(mode=0o700, exist_ok=True)
            path.mkdir(mode=0o700, exist_ok=True)
            if not _private_enough(path, root):
                return "not owned by this user or writable by others"
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def configure(required: bool = True) -> Path | None:
    """Choose the cache directory (see the module docstring), point numba at it and export it as
    ``NUMBA_CACHE_DIR``; idempotent, returns the directory.

    numba itself is not imported: when it is not loaded yet it reads ``NUMBA_CACHE_DIR`` as it
    loads, else its ``config.CACHE_DIR`` is set here.

    Parameters
    ----------
    required : bool
        Raise when no candidate is usable (else return None and leave numba's default).

    Raises
    ------
    UserInputError
        No candidate directory is usable and ``required``.
    """
    global _configured
    if _configured is not None:
        return _configured
    for path, explicit in candidate_dirs():
        why = usable_dir(path, explicit)
        if why is None:
            break
        if explicit:
            print(f"stcal-dask: warning: cannot cache compiled kernels in {path} ({why}); "
                  "trying the defaults", file=sys.stderr)
    else:
        if not required:
            return None
        raise UserInputError(
            f"no writable directory for the compiled numba kernels; set {CACHE_ENV} to one"
        )
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = str(path)
    _configured = path
    return path


def machine() -> str:
    """numba's key of the machine a cached variant was compiled for: (target triple, CPU name,
    CPU features). It honours ``NUMBA_CPU_NAME``/``NUMBA_CPU_FEATURES`` (e.g. ``generic`` for a
    cache that any x86-64 CPU can load, at the cost of the host's vector instructions)."""
    from numba.core.registry import cpu_target

    configure()
    set_up_cpu_target()
    return repr(cpu_target.target_context.codegen().magic_tuple())


def set_up_cpu_target() -> None:
    """Load numba's CPU target registries now (idempotent), with scipy hidden.

    The first compile or cache load of any numba function registers numba's implementations of
    numpy; one of them (``np.correlate``/``np.convolve``) imports ``scipy.linalg`` to decide
    whether BLAS may be used (a large part of a worker's kernel loading). The kernels use no BLAS,
    so the set-up runs with scipy hidden when it is not loaded yet (numba then uses its own loop
    for those two functions; ``np.dot`` and ``np.linalg`` still find scipy on first use).
    """
    # numba imports scipy's top level itself (a version check) when it is installed
    with skipping_optional_imports(("scipy", "scipy.linalg")):
        from numba.core.registry import cpu_target

        cpu_target.target_context.refresh()


@contextlib.contextmanager
def file_lock(path: Path, on_wait=None):
    """Hold an exclusive lock on the file ``path`` (created if needed) for the block: across the
    processes of the machine and the threads of this one.

    A POSIX record lock (``fcntl.lockf``) belongs to this process alone: a process forked while
    it is held (a LocalCluster's workers, a multiprocessing pool) does not hold it, so it is
    released when the block ends whatever the children do (an ``flock`` lock would belong to the
    open file, shared with every forked child until the last one closes it). Threads of one
    process take a per-path :class:`threading.Lock` first, as record locks do not exclude them
    (and closing any descriptor of the file would release the process's lock). The file is
    opened close-on-exec, and a killed holder's lock is released by the operating system.

    Parameters
    ----------
    path : Path
        The lock file.
    on_wait : callable, optional
        Called (no arguments) once when another process holds the lock, before waiting for it.
    """
    import fcntl

    with _THREAD_LOCKS_GUARD:
        tlock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    with tlock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if on_wait is not None:
                    on_wait()
                fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _lock_file(dispatcher, what: str) -> Path:
    py = dispatcher.py_func
    return configure() / f".{what}-{py.__module__}.{py.__qualname__}"


def compiled(dispatcher, args: tuple):
    """numba's compile result of ``dispatcher`` for the argument types ``args``: loaded from the
    cache, else compiled and stored there. Processes that need the same function at once take
    turns (a lock file in the cache directory, :func:`file_lock`): one compiles, the others wait
    and load what it stored."""
    cres = dispatcher.overloads.get(args)
    if cres is None:
        with file_lock(_lock_file(dispatcher, "compile")):
            dispatcher.compile(args)
        cres = dispatcher.overloads[args]
    return cres


def lock_cache_writes(namespace: dict) -> None:
    """Make the cached numba functions among the values of ``namespace`` (a module's globals)
    store their compiled variants in the cache one process at a time.

    numba keeps one index file per function for all its variants and, to add one, reads the
    index, picks the next free data-file name and writes both back, without a lock: two
    processes adding different variants of one function at once could lose one of them (to be
    compiled again by a later run) or both pick the same data-file name (one variant's machine
    code filed under the other's signature). Each function's cache writes are therefore made
    under its own lock file in the cache directory (:func:`file_lock`); a process reading the
    index meanwhile sees the old or the new one (both are replaced atomically).
    """
    for obj in namespace.values():
        cache = getattr(obj, "_cache", None)
        save = getattr(cache, "save_overload", None)
        if save is None or getattr(save, "locked_by_stcal_dask", False):
            continue

        def locked_save(sig, data, _save=save, _disp=obj):
            with file_lock(_lock_file(_disp, "save")):
                _save(sig, data)

        locked_save.locked_by_stcal_dask = True
        cache.save_overload = locked_save
