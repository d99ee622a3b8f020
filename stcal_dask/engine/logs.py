"""Where the log records of ``distributed`` (and tornado, bokeh, asyncio) go while a command
runs a cluster: to a file, not the user's terminal (:func:`logs_to_file`), so that a user's
mistake or an interruption reaches the terminal as the command's one line and the details stay
in the file that the line names (:func:`log_note`).

The one mechanism for the rule "no traceback on the terminal for what is not a bug of ours";
:mod:`stcal_dask.engine.cluster` applies it to every cluster it starts or joins, and
:class:`stcal_dask.engine.worker_plugins.LogToFile` to workers started as fresh interpreters.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

__all__ = [
    "distributed_loggers",
    "drop_gather_exit_records",
    "log_note",
    "log_path",
    "logs_to_file",
    "quiet_distributed",
    "silence_distributed_logs",
    "swap_log_handlers",
]


def distributed_loggers() -> list[logging.Logger]:
    names = {"distributed", *(n for n in logging.root.manager.loggerDict
                              if n.startswith("distributed"))}
    return [logging.getLogger(n) for n in sorted(names)]


def silence_distributed_logs() -> None:
    """Silence this process's distributed loggers (run in workers about to be shut down)."""
    for lg in distributed_loggers():
        lg.setLevel(logging.CRITICAL)


@contextlib.contextmanager
def quiet_distributed():
    """Silence this process's distributed loggers (scheduler, nannies) inside the block."""
    loggers = distributed_loggers()
    levels = [lg.level for lg in loggers]
    silence_distributed_logs()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


_LOG_ROOTS = ("distributed", "tornado", "bokeh", "asyncio")


def log_path() -> Path:
    """The file this process's clusters log to (see :func:`logs_to_file`):
    ``<temporary directory>/stcal-dask-<pid>.log``, created only when something is logged."""
    return Path(tempfile.gettempdir()) / f"stcal-dask-{os.getpid()}.log"


def swap_log_handlers(path: str) -> list[tuple[logging.Logger, list, bool]]:
    """Make distributed's, tornado's, bokeh's and asyncio's loggers in this process write
    records of level WARNING and above to ``path`` (opened at the first record) and nowhere else:
    the top-level loggers and every one with handlers of its own get the file as their only
    handler and stop propagating. Returns (logger, old handlers, old propagate) to undo it."""
    new = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    new.setLevel(logging.WARNING)
    new.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    swapped = []
    for name in sorted({*_LOG_ROOTS, *logging.root.manager.loggerDict}):
        logger = logging.getLogger(name)
        if name.split(".")[0] not in _LOG_ROOTS or not (name in _LOG_ROOTS or logger.handlers):
            continue
        swapped.append((logger, list(logger.handlers), logger.propagate))
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(new)
        logger.propagate = False
    return swapped


class _DropGatherExit(logging.Filter):
    """Drop asyncio's "Task exception was never retrieved" records for distributed's
    ``AllExit``: the client's gather starts one waiting task per future and, when the gather is
    abandoned (Ctrl-C, a failed task), the rest end with this internal stop signal once the
    client forgets their futures. Nothing was lost; the record is noise with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and type(exc).__name__ == "AllExit"
                    and type(exc).__module__.startswith("distributed"))


_GATHER_EXIT_FILTER = _DropGatherExit()


def drop_gather_exit_records() -> None:
    """Install (once per process; it stays) the filter that keeps the client's abandoned gather
    tasks' ``AllExit`` out of the terminal and the log (see :class:`_DropGatherExit`)."""
    asyncio_logger = logging.getLogger("asyncio")
    if _GATHER_EXIT_FILTER not in asyncio_logger.filters:
        asyncio_logger.addFilter(_GATHER_EXIT_FILTER)


@contextlib.contextmanager
def logs_to_file(path=None):
    """Send distributed's log records (task failures with their tracebacks, heartbeat errors
    while a cluster shuts down, warnings) of this process, and of the worker processes it forks,
    to the file ``path`` (default :func:`log_path`) instead of the terminal; undone on exit.

    A user's mistake or an interruption then reaches the terminal as the command's one line, and
    the details stay in the file. An empty file is removed on exit. Yields the path.
    """
    import distributed  # noqa: F401  (sets up the handlers replaced here)

    drop_gather_exit_records()
    path = Path(path or log_path())
    swapped = swap_log_handlers(str(path))
    try:
        yield path
    finally:
        closing = set()
        for logger, handlers, propagate in swapped:
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
                closing.add(handler)
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = propagate
        for handler in closing:
            handler.close()
        with contextlib.suppress(OSError):
            if path.stat().st_size == 0:
                path.unlink()


def log_note() -> str:
    """`` (details: <log file>)`` when :func:`log_path` holds records, else ``""``: for the end
    of the command's one-line error."""
    path = log_path()
    try:
        return f" (details: {path})" if path.stat().st_size > 0 else ""
    except OSError:
        return ""
