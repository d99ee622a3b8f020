"""What every ``stcal-dask`` command shares: the parser style, the common options, the step
options generated from the parameter dataclasses, the cluster options, and the translation of
errors into one line (``stcal-dask: error: <one line>``, exit status 2).

A command module (see :mod:`stcal_dask.cli.commands`) builds its parser with
:func:`add_command` and the option groups below; nothing here imports more than the standard
library at module level, so building the parser loads no scientific library.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import os
import re
import signal
import sys
import threading
import typing
from collections.abc import Callable
from pathlib import Path

from stcal_dask.errors import (
    Terminated,
    UserInputError,
    clear_signals,
    raise_if_signalled,
    record_signal,
    signalled,
)

__all__ = [
    "EPILOG_ERRORS",
    "PROG",
    "STEPS",
    "Formatter",
    "Parser",
    "add_command",
    "add_step_options",
    "check_execution_options",
    "client_kwargs",
    "compute",
    "execution_options",
    "exit_status",
    "field_help",
    "io_options",
    "is_fits",
    "is_zarr",
    "open_client",
    "param_class",
    "parse_shape",
    "parse_tile",
    "say",
    "sigterm_unwinds",
    "step_params",
    "warn",
]

PROG = "stcal-dask"

STEPS = {
    "jump": ("stcal_dask.kernels.jump", "JumpParams"),
    "rampfit": ("stcal_dask.kernels.ramp_fit", "RampFitParams"),
    "resample": ("stcal_dask.mosaic.params", "ResampleParams"),
}
"""Step name (the ``--STEP.NAME`` option prefix) -> (module, parameter dataclass)."""

EPILOG_ERRORS = (
    "Errors: a user mistake prints 'stcal-dask: error: <one line>' on stderr and exits with 2."
)


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UserInputError` instead of printing usage and exiting."""

    def error(self, message):  # noqa: D401 - argparse hook
        raise UserInputError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """The help layout of every command: descriptions as written, options in two columns."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=100)


def add_command(subparsers, name: str, *, summary: str, description: str,
                examples: typing.Sequence[str], func: Callable) -> argparse.ArgumentParser:
    """Register the sub-command ``name``; every command is built this way.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``add_subparsers`` returned.
    name : str
        The command (``stcal-dask NAME``).
    summary : str
        One line for the top-level ``--help``.
    description : str
        What the command does (line breaks kept).
    examples : sequence of str
        Command lines shown under "examples:" in the command's ``--help``.
    func : callable
        ``func(args) -> int``, the command's exit status.
    """
    p = subparsers.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=Formatter,
        epilog="examples:\n" + "".join(f"  {e}\n" for e in examples) + "\n" + EPILOG_ERRORS,
    )
    p.set_defaults(func=func)
    return p


# ------------------------------------------------------------------------------------------------
# option groups


def execution_options(parser: argparse.ArgumentParser, *, outputs: bool = True,
                      tile: bool = True) -> None:
    """The cluster options (``--scheduler``, ``--n-workers``, ...), ``--quiet``, and optionally
    ``--tile`` and ``--overwrite``."""
    g = parser.add_argument_group("execution")
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="dask scheduler tcp://HOST:PORT of an existing cluster (default: "
        "$DASK_SCHEDULER_ADDRESS, else a LocalCluster); 'threads' or 'synchronous' use dask's "
        "local scheduler without a cluster",
    )
    g.add_argument(
        "--n-workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes of the LocalCluster (default: CPU cores / threads per worker; "
        "one worker of up to 4 threads per 4 cores)",
    )
    g.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        metavar="N",
        help="threads per LocalCluster worker process (default: up to 4, or 1 when --n-workers "
        "is given; the numba kernels release the GIL, so the threads of a worker share its "
        "memory without slowing each other)",
    )
    g.add_argument(
        "--in-process",
        action="store_true",
        help="run the LocalCluster's workers as threads of this process (no worker start-up, "
        "one copy of the libraries in memory; the memory limit then only triggers spilling)",
    )
    g.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="memory limit per LocalCluster worker, e.g. 2GB (default: RAM / workers); a "
        "worker needs memory for the libraries before any data, a limit they already fill is "
        "refused",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
    g.add_argument(
        "--verbose",
        action="store_true",
        help="show distributed's log records (the workers' tracebacks of a failure) on the "
        "terminal; by default they go to a log file that the error message names",
    )
    if tile:
        g.add_argument(
            "--tile",
            default=None,
            metavar="N|NYxNX",
            help="spatial tile (chunk) size in pixels (default: the input's chunks, or chosen "
            "from a 256 MB per-tile memory budget)",
        )
    if outputs:
        g.add_argument(
            "--overwrite", action="store_true", help="replace existing outputs (else an error)"
        )


def io_options(parser: argparse.ArgumentParser, *, outputs: bool = True) -> None:
    """``--gain``/``--readnoise`` (references of a FITS ramp) and optionally ``--output-dir`` and
    ``--format``."""
    g = parser.add_argument_group("input and output")
    g.add_argument(
        "--gain", metavar="FILE", default=None, help="GAIN reference FITS (for a FITS ramp input)"
    )
    g.add_argument(
        "--readnoise",
        metavar="FILE",
        default=None,
        help="READNOISE reference FITS (for a FITS ramp input)",
    )
    if outputs:
        g.add_argument(
            "--output-dir",
            "-o",
            metavar="DIR",
            default=".",
            help="directory for the outputs (default: current directory)",
        )
        g.add_argument(
            "--format",
            choices=("zarr", "fits", "both"),
            default=None,
            help="output format (default: that of the input)",
        )


def check_execution_options(args: argparse.Namespace) -> None:
    """Refuse bad cluster options before anything starts; warn about options that will be
    ignored and about a local cluster with more threads than CPU cores."""
    if getattr(args, "memory_limit", None) is not None:
        from stcal_dask.engine.cluster import parse_memory_limit

        parse_memory_limit(args.memory_limit)
    if getattr(args, "jump__max_shower_amplitude", None) is not None:
        warn("--jump.max_shower_amplitude has no effect: as in the JWST jump step, which does "
             "not pass it to stcal, showers are reverted where the mean rate changes by more "
             "than stcal's 6 x the group time")
    for option in ("n_workers", "threads_per_worker"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            raise UserInputError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    given = [f"--{o.replace('_', '-')}" for o in ("n_workers", "threads_per_worker",
                                                   "memory_limit", "in_process")
             if getattr(args, o, None) not in (None, False)]
    if not given and getattr(args, "n_workers", None) is None:
        return
    from stcal_dask.engine.cluster import local_layout, resolve_scheduler

    address = resolve_scheduler(getattr(args, "scheduler", None))
    if address and given:
        where = (f"--scheduler {address}" if getattr(args, "scheduler", None)
                 else f"DASK_SCHEDULER_ADDRESS={address}")
        warn(f"{', '.join(given)} only shape the LocalCluster this command starts; ignored "
             f"with {where}")
        return
    if address:
        return
    workers, threads = local_layout(getattr(args, "n_workers", None),
                                    getattr(args, "threads_per_worker", None))
    cores = os.cpu_count() or 1
    if workers * threads > cores:
        warn(f"{workers} workers x {threads} threads = {workers * threads} threads on {cores} "
             f"CPU cores: slower than at most {cores} (the default layout fills the cores)")


def warn(message: str) -> None:
    """Print ``stcal-dask: warning: <message>`` on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# step parameters generated from the dataclasses


