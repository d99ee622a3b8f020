"""User-facing errors.

Raise :class:`UserInputError` for any mistake a user can fix (missing file, wrong shape or dtype,
missing keyword, mismatched reference shape, existing output, unreachable scheduler, bad
parameter value). Its message is ONE line that names the file/array/keyword and what was expected;
the CLI prints it as ``stcal-dask: error: <message>`` and exits non-zero without a traceback.
Programming errors stay ordinary exceptions (and keep their tracebacks).
"""

from __future__ import annotations


class UserInputError(ValueError):
    """A mistake in the user's input or parameters; the message is one clear line."""

    def __init__(self, message: str):
        message = " ".join(str(message).split())  # enforce a single line
        super().__init__(message)
