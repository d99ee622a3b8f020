"""``stcal-dask``: the command line of the engine.

Subcommands (``stcal-dask COMMAND --help`` explains each, with an example):

* ``simulate OUT.zarr|OUT_ramp.fits --shape NINTSxNGROUPSxNYxNX --seed N`` — a seeded synthetic
  exposure (with ``X_gain.fits`` and ``X_readnoise.fits`` beside a FITS ramp);
* ``ingest X_ramp.fits --gain G --readnoise R`` — FITS ramp + references -> zarr ramp store;
* ``jump INPUT`` — flag jumps, write ``X_jump``;
* ``rampfit INPUT`` — fit ramps, write ``X_rate``, ``X_rateints`` (and ``X_fitopt``);
* ``run INPUT`` — jump + ramp fit in one graph (``--save-jump`` also writes ``X_jump``);
* ``demo`` — simulate a full-frame exposure and run it (see :mod:`stcal_dask.cli.demo`);
* ``mosaic-wcs`` — the output WCS of a mosaic (:mod:`stcal_dask.mosaic.wcs`).

Step parameters use the JWST names and are generated from the parameter dataclasses
(``--jump.rejection_threshold 5``, ``--rampfit.suppress_one_group false``).

Any user mistake (:class:`~stcal_dask.errors.UserInputError`, including bad options) prints
``stcal-dask: error: <one line>`` on stderr and exits with status 2, without a traceback.
Outputs are written under temporary names and renamed into place when complete; inputs are only
read.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import time
import typing
import uuid
from pathlib import Path

from stcal_dask.errors import UserInputError

__all__ = ["build_parser", "field_help", "main", "step_params"]

PROG = "stcal-dask"

_STEPS = {
    "jump": ("stcal_dask.kernels.jump", "JumpParams"),
    "rampfit": ("stcal_dask.kernels.ramp_fit", "RampFitParams"),
}


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UserInputError` instead of printing usage and exiting."""

    def error(self, message):  # noqa: D401 - argparse hook
        raise UserInputError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=34, width=100)


# ------------------------------------------------------------------------------------------------
# step parameters generated from the dataclasses


def _param_class(step: str):
    import importlib

    module, name = _STEPS[step]
    return getattr(importlib.import_module(module), name)


def field_help(f: dataclasses.Field) -> str:
    """The one-line help of a parameter dataclass field (its ``metadata["help"]``)."""
    return " ".join(str(f.metadata.get("help", "")).split())


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _add_step_options(parser: argparse.ArgumentParser, step: str, help_texts: bool = True
                      ) -> None:
    cls = _param_class(step)
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
        doc = field_help(f) if help_texts else ""
        group.add_argument(
            f"--{step}.{f.name}",
            dest=f"{step}__{f.name}",
            metavar=kind,
            default=None,
            help=f"{doc} [default: {default}]".strip(),
        )


def _convert(value: str, tp, option: str):
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


def step_params(step: str, args: argparse.Namespace, **overrides):
    """The step's parameter dataclass from ``--STEP.NAME`` options (JWST defaults otherwise)."""
    cls = _param_class(step)
    hints = typing.get_type_hints(cls)
    values = {}
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
# option parsing helpers


def _parse_shape(text: str) -> tuple[int, int, int, int]:
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


def _parse_tile(text: str | None):
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
    return tile


def _is_fits(path: str) -> bool:
    return str(path).lower().endswith((".fits", ".fit", ".fits.gz"))


def _is_zarr(path: str) -> bool:
    p = Path(path)
    return str(path).rstrip("/").lower().endswith(".zarr") or (
        p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists())
    )


def _say(args, *lines) -> None:
    if not getattr(args, "quiet", False):
        for line in lines:
            print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# parser


_EPILOG_ERRORS = (
    "Errors: a user mistake prints 'stcal-dask: error: <one line>' on stderr and exits with 2."
)


