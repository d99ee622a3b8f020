"""Many exposures through one cluster: ``stcal-dask run INPUT...``.

* **Inputs**: paths, glob patterns (expanded here, so quoting them works too), directories (a
  zarr store is one input; another directory contributes its ``*_ramp.fits`` files and ``*.zarr``
  stores) and ``--inputs-from FILE`` (one path per line; blank lines and ``#`` comments
  ignored). References: ``--gain``/``--readnoise`` shared by every FITS input, else each input's
  own ``X_gain.fits``/``X_readnoise.fits`` beside it.
* **Pipelining**: one cluster for the whole batch; up to ``--max-in-flight`` exposures (default:
  one more than the embedded LocalCluster's threads, 2 on an external cluster; see
  :func:`in_flight`) are computed at once, each in its own graph, so the next exposure's reads
  overlap the current one's compute and writes while memory stays bounded whatever the batch size.
  Each exposure's graph has a lower scheduling priority than the one started before it: the oldest
  exposure in flight takes every thread it can use and finishes as early as it can, and the next
  one only fills the threads it leaves idle (its frame-wide reductions, its last tiles and writes),
  so exposures complete one after another at the cluster's throughput instead of together. With
  more exposures in flight than threads, an exposure whose whole frame fits its share of the memory
  is one tile (:func:`frame_budget`): no halo windows, a quarter of the tasks; else it is cut into
  tiles as a single run's.
* **Isolation**: an input that cannot be planned (unreadable, wrong shape, missing keyword or
  reference) or whose computation fails is reported in one line and the others go on; the exit
  status is 1 when any failed; a summary table ends the run, ``--report FILE`` writes it as JSON.
* **Resume**: when an exposure's products are all committed, a completion record
  (``X_complete.json`` beside them, see :func:`record_path`) is written last, atomically: the
  input's size and modification time (``--checksum``: its SHA-256, and the references'), the
  step parameters and the products. A re-run skips an exposure whose record matches; a changed
  input or parameter, or a missing product, re-runs it (its record is removed first, so an
  interrupted re-run never leaves an old record beside new products); ``--overwrite`` re-runs
  all. Products without a matching record are incomplete and are replaced.
* **Interruption**: SIGINT or SIGTERM stops the batch: exposures not started are not started,
  the ones in flight are aborted (their temporaries removed, no record written), committed ones
  stay; exit status 130 (SIGINT) or 143 (SIGTERM). A worker lost mid-batch has its tasks re-run
  by distributed; the products do not depend on where a tile ran.
"""

from __future__ import annotations

import argparse
import copy
import glob
import hashlib
import json
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stcal_dask.cli.common import PROG, client_kwargs, is_fits, is_zarr
from stcal_dask.errors import Terminated, UserInputError, signalled

__all__ = ["Outcome", "expand_inputs", "frame_budget", "in_flight", "is_batch", "local_threads",
           "record_path", "run_batch"]

RECORD_VERSION = 1
BATCH_TILES_PER_THREAD = 2
"""Automatic tiles per thread of each exposure of a batch with several exposures in flight but
no more than the cluster's threads."""
EXTERNAL_IN_FLIGHT = 2
"""Default ``--max-in-flight`` on an external cluster (``--scheduler``) or dask's local
scheduler, whose threads are not known before the batch starts."""
_GLOB_CHARS = set("*?[")


@dataclass
class Outcome:
    """What happened to one input of a batch."""

    input: str
    status: str = "pending"
    """``done``, ``skipped`` (complete from an earlier run), ``failed`` or ``interrupted``."""
    primary_jumps: int | None = None
    seconds: float | None = None
    """Wall time of this exposure's own work (exposures in flight overlap)."""
    started: float | None = None
    """Seconds from the batch's start to the start of this exposure's work."""
    finished: float | None = None
    """Seconds from the batch's start to this exposure's end (its completion record written);
    exposures in flight at once have overlapping [started, finished] intervals."""
    reason: str = ""
    products: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# inputs


def is_batch(args: argparse.Namespace) -> bool:
    """Whether ``run``'s arguments name a batch (several inputs, a pattern, a directory of
    exposures, ``--inputs-from`` or ``--report``) rather than one exposure."""
    inputs = list(args.inputs)
    if args.inputs_from or args.report or len(inputs) != 1:
        return True
    only = inputs[0]
    p = Path(only).expanduser()
    if not p.exists() and _GLOB_CHARS & set(only):
        return True
    return p.is_dir() and not _is_store(p)


