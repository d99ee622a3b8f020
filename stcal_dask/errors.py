"""User-facing errors.

Raise :class:`UserInputError` for any mistake a user can fix (missing file, wrong shape or dtype,
missing keyword, mismatched reference shape, existing output, unreachable scheduler, bad
parameter value). Its message is ONE line that names the file/array/keyword and what was expected;
the CLI prints it as ``stcal-dask: error: <message>`` and exits non-zero without a traceback.
Programming errors stay ordinary exceptions (and keep their tracebacks).

Ctrl-C and SIGTERM interrupt a run as :class:`KeyboardInterrupt` and :class:`Terminated`. Python
can lose such an exception on its way (raised inside a garbage-collector callback, a finaliser,
or Python code that C code calls and whose error it clears), so the command's signal handler
also records the signal here (:func:`record_signal`), and a commit of outputs refuses to happen
once one has arrived (:func:`raise_if_signalled`): an interrupted run never leaves products that
look complete, whatever became of the exception.
"""

from __future__ import annotations

import signal
import threading

_SIGNALLED: list[int] = []  # the interrupting signals received since clear_signals()
_SIGNALLED_LOCK = threading.Lock()


class UserInputError(ValueError):
    """A mistake in the user's input or parameters; the message is one clear line."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # enforce a single line
        super().__init__(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run unwinds as after Ctrl-C: outputs
    aborted, temporaries removed, the cluster's workers stopped."""


def record_signal(signum: int) -> None:
    """Note that the interrupting signal ``signum`` (SIGINT or SIGTERM) arrived."""
    with _SIGNALLED_LOCK:
        _SIGNALLED.append(int(signum))


def clear_signals() -> None:
    """Forget the signals recorded so far (a command starts)."""
    with _SIGNALLED_LOCK:
        _SIGNALLED.clear()


def signalled() -> int | None:
    """The first interrupting signal recorded since :func:`clear_signals`, else None."""
    with _SIGNALLED_LOCK:
        return _SIGNALLED[0] if _SIGNALLED else None


def raise_if_signalled() -> None:
    """Raise the interruption of a recorded signal (:class:`Terminated` for SIGTERM,
    :class:`KeyboardInterrupt` otherwise); nothing when none arrived. Called before anything is
    committed."""
    signum = signalled()
    if signum is not None:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