def _common(parser: argparse.ArgumentParser, *, outputs: bool = True, tile: bool = True) -> None:
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
        "worker needs ~270 MiB for the libraries before any data, a smaller limit is refused",
    )
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or messages")
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


def _io_options(parser, *, outputs: bool = True) -> None:
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


def build_parser(help_texts: bool = True) -> argparse.ArgumentParser:
    """The ``stcal-dask`` argument parser (step options generated from the dataclasses).

    ``help_texts=False`` leaves out the step options' descriptions (the fields'
    ``metadata["help"]``): :func:`main` does so unless help is asked for."""
    from stcal_dask import __version__

    parser = _Parser(
        prog=PROG,
        formatter_class=_Formatter,
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
            "  stcal-dask COMMAND --help\n\n" + _EPILOG_ERRORS
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    # simulate
    p = sub.add_parser(
        "simulate",
        help="write a seeded synthetic exposure (zarr store or JWST _ramp.fits + references)",
        formatter_class=_Formatter,
        description=(
            "Generate a seeded synthetic up-the-ramp exposure (sources, cosmic rays, saturation,\n"
            "bad gains; see stcal_dask.sim.ramp) tile by tile. OUT ending in .zarr: a zarr ramp\n"
            "store (gain/readnoise inside). OUT ending in .fits: a JWST RampModel file plus\n"
            "X_gain.fits and X_readnoise.fits reference files beside it."
        ),
        epilog=(
            "examples:\n"
            "  stcal-dask simulate expo.zarr --shape 2x6x1024x1024 --seed 3\n"
            "  stcal-dask simulate expo_ramp.fits --shape 1x10x2048x2048 --seed 0\n"
            "    (writes expo_ramp.fits, expo_gain.fits, expo_readnoise.fits)\n\n" + _EPILOG_ERRORS
        ),
    )
    p.add_argument("output", metavar="OUT", help="OUT.zarr or OUT_ramp.fits")
    p.add_argument(
        "--shape",
        required=True,
        metavar="NINTSxNGROUPSxNYxNX",
        help="exposure shape, e.g. 1x10x2048x2048",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--cr-rate",
        type=float,
        default=None,
        metavar="P",
        help="probability of a cosmic ray per pixel and group (default 0.02)",
    )
    p.add_argument("--zeroframe", action="store_true", help="also write a ZEROFRAME")
    _common(p)
    p.set_defaults(func=_cmd_simulate)

    # ingest
    p = sub.add_parser(
        "ingest",
        help="convert a JWST _ramp.fits + gain/readnoise references into a zarr ramp store",
        formatter_class=_Formatter,
        description=(
            "Read a JWST _ramp.fits (SCI, PIXELDQ, GROUPDQ, optional ZEROFRAME/AVDRKCUR, timing\n"
            "keywords) and its GAIN / READNOISE reference files (cut to the data's subarray)\n"
            "lazily and store them as one chunked zarr ramp store (chunks: all integrations,\n"
            "all groups, tile_y, tile_x)."
        ),
        epilog=(
            "example:\n"
            "  stcal-dask ingest expo_ramp.fits --gain expo_gain.fits "
            "--readnoise expo_readnoise.fits --output expo_ramp.zarr --tile 512\n\n"
            + _EPILOG_ERRORS
        ),
    )
    p.add_argument("input", metavar="INPUT", help="X_ramp.fits")
    _io_options(p, outputs=False)
    p.add_argument(
        "--output",
        metavar="OUT.zarr",
        default=None,
        help="store to create (default: X_ramp.zarr in the current directory)",
    )
    _common(p)
    p.set_defaults(func=_cmd_ingest)

    # jump / rampfit / run
    specs = {
        "jump": (
            "flag jumps (cosmic rays) in a ramp: writes X_jump",
            "Two-point-difference jump detection (stcal 1.20.0 detect_jumps_data, single\n"
            "process, no snowballs/showers) on every tile. Writes the flagged ramp X_jump\n"
            "(.zarr store or JWST RampModel .fits) and prints the number of primary jumps.",
            "  stcal-dask jump expo.zarr -o out/ --jump.rejection_threshold 5\n",
        ),
        "rampfit": (
            "fit ramps (OLS): writes X_rate, X_rateints (and X_fitopt with --save-opt)",
            "OLS ramp fitting with optimal weighting (stcal 1.20.0 ramp_fit_data, OLS_C) on\n"
            "every tile of an already jump-flagged ramp. Writes X_rate (y, x) and X_rateints\n"
            "(integration, y, x): SCI, ERR (DN/s), DQ, VAR_POISSON, VAR_RNOISE ((DN/s)^2).",
            "  stcal-dask rampfit expo_jump.fits --gain g.fits --readnoise r.fits -o out/\n",
        ),
        "run": (
            "jump detection + ramp fitting in one pass: writes X_rate, X_rateints",
            "Jump detection followed by OLS ramp fitting, in one dask graph (each tile is read\n"
            "once). INPUT is a zarr ramp store or a JWST _ramp.fits with --gain/--readnoise\n"
            "(default: X_gain.fits / X_readnoise.fits beside it, as 'simulate' writes them).\n"
            "Outputs X_rate, X_rateints (X_fitopt with --save-opt, X_jump with --save-jump).",
            "  stcal-dask run expo_ramp.fits --gain expo_gain.fits --readnoise "
            "expo_readnoise.fits -o out/\n"
            "  stcal-dask run expo.zarr -o out/ --format both --save-opt "
            "--scheduler tcp://host:8786\n"
            "  stcal-dask run expo.zarr --n-workers 4 --memory-limit 2GB "
            "--rampfit.suppress_one_group false\n",
        ),
    }
    for name, (help_, desc, example) in specs.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=desc,
            formatter_class=_Formatter,
            epilog="examples:\n" + example + "\n" + _EPILOG_ERRORS,
        )
        p.add_argument("input", metavar="INPUT", help="zarr ramp store or X_ramp.fits")
        _io_options(p)
        if name in ("rampfit", "run"):
            p.add_argument(
                "--save-opt",
                action="store_true",
                help="also write the per-segment fit product X_fitopt",
            )
        if name == "run":
            p.add_argument(
                "--save-jump", action="store_true", help="also write the flagged ramp X_jump"
            )
        _common(p)
        if name in ("jump", "run"):
            _add_step_options(p, "jump", help_texts)
        if name in ("rampfit", "run"):
            _add_step_options(p, "rampfit", help_texts)
        p.set_defaults(func=_cmd_process, process=name)

    # demo
    p = sub.add_parser(
        "demo",
        help="simulate a full-frame exposure and run jump + ramp fit on a LocalCluster",
        formatter_class=_Formatter,
        description=(
            "The main job on an embedded default: simulates a 1x10x2048x2048 exposure into a\n"
            "zarr store, runs jump detection and ramp fitting on a LocalCluster with a progress\n"
            "bar, writes X_rate/X_rateints, prints how many injected jumps were found and how\n"
            "accurate the slopes are, and writes a quicklook PNG (rate image and jump map)."
        ),
        epilog="examples:\n  stcal-dask demo\n  stcal-dask demo --size 512 -o /tmp/demo\n\n"
        + _EPILOG_ERRORS,
    )
    p.add_argument(
        "--size", type=int, default=2048, help="detector side in pixels (default 2048)"
    )
    p.add_argument("--ngroups", type=int, default=10, help="groups per integration (default 10)")
    p.add_argument("--nints", type=int, default=1, help="integrations (default 1)")
    p.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")
    p.add_argument(
        "--output-dir",
        "-o",
        metavar="DIR",
        default="stcal-dask-demo",
        help="where to write the demo files (default ./stcal-dask-demo)",
    )
    p.add_argument(
        "--format",
        choices=("zarr", "fits", "both"),
        default="zarr",
        help="format of the rate products (default zarr)",
    )
    _common(p)
    p.set_defaults(func=_cmd_demo)

    # mosaic-wcs: registered from stcal_dask.mosaic.wcs, imported only when used
    p = sub.add_parser(
        "mosaic-wcs",
        help="compute the output WCS of a mosaic of rate products (stcal_dask.mosaic.wcs)",
        add_help=False,
        prefix_chars="\0",
    )
    p.add_argument("mosaic_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_mosaic)
    return parser


# ------------------------------------------------------------------------------------------------
# commands


def _client_kwargs(args, *, fork: bool = False) -> dict:
    kwargs = {
        "scheduler": getattr(args, "scheduler", None),
        "n_workers": getattr(args, "n_workers", None),
        "memory_limit": getattr(args, "memory_limit", None),
        "threads_per_worker": getattr(args, "threads_per_worker", None),
        "processes": not getattr(args, "in_process", False),
        "quiet": True,
    }
    if fork and _can_fork():
        kwargs["start_method"] = "fork"
    return kwargs


def _can_fork() -> bool:
    """Fork the local cluster's workers from this process (Linux only: elsewhere fork is unsafe
    or missing; ``STCAL_DASK_WORKER_START=spawn`` turns it off)."""
    method = os.environ.get("STCAL_DASK_WORKER_START", "").strip().lower()
    if method:
        if method not in ("fork", "spawn"):
            raise UserInputError(
                f"STCAL_DASK_WORKER_START must be 'fork' or 'spawn', got {method!r}"
            )
        return method == "fork"
    return sys.platform.startswith("linux")


def _import_for_workers(lean: bool = False) -> None:
    """Import, in this thread, what workers forked from this process start with; no import is
    then in progress at the moment of the fork.

    By default that is everything the graph and the tasks need (a forked worker starts with it
    loaded: ~0.1 s instead of ~3 s for a fresh interpreter). With ``lean`` (the tasks need no
    xarray, see :data:`stcal_dask.engine.cluster.WORKER_IMPORTS_FITS`) only distributed: the workers
    are forked early and load the kernels and their few modules on the other cores while this
    process goes on loading xarray, astropy and dask.array and builds the graph.
    Optional packages the run never uses are not loaded
    (:func:`stcal_dask.optional_imports.skipping_optional_imports`)."""
    from stcal_dask.optional_imports import skipping_optional_imports

    with skipping_optional_imports():
        import distributed  # noqa: F401

        from stcal_dask.engine import cluster  # noqa: F401
    if not lean:
        _import_for_graph()


def _import_for_graph() -> None:
    """What the graph needs besides distributed (what :func:`_import_for_workers` with ``lean``
    leaves out), without the unused optional packages."""
    from stcal_dask.optional_imports import skipping_optional_imports

    with skipping_optional_imports():
        from stcal_dask.engine import dataflow  # noqa: F401  (dask.array, xarray)
        from stcal_dask.io import fits_io, naming  # noqa: F401  (astropy.io.fits)


def _client(args):
    from stcal_dask.engine.cluster import get_client

    return get_client(**_client_kwargs(args))


def _planned_threads(args, background) -> int:
    """Threads the computation will run on: known in advance unless the cluster is external."""
    from stcal_dask.engine.cluster import LOCAL_SCHEDULERS, local_layout, resolve_scheduler

    address = resolve_scheduler(getattr(args, "scheduler", None))
    if address in LOCAL_SCHEDULERS:
        return max(1, os.cpu_count() or 1)
    if not address:
        n, t = local_layout(getattr(args, "n_workers", None),
                            getattr(args, "threads_per_worker", None))
        return n * t
    return _n_workers(background.client())


def _run_pending(args, pendings, extra=()):
    """Compute the writes (and extra collections) in one graph; abort every write on failure."""
    from stcal_dask.engine.cluster import compute

    try:
        results = compute(*[p.delayed for p in pendings], *extra, quiet=args.quiet)
    except BaseException as exc:
        for p in pendings:
            p.abort()
        if type(exc).__name__ == "KilledWorker":  # distributed.scheduler.KilledWorker
            limit = getattr(args, "memory_limit", None)
            raise UserInputError(
                "dask workers died repeatedly while computing (most likely out of memory"
                + (f" with --memory-limit {limit} per worker" if limit else "")
                + "); give each worker more memory (--memory-limit, fewer --n-workers) or use a "
                "smaller --tile; no output was written"
            ) from None
        raise
    return results[len(pendings) :]


def _cmd_simulate(args) -> int:
    from stcal_dask.io import write_dataset_atomic, write_ramp_fits
    from stcal_dask.sim.lazy import simulate_ramp_lazy
    from stcal_dask.sim.ramp import SimulationConfig

    nints, ngroups, ny, nx = _parse_shape(args.shape)
    overrides = {"zeroframe": bool(args.zeroframe)}
    if args.cr_rate is not None:
        if not 0 <= args.cr_rate <= 1:
            raise UserInputError(f"--cr-rate must be in [0, 1], got {args.cr_rate}")
        overrides["cr_rate"] = float(args.cr_rate)
    cfg = SimulationConfig(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=args.seed,
                           **overrides)
    out = args.output
    tile = _parse_tile(args.tile)
    if not (_is_fits(out) or str(out).rstrip("/").lower().endswith(".zarr")):
        raise UserInputError(f"simulate output must end in .zarr or .fits, got {out!r}")
    if _is_fits(out):
        ds = simulate_ramp_lazy(cfg, tile=tile)
        pending = write_ramp_fits(ds, out, overwrite=args.overwrite, references=True,
                                  compute=False)
    else:
        ds = simulate_ramp_lazy(cfg, tile=tile)
        pending = write_dataset_atomic(ds, out, overwrite=args.overwrite, compute=False)
    t0 = time.perf_counter()
    with _client(args):
        _run_pending(args, [pending])
    written = [str(pending.path)]
    if _is_fits(out):
        from stcal_dask.io import reference_paths

        written += [str(p) for p in reference_paths(pending.path)]
    _say(args, *(f"wrote {w}" for w in written),
         f"simulated {nints}x{ngroups}x{ny}x{nx} (seed {args.seed}) in "
         f"{time.perf_counter() - t0:.1f} s")
    return 0


def _references(args, path: str):
    """Gain / readnoise files for a FITS ramp: the options, else X_gain/X_readnoise beside it."""
    from stcal_dask.io import reference_paths

    gain, rnoise = args.gain, args.readnoise
    if gain is None or rnoise is None:
        dg, dr = reference_paths(path)
        gain = gain or (str(dg) if dg.exists() else None)
        rnoise = rnoise or (str(dr) if dr.exists() else None)
    if gain is None or rnoise is None:
        missing = "--gain" if gain is None else "--readnoise"
        raise UserInputError(
            f"a FITS ramp input needs {missing} (reference file; default X_gain.fits / "
            f"X_readnoise.fits beside {Path(path).name} not found)"
        )
    return gain, rnoise


def _open_input(args, path: str, tile):
    from stcal_dask.io import open_ramp, open_ramp_fits

    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"input {path} does not exist")
    if _is_fits(path):
        gain, rnoise = _references(args, path)
        return open_ramp_fits(str(p), gain, rnoise, chunks=tile if tile else "auto")
    if _is_zarr(path) or p.is_dir():
        if args.gain is not None or args.readnoise is not None:
            raise UserInputError(
                "--gain/--readnoise apply to FITS ramps only; a zarr ramp store carries its own "
                "gain and readnoise arrays"
            )
        return open_ramp(str(p), chunks=tile)
    raise UserInputError(f"input {path} is neither a zarr ramp store nor a FITS (.fits) ramp")


