"""The ``stcal-dask`` commands, one module each.

Every module here defines ``add_parser(subparsers)``, which registers its command with
:func:`stcal_dask.cli.common.add_command` (the one parser style: description, examples, the
shared option groups) and sets ``func`` to its ``run(args) -> int``. Modules import only the
standard library and :mod:`stcal_dask.cli.common` at module level (building the parser loads no
scientific library); the work's imports go inside ``run``.

Adding a command: add its module here and one line to :data:`COMMANDS`.
"""

from __future__ import annotations

from stcal_dask.cli.commands import (
    demo,
    ingest,
    jump,
    mosaic,
    mosaic_wcs,
    rampfit,
    run,
    simulate,
    warmup,
)

__all__ = ["COMMANDS"]

COMMANDS = (simulate, ingest, jump, rampfit, run, demo, mosaic_wcs, mosaic, warmup)
"""The command modules, in the order of the top-level ``--help``."""