def _is_store(p: Path) -> bool:
    return is_zarr(str(p)) or (p / "zarr.json").exists() or (p / ".zgroup").exists()


def _from_dir(d: Path) -> list[str]:
    found = []
    for child in sorted(d.iterdir()):
        name = child.name
        if name.startswith("."):
            continue
        if child.is_dir() and _is_store(child):
            found.append(str(child))
        elif child.is_file() and name.lower().endswith(("_ramp.fits", "_uncal.fits")):
            found.append(str(child))
    return found


def expand_inputs(inputs, inputs_from: str | None) -> tuple[list[str], list[Outcome]]:
    """The batch's inputs in order (duplicates dropped) and the outcomes of entries that name
    nothing (a missing path, a pattern or directory with no exposure): those fail alone."""
    entries = list(inputs)
    if inputs_from:
        src = Path(inputs_from).expanduser()
        try:
            text = src.read_text()
        except OSError as exc:
            raise UserInputError(
                f"--inputs-from {inputs_from}: cannot read ({exc.strerror or exc})"
            ) from None
        base = src.parent
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line).expanduser()
                entries.append(str(p if p.is_absolute() else base / p))
    if not entries:
        raise UserInputError("run needs at least one INPUT (or --inputs-from FILE)")
    found: list[str] = []
    bad: list[Outcome] = []
    for entry in entries:
        p = Path(entry).expanduser()
        if p.exists():
            got = _from_dir(p) if p.is_dir() and not _is_store(p) else [str(p)]
            if not got:
                bad.append(Outcome(entry, "failed", reason=f"directory {entry} holds no "
                                   "*_ramp.fits file or zarr ramp store"))
        elif _GLOB_CHARS & set(entry):
            got = sorted(glob.glob(str(p)))
            if not got:
                bad.append(Outcome(entry, "failed", reason=f"{entry} matches no file"))
        else:
            bad.append(Outcome(entry, "failed", reason=f"input {entry} does not exist"))
            got = []
        found.extend(got)
    seen: set[str] = set()
    unique = []
    for f in found:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, bad


# ------------------------------------------------------------------------------------------------
# completion records


def record_path(args: argparse.Namespace, path: str) -> Path:
    """The completion record of ``path``'s products: ``X_complete.json`` in the output folder."""
    from stcal_dask.io.naming import output_name

    return output_name(Path(path.rstrip("/")).name, "complete", ext=".json",
                       output_dir=Path(args.output_dir).expanduser())


def _file_stamp(path: Path, checksum: bool) -> dict:
    """Size and mtime of a file, or of every file of a store (directory), and their SHA-256 when
    ``checksum``."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256() if checksum else None
    size = mtime = 0
    for f in files:
        st = f.stat()
        size += st.st_size
        mtime = max(mtime, st.st_mtime_ns)
        if h is not None:
            h.update(str(f.relative_to(path) if f != path else "").encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):  # noqa: B023
                    h.update(block)
    stamp = {"path": str(path.resolve()), "size": size, "mtime_ns": mtime, "files": len(files)}
    if h is not None:
        stamp["sha256"] = h.hexdigest()
    return stamp


def _signature(args: argparse.Namespace, plan_) -> dict:
    """What the products depend on besides the input's bytes: parameters and references."""
    from stcal_dask import __version__
    from stcal_dask.cli.steps import references

    sig = {
        "stcal_dask": __version__,
        "jump": asdict(plan_.jump) if plan_.jump is not None else None,
        "rampfit": asdict(plan_.rampfit) if plan_.rampfit is not None else None,
        "formats": list(plan_.formats),
        "products": sorted(f"{k}.{f}" for k, f in plan_.targets),
    }
    if is_fits(args.input):
        gain, rnoise = references(args, args.input)
        sig["references"] = [_file_stamp(Path(r).expanduser(), args.checksum)
                             for r in (gain, rnoise)]
    return json.loads(json.dumps(sig, default=str))


def _expected(args: argparse.Namespace, plan_) -> dict:
    return {"version": RECORD_VERSION,
            "input": _file_stamp(Path(args.input).expanduser(), args.checksum),
            "signature": _signature(args, plan_)}