def _n_workers(client) -> int:
    if client is None:
        return max(1, os.cpu_count() or 1)
    try:
        workers = client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except Exception:
        return 1


def _retile(args, ramp, n_threads: int):
    """Smaller tiles when the input's would leave workers idle (FITS: reopened with them)."""
    from stcal_dask.engine import dataflow

    nints, ngroups, ny, nx = ramp["sci"].shape
    want = dataflow.auto_tile(nints, ngroups, ny, nx, n_workers=n_threads)
    have = _tile_of(ramp)
    if want[0] * want[1] >= have[0] * have[1]:
        return ramp
    if _is_fits(args.input):
        return _open_input(args, args.input, want)
    return dataflow.prepare_ramp(ramp, tile=want)


def _cmd_ingest(args) -> int:
    from stcal_dask.io import output_name, write_ramp

    if not _is_fits(args.input):
        raise UserInputError(f"ingest reads a JWST FITS ramp (.fits), got {args.input!r}")
    tile = _parse_tile(args.tile)
    ramp = _open_input(args, args.input, tile)
    out = args.output or output_name(Path(args.input).name, "ramp", ext=".zarr", output_dir=".")
    pending = write_ramp(ramp, out, overwrite=args.overwrite, tile=tile or _tile_of(ramp),
                         compute=False)
    with _client(args):
        _run_pending(args, [pending])
    _say(args, f"wrote {pending.path}")
    return 0


