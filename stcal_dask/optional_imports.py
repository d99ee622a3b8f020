"""Keeping unused optional packages out of a process (no dependencies besides the standard
library; used by the CLI and by the numba kernels' one-time set-up)."""

from __future__ import annotations

import contextlib
import sys

UNUSED_OPTIONAL = ("scipy", "pyarrow")
"""Optional packages that jump detection and ramp fitting never use but that libraries import
eagerly when installed: dask.array (scipy.sparse, scipy.fftpack) and pandas (pyarrow) when
they load, numba when it sets up its CPU target (scipy.linalg, only to decide whether
``np.correlate`` may call BLAS); importing them is a noticeable part of a run's and of a
worker's start."""


class SkipImports:
    """``sys.meta_path`` finder that makes ``import NAME`` (and its submodules) fail as if the
    package were not installed; ``NAME`` may be dotted (``scipy.linalg``). Nothing is cached,
    so the package imports normally once the finder is removed."""

    def __init__(self, names):
        self.names = tuple(names)

    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == n or fullname.startswith(n + ".") for n in self.names):
            raise ModuleNotFoundError(f"No module named {fullname!r} (skipped)", name=fullname)
        return None


@contextlib.contextmanager
def skipping_optional_imports(names=None):
    """Within the block, the packages ``names`` (default :data:`UNUSED_OPTIONAL`) not yet
    loaded look absent (libraries that probe for them skip them); afterwards they import
    normally."""
    names = [n for n in (UNUSED_OPTIONAL if names is None else names) if n not in sys.modules]
    finder = SkipImports(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
