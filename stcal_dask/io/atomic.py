"""Atomic outputs: the outputs of one step appear together, complete, or not at all.

Every writer of the package goes through :func:`atomic_outputs`::

    with atomic_outputs(inputs=[ramp_path]) as out:
        out.claim("out/x_rate.fits")                  # before any work: fails at once if taken
        partial = out.reserve("out/x_rate.fits")      # the temporary to write
        ...write the data into ``partial`` (or add lazy writes: ``out.add(pending)``)...
        compute(*out.writes)
    # here every reserved output has been renamed into place; on any error (or Ctrl-C, or
    # SIGTERM turned into an exception) none was, and every temporary is gone

The protocol:

* **Claim before computing.** :meth:`Outputs.claim` checks the target (exists without
  ``overwrite``, missing directory, one of the run's inputs) and creates an exclusive claim
  file ``.NAME.claim`` holding this host and process id, so a second run into the same names
  fails at once (:class:`~stcal_dask.errors.UserInputError`) instead of after its computation.
  Creating the claim is also the cheap up-front check that the directory is writable. The
  writers only reserve (:meth:`Outputs.reserve`: the same checks, and no live claim of another
  process on the name).
* **Temporary names that say who owns them.** Data are written to
  ``.NAME.partial-<host>-<pid>-<random>`` beside the target. A later run removes the
  temporaries and claims in the directories it writes to whose process (on this host) no
  longer exists (:func:`sweep_stale`), e.g. after a SIGKILL; temporaries of other hosts are
  left alone.
* **Commit together.** Only when the block ends without an error are the temporaries renamed
  into place (with ``overwrite`` an existing output is replaced only then); if a rename fails,
  the outputs already renamed are removed again.
* **Tasks that may run twice.** A dask task can run again after it finished (a worker holding
  its result dies while the result is still wanted). A writer records the identity (device and
  inode) of each temporary once it exists (:meth:`Outputs.detach`), and a write or commit task
  run again after the commit finds the final path with that identity
  (:func:`was_committed`) and does nothing instead of failing on the missing temporary.
* **Cleanup that cannot fail twice.** On an error every temporary is removed with errors
  ignored (claims are released when the block ends either way) and the error is re-raised;
  an operating-system error while writing (disk full, file too large, read-only file system,
  permission denied) becomes one
  :class:`~stcal_dask.errors.UserInputError` line naming the output, e.g. ``no space left on
  device while writing out/x_rate.fits; nothing was written``.

Writers called with ``compute=False`` return a :class:`PendingWrite` (the reserved outputs and
the lazy write), which a caller's :func:`atomic_outputs` adopts (:meth:`Outputs.add`) so that
outputs of several writers appear together; computing ``PendingWrite.delayed`` alone writes and
commits that writer's outputs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from stcal_dask.errors import UserInputError, raise_if_signalled

__all__ = [
    "Outputs",
    "PendingWrite",
    "ReservedOutput",
    "after_all",
    "atomic_outputs",
    "check_target",
    "claim_path",
    "commit",
    "file_identity",
    "owner_tag",
    "partial_path",
    "remove_path",
    "sweep_stale",
    "to_the_end",
    "was_committed",
]

_OS_CONDITIONS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                  errno.EPERM, errno.EIO}
"""errno values that are a condition of the machine, not a bug: reported in one line."""

_TEMPORARY = re.compile(
    r"^\..+\.(?:partial|old)-(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.\w+)?$"
)
_CLAIM = re.compile(r"^\..+\.claim$")
_EMPTY_CLAIM_GRACE_S = 30.0
"""A claim file still empty after this long belongs to a process that died while creating it."""


def _host() -> str:
    name = socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9-]", "-", name) or "host"


def owner_tag() -> str:
    """``<host>-<pid>`` of this process, as it appears in temporary names."""
    return f"{_host()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_path(p) -> None:
    """Remove a file or directory tree if it exists; never raises (a failure to clean up must
    not hide the error that made the cleanup necessary)."""
    p = Path(p)
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _remove_until_gone(p: Path, settle_s: float = 0.5) -> None:
    """Remove a partial output after a failed computation: write tasks still running elsewhere
    may recreate chunk files of a zarr store, so keep removing it until it stays gone for
    ``settle_s`` seconds (a partial FITS file is not recreated: writers open it ``r+``)."""
    was_dir = p.is_dir()
    remove_path(p)
    if not was_dir:
        return
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        time.sleep(0.05)
        if p.exists():
            remove_path(p)
            quiet_since = time.monotonic()


def check_target(path, *, overwrite: bool, what: str = "output") -> Path:
    """Resolve an output path; raise :class:`UserInputError` when it exists without
    ``overwrite`` or when its directory does not exist."""
    path = Path(os.fspath(path)).expanduser().absolute()
    if not path.name:
        raise UserInputError(f"{what} path {str(path)!r} has no file name")
    if not path.parent.is_dir():
        raise UserInputError(f"{what} directory {path.parent} does not exist")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserInputError(f"{what} {path} already exists (use --overwrite to replace it)")
    return path


def partial_path(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.partial-<host>-<pid>-<random><suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial-{owner_tag()}-{uuid.uuid4().hex[:8]}{suffix}")


def claim_path(path: Path) -> Path:
    """The claim file of an output: ``.NAME.claim`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.claim")


def _claim_owner(claim: Path) -> tuple[str, int] | None:
    """(host, pid) written in a claim file; None while it is (still) empty or unreadable."""
    try:
        host, pid = claim.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _stale_claim(claim: Path) -> bool:
    owner = _claim_owner(claim)
    if owner is None:
        try:
            return time.time() - claim.stat().st_mtime > _EMPTY_CLAIM_GRACE_S
        except OSError:
            return True
    host, pid = owner
    return host == _host() and not _alive(pid)


def sweep_stale(directory) -> list[Path]:
    """Remove the temporaries and claims in ``directory`` whose owning process (on this host)
    no longer exists; returns what was removed."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and m["host"] == host and not _alive(int(m["pid"])):
            remove_path(entry.path)
            removed.append(Path(entry.path))
        elif _CLAIM.match(entry.name) and _stale_claim(Path(entry.path)):
            remove_path(entry.path)
            removed.append(Path(entry.path))
    return removed


def _os_error_line(exc: OSError, doing: str) -> str:
    reason = (exc.strerror or os.strerror(exc.errno or 0) or type(exc).__name__).lower()
    return f"{reason} while {doing}"


def _foreign_owner(claim: Path) -> str | None:
    """Who holds a live claim that is not this process's ("process N on HOST"), else None."""
    if not claim.exists() or _stale_claim(claim):
        return None
    owner = _claim_owner(claim)
    if owner == (_host(), os.getpid()):
        return None
    return f"process {owner[1]} on {owner[0]}" if owner else "another process"


def _busy(path: Path, who: str) -> UserInputError:
    return UserInputError(
        f"output {path} is being written by another stcal-dask run ({who}); wait for it to "
        "finish or write elsewhere"
    )


def _check_unclaimed(path: Path) -> None:
    who = _foreign_owner(claim_path(path))
    if who is not None:
        raise _busy(path, who)


def _take_claim(path: Path) -> Path | None:
    """Create the claim of ``path``; returns it, or None when this process already holds it.
    Raises :class:`UserInputError` when another live run holds it or the directory is not
    writable."""
    claim = claim_path(path)
    me = f"{_host()} {os.getpid()}\n"
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if _claim_owner(claim) == (_host(), os.getpid()):
                return None
            if _stale_claim(claim):
                remove_path(claim)
                continue
            raise _busy(path, _foreign_owner(claim) or "another process") from None
        except OSError as exc:
            raise UserInputError(
                f"cannot write to output directory {path.parent} ({_os_error_line(exc, 'claiming')}"
                f" {path.name}); nothing was written"
            ) from None
        try:
            os.write(fd, me.encode())
        finally:
            os.close(fd)
        return claim
    raise _busy(path, "another process")


def file_identity(path) -> tuple[int, int] | None:
    """``(device, inode)`` of ``path`` (a file or directory; a rename keeps both), None when it
    does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def was_committed(path, identity: tuple[int, int] | None) -> bool:
    """Whether the temporary whose :func:`file_identity` was ``identity`` has been renamed to
    ``path`` (a write or commit task running again after the commit has nothing left to do)."""
    return identity is not None and file_identity(path) == tuple(identity)


@dataclass(frozen=True)
class ReservedOutput:
    """One output of an :class:`Outputs` set: its final path and its temporary, and the
    temporary's :func:`file_identity` once it exists (None before)."""

    path: Path
    partial: Path
    overwrite: bool
    identity: tuple[int, int] | None = None


def commit(partial, path, overwrite: bool, *_deps: Any) -> str:
    """Move a complete ``partial`` into place at ``path``; returns ``str(path)``.

    Extra positional arguments are ignored: they let a dask graph make the rename depend on the
    write tasks. A directory (or a file replacing a directory) is moved aside, replaced, and the
    old one deleted; a file replaces a file in one step.
    """
    partial, path = Path(partial), Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            remove_path(partial)
            raise UserInputError(f"output {path} already exists (use --overwrite to replace it)")
        if path.is_dir() or partial.is_dir():
            old = path.with_name(f".{path.name}.old-{owner_tag()}-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            os.rename(partial, path)
            remove_path(old)
            return str(path)
    os.replace(partial, path)
    return str(path)


def _commit_all(members: tuple[ReservedOutput, ...], *_deps: Any) -> str:
    """Rename every member into place (all or none); the first member's final path. Members
    already renamed by an earlier run of the same task are left as they are (a temporary that
    tasks run again recreated meanwhile is removed). Nothing is renamed once the command was
    interrupted (:func:`stcal_dask.errors.raise_if_signalled`)."""
    raise_if_signalled()
    done: list[ReservedOutput] = []
    try:
        for m in members:
            if was_committed(m.path, m.identity):
                remove_path(m.partial)
            else:
                commit(m.partial, m.path, m.overwrite)
            done.append(m)
    except BaseException:
        for m in done:
            remove_path(m.path)
        for m in members:
            remove_path(m.partial)
        raise
    return str(members[0].path)


def _abort_all(members: Iterable[ReservedOutput]) -> None:
    for m in members:
        _remove_until_gone(Path(m.partial))


def _after(*_deps: Any) -> None:
    return None


def after_all(*deps):
    """One :class:`dask.delayed.Delayed` that finishes after ``deps`` (dask collections or
    Delayed objects, nested in tuples/lists too): a writer's ``written``. Its task lives in this
    module, which workers can load without xarray or astropy."""
    return _lazy(_after, *deps)


def _lazy(func, *args):
    """``dask.delayed(func)(*args)`` built without low-level fusion: dask optimises the arrays'
    graph here, and with fusion a tile kernel feeding two outputs (rate and rateints) would be
    inlined into each output's write and run once per output."""
    with dask.config.set({"optimization.fuse.active": False}):
        return dask.delayed(func, pure=False)(*args)


@dataclass
class PendingWrite:
    """Outputs reserved and a write prepared but not computed (``compute=False`` of a writer).

    Attributes
    ----------
    path : Path
        The (main) final output path.
    partial : Path
        Its temporary name.
    written : dask.delayed.Delayed
        Writes the data into the temporaries (nothing is renamed).
    members : tuple of ReservedOutput
        Every output of the write (e.g. a ramp and its reference files), main first.
    """

    path: Path
    partial: Path
    written: Any
    members: tuple[ReservedOutput, ...] = ()
    _delayed: Any = field(default=None, repr=False)

    @property
    def also_partial(self) -> tuple[Path, ...]:
        """Temporaries of the outputs besides the main one."""
        return tuple(m.partial for m in self.members[1:])

    @property
    def delayed(self):
        """A :class:`dask.delayed.Delayed` that writes the data and renames every output into
        place; its result is ``str(path)``. (Inside :func:`atomic_outputs`, compute
        :attr:`Outputs.writes` instead: the renames then happen together at the block's end.)"""
        if self._delayed is None:
            self._delayed = _lazy(_commit_all, self.members, self.written)
        return self._delayed

    def compute(self, **kwargs) -> Path:
        """Write and commit now (``kwargs`` go to ``dask.compute``); nothing is left on failure."""
        with atomic_outputs() as out:
            out.add(self)
            dask.compute(*out.writes, **kwargs)
        return self.path

    def abort(self) -> None:
        """Remove the temporaries (safe to call more than once; never raises)."""
        _abort_all(self.members)


class Outputs:
    """The outputs of one :func:`atomic_outputs` block (see the module docstring)."""

    def __init__(self, inputs: Iterable = ()):
        self._inputs: list[Path] = []
        self.protect(inputs)
        self._members: list[ReservedOutput] = []
        self._claims: list[Path] = []
        self._scratch: list[Path] = []
        self._writes: list = []
        self._swept: set[Path] = set()

    # -- reserving --------------------------------------------------------------------------

    def protect(self, inputs: Iterable) -> None:
        """Add inputs of the run: no output may be one of them, lie inside one or contain one
        (with or without ``overwrite``)."""
        self._inputs += [Path(os.fspath(p)).expanduser().resolve() for p in inputs]

    def _check_not_input(self, path: Path) -> None:
        target = path.resolve()
        for p in self._inputs:
            if target == p or p in target.parents or target in p.parents:
                raise UserInputError(
                    f"output {path} would overwrite the input {p}" if target == p else
                    f"output {path} and the input {p} overlap (one is inside the other); "
                    "outputs never replace inputs"
                )

    def _sweep(self, directory: Path) -> None:
        if directory not in self._swept:
            self._swept.add(directory)
            sweep_stale(directory)

    def claim(self, path, *, overwrite: bool = False, what: str = "output") -> Path:
        """Check ``path`` and claim the name for this run until the block ends (an exclusive
        claim file): another run claiming or reserving it meanwhile fails at once. The data are
        written later, by :meth:`reserve` here or by a writer whose :class:`PendingWrite` is
        added; returns the resolved path."""
        path = check_target(path, overwrite=overwrite, what=what)
        self._check_not_input(path)
        self._sweep(path.parent)
        claim = _take_claim(path)
        if claim is not None:
            self._claims.append(claim)
        return path

    def reserve(self, path, *, overwrite: bool = False, what: str = "output",
                suffix: str = "") -> Path:
        """Check ``path`` (not claimed by another live run either); returns the temporary to
        write it to (``suffix``, e.g. ``".fits"``, ends the temporary's name for libraries that
        look at it). A run claims its names first (:meth:`claim`); a writer only reserves."""
        path = check_target(path, overwrite=overwrite, what=what)
        self._check_not_input(path)
        self._sweep(path.parent)
        _check_unclaimed(path)
        member = ReservedOutput(path, partial_path(path, suffix), overwrite)
        self._members.append(member)
        return member.partial

    def final_path(self, partial) -> Path:
        """The output that the temporary ``partial`` (from :meth:`reserve`) becomes."""
        partial = Path(partial)
        for m in self._members:
            if m.partial == partial:
                return m.path
        raise KeyError(f"{partial} is not a temporary of this set")

    def scratch(self, directory, name: str) -> Path:
        """A temporary path in ``directory`` (named like the outputs' temporaries, so a later
        run removes it if this process dies), removed when the block ends."""
        directory = Path(os.fspath(directory)).expanduser()
        self._sweep(directory.absolute())
        p = partial_path(directory.absolute() / name)
        self._scratch.append(p)
        return p

    # -- lazy writes --------------------------------------------------------------------------

    def add(self, pending: PendingWrite) -> PendingWrite:
        """Adopt a writer's :class:`PendingWrite`: its outputs are committed with this set's."""
        for m in pending.members:
            self._check_not_input(m.path)
        self._members.extend(pending.members)
        self._writes.append(pending.written)
        return pending

    @property
    def writes(self) -> list:
        """The lazy writes added so far (compute them, with anything else, inside the block)."""
        return list(self._writes)

    def detach(self, written=None) -> PendingWrite:
        """Hand the outputs reserved so far over to a :class:`PendingWrite` (for a writer's
        ``compute=False``); this set then holds nothing. ``written`` (default: the writes added
        so far, together) writes their data."""
        if written is None:
            written = after_all(*self._writes)
        members = tuple(m if m.identity is not None else
                        ReservedOutput(m.path, m.partial, m.overwrite, file_identity(m.partial))
                        for m in self._members)
        pending = PendingWrite(members[0].path, members[0].partial, written, members)
        self._members, self._writes = [], []
        return pending

    def discard(self, path) -> None:
        """Do not commit ``path`` after all (its temporary is removed now)."""
        path = Path(os.fspath(path)).expanduser().absolute()
        keep = []
        for m in self._members:
            if m.path == path:
                _abort_all([m])
            else:
                keep.append(m)
        self._members = keep

    # -- ending -------------------------------------------------------------------------------

    def _name_of(self, exc: OSError) -> str:
        names = {str(m.partial): m.path for m in self._members}
        for key in (exc.filename, getattr(exc, "filename2", None)):
            if key is None:
                continue
            key = str(key)
            for partial, path in names.items():
                if key == partial or key.startswith(partial + os.sep):
                    return str(path)
        if len(self._members) == 1:
            return str(self._members[0].path)
        dirs = sorted({str(m.path.parent) for m in self._members})
        return ", ".join(str(m.path.name) for m in self._members) + f" in {', '.join(dirs)}"

    def _commit(self) -> None:
        if self._members:
            _commit_all(tuple(self._members))

    def _abort(self) -> None:
        _abort_all(self._members)

    def _release(self) -> None:
        for p in (*self._scratch, *self._claims):
            remove_path(p)

    def _translate(self, exc: BaseException) -> UserInputError | None:
        if isinstance(exc, OSError) and exc.errno in _OS_CONDITIONS:
            return UserInputError(
                _os_error_line(exc, f"writing {self._name_of(exc)}") + "; nothing was written"
            )
        return None


@contextlib.contextmanager
def atomic_outputs(inputs: Iterable = (), *, within: Outputs | None = None) -> Iterator[Outputs]:
    """These outputs appear together or not at all (see the module docstring).

    Parameters
    ----------
    inputs : iterable of path-like
        The run's inputs: reserving an output equal to one of them, inside one (a zarr store) or
        containing one is a :class:`UserInputError`, with or without ``overwrite``.
    within : Outputs, optional
        A caller's block: this block is that one (``inputs`` are added to its inputs), and what
        is reserved here is committed, or removed, when the caller's block ends. A writer takes
        it so that its outputs appear together with the caller's others.

    Yields
    ------
    Outputs
        Reserve names (:meth:`Outputs.reserve`, :meth:`Outputs.claim`), adopt writers' lazy
        writes (:meth:`Outputs.add`) and compute :attr:`Outputs.writes` inside the block.
    """
    if within is not None:
        within.protect(inputs)
        yield within
        return
    out = Outputs(inputs)
    try:
        yield out
        out._commit()
    except BaseException as exc:
        to_the_end(out._abort)
        translated = out._translate(exc)
        if translated is not None:
            raise translated from exc
        raise
    finally:
        to_the_end(out._release)


def to_the_end(cleanup: Callable[[], None], attempts: int = 5) -> None:
    """Run the idempotent ``cleanup`` to its end although an interruption (a second Ctrl-C, a
    SIGTERM, or one delivered again after Python dropped it) lands in it: it is run again, and
    the first interruption is raised once it has completed (after ``attempts`` interrupted runs
    it is raised at once)."""
    pending: BaseException | None = None
    for _ in range(attempts):
        try:
            cleanup()
            break
        except KeyboardInterrupt as exc:
            pending = pending or exc
    if pending is not None:
        raise pending