def _tile_of(ramp) -> tuple[int, int]:
    sci = ramp["sci"].data
    return (max(sci.chunks[2]), max(sci.chunks[3]))


def _formats(args, path: str) -> tuple[str, ...]:
    fmt = args.format or ("fits" if _is_fits(path) else "zarr")
    return ("zarr", "fits") if fmt == "both" else (fmt,)


def _outputs(args, path: str, suffixes, formats) -> dict[tuple[str, str], Path]:
    from stcal_dask.io import output_name
    from stcal_dask.io.atomic import check_target

    out_dir = Path(args.output_dir).expanduser()
    if not out_dir.is_dir():
        raise UserInputError(f"--output-dir {args.output_dir} does not exist")
    name = Path(path.rstrip("/")).name
    targets = {}
    for suffix in suffixes:
        for fmt in formats:
            target = output_name(name, suffix, ext="." + fmt, output_dir=out_dir)
            if target.resolve() == Path(path).expanduser().resolve():
                raise UserInputError(f"output {target} would overwrite the input")
            if (target.exists() or target.is_symlink()) and not args.overwrite:
                raise UserInputError(
                    f"output {target} already exists (use --overwrite to replace it)"
                )
            targets[(suffix, fmt)] = check_target(target, overwrite=args.overwrite)
    return targets


