"""``stcal-dask``: the command line of the engine.

Subcommands (``stcal-dask COMMAND --help`` explains each, with an example), one module each in
:mod:`stcal_dask.cli.commands`:

* ``simulate OUT.zarr|OUT_ramp.fits --shape NINTSxNGROUPSxNYxNX --seed N`` — a seeded synthetic
  exposure (with ``X_gain.fits`` and ``X_readnoise.fits`` beside a FITS ramp);
* ``ingest X_ramp.fits --gain G --readnoise R`` — FITS ramp + references -> zarr ramp store;
* ``jump INPUT`` — flag jumps, write ``X_jump``;
* ``rampfit INPUT`` — fit ramps, write ``X_rate``, ``X_rateints`` (and ``X_fitopt``);
* ``run INPUT`` — jump + ramp fit in one graph (``--save-jump`` also writes ``X_jump``);
* ``demo`` — simulate a full-frame exposure and run it (see :mod:`stcal_dask.cli.demo`);
* ``mosaic-wcs`` — the output WCS of a mosaic (library: :mod:`stcal_dask.mosaic.wcs`).

What the commands share (parser style, common and step options, error translation) is in
:mod:`stcal_dask.cli.common`; ``jump``, ``rampfit`` and ``run`` share :mod:`stcal_dask.cli.steps`.
Step parameters use the JWST names and are generated from the parameter dataclasses
(``--jump.rejection_threshold 5``, ``--rampfit.suppress_one_group false``), with the help text
of each field's metadata.

Any user mistake (:class:`~stcal_dask.errors.UserInputError`, including bad options) prints
``stcal-dask: error: <one line>`` on stderr and exits with status 2, without a traceback.
Outputs are written under temporary names and renamed into place when complete; inputs are only
read.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from stcal_dask.cli.common import (  # the standard library only: cheap to load
    EPILOG_ERRORS,
    PROG,
    Formatter,
    Parser,
    check_execution_options,
    exit_status,
    field_help,
    step_params,
)

__all__ = ["build_parser", "field_help", "main", "run", "step_params"]


def build_parser(help_texts: bool = True) -> argparse.ArgumentParser:
    """The ``stcal-dask`` argument parser: every command of
    :data:`~stcal_dask.cli.commands.COMMANDS`.

    ``help_texts=False`` leaves out the step options' descriptions (the parameter fields'
    ``metadata["help"]``); the options parse alike.
    """
    # the commands' modules load with the first parser, inside main's interrupt handling
    from stcal_dask import __version__
    from stcal_dask.cli.commands import COMMANDS

    parser = Parser(
        prog=PROG,
        formatter_class=Formatter,
        description=(
            "stcal jump detection and OLS ramp fitting (stcal 1.20.0 results) as a chunked\n"
            "dask/xarray/zarr dataflow: ramps are processed tile by tile on a dask.distributed\n"
            "cluster (an embedded LocalCluster by default), so exposures larger than memory run."
        ),
        epilog=(
            "examples:\n"
            "  stcal-dask demo --size 512\n"
            "  stcal-dask simulate expo_ramp.fits --shape 1x10x512x512 --seed 1\n"
            "  stcal-dask run expo_ramp.fits --gain expo_gain.fits --readnoise expo_readnoise.fits"
            " -o out/\n"
            "  stcal-dask COMMAND --help\n\n" + EPILOG_ERRORS
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        p = command.add_parser(sub)
        if not help_texts:
            for action in p._actions:
                if "__" in action.dest:  # a --STEP.NAME option: keep only its default
                    action.help = action.help[action.help.find("[default:"):]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``stcal-dask``; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def command() -> int:
        args = build_parser().parse_args(argv)
        check_execution_options(args)
        return args.func(args)

    return exit_status(command)


def run() -> None:  # pragma: no cover - the console script; exits the process
    """Entry point of the ``stcal-dask`` console script: :func:`main`, then exit.

    Every output is committed (or removed) and every file closed when :func:`main` returns, so
    the interpreter's finalisation of the scientific stack (slower than some whole runs of a
    small exposure) is skipped: streams and logging handlers are flushed and the process exits
    with main's status. Ctrl-C before :func:`main` has set up its handling (while the commands'
    modules load) is the same one line and status 130.
    """
    try:
        rc = main()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        rc = 130
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)