def param_class(step: str):
    """The parameter dataclass of ``step`` (a key of :data:`STEPS`)."""
    module, name = STEPS[step]
    return getattr(importlib.import_module(module), name)


def field_help(f: dataclasses.Field) -> str:
    """The one-line help of a parameter dataclass field (its ``metadata["help"]``)."""
    return " ".join(str(f.metadata.get("help", "")).split())


def _type_name(tp) -> str:
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]: X's name
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) if len(inner) == 1 else "value"
    if typing.get_origin(tp) is tuple:
        return ",".join(_type_name(a) for a in args if a is not Ellipsis)
    return getattr(tp, "__name__", str(tp))


def add_step_options(parser: argparse.ArgumentParser, step: str) -> None:
    """One ``--STEP.NAME`` option per field of the step's parameter dataclass (JWST names; help
    from the field's metadata, default from the field)."""
    cls = param_class(step)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        f"{step} step parameters (JWST names; {cls.__module__}.{cls.__name__})"
    )
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, str)
        kind = "true|false" if tp is bool else _type_name(tp).upper()
        default = f.default
        if isinstance(default, bool):
            default = str(default).lower()
        group.add_argument(
            f"--{step}.{f.name}",
            dest=f"{step}__{f.name}",
            metavar=kind,
            default=None,
            help=f"{field_help(f)} [default: {default}]".strip(),
        )