def _write(pendings, kind: str, fmt: str, ds, target: Path, args, header_from):
    from stcal_dask.io import (
        write_dataset_atomic,
        write_fitopt_fits,
        write_jump_fits,
        write_ramp,
        write_rate_fits,
        write_rateints_fits,
    )

    if fmt == "zarr":
        if kind == "jump":
            ds = ds.drop_vars([v for v in ds.data_vars if v not in _RAMP_VARS], errors="ignore")
            p = write_ramp(ds, target, overwrite=args.overwrite, tile=_tile_of(ds), compute=False)
        else:
            p = write_dataset_atomic(ds, target, overwrite=args.overwrite, compute=False)
    else:
        writer = {
            "rate": write_rate_fits,
            "rateints": write_rateints_fits,
            "fitopt": write_fitopt_fits,
            "jump": write_jump_fits,
        }[kind]
        p = writer(ds, target, header_from=header_from, overwrite=args.overwrite, compute=False)
    pendings.append(p)


_RAMP_VARS = ("sci", "groupdq", "pixeldq", "gain", "readnoise", "zeroframe",
              "average_dark_current")


@contextlib.contextmanager
def _materialized_jump(args, jumped, out_dir: Path):
    """Write the jump-flagged ramp to a temporary zarr store and reopen it (used with
    ``--save-opt``, whose fitopt sizes depend on the flagged groupdq), removed at exit."""
    from stcal_dask.io import open_ramp, write_ramp
    from stcal_dask.io.atomic import remove_path

    tmp = out_dir / f".stcal-dask-jump-{uuid.uuid4().hex[:12]}.zarr"
    try:
        ds = jumped.drop_vars([v for v in jumped.data_vars if v not in _RAMP_VARS])
        pending = write_ramp(ds, tmp, tile=_tile_of(jumped), compute=False)
        count = _run_pending(args, [pending], extra=(jumped["primary_jumps"].data,))[0]
        reopened = open_ramp(tmp)
        reopened.attrs["jump_parameters"] = jumped.attrs.get("jump_parameters", "{}")
        reopened.attrs["source"] = jumped.attrs.get("source", str(tmp))
        yield reopened, int(count)
    finally:
        remove_path(tmp)


