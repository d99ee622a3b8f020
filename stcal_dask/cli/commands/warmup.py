"""``stcal-dask warmup``: compile the numba kernels into this machine's cache ahead of time."""

from __future__ import annotations

import argparse
import sys

from stcal_dask.cli.common import PROG, add_command

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``warmup``."""
    p = add_command(
        subparsers,
        "warmup",
        summary="compile the numba kernels into this machine's cache (for images, login nodes)",
        description=(
            "Compile every variant of the jump and ramp-fit kernels (every jump path, the\n"
            "optional fit outputs), with their lane medians for every count of groups, into the\n"
            "compiled-kernel cache ($STCAL_DASK_CACHE_DIR, else\n"
            "a per-user directory under /var/tmp; see deploy/README.md), so that no run on this\n"
            "machine compiles. A no-op (a fraction of a\n"
            "second) when the cache is warm; when another process is compiling, waits for it.\n"
            "Run it when building a container image, on a login node, or at the start of a job."
        ),
        examples=("stcal-dask warmup",
                  "STCAL_DASK_CACHE_DIR=/opt/stcal-dask/cache stcal-dask warmup"),
        func=run,
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no messages")
    return p


def run(args: argparse.Namespace) -> int:
    """Compile (or load) the kernels; returns 0."""
    from stcal_dask.engine.warmup import cache_dir, ensure_compiled

    spent = ensure_compiled(quiet=args.quiet, every=True)
    if not args.quiet:
        state = f"compiled in {spent:.0f} s" if spent else "already compiled"
        print(f"{PROG}: kernels {state}; cache: {cache_dir()}", file=sys.stderr)
    return 0
