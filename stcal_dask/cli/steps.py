"""Running the steps on one input: what ``jump``, ``rampfit`` and ``run`` share.

:func:`process` plans the outputs and checks the input before any cluster starts
(:func:`plan`), starts the cluster in the background while this process opens the input and
builds the graph (:func:`build`), computes every output in one graph and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from stcal_dask.cli.common import (
    PROG,
    add_command,
    add_step_options,
    client_kwargs,
    compute,
    execution_options,
    io_options,
    is_fits,
    is_zarr,
    parse_tile,
    say,
    step_params,
    warn,
)
from stcal_dask.errors import UserInputError

__all__ = ["RAMP_VARS", "Plan", "add_step_command", "execute", "input_paths", "make_output_dir",
           "open_input", "plan", "process", "references", "remove_output_dir", "tile_of"]

RAMP_VARS = ("sci", "groupdq", "pixeldq", "gain", "readnoise", "zeroframe",
             "average_dark_current")
"""The variables of a ramp store (what a written ``X_jump.zarr`` keeps)."""

_FIT_KINDS = ("rate", "rateints", "fitopt")


class Plan(NamedTuple):
    """What a step run will do, decided before any cluster starts."""

    tile: tuple[int, int] | None
    """--tile (pixels), or None for automatic tiles."""
    jump: Any
    """:class:`~stcal_dask.kernels.jump.JumpParams`, or None when jumps are not detected."""
    rampfit: Any
    """:class:`~stcal_dask.kernels.ramp_fit.RampFitParams`, or None when ramps are not fitted."""
    formats: tuple[str, ...]
    """``("zarr",)``, ``("fits",)`` or both."""
    targets: dict[tuple[str, str], Path]
    """(kind, format) -> output path; kinds: jump, rate, rateints, fitopt."""
    header_from: str | None
    """The FITS input whose primary header the FITS products copy."""

    @property
    def lean(self) -> bool:
        """A FITS-only run without fitopt: the workers need no xarray, zarr or astropy."""
        return (self.header_from is not None and "zarr" not in self.formats
                and not (self.rampfit is not None and self.rampfit.save_opt))


def add_step_command(subparsers, name: str, *, steps: tuple[str, ...], summary: str,
                     description: str, examples, extra_outputs: dict[str, str], func,
                     many: bool = False):
    """Register a command that runs ``steps`` (``"jump"``, ``"rampfit"``) on one input.

    ``extra_outputs`` maps a flag (``"--save-opt"``) to its help; the options of every step's
    parameters are generated from its dataclass. Other arguments: see
    :func:`~stcal_dask.cli.common.add_command`.
    """
    p = add_command(subparsers, name, summary=summary, description=description,
                    examples=examples, func=func)
    if many:
        p.add_argument("inputs", metavar="INPUT", nargs="*",
                       help="zarr ramp stores or X_ramp.fits files, glob patterns, directories")
    else:
        p.add_argument("input", metavar="INPUT", help="zarr ramp store or X_ramp.fits")
    io_options(p)
    for flag, help_ in extra_outputs.items():
        p.add_argument(flag, action="store_true", help=help_)
    execution_options(p)
    if "jump" in steps:
        p.add_argument(
            "--instrument-defaults", action="store_true",
            help="take the JWST jump parameter-reference defaults for the input's INSTRUME "
                 "keyword (snowballs for NIRCAM, NIRISS and NIRSPEC, showers for MIRI); "
                 "--jump.* options still win")
    for step in steps:
        add_step_options(p, step)
    return p


def input_instrument(path: str):
    """The INSTRUME keyword of a FITS ramp's primary header or a zarr store's attrs (None)."""
    try:
        if is_fits(path):
            from astropy.io import fits

            return fits.getheader(Path(path).expanduser(), 0).get("INSTRUME")
        import zarr

        return zarr.open_group(str(Path(path).expanduser()), mode="r").attrs.get("INSTRUME")
    except (OSError, ValueError, KeyError) as exc:
        raise UserInputError(f"input {path}: cannot read its INSTRUME keyword ({exc})") from None


# ------------------------------------------------------------------------------------------------
# inputs


def references(args: argparse.Namespace, path: str) -> tuple[str, str]:
    """Gain / readnoise files for a FITS ramp: the options, else X_gain/X_readnoise beside it."""
    from stcal_dask.io.naming import reference_paths

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


def input_paths(args: argparse.Namespace) -> list[str]:
    """Every file the run reads: ``args.input`` and, for a FITS ramp, its reference files
    (outputs may never replace any of them)."""
    if not Path(args.input).expanduser().exists():
        raise UserInputError(f"input {args.input} does not exist")
    return [args.input, *(references(args, args.input) if is_fits(args.input) else ())]


def open_input(args: argparse.Namespace, path: str, tile):
    """The input ramp as a lazy Dataset: a zarr ramp store, or a FITS ramp with its references."""
    from stcal_dask.io import open_ramp, open_ramp_fits

    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"input {path} does not exist")
    if is_fits(path):
        gain, rnoise = references(args, path)
        return open_ramp_fits(str(p), gain, rnoise, chunks=tile if tile else "auto")
    if is_zarr(path) or p.is_dir():
        if args.gain is not None or args.readnoise is not None:
            raise UserInputError(
                "--gain/--readnoise apply to FITS ramps only; a zarr ramp store carries its own "
                "gain and readnoise arrays"
            )
        return open_ramp(str(p), chunks=tile)
    raise UserInputError(f"input {path} is neither a zarr ramp store nor a FITS (.fits) ramp")


def tile_of(ramp) -> tuple[int, int]:
    """The (ny, nx) tile of a ramp Dataset (its largest chunk)."""
    sci = ramp["sci"].data
    return (max(sci.chunks[2]), max(sci.chunks[3]))


TILES_PER_THREAD = 4
"""Automatic tiles per thread of a single exposure's run (:func:`~stcal_dask.engine.dataflow.
auto_tile`); a batch with several exposures in flight sets ``args.tiles_per_thread`` lower."""


def _retile(args, ramp, n_threads: int):
    """Smaller tiles when the input's would leave workers idle (FITS: reopened with them);
    ``args.tiles_per_thread`` tiles per thread (default :data:`TILES_PER_THREAD`). With
    ``args.frame_budget`` (bytes, set by a batch) the whole frame is one tile when its working
    memory fits that budget."""
    from stcal_dask.engine import dataflow
    from stcal_dask.engine.datamodel import WORKING_MEMORY_FACTOR, ramp_bytes_per_pixel

    nints, ngroups, ny, nx = ramp["sci"].shape
    have = tile_of(ramp)
    budget = getattr(args, "frame_budget", None)
    if budget and WORKING_MEMORY_FACTOR * ramp_bytes_per_pixel(nints, ngroups) * ny * nx <= budget:
        want = (ny, nx)  # a batch's exposure as one whole-frame tile (cli.batch.frame_budget)
        if have == want:
            return ramp
    else:
        per_thread = getattr(args, "tiles_per_thread", None) or TILES_PER_THREAD
        want = dataflow.auto_tile(nints, ngroups, ny, nx, n_workers=n_threads,
                                  tiles_per_worker=per_thread)
        if want[0] * want[1] >= have[0] * have[1]:
            return ramp
    if is_fits(args.input):
        return open_input(args, args.input, want)
    return dataflow.prepare_ramp(ramp, tile=want)


# ------------------------------------------------------------------------------------------------
# outputs


def _outputs(args, out, suffixes, formats) -> dict[tuple[str, str], Path]:
    """Check and claim every output name (before anything is computed)."""
    from stcal_dask.io.naming import output_name

    out_dir = Path(args.output_dir).expanduser()
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise UserInputError(f"--output-dir {args.output_dir} is a file, not a directory")
    make_output_dir(out_dir)
    name = Path(args.input.rstrip("/")).name
    targets = {}
    for suffix in suffixes:
        for fmt in formats:
            target = output_name(name, suffix, ext="." + fmt, output_dir=out_dir)
            targets[(suffix, fmt)] = out.claim(target, overwrite=args.overwrite)
    return targets


def make_output_dir(out_dir: Path) -> bool:
    """Create ``out_dir`` (and its parents) when missing, as ``demo`` does; True if created.

    Raises
    ------
    UserInputError: it cannot be created (one line with the OS's reason).
    """
    if out_dir.is_dir():
        return False
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"--output-dir {out_dir} cannot be created ({exc.strerror or exc})"
        ) from None
    return True


def remove_output_dir(out_dir: Path) -> None:
    """Remove ``out_dir`` if it is empty (a failed run leaves no folder it created)."""
    with contextlib.suppress(OSError):
        out_dir.rmdir()


def plan(args: argparse.Namespace, step: str, out=None) -> Plan:
    """Parameters, outputs and input checks of ``step`` (``jump``, ``rampfit`` or ``run``);
    every user mistake found here is reported before a cluster starts. The output names are
    claimed in ``out`` (:class:`~stcal_dask.io.atomic.Outputs`); None: only checked (claimed
    and released at once; :func:`execute` claims them again)."""
    if out is None:
        from stcal_dask.io.atomic import atomic_outputs

        with atomic_outputs() as probe:
            return plan(args, step, probe)
    tile = parse_tile(args.tile)
    jparams = None
    if step in ("jump", "run"):
        defaults = None
        if getattr(args, "instrument_defaults", False):
            from stcal_dask.kernels.jump import instrument_jump_defaults

            if not Path(args.input).expanduser().exists():
                raise UserInputError(f"input {args.input} does not exist")

            defaults = instrument_jump_defaults(input_instrument(args.input))
        jparams = step_params("jump", args, defaults)
    save_opt = bool(getattr(args, "save_opt", False)) or None
    rparams = (
        step_params("rampfit", args, save_opt=save_opt) if step in ("rampfit", "run") else None
    )
    out.protect(input_paths(args))  # missing input or reference files: before any cluster
    header_from = str(Path(args.input).expanduser()) if is_fits(args.input) else None
    fmt = args.format or ("fits" if is_fits(args.input) else "zarr")
    formats = ("zarr", "fits") if fmt == "both" else (fmt,)
    suffixes = []
    if step == "jump" or getattr(args, "save_jump", False):
        suffixes.append("jump")
    if rparams is not None:
        suffixes += ["rate", "rateints"] + (["fitopt"] if rparams.save_opt else [])
    targets = _outputs(args, out, suffixes, formats)
    return Plan(tile, jparams, rparams, formats, targets, header_from)


def _write(out, kind: str, ds, plan_: Plan, args) -> None:
    """Prepare the writes of one product in every format (added to ``out``)."""
    from stcal_dask.io import (
        write_dataset_atomic,
        write_fitopt_fits,
        write_jump_fits,
        write_ramp,
        write_rate_fits,
        write_rateints_fits,
    )

    for fmt in plan_.formats:
        target = plan_.targets[(kind, fmt)]
        if fmt == "zarr" and kind == "jump":
            ds_ramp = ds.drop_vars([v for v in ds.data_vars if v not in RAMP_VARS],
                                   errors="ignore")
            p = write_ramp(ds_ramp, target, overwrite=args.overwrite, tile=tile_of(ds),
                           compute=False)
        elif fmt == "zarr":
            p = write_dataset_atomic(ds, target, overwrite=args.overwrite, compute=False)
        else:
            writer = {
                "rate": write_rate_fits,
                "rateints": write_rateints_fits,
                "fitopt": write_fitopt_fits,
                "jump": write_jump_fits,
            }[kind]
            p = writer(ds, target, header_from=plan_.header_from, overwrite=args.overwrite,
                       compute=False)
        out.add(p)


def _materialized_jump(args, jumped, out):
    """Write the jump-flagged ramp to a temporary zarr store (removed when ``out`` ends) and
    reopen it (used with ``--save-opt``, whose fitopt sizes depend on the flagged groupdq);
    returns the reopened ramp and the number of primary jumps."""
    from stcal_dask.io import open_ramp, write_ramp

    tmp = out.scratch(Path(args.output_dir).expanduser(), "stcal-dask-jump.zarr")
    ds = jumped.drop_vars([v for v in jumped.data_vars if v not in RAMP_VARS])
    pending = write_ramp(ds, tmp, tile=tile_of(jumped), compute=False)
    try:
        count = compute(args, pending.delayed, jumped["primary_jumps"].data)[1]
    except BaseException:
        pending.abort()
        raise
    reopened = open_ramp(tmp)
    reopened.attrs["jump_parameters"] = jumped.attrs.get("jump_parameters", "{}")
    reopened.attrs["source"] = jumped.attrs.get("source", str(tmp))
    return reopened, int(count)


# ------------------------------------------------------------------------------------------------
# the cluster


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
    client = background.client()
    if client is None:
        return max(1, os.cpu_count() or 1)
    try:
        workers = client.scheduler_info().get("workers", {})
        return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    except Exception:
        return 1


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


def _wait_for_cluster(args, background):
    """The started cluster's client (None for dask's local schedulers), announced once."""
    client = background.client()
    if client is not None and not args.quiet and not getattr(background, "_announced", False):
        say(args, f"dask cluster: {_describe(client)}")
        background._announced = True
    return client


def _ready_cluster(args, plan_: Plan, background, ramp):
    """:func:`_wait_for_cluster`, then the kernel variants this exposure's run uses beyond the
    usual run's (its lane medians, its jump path) compiled, once per machine and with a message
    (even with ``-q``, as the cluster's warm-up), or loaded, in every worker (in this process
    for dask's local schedulers): else they would be compiled in the first tiles, silently."""
    from stcal_dask.engine.cluster import compile_on_workers
    from stcal_dask.engine.warmup import ensure_compiled, exposure_kernels

    client = _wait_for_cluster(args, background)
    nints, ngroups = ramp["sci"].shape[:2]
    exposures = (exposure_kernels(nints, ngroups, plan_.jump, plan_.rampfit),)
    ready = background.__dict__.setdefault("_kernels_ready", set())  # (the exposures of a batch)
    if exposures[0] in ready:
        return client
    if client is None:
        ensure_compiled(exposures=exposures)
    else:
        compile_on_workers(client, exposures=exposures)
    ready.add(exposures[0])
    return client


# ------------------------------------------------------------------------------------------------
# the run


def _compute(args, plan_: Plan, background, out) -> tuple[list, int | None]:
    """Open the input, build the graph of every output (added to ``out``), compute it; returns
    the results of the extra collections (all-group-0-saturated flag when fitting, jump count
    when detecting) and the jump count when it was computed before (``--save-opt`` with
    jumps)."""
    from stcal_dask.engine import dataflow

    ramp = open_input(args, args.input, plan_.tile)
    if plan_.tile is None:
        ramp = _retile(args, ramp, _planned_threads(args, background))
    jumped = dataflow.detect_jumps(ramp, plan_.jump) if plan_.jump is not None else None
    count = None
    fit_input = jumped if jumped is not None else ramp
    if plan_.rampfit is not None and plan_.rampfit.save_opt and jumped is not None:
        _ready_cluster(args, plan_, background, ramp)
        fit_input, count = _materialized_jump(args, jumped, out)
    extra = []
    if ("jump", plan_.formats[0]) in plan_.targets:
        _write(out, "jump", jumped, plan_, args)
    if plan_.rampfit is not None:
        products = dataflow.fit_ramps(fit_input, plan_.rampfit)._asdict()
        for kind in _FIT_KINDS:
            if products[kind] is not None:
                _write(out, kind, products[kind], plan_, args)
        extra.append(dataflow.all_group0_saturated(ramp))
        extra.append(dataflow.all_nan(products["rate"]["sci"].data))
    if jumped is not None and count is None:
        extra.append(jumped["primary_jumps"].data)
    # the graph was built while the workers loaded their kernels
    _ready_cluster(args, plan_, background, ramp)
    writes = out.writes
    return compute(args, *writes, *extra)[len(writes):], count


def _drop_rate_products(out, targets: dict) -> dict:
    """Leave out the rate products (stcal returns none when every pixel's group 0 is
    saturated) and warn; returns the targets left."""
    for (kind, _fmt), target in targets.items():
        if kind in _FIT_KINDS:
            out.discard(target)
    print(
        f"{PROG}: warning: group 0 is saturated in every pixel of every integration; "
        "no rate products written (stcal's ramp fitting returns none)",
        file=sys.stderr,
    )
    return {k: v for k, v in targets.items() if k[0] not in _FIT_KINDS}


def process(args: argparse.Namespace, step: str) -> int:
    """Run ``step`` (``jump``, ``rampfit`` or ``run``) on ``args.input``; returns 0. The outputs
    appear together when everything is computed, or not at all; a folder ``--output-dir``
    created for the run is removed again if the run fails."""
    out_dir = Path(args.output_dir).expanduser()
    existed = out_dir.is_dir()
    try:
        return _process(args, step)
    except BaseException:
        if not existed:
            remove_output_dir(out_dir)
        raise


def _process(args: argparse.Namespace, step: str) -> int:
    from stcal_dask.engine.cluster import WORKER_IMPORTS_FITS, BackgroundClient
    from stcal_dask.engine.startup import import_for_graph, import_for_workers
    from stcal_dask.io.atomic import atomic_outputs

    t0 = time.perf_counter()
    with atomic_outputs() as out:
        plan_ = plan(args, step, out)
        kwargs = client_kwargs(args, fork=True)
        if plan_.lean:
            # a FITS-only run: the workers need neither zarr nor xarray (nor pandas, astropy)
            kwargs["warm_imports"] = WORKER_IMPORTS_FITS
        fork = kwargs.get("start_method") == "fork"
        if fork:
            import_for_workers(lean=plan_.lean)
        # the cluster starts (spawned workers: and loads the libraries) and its workers load the
        # compiled kernels while this process opens and validates the input and builds the graph
        with BackgroundClient(**kwargs) as background:
            if fork and plan_.lean:
                import_for_graph()  # the workers are forked: this thread may import again
            targets, count = execute(args, plan_, background, out)
    elapsed = time.perf_counter() - t0
    if plan_.jump is not None:
        say(args, "jump: " + ("exposure skipped (too few usable groups), no jumps flagged"
                              if count < 0 else f"{count} primary jumps flagged"))
    say(args, *(f"wrote {t}" for t in targets.values()), f"done in {elapsed:.1f} s")
    return 0


def execute(args: argparse.Namespace, plan_: Plan, background, out=None
            ) -> tuple[dict, int | None]:
    """Compute and commit every output of a planned run on the started cluster
    (``background``: a :class:`~stcal_dask.engine.cluster.BackgroundClient`).

    ``out``: the :class:`~stcal_dask.io.atomic.Outputs` the plan claimed its names in (the
    outputs are committed when its block ends); None: a block of its own around this run,
    claiming the plan's names first and committing them before returning.

    Returns the products written ((kind, format) -> path; no rate products when group 0 is
    saturated everywhere, as stcal) and the primary-jump count (None without jump detection,
    negative when the exposure was skipped). Safe to call from several threads at once on one
    cluster (the batch of ``run``), each with its own ``args`` and plan.
    """
    if out is None:
        from stcal_dask.io.atomic import atomic_outputs

        with atomic_outputs(inputs=input_paths(args)) as own:
            for target in plan_.targets.values():
                own.claim(target, overwrite=args.overwrite)
            return execute(args, plan_, background, own)
    results, count = _compute(args, plan_, background, out)
    targets = plan_.targets
    if plan_.rampfit is not None:
        all_saturated, all_nan = bool(results.pop(0)), bool(results.pop(0))
        if all_saturated:
            targets = _drop_rate_products(out, targets)
        elif all_nan:
            warn(f"the rate of {args.input} is NaN in every pixel (no usable gain, readnoise or "
                 "group anywhere?); the products were written")
    if plan_.jump is not None and count is None:
        count = int(results.pop(0))
    return targets, count