def _cmd_process(args) -> int:
    from stcal_dask.engine.cluster import BackgroundClient

    step = args.process
    tile = _parse_tile(args.tile)
    jparams = step_params("jump", args) if step in ("jump", "run") else None
    save_opt = bool(getattr(args, "save_opt", False)) or None
    rparams = (
        step_params("rampfit", args, save_opt=save_opt) if step in ("rampfit", "run") else None
    )
    if not Path(args.input).expanduser().exists():
        raise UserInputError(f"input {args.input} does not exist")
    if _is_fits(args.input):
        _references(args, args.input)  # missing reference files: before any cluster starts
    header_from = str(Path(args.input).expanduser()) if _is_fits(args.input) else None
    formats = _formats(args, args.input)
    suffixes = []
    if step == "jump" or getattr(args, "save_jump", False):
        suffixes.append("jump")
    if step in ("rampfit", "run"):
        suffixes += ["rate", "rateints"]
        if rparams.save_opt:
            suffixes.append("fitopt")
    targets = _outputs(args, args.input, suffixes, formats)
    out_dir = Path(args.output_dir).expanduser()

    t0 = time.perf_counter()
    client_kwargs = _client_kwargs(args, fork=True)
    lean = _is_fits(args.input) and "zarr" not in formats and not (rparams and rparams.save_opt)
    if lean:
        from stcal_dask.engine.cluster import WORKER_IMPORTS_FITS

        # a FITS-only run: the workers need neither zarr nor xarray (nor pandas, astropy)
        client_kwargs["warm_imports"] = WORKER_IMPORTS_FITS
    fork = client_kwargs.get("start_method") == "fork"
    if fork:
        _import_for_workers(lean=lean)
    # the cluster starts (spawned workers: and loads the libraries) and its workers load the
    # compiled kernels while this process opens and validates the input and builds the graph
    with BackgroundClient(**client_kwargs) as background:
        if fork and lean:
            _import_for_graph()  # the workers are forked: this thread may import again
        from stcal_dask.engine import dataflow

        ramp = _open_input(args, args.input, tile)
        if tile is None:
            ramp = _retile(args, ramp, _planned_threads(args, background))
        jumped = dataflow.detect_jumps(ramp, jparams) if jparams is not None else None
        pendings: list = []
        count = None
        with contextlib.ExitStack() as stack:
            fit_input = jumped if jumped is not None else ramp
            if rparams is not None and rparams.save_opt and jumped is not None:
                _wait_for_cluster(args, background)
                fit_input, count = stack.enter_context(_materialized_jump(args, jumped, out_dir))
            extra = []
            try:
                if "jump" in suffixes:
                    for fmt in formats:
                        _write(pendings, "jump", fmt, jumped, targets[("jump", fmt)], args,
                               header_from)
                if rparams is not None:
                    products = dataflow.fit_ramps(fit_input, rparams)
                    for kind, ds in zip(("rate", "rateints", "fitopt"), products, strict=False):
                        for fmt in formats:
                            _write(pendings, kind, fmt, ds, targets[(kind, fmt)], args,
                                   header_from)
                    extra.append(dataflow.all_group0_saturated(ramp))
                if jumped is not None and count is None:
                    extra.append(jumped["primary_jumps"].data)
                # the graph was built while the workers loaded their kernels
                _wait_for_cluster(args, background)
            except BaseException:
                for p in pendings:
                    p.abort()
                raise
            results = list(_run_pending(args, pendings, extra=extra))
    elapsed = time.perf_counter() - t0
    if rparams is not None:
        all_sat = bool(results.pop(0))
        if all_sat:
            for (kind, _fmt), target in targets.items():
                if kind in ("rate", "rateints", "fitopt"):
                    from stcal_dask.io.atomic import remove_path

                    remove_path(target)
            print(
                f"{PROG}: warning: group 0 is saturated in every pixel of every integration; "
                "no rate products written (stcal's ramp fitting returns none)",
                file=sys.stderr,
            )
            targets = {k: v for k, v in targets.items() if k[0] not in ("rate", "rateints",
                                                                         "fitopt")}
    if jumped is not None:
        if count is None:
            count = int(results.pop(0))
        _say(args, "jump: " + ("exposure skipped (too few usable groups), no jumps flagged"
                               if count < 0 else f"{count} primary jumps flagged"))
    _say(args, *(f"wrote {t}" for t in targets.values()), f"done in {elapsed:.1f} s")
    return 0