def _is_complete(record: Path, expected: dict) -> bool:
    try:
        got = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(got, dict):
        return False
    if any(got.get(k) != v for k, v in expected.items()):
        return False
    return all(Path(p).exists() for p in got.get("products", []))


def _from_record(path: str, record: Path, expected: dict) -> Outcome:
    """The outcome of an exposure whose run was stopped by an interrupt before its result was
    kept: "done" (with the record's figures) when its completion record matches, else
    "interrupted" with nothing committed."""
    if _is_complete(record, expected):
        got = json.loads(record.read_text())
        return Outcome(path, "done", primary_jumps=got.get("primary_jumps"),
                       seconds=got.get("seconds"), products=list(got.get("products", [])))
    return Outcome(path, "interrupted", reason="stopped; nothing committed")


def _write_record(record: Path, expected: dict, outcome: Outcome) -> None:
    """Write the completion record through the one output protocol
    (:func:`~stcal_dask.io.atomic.atomic_outputs`: it appears whole or not at all), its data
    and the folder's entry synced to disk, so a record never outlives its products' bytes."""
    from stcal_dask.io.atomic import atomic_outputs

    body = {**expected, "products": outcome.products, "primary_jumps": outcome.primary_jumps,
            "seconds": outcome.seconds, "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_outputs() as out:
        partial = out.reserve(record, overwrite=True, what="completion record")
        with open(partial, "w") as fh:
            json.dump(body, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
    fd = os.open(record.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------------------------
# the batch


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, UserInputError) else f"{type(exc).__name__}: {text}"


def local_threads(args: argparse.Namespace) -> int | None:
    """Threads of the embedded LocalCluster ``args`` start (None: an external cluster or dask's
    local scheduler)."""
    from stcal_dask.engine.cluster import local_layout, resolve_scheduler

    if resolve_scheduler(getattr(args, "scheduler", None)):
        return None
    n, t = local_layout(getattr(args, "n_workers", None),
                        getattr(args, "threads_per_worker", None))
    return n * t


def in_flight(args: argparse.Namespace) -> int:
    """``--max-in-flight``, by default one more than the threads of the embedded LocalCluster
    (3 on 2 cores: every thread has an exposure of its own and the next one's reads are under
    way), else :data:`EXTERNAL_IN_FLIGHT`."""
    if args.max_in_flight is not None:
        return int(args.max_in_flight)
    threads = local_threads(args)
    return EXTERNAL_IN_FLIGHT if threads is None else threads + 1


def frame_budget(args: argparse.Namespace, n_in_flight: int) -> int | None:
    """Working memory (bytes) an exposure of the batch may take as one whole-frame tile, or None
    when its exposures are tiled.

    With more exposures in flight than the LocalCluster has threads, every thread can work on
    an exposure of its own: a whole frame per task then needs no halo windows (the jump's
    neighbour flagging reads across tile edges), no frame-wide reductions over tiles and a
    quarter of the tasks, for the same products (they never depend on the tiling); about a
    fifth less time per exposure than 2 tiles per thread on 2 cores. The budget is the
    cluster's memory (the workers' limits, else the machine's) shared by twice the exposures
    in flight; a frame whose working memory
    (:data:`~stcal_dask.engine.datamodel.WORKING_MEMORY_FACTOR` x its input bytes) exceeds it
    is tiled as before."""
    import psutil

    from stcal_dask.engine.cluster import local_layout, parse_memory_limit

    threads = local_threads(args)
    if threads is None or n_in_flight <= threads:
        return None
    limit = parse_memory_limit(getattr(args, "memory_limit", None))
    if isinstance(limit, int):
        n_workers, _ = local_layout(getattr(args, "n_workers", None),
                                    getattr(args, "threads_per_worker", None))
        total = limit * n_workers
    else:
        total = psutil.virtual_memory().total
    return int(total // (2 * n_in_flight))


def _prepare(args: argparse.Namespace, path: str, claimed: dict[str, str]):
    """(args of this input, its plan, its expected record), or an Outcome when it is skipped or
    cannot be planned."""
    from stcal_dask.cli.steps import plan

    a = copy.copy(args)
    a.input = path
    a.quiet = True
    if args.max_in_flight > 1:
        # automatic tiles (where the whole frame is not one): 2 per thread, not a single run's
        # 4 (half the tasks, whose fixed cost in the scheduler and the worker's event loop is a
        # fifth of a batch's CPU at 4); the next exposure's tiles fill the threads that one
        # exposure's last tiles leave idle
        a.tiles_per_thread = BATCH_TILES_PER_THREAD
    record = record_path(a, path)
    try:
        if not args.overwrite:
            # products without a matching record are incomplete: replaced
            a.overwrite = True
        plan_ = plan(a, "run")
        expected = _expected(a, plan_)
    except UserInputError as exc:
        return Outcome(path, "failed", reason=_one_line(exc))
    except OSError as exc:
        return Outcome(path, "failed", reason=f"{path}: {exc.strerror or exc}")
    for target in plan_.targets.values():
        other = claimed.get(str(target))
        if other is not None:
            return Outcome(path, "failed",
                           reason=f"output {target} is also the output of {other}")
    if not args.overwrite and _is_complete(record, expected):
        return Outcome(path, "skipped", reason="complete (same input and parameters)")
    for target in plan_.targets.values():
        claimed[str(target)] = path
    return a, plan_, expected, record


def _process(a, plan_, expected, record: Path, background, stop: threading.Event) -> Outcome:
    from stcal_dask.cli.steps import execute

    out = Outcome(a.input)
    if stop.is_set():
        out.status = "interrupted"
        return out
    t0 = time.perf_counter()
    _remove(record)  # whatever follows, an old record never vouches for new products
    try:
        targets, count = execute(a, plan_, background)
    except BaseException as exc:  # noqa: BLE001 - one exposure's failure stays its own
        out.seconds = time.perf_counter() - t0
        if stop.is_set() or signalled() is not None:  # (its commit refused after a signal)
            out.status, out.reason = "interrupted", "stopped while in flight; nothing committed"
            return out
        out.status, out.reason = "failed", _one_line(exc)
        if not isinstance(exc, Exception):
            raise
        return out
    out.seconds = time.perf_counter() - t0
    out.primary_jumps = count
    out.products = [str(t) for t in targets.values()]
    if stop.is_set() and not all(Path(p).exists() for p in out.products):
        out.status = "interrupted"
        return out
    _write_record(record, expected, out)
    out.status = "done"
    return out


def _timed(t0: float, *args) -> Outcome:
    """:func:`_process` with its start and end times (seconds since ``t0``) recorded."""
    started = time.perf_counter() - t0
    out = _process(*args)
    out.started, out.finished = started, time.perf_counter() - t0
    return out


def _say(args, line: str) -> None:
    if not args.quiet:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)


def _summary(outcomes: list[Outcome]) -> str:
    """The table printed at the end (input, status, primary jumps, seconds), then the reason of
    every input that failed."""
    rows = [("input", "status", "primary jumps", "seconds")]
    for o in outcomes:
        rows.append((o.input, o.status,
                     "" if o.primary_jumps is None else str(o.primary_jumps),
                     "" if o.seconds is None else f"{o.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
             for r in rows]
    lines += [f"{o.input}: {o.reason}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)


def run_batch(args: argparse.Namespace) -> int:
    """Run jump detection + ramp fitting on every input of a batch; returns the exit status
    (0 all done or skipped, 1 any failed, 130/143 interrupted)."""
    import dask

    from stcal_dask.cli.steps import make_output_dir
    from stcal_dask.engine.cluster import WORKER_IMPORTS_FITS, BackgroundClient
    from stcal_dask.engine.startup import freeze_loaded, import_for_graph, import_for_workers

    out_dir = Path(args.output_dir).expanduser()
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():
        raise UserInputError(f"--output-dir {args.output_dir} is a file, not a directory")
    if args.max_in_flight is not None and args.max_in_flight < 1:
        raise UserInputError(f"--max-in-flight must be >= 1, got {args.max_in_flight}")
    args.max_in_flight = in_flight(args)
    # once for the batch; every exposure's arguments are a copy of these (_prepare)
    args.frame_budget = frame_budget(args, args.max_in_flight)
    paths, outcomes = expand_inputs(args.inputs, args.inputs_from)
    make_output_dir(out_dir)  # as a single run does
    for o in outcomes:
        _say(args, f"{o.input}: failed: {o.reason}")
    t0 = time.perf_counter()
    claimed: dict[str, str] = {}
    work = []
    order = {o.input: i for i, o in enumerate(outcomes)}
    for path in paths:
        prepared = _prepare(args, path, claimed)
        if isinstance(prepared, Outcome):
            outcomes.append(prepared)
            if prepared.status == "failed":
                _say(args, f"{path}: failed: {prepared.reason}")
        else:
            work.append(prepared)
            outcomes.append(Outcome(path))
        order[path] = len(outcomes) - 1
    skipped = sum(o.status == "skipped" for o in outcomes)
    _say(args, f"batch: {len(work)} to run, {skipped} already complete, "
         f"{sum(o.status == 'failed' for o in outcomes)} failed before starting")

    stop = threading.Event()
    interrupted = 0
    if work:
        lean = all(p.lean for _a, p, _e, _r in work)
        kwargs = client_kwargs(args, fork=True)
        if lean:
            kwargs["warm_imports"] = WORKER_IMPORTS_FITS
        fork = kwargs.get("start_method") == "fork"
        if fork:
            import_for_workers(lean=lean)

        # SIGTERM raises Terminated in this thread (cli.common.sigterm_unwinds, installed by
        # main for every command), as SIGINT raises KeyboardInterrupt
        pool = ThreadPoolExecutor(max_workers=args.max_in_flight,
                                  thread_name_prefix="stcal-dask-exposure")
        done_n = 0
        try:
            # one setting for every exposure's graph (compute() sets it per call; threads
            # restoring each other's value must not turn fusion back on under another thread)
            with dask.config.set({"optimization.fuse.active": False}), \
                    BackgroundClient(**kwargs) as background:
                if fork and lean:
                    import_for_graph()
                freeze_loaded()  # what is loaded stays: no longer walked by every collection
                futures = {}
                queue = list(work)
                n_started = 0
                try:
                    while queue or futures:
                        while queue and len(futures) < args.max_in_flight:
                            a, p, e, r = queue.pop(0)
                            a.priority = -n_started  # the older exposures' tasks run first
                            n_started += 1
                            futures[pool.submit(_timed, t0, a, p, e, r, background,
                                                stop)] = a.input
                        finished, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            path = futures.pop(fut)
                            o = fut.result()
                            outcomes[order[path]] = o
                            done_n += 1
                            detail = (f"{o.primary_jumps} primary jumps, {o.seconds:.1f} s"
                                      if o.status == "done" else o.reason)
                            _say(args, f"[{done_n}/{len(work)}] {path}: {o.status}: {detail}")
                except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
                    stop.set()
                    interrupted = 143 if isinstance(exc, Terminated) else 130
                    _say(args, "interrupted: stopping the exposures in flight ...")
                    for fut in futures:
                        fut.cancel()
                    background.stop_warm_up()  # a cold cache's compile: not waited for
                # leaving the with-block closes the client and cluster: computations still in
                # flight fail and remove their temporaries
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if interrupted:
            for fut, path in futures.items():
                o = fut.result() if fut.done() and not fut.cancelled() else Outcome(path)
                if o.status in ("pending", "failed"):
                    o.status, o.reason = "interrupted", "stopped; nothing committed"
                outcomes[order[path]] = o
            for a, _p, _e, _r in queue:
                outcomes[order[a.input]].status = "interrupted"
                outcomes[order[a.input]].reason = "not started"
            # the interrupt can land between taking an exposure off the queue and keeping its
            # future, or between a finished future and its outcome: such an exposure's outcome
            # is still pending here, and only its completion record says whether it finished
            for a, _p, e, r in work:
                o = outcomes[order[a.input]]
                if o.status == "pending":
                    outcomes[order[a.input]] = _from_record(a.input, r, e)

    wall = time.perf_counter() - t0
    if not args.quiet:
        print(_summary(outcomes), file=sys.stderr)
    counts = {s: sum(o.status == s for o in outcomes)
              for s in ("done", "skipped", "failed", "interrupted")}
    _say(args, "batch: " + ", ".join(f"{n} {s}" for s, n in counts.items()) +
         f" in {wall:.1f} s")
    if args.report:
        report = {"wall_seconds": wall, "counts": counts,
                  "exposures": [asdict(o) for o in outcomes]}
        rpath = Path(args.report).expanduser()
        tmp = rpath.with_name(f".{rpath.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, rpath)
    if interrupted:
        return interrupted
    return 1 if counts["failed"] else 0
