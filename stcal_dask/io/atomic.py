"""Atomic output: write under a temporary name in the destination directory, rename when complete.

An interrupted or failed write never leaves anything at the final name. With ``overwrite`` an
existing output is replaced only after the new one is complete (it is moved aside, the new one
renamed into place, then the old one deleted).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask

from stcal_dask.errors import UserInputError

__all__ = [
    "PendingWrite", "check_target", "cleanup_failed", "commit", "partial_path", "remove_path"
]


def check_target(path, *, overwrite: bool, what: str = "output") -> Path:
    """Resolve an output path; raise :class:`UserInputError` when it exists without overwrite
    or when its directory does not exist."""
    path = Path(os.fspath(path)).expanduser().absolute()
    if not path.name:
        raise UserInputError(f"{what} path {str(path)!r} has no file name")
    if not path.parent.is_dir():
        raise UserInputError(f"{what} directory {path.parent} does not exist")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserInputError(f"{what} {path} already exists (use overwrite to replace it)")
    return path


def partial_path(path: Path) -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.partial-<uuid>``."""
    return path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:12]}")


def remove_path(p) -> None:
    """Remove a file or directory tree if it exists."""
    p = Path(p)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def cleanup_failed(p, settle_s: float = 0.5) -> None:
    """Remove a partial output after a failed computation.

    When one task fails, the scheduler raises while other write tasks may still be running and
    can recreate (parts of) a zarr partial store; keep removing it until it stays gone for
    ``settle_s`` seconds. (A partial FITS file is not recreated: writers open it ``r+``.)
    """
    was_dir = Path(p).is_dir()
    remove_path(p)
    if not was_dir:
        return
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        time.sleep(0.05)
        if Path(p).exists():
            remove_path(p)
            quiet_since = time.monotonic()


def commit(partial, path, overwrite: bool, *_deps: Any) -> str:
    """Move a complete ``partial`` into place at ``path``; returns ``str(path)``.

    Extra positional arguments are ignored: they let a dask graph make the rename depend on the
    write tasks.
    """
    partial, path = Path(partial), Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            remove_path(partial)
            raise UserInputError(f"output {path} already exists (use overwrite to replace it)")
        replace_in_one_step = not path.is_dir() and not partial.is_dir()  # file over file
        if not replace_in_one_step:
            old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:12]}")
            os.rename(path, old)
            os.rename(partial, path)
            remove_path(old)
            return str(path)
    os.replace(partial, path)
    return str(path)


@dataclass
class PendingWrite:
    """A write prepared but not yet computed (``compute=False`` of the writers).

    Attributes
    ----------
    path: the final output path.
    partial: the temporary name the data are written to.
    delayed: a :class:`dask.delayed.Delayed`; computing it (on any scheduler, e.g. together with
        other outputs in one ``dask.compute`` call, under a progress bar) writes the data and
        renames the output into place; its result is ``str(path)``.

    also_partial: further temporary outputs written by the same ``delayed`` (e.g. the reference
        files written with a ramp); :meth:`abort` removes them too.

    If the computation fails or is interrupted, call :meth:`abort` to remove the partial output.
    """

    path: Path
    partial: Path
    delayed: Any
    also_partial: tuple[Path, ...] = ()

    def compute(self, **kwargs) -> Path:
        """Compute the write now (``kwargs`` go to ``dask.compute``); abort on failure."""
        try:
            dask.compute(self.delayed, **kwargs)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Remove the partial output(s) (safe to call more than once).

        Meant for after a failed or interrupted computation: a partial zarr store is removed
        until it stays gone (write tasks still running elsewhere may recreate chunk files; see
        :func:`cleanup_failed`).
        """
        for p in (self.partial, *self.also_partial):
            cleanup_failed(p)