def _wait_for_cluster(args, background):
    """The started cluster's client (None for dask's local schedulers), announced once."""
    client = background.client()
    if client is not None and not args.quiet and not getattr(background, "_announced", False):
        _say(args, f"dask cluster: {_describe(client)}")
        background._announced = True
    return client


def _describe(client) -> str:
    try:
        info = client.scheduler_info()
        workers = info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        mem = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
        return (
            f"{client.scheduler.address}, {len(workers)} workers, {threads} threads, "
            f"{mem / 2**30:.1f} GiB memory limit"
        )
    except Exception:
        return str(client)


def _cmd_demo(args) -> int:
    from stcal_dask.cli.demo import run_demo

    return run_demo(
        size=args.size,
        nints=args.nints,
        ngroups=args.ngroups,
        seed=args.seed,
        output_dir=args.output_dir,
        formats=("zarr", "fits") if args.format == "both" else (args.format,),
        scheduler=args.scheduler,
        n_workers=args.n_workers,
        memory_limit=args.memory_limit,
        tile=_parse_tile(args.tile),
        overwrite=args.overwrite,
        quiet=args.quiet,
        start_method="fork" if _can_fork() else None,
    )


def _cmd_mosaic(args) -> int:
    try:
        from stcal_dask.mosaic import wcs as mosaic
    except ImportError as exc:  # pragma: no cover - the module ships with the package
        raise UserInputError(f"mosaic-wcs is not available ({exc})") from None
    parser = _Parser(prog=PROG, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    mosaic.add_parser(sub)
    margs = parser.parse_args(["mosaic-wcs", *args.mosaic_args])
    return int(margs.func(margs) or 0)


# ------------------------------------------------------------------------------------------------
# entry point


def main(argv: list[str] | None = None) -> int:
    """Run ``stcal-dask``; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser(help_texts=any(a in ("-h", "--help") for a in argv))
        args = parser.parse_args(argv)
        if getattr(args, "memory_limit", None) is not None:
            from stcal_dask.engine.cluster import parse_memory_limit

            parse_memory_limit(args.memory_limit)
        if getattr(args, "n_workers", None) is not None and args.n_workers < 1:
            raise UserInputError(f"--n-workers must be >= 1, got {args.n_workers}")
        return int(args.func(args) or 0)
    except UserInputError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def run() -> None:  # pragma: no cover - the console script; exits the process
    """Entry point of the ``stcal-dask`` console script: :func:`main`, then exit.

    Every output is committed (or removed) and every file closed when :func:`main` returns, so
    the interpreter's finalisation of the scientific stack (~0.5 s, more than some whole runs
    of a small exposure) is skipped: streams and logging handlers are flushed and the process
    exits with main's status.
    """
    rc = main()
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run()