def _convert(value, tp, option: str):
    """One option value of type ``tp``: bool, int, float, str, ``X | None`` (``none`` gives
    None) or ``tuple[X, ...]`` (comma- or space-separated, or a list from ``nargs``)."""
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        if isinstance(value, str) and value.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0] if len(inner) == 1 else str, option)
    if typing.get_origin(tp) is tuple:
        items = (list(value) if isinstance(value, (list, tuple))
                 else [v for v in re.split(r"[,\s]+", str(value).strip()) if v])
        kinds = [a for a in args if a is not Ellipsis]
        if Ellipsis not in args and len(items) != len(kinds):
            raise UserInputError(
                f"{option} needs {len(kinds)} values, got {len(items)} ({value!r})"
            )
        return tuple(_convert(v, kinds[min(i, len(kinds) - 1)], option)
                     for i, v in enumerate(items))
    text = str(value).strip()
    if tp is bool:
        low = text.lower()
        if low in ("true", "yes", "1", "on"):
            return True
        if low in ("false", "no", "0", "off"):
            return False
        raise UserInputError(f"{option} must be true or false, got {value!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise UserInputError(f"{option} must be an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise UserInputError(f"{option} must be a number, got {value!r}") from None
    return text


def step_params(step: str, args: argparse.Namespace, defaults=None, **overrides):
    """The step's parameter dataclass from ``--STEP.NAME`` options (``defaults``, then the
    dataclass's JWST defaults, otherwise)."""
    cls = param_class(step)
    hints = typing.get_type_hints(cls)
    values = dict(defaults or {})
    for f in dataclasses.fields(cls):
        raw = getattr(args, f"{step}__{f.name}", None)
        if raw is not None:
            values[f.name] = _convert(raw, hints.get(f.name, str), f"--{step}.{f.name}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except UserInputError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"{step} parameters: {exc}") from None


# ------------------------------------------------------------------------------------------------
# option values


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``NINTSxNGROUPSxNYxNX`` -> a 4-tuple of positive integers."""
    parts = re.split(r"[xX,*]", str(text).strip())
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        raise UserInputError(
            f"--shape must be NINTSxNGROUPSxNYxNX with positive integers (e.g. 1x10x256x256), "
            f"got {text!r}"
        )
    return shape  # type: ignore[return-value]


def parse_tile(text: str | None) -> tuple[int, int] | None:
    """``N`` or ``NYxNX`` -> (ny, nx) pixels; None stays None (automatic tiles)."""
    if text is None:
        return None
    parts = re.split(r"[xX,]", str(text).strip())
    try:
        tile = tuple(int(p) for p in parts)
    except ValueError:
        tile = ()
    if len(tile) == 1:
        tile = (tile[0], tile[0])
    if len(tile) != 2 or min(tile) < 1:
        raise UserInputError(f"--tile must be N or NYxNX with positive integers, got {text!r}")
    return tile  # type: ignore[return-value]


def is_fits(path) -> bool:
    """Whether ``path`` names a FITS file (by its extension)."""
    return str(path).lower().endswith((".fits", ".fit", ".fits.gz"))


def is_zarr(path) -> bool:
    """Whether ``path`` names a zarr store (``.zarr``, or a directory with zarr metadata)."""
    p = Path(path)
    return str(path).rstrip("/").lower().endswith(".zarr") or (
        p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())
    )


def say(args: argparse.Namespace, *lines: str) -> None:
    """Print ``lines`` unless ``--quiet``."""
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# cluster and computation


def client_kwargs(args: argparse.Namespace, *, fork: bool = False) -> dict:
    """:func:`~stcal_dask.engine.cluster.get_client` keywords from the execution options;
    ``fork``: fork the local workers from this process where that is safe."""
    from stcal_dask.engine.startup import worker_start_method

    kwargs = {
        "scheduler": getattr(args, "scheduler", None),
        "n_workers": getattr(args, "n_workers", None),
        "memory_limit": getattr(args, "memory_limit", None),
        "threads_per_worker": getattr(args, "threads_per_worker", None),
        "processes": not getattr(args, "in_process", False),
        "quiet": True,
        "log_to_file": not getattr(args, "verbose", False),
    }
    if fork and worker_start_method() == "fork":
        kwargs["start_method"] = "fork"
    return kwargs


def open_client(args: argparse.Namespace, *, warm: bool = True, fork: bool = False):
    """The cluster of the execution options (a context manager yielding the client or None).

    ``warm``: load (compile once per machine) the numba kernels in the workers first; False for
    commands whose tasks use none of them (mosaic-wcs, mosaic). ``fork``: as in
    :func:`client_kwargs`."""
    from stcal_dask.engine.cluster import get_client

    return get_client(**client_kwargs(args, fork=fork), warm=warm)


def compute(args: argparse.Namespace, *collections) -> list:
    """Compute ``collections`` in one graph on the current cluster (progress bar unless
    ``--quiet``, at ``args.priority`` when set: see :func:`stcal_dask.engine.cluster.compute`);
    workers dying over and over is one line (:class:`UserInputError`)."""
    from stcal_dask.engine import cluster

    try:
        return list(cluster.compute(*collections, quiet=args.quiet,
                                    priority=getattr(args, "priority", 0)))
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":  # distributed.scheduler.KilledWorker
            raise
        limit = getattr(args, "memory_limit", None)
        raise UserInputError(
            "dask workers died repeatedly while computing (most likely out of memory"
            + (f" with --memory-limit {limit} per worker" if limit else "")
            + "); give each worker more memory (--memory-limit, fewer --n-workers) or use a "
            "smaller --tile; no output was written"
        ) from None


# ------------------------------------------------------------------------------------------------
# errors


@contextlib.contextmanager
def sigterm_unwinds() -> typing.Iterator[None]:
    """Within the block, SIGTERM (what SLURM, Kubernetes, ``timeout`` and systemd send) raises
    :class:`~stcal_dask.errors.Terminated` in the main thread and Ctrl-C raises
    :class:`KeyboardInterrupt`, so the run unwinds either way; a second SIGTERM during the
    cleanup is ignored. Each signal is also recorded (:func:`stcal_dask.errors.record_signal`),
    so that no output is committed after it even where its exception got lost.

    Python drops an exception raised where it cannot propagate (a garbage-collector callback,
    such as the one ``distributed``'s scheduler installs, or a ``__del__``): it only reports
    it through :data:`sys.unraisablehook`. An interruption swallowed that way would let the
    run go on. Within the block, such a swallowed interruption is delivered again, as a real
    signal to the main thread (from a timer thread: a blocked wait, such as joining the thread
    that starts the cluster, returns to take it), until it lands where it propagates; once a
    signal has arrived the reports of what it broke in passing go to the cluster's log file,
    not to the terminal. Outside the main thread (where Python cannot set handlers) nothing
    changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    unwinding: list[bool] = []
    main_ident = threading.main_thread().ident

    def handler(signum, frame):
        if signum == signal.SIGTERM and unwinding:
            return  # a second SIGTERM while cleaning up
        record_signal(signum)
        unwinding.append(True)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def deliver_again(signum: int) -> None:
        with contextlib.suppress(OSError, ValueError):  # the process is ending
            signal.pthread_kill(main_ident, signum)

    def hook(unraisable) -> None:
        signum = signalled()
        if signum is None:
            previous_hook(unraisable)
            return
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            unwinding.clear()  # swallowed: deliver it again, from outside this callback
            again = threading.Timer(0.01, deliver_again, (signum,))
            again.daemon = True
            again.start()
        _log_unraisable(unraisable)

    previous_hook = sys.unraisablehook
    clear_signals()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    sys.unraisablehook = hook
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        sys.unraisablehook = previous_hook
        clear_signals()


def _log_unraisable(unraisable) -> None:
    """Append an exception Python could not raise (see :func:`sigterm_unwinds`) to this
    process's cluster log file; dropped when no cluster module is loaded (no cluster, hence no
    log file, and none of distributed's callbacks that break this way) or the file cannot be
    written."""
    import traceback

    logs = sys.modules.get("stcal_dask.engine.logs")
    if logs is None:
        return
    text = "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                              unraisable.exc_traceback))
    with contextlib.suppress(OSError), open(logs.log_path(), "a", encoding="utf-8") as fh:
        fh.write(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n{text}")


def exit_status(command: Callable[[], int]) -> int:
    """Run ``command()`` and return its exit status; a user mistake or a condition of the
    machine prints ``stcal-dask: error: <one line>`` on stderr (status 2), Ctrl-C
    ``stcal-dask: interrupted`` (status 130), SIGTERM ``stcal-dask: terminated`` (143); when
    a cluster of the command logged records (workers' tracebacks), the line names the log."""
    before = _log_state()
    try:
        with sigterm_unwinds():
            status = int(command() or 0)
            raise_if_signalled()  # a signal whose exception got lost: still an interruption
            return status
    except UserInputError as exc:
        print(f"{PROG}: error: {exc}{_log_note(before)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{PROG}: terminated{_log_note(before)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted{_log_note(before)}", file=sys.stderr)
        return 130


def _log_state():
    """(size, mtime) of this process's cluster log file, None when there is none."""
    logs = sys.modules.get("stcal_dask.engine.logs")
    if logs is None:
        return None
    try:
        st = logs.log_path().stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _log_note(before) -> str:
    """`` (details: LOG)`` when a cluster of this command logged records (workers' tracebacks)
    to the log file (see :func:`stcal_dask.engine.logs.logs_to_file`), else ``""``."""
    logs = sys.modules.get("stcal_dask.engine.logs")
    if logs is None or _log_state() in (None, before):
        return ""
    return logs.log_note()
