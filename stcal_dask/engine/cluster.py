"""Where the dask graphs run: an embedded ``LocalCluster`` or an existing ``distributed`` cluster.

:func:`get_client` is the one entry point the CLI, the demo and the benchmarks use::

    with get_client(n_workers=2, memory_limit="2GB") as client:
        compute(rate_write, rateints_write, quiet=False)   # progress bar on the terminal

* ``scheduler=None`` and no ``DASK_SCHEDULER_ADDRESS`` in the environment: an in-process
  :class:`distributed.LocalCluster` whose workers are separate **processes** (layout from
  :func:`local_layout`: up to 4 threads per worker process, since the numba kernels release the
  GIL; one thread each when only ``n_workers`` is given), spawned, or forked from this process
  with ``start_method="fork"`` (what the CLI does on Linux); they load the libraries and the
  compiled kernels at start (:func:`warm_workers`). The scheduler's HTTP endpoint is on a free
  port; the Bokeh dashboard, and the workers' profiler that feeds it, only with
  ``dashboard=True``.
* ``scheduler="tcp://HOST:PORT"`` (or ``DASK_SCHEDULER_ADDRESS``): connect to a running scheduler
  (``dask scheduler`` / ``dask worker``, dask-jobqueue, dask-kubernetes; see ``deploy/``). A
  scheduler that does not answer within ``connect_timeout`` seconds gives a one-line
  :class:`~stcal_dask.errors.UserInputError`.

Worker memory limits are the ``distributed`` ones: a worker spills to disk at 60 % of its limit,
pauses at 80 % and is restarted at 95 %; the tile graphs keep only a few tiles per worker alive, so
an exposure larger than the cluster's total memory streams through.

numba and BLAS/OpenMP thread pools are pinned to one thread per worker thread
(``NUMBA_NUM_THREADS``, ``OMP_NUM_THREADS``, ... in the workers' environment, and
:func:`limit_threads` called by every tile task), so ``n_workers`` x ``threads_per_worker`` is the
real CPU use. With an explicit memory limit the workers return freed memory to the OS promptly
(glibc's trim threshold, what the limit is checked against); without one they keep glibc's
faster default.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import dask
from dask.utils import parse_bytes

from stcal_dask.engine.logs import (
    drop_gather_exit_records,
    logs_to_file,
    quiet_distributed,
    silence_distributed_logs,
)
from stcal_dask.engine.threads import M_TRIM_THRESHOLD, THREAD_ENV, glibc, limit_threads
from stcal_dask.errors import UserInputError

__all__ = [
    "LOCAL_SCHEDULERS",
    "BackgroundClient",
    "THREAD_ENV",
    "compute",
    "get_client",
    "compile_on_workers",
    "limit_threads",
    "local_layout",
    "parse_memory_limit",
    "resolve_scheduler",
    "WORKER_IMPORTS",
    "WORKER_IMPORTS_FITS",
    "warm_restarted_worker",
    "warm_workers",
]

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
"""Scheduler names that select dask's local schedulers instead of a distributed cluster."""


_ADDRESS_RE = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s:/]+(:\d+)?/?$|^[^\s:/]+:\d+$")


def parse_memory_limit(value: str | int | float | None) -> int | str | None:
    """Validate a per-worker memory limit: bytes, a string like ``"2GB"``/``"1.5 GiB"``, ``"auto"``
    or None (distributed's default: the machine's memory divided among the workers).
    """
    if value is None or value == "auto":
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        nbytes = int(value)
    else:
        try:
            nbytes = int(parse_bytes(str(value)))
        except (ValueError, TypeError):
            raise UserInputError(
                f"--memory-limit must be a size such as '2GB' or '500MiB', got {value!r}"
            ) from None
    if nbytes < 32 * 2**20:
        raise UserInputError(f"--memory-limit must be at least 32 MiB per worker, got {value!r}")
    return nbytes


@contextlib.contextmanager
def _restored_environ(keys):
    """Give ``keys`` of this process's environment back their values (or absence) on exit."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _scoped_environ(values: dict[str, str]):
    """Set ``values`` in this process's environment and restore the previous state on exit.

    distributed's Nanny lets an OS environment variable override its ``pre-spawn-environ``
    config and copies that config into the parent's ``os.environ`` for good; without this
    scope one cluster's settings (e.g. ``NUMBA_NUM_THREADS=2``) would leak into the next.
    """
    with _restored_environ(values):
        os.environ.update({key: str(value) for key, value in values.items()})
        yield


def _warm_kernels(quiet: bool = True) -> None:
    """Load the compiled jump and ramp-fit kernels, compiling them first (once per machine, with
    a message on stderr unless ``quiet``) when the cache is cold: see
    :func:`stcal_dask.engine.warmup.ensure_compiled`."""
    from stcal_dask.engine.warmup import ensure_compiled

    ensure_compiled(quiet=quiet)


async def _compile_in_thread(quiet: bool = True, exposures: tuple = ()) -> float:
    """Compile the kernels into the machine's cache if it is cold (see
    :func:`stcal_dask.engine.warmup.ensure_compiled`; returns the seconds spent) in a thread of
    the worker: a compile takes minutes on a busy machine, and a worker whose event loop is
    blocked that long stops answering the scheduler's heartbeats and is removed as dead (its
    replacement would then compile again, in its first tasks). ``exposures``: see
    :func:`stcal_dask.engine.warmup.exposure_kernels`."""
    import asyncio

    from stcal_dask.engine.warmup import ensure_compiled

    return await asyncio.get_running_loop().run_in_executor(None, ensure_compiled, quiet,
                                                            False, exposures)


def _kernel_cache_state(exposures: tuple = ()) -> tuple[str, str, bool]:
    """(host name, cache directory, whether the compiled kernels are there) of this worker."""
    import socket

    from stcal_dask.engine.warmup import cache_dir, is_warm

    return socket.gethostname(), str(cache_dir()), is_warm(exposures)


_COMPILE_ON_WORKERS = threading.Lock()


def compile_on_workers(client, announce: bool = True, exposures: tuple = ()) -> None:
    """Make every worker of ``client`` load the compiled kernels, compiling them first where a
    machine's cache is cold (one worker per cache compiles, the others wait for it; in a thread
    of each worker, see :func:`_compile_in_thread`); with ``exposures``
    (:func:`stcal_dask.engine.warmup.exposure_kernels`) also the variants runs of those use
    (their lane medians, their jump path), which would otherwise compile in the first tiles.

    The workers say nothing (on an external cluster their stderr is a log nobody watches): this
    process asks them first whether their caches are warm and, if ``announce``, says on its own
    stderr what is compiling and then how long it took, so a first run on new machines does
    not look hung. A worker that dies meanwhile is left to the computation to report.

    Calls from several threads (the exposures of a batch in flight) take turns: a call waiting
    for another that compiles the same variants then finds the caches warm and says nothing.
    """
    with _COMPILE_ON_WORKERS:
        _compile_on_workers(client, announce, exposures)


def _compile_on_workers(client, announce: bool, exposures: tuple) -> None:
    try:
        states = list(client.run(_kernel_cache_state, exposures).values())
    except Exception:  # noqa: BLE001 - a worker died: reported by the computation
        states = []
    cold = [(host, cache) for host, cache, warm in states if not warm]
    caches = sorted(set(cold))
    if cold and announce:
        where = (f"on {caches[0][0]} (cache {caches[0][1]})" if len(caches) == 1 else
                 f"on {len({h for h, _ in caches})} machines ({len(caches)} caches)")
        what = ("the numba kernels" if not exposures else "the numba kernels for " + ", ".join(
            f"{nints}x{ngroups}" for nints, ngroups, *_ in exposures) + " ramps")
        print(f"stcal-dask: compiling {what} {where} for {len(cold)} of "
              f"{len(states)} workers: the first run there; once per machine, cached for "
              "later runs ('stcal-dask warmup' does it ahead of time) ...", file=sys.stderr,
              flush=True)
    t0 = time.perf_counter()
    try:
        client.run(_compile_in_thread, True, exposures)
    except UserInputError:
        raise
    except Exception:  # noqa: BLE001 - a worker died or the client closed: reported elsewhere
        return
    if cold and announce:
        print(f"stcal-dask: kernels compiled in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)


def _exit_fast() -> None:  # pragma: no cover - runs at a worker process's exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


WORKER_IMPORTS = ("dask.array", "xarray", "stcal_dask.engine.dataflow", "stcal_dask.io.fits_io",
                  "zarr", "stcal_dask.io.zarr_store")
"""Modules every worker loads at start (besides the compiled kernels), see :func:`warm_workers`."""

WORKER_IMPORTS_FITS = ("dask.array", "stcal_dask.engine.tasks", "stcal_dask.io.fits_blocks",
                       "stcal_dask.io.atomic")
"""What the tasks of a FITS-in, FITS-out run need in a worker: no xarray, pandas, astropy or
zarr (the FITS blocks are read and written with numpy memory maps). dask.array is then loaded
with xarray hidden (it imports xarray, hence pandas, when it can, which is slow), see
:func:`_warm_worker`."""


def _trim_malloc() -> None:
    """Make glibc return freed memory to the OS promptly, as distributed's
    ``MALLOC_TRIM_THRESHOLD_`` environment variable does for a spawned worker. A forked worker
    inherits this process's allocator, set up before that variable existed, so without this
    call its RSS (what the memory limit is checked against) keeps the freed tiles' memory and a
    worker under a tight limit pauses.

    Used only for workers with an explicit memory limit: it costs CPU in the tile tasks (every
    large temporary array is then a fresh ``mmap`` whose pages fault in again)."""
    value = os.environ.get("MALLOC_TRIM_THRESHOLD_", THREAD_ENV["MALLOC_TRIM_THRESHOLD_"])
    libc = glibc()
    if libc is not None:
        with contextlib.suppress(ValueError):
            libc.mallopt(M_TRIM_THRESHOLD, int(value))


_WARMED = [False]
"""Whether this (worker) process has run :func:`_warm_worker`."""


def _warm_worker(threshold: float, modules: tuple[str, ...] = WORKER_IMPORTS,
                 trim: bool = False, quiet: bool = True) -> int:
    """Prepare a worker: import what every tile task needs (as the first task would), load the
    compiled kernels (compiling them first when this machine's cache is cold, saying so on
    stderr unless ``quiet``), arrange a fast exit; return the worker's RSS in bytes.

    Runs in the worker's event loop, so its memory monitor cannot fire meanwhile; when the RSS is
    above ``threshold`` the monitor's warnings stay silenced (the caller raises a clear error and
    shuts the cluster down).
    """
    import importlib

    import psutil

    from stcal_dask.optional_imports import UNUSED_OPTIONAL, skipping_optional_imports

    monitor = logging.getLogger("distributed.worker.memory")
    level = monitor.level
    monitor.setLevel(logging.CRITICAL)
    # modules that these tasks never need stay out (dask.array would load xarray and pandas;
    # they import normally later if a task does need them)
    hidden = UNUSED_OPTIONAL if "xarray" in modules else (*UNUSED_OPTIONAL, "xarray", "pandas")
    with skipping_optional_imports(hidden):
        for name in modules:
            importlib.import_module(name)
    if trim:
        _trim_malloc()
    _warm_kernels(quiet)
    from stcal_dask.engine.startup import freeze_loaded

    freeze_loaded()  # the libraries and kernels just loaded: no longer walked by every collection
    # Once the worker has closed, skip the interpreter's finalisation of all these libraries
    # (a large part of a LocalCluster's close): every output was committed by its own task, and the
    # worker's directory was removed by its close. Registered last, so it runs first.
    import atexit

    atexit.register(_exit_fast)
    _WARMED[0] = True
    rss = int(psutil.Process().memory_info().rss)
    if rss <= threshold:
        monitor.setLevel(level)
    return rss


def warm_restarted_worker(modules: tuple[str, ...], trim: bool) -> None:
    """Prepare a worker process that was not there when its cluster started (one its nanny
    restarted after it died, a fresh interpreter) as the cluster's first workers were: the
    libraries of ``modules`` without the optional packages they never use, the compiled
    kernels (from the machine's cache, filled at the cluster's start), ``trim`` as
    :func:`_trim_malloc`. A worker that has done so already does nothing.

    Without it such a worker imports what its first tasks' functions come from, and dask.array
    then loads xarray, pandas, pyarrow and scipy.sparse: seconds of CPU on the cores the
    surviving work runs on, while the batch waits for the lost tiles (run by
    :class:`~stcal_dask.engine.worker_plugins.WarmRestarted`)."""
    if not _WARMED[0]:
        _warm_worker(float("inf"), tuple(modules), trim)


def _warm_and_check_room(client, limit: int | None,
                         modules: tuple[str, ...] = WORKER_IMPORTS, quiet: bool = True) -> None:
    """Load the libraries and compiled kernels in every worker now (in parallel, instead of in
    the first task), and refuse a per-worker memory ``limit`` that this already fills.

    A worker pauses at 80% of its limit (distributed's default); one that sits above that with
    nothing to spill would wait forever, so a limit too small for the libraries is a user error.
    """
    pause = dask.config.get("distributed.worker.memory.pause", 0.8) or 0.8
    threshold = 0.9 * pause * limit if limit is not None else float("inf")
    compile_on_workers(client, announce=not quiet)
    try:
        rss = max(client.run(_warm_worker, threshold, tuple(modules),
                             limit is not None, quiet).values())
    except Exception:  # a worker died while importing the libraries: its limit killed it
        if limit is None:
            return  # nothing to check; the computation will report a real failure
        rss = None
    if rss is not None:
        from stcal_dask.engine.worker_plugins import WarmRestarted

        with contextlib.suppress(Exception):  # a worker died: reported by the computation
            client.register_plugin(WarmRestarted(tuple(modules), limit is not None))
    if limit is None:
        return
    if rss is None or rss > threshold:
        # the workers are shut down next: no shutdown chatter
        with contextlib.suppress(Exception):
            client.run(silence_distributed_logs)
        if rss is None:
            raise UserInputError(
                f"--memory-limit {limit / 2**20:.0f} MiB per worker is too small: workers died "
                "while loading the libraries, which alone take ~270 MiB; give each worker more"
            )
        # the smallest limit whose start-up check this RSS passes (rounded up to 10 MiB); the
        # tiles need more on top, as the help of --memory-limit says
        minimum = math.ceil(rss / (0.9 * pause) / (10 * 2**20)) * 10 * 2**20
        raise UserInputError(
            f"--memory-limit {limit / 2**20:.0f} MiB per worker is too small: a worker already "
            f"uses {rss / 2**20:.0f} MiB after start-up (libraries) and pauses at "
            f"{pause:.0%} of its limit; use at least {minimum / 2**20:.0f} MiB"
        )


def warm_workers(client, memory_limit=None, modules: tuple[str, ...] | None = None,
                 announce: bool = True) -> None:
    """Load the libraries (``modules``, default :data:`WORKER_IMPORTS`) and the compiled kernels
    in every worker of ``client`` now (all workers in parallel, instead of inside their first
    tile task); raise :class:`UserInputError` when a per-worker ``memory_limit`` (bytes or a
    size string) is already filled by them. When the machine's kernel cache is cold, one worker
    compiles (saying so on stderr if ``announce``) while the others wait for it."""
    limit = parse_memory_limit(memory_limit)
    modules = WORKER_IMPORTS if modules is None else tuple(modules)
    with quiet_distributed():  # the check's failure is reported in one line
        _warm_and_check_room(client, limit if isinstance(limit, int) else None, modules,
                             not announce)


def _check_address(address: str) -> str:
    address = address.strip()
    if not _ADDRESS_RE.match(address):
        raise UserInputError(f"scheduler address must look like tcp://HOST:PORT, got {address!r}")
    return address


def resolve_scheduler(scheduler: str | None) -> str | None:
    """The scheduler to use: the option, else ``$DASK_SCHEDULER_ADDRESS``, else None (start a
    LocalCluster). A name in :data:`LOCAL_SCHEDULERS` selects that dask local scheduler."""
    return scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


def local_layout(n_workers: int | None, threads_per_worker: int | None) -> tuple[int, int]:
    """(worker processes, threads per worker) of the local cluster for the given options.

    The kernels release the GIL, so threads of one worker process share its memory (one copy
    of the libraries, no transfers between workers) without serialising each other. Defaults:
    up to 4 threads per worker and as many workers as fill the CPU cores (1 x 2 on 2 cores,
    4 x 4 on 16); with only ``n_workers`` given, one thread each (the layout of distributed's
    own default); with only ``threads_per_worker`` given, as many workers as fit the cores.
    """
    cores = max(1, os.cpu_count() or 1)
    if threads_per_worker is None:
        threads = min(4, cores) if n_workers is None else 1
    else:
        threads = int(threads_per_worker)
    if n_workers is None:
        n_workers = max(1, cores // max(1, threads))
    return int(n_workers), threads


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    threads_per_worker: int | None = None,
    *,
    dashboard: bool = False,
    connect_timeout: float = 5.0,
    quiet: bool = True,
    local_directory: str | None = None,
    processes: bool = True,
    start_method: str | None = None,
    warm: bool = True,
    warm_imports: tuple[str, ...] | None = None,
    log_to_file: bool = True,
    announce_compile: bool = True,
) -> Iterator[Any]:
    """Yield a :class:`distributed.Client`, closing it (and any cluster started here) at exit.

    Parameters
    ----------
    scheduler:
        Address of a running scheduler (``tcp://HOST:PORT``); None uses ``DASK_SCHEDULER_ADDRESS``
        if set, else starts a ``LocalCluster``. ``"threads"``, ``"processes"`` or
        ``"synchronous"`` use dask's local scheduler of that name instead (no cluster; the
        context yields None).
    n_workers:
        Worker processes of the local cluster (default: see :func:`local_layout`). Ignored when
        connecting to an existing scheduler.
    memory_limit:
        Per-worker memory limit of the local cluster (``"2GB"``, bytes, ``"auto"``/None).
    threads_per_worker:
        Threads per worker process (default: see :func:`local_layout`; 1 when only
        ``n_workers`` is given).
    dashboard:
        Serve the Bokeh dashboard (default off; the workers' statistical profiler, which only
        feeds it, is off too); the scheduler's HTTP endpoint is always on a free port.
    connect_timeout:
        Seconds to wait for an existing scheduler before giving up with :class:`UserInputError`.
    quiet:
        Silence distributed's informational logging (warnings and errors still show).
    local_directory:
        Where workers spill to disk (default: distributed's temporary directory).
    processes:
        Workers as separate processes (default). ``False`` runs the LocalCluster's workers as
        threads of this process (the numba kernels release the GIL): no worker start-up or
        imports, one copy of the libraries in memory, but the memory limit can only trigger
        spilling, not a worker restart.
    start_method:
        How the local cluster's worker processes start: ``"spawn"`` (a fresh interpreter that
        imports everything itself; distributed's default), ``"fork"`` (a copy of this process:
        no imports, so it starts far sooner; POSIX only, and only safe when no other thread of
        this process is importing or holding a lock at that moment, as in the CLI) or
        ``"forkserver"``. None: distributed's ``distributed.worker.multiprocessing-method``.
        Only the first start uses it; a worker restarted later by its nanny is spawned.
    warm:
        Load the libraries and compiled kernels in every worker before yielding (and refuse a
        ``memory_limit`` they already fill). False yields at once; call
        :func:`warm_workers` later.
    warm_imports:
        The modules the workers load at start (default :data:`WORKER_IMPORTS`; e.g. leave out
        zarr for a FITS-only run).
    log_to_file:
        Send distributed's log records of this process and of the local cluster's workers to
        :func:`~stcal_dask.engine.logs.log_path` instead of the terminal
        (:func:`~stcal_dask.engine.logs.logs_to_file`); a task's failure then
        reaches the user as the command's one line, not as the workers' tracebacks. False
        leaves distributed's logging as it is (``--verbose``).
    announce_compile:
        When the machine's compiled-kernel cache is cold, say on stderr that the kernels are
        being compiled (once per machine; see :mod:`stcal_dask.engine.warmup`). The kernels are
        compiled (or loaded) before yielding by the local cluster's workers, or by this process
        for dask's local schedulers and in-process workers; an external cluster's workers do it
        quietly before yielding (warm it ahead with ``stcal-dask warmup``, see ``deploy/``).
    """
    drop_gather_exit_records()
    if not log_to_file or resolve_scheduler(scheduler) in LOCAL_SCHEDULERS:
        with _get_client(scheduler, n_workers, memory_limit, threads_per_worker,
                         dashboard=dashboard, connect_timeout=connect_timeout, quiet=quiet,
                         local_directory=local_directory, processes=processes,
                         start_method=start_method, warm=warm,
                         warm_imports=warm_imports, announce_compile=announce_compile) as client:
            yield client
        return
    with logs_to_file() as path, _get_client(
            scheduler, n_workers, memory_limit, threads_per_worker, dashboard=dashboard,
            connect_timeout=connect_timeout, quiet=quiet, local_directory=local_directory,
            processes=processes, start_method=start_method, warm=warm,
            warm_imports=warm_imports, log_file=str(path),
            announce_compile=announce_compile) as client:
        yield client


@contextlib.contextmanager
def _get_client(
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    threads_per_worker: int | None = None,
    *,
    dashboard: bool = False,
    connect_timeout: float = 5.0,
    quiet: bool = True,
    local_directory: str | None = None,
    processes: bool = True,
    start_method: str | None = None,
    warm: bool = True,
    warm_imports: tuple[str, ...] | None = None,
    log_file: str | None = None,
    announce_compile: bool = True,
) -> Iterator[Any]:
    """:func:`get_client` without the log routing; ``log_file``: a local cluster's worker
    processes log there (:class:`~stcal_dask.engine.worker_plugins.LogToFile`)."""
    from distributed import Client, LocalCluster

    address = resolve_scheduler(scheduler)
    if address in LOCAL_SCHEDULERS:
        # no distributed cluster: dask's local scheduler (tests, small jobs, debugging)
        if warm:
            _warm_kernels(quiet=not announce_compile)
        with dask.config.set(scheduler=address):
            yield None
        return
    if address:
        address = _check_address(address)
        try:
            client = Client(address, timeout=f"{connect_timeout}s", set_as_default=True)
        except (OSError, TimeoutError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise UserInputError(
                f"cannot reach dask scheduler at {address} within {connect_timeout:g} s ({reason})"
            ) from None
        try:
            with contextlib.suppress(Exception):
                from stcal_dask.engine.worker_plugins import PinThreads

                client.register_plugin(PinThreads())
            if warm:
                # the kernels compiled (once per machine: the others wait) or loaded in every
                # worker before the first task, with the event loops left free
                compile_on_workers(client, announce=announce_compile)
            yield client
        finally:
            client.close()
        return

    n_workers, threads_per_worker = local_layout(n_workers, threads_per_worker)
    if int(n_workers) < 1:
        raise UserInputError(f"--n-workers must be >= 1, got {n_workers}")
    if int(threads_per_worker) < 1:
        raise UserInputError(f"threads per worker must be >= 1, got {threads_per_worker}")
    limit = parse_memory_limit(memory_limit)
    # Set before the worker interpreter starts (and, by distributed's Nanny, in this process
    # too: scoped below). NUMBA_NUM_THREADS is never among them: numba re-reads it when it
    # compiles and refuses a change once its threads run, so it must not leak into this process.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    environ.update({k: v for k, v in THREAD_ENV.items() if k != "NUMBA_NUM_THREADS"})
    environ.pop("NUMBA_NUM_THREADS", None)
    if not isinstance(limit, int):
        # no explicit limit (distributed's "auto": the machine's memory shared by the workers):
        # glibc's own trimming, ~20 % less CPU in the tile tasks (see _trim_malloc)
        environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    worker_env = {**environ, "NUMBA_NUM_THREADS": str(threads_per_worker)}
    kwargs: dict[str, Any] = {}
    config: dict[str, Any] = {
        "distributed.nanny.pre-spawn-environ": environ,
        # the workers' statistical profiler samples every thread's stack (every 10 ms by
        # default) for the dashboard's profile plots, a measurable share of the workers' CPU:
        # on only when the dashboard is served
        "distributed.worker.profile.enabled": bool(dashboard),
        # every process's event-loop health check (every 20 ms by default), its system monitor
        # (CPU/memory/disk samples for the dashboard, every 500 ms) and the workers' memory
        # monitor (every 100 ms) cost an idle cluster several per cent of a core, which a long
        # run on a loaded machine pays for its whole length; checked less often, the limits
        # still apply (a worker over its memory limit is still paused/restarted)
        "distributed.admin.tick.interval": "500ms",
        "distributed.admin.system-monitor.interval": "2s",
        "distributed.worker.memory.monitor-interval": "500ms",
    }
    if start_method is not None:
        import multiprocessing

        if start_method not in multiprocessing.get_all_start_methods():
            raise UserInputError(
                f"worker start method must be one of {multiprocessing.get_all_start_methods()}, "
                f"got {start_method!r}"
            )
        config["distributed.worker.multiprocessing-method"] = start_method
        if start_method == "fork":
            import warnings

            # Python >= 3.12 warns on any fork of a process with threads (distributed's loop);
            # the caller has made sure that none of them holds a lock the worker needs.
            warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                                    category=DeprecationWarning)
    if local_directory is not None:
        kwargs["local_directory"] = local_directory
    if processes:
        kwargs["env"] = worker_env  # set in the worker before it imports numba; beats inherited
    # distributed's Nanny writes its pre-spawn environment into this process's os.environ for
    # good whenever it (re)starts a worker, also after the scoped start below (a worker killed
    # for memory is restarted): whatever it wrote is undone when the cluster closes
    with _restored_environ([*environ, "PYTHONHASHSEED"] if processes else []):
        with (
            dask.config.set(config),
            _scoped_environ(environ if processes else {}),
        ):
            cluster = LocalCluster(
                n_workers=int(n_workers),
                threads_per_worker=int(threads_per_worker),
                processes=bool(processes),
                memory_limit=limit if limit is not None else "auto",
                # the scheduler's HTTP server (health/metrics; the Bokeh dashboard only with
                # dashboard=True) always on a free port, so concurrent clusters never collide
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": bool(dashboard)},
                silence_logs=logging.WARNING if quiet else logging.INFO,
                **kwargs,
            )
        try:
            client = Client(cluster, set_as_default=True)
            try:
                if processes and log_file is not None:
                    from stcal_dask.engine.worker_plugins import LogToFile

                    client.register_plugin(LogToFile(log_file))
                if processes and warm:
                    # closed below if it refuses
                    warm_workers(client, limit, warm_imports, announce_compile)
                elif warm:
                    _warm_kernels(quiet=not announce_compile)
                yield client
            finally:
                # closing cancels the scheduler's handlers still running, e.g. the progress
                # bar's feed, which distributed logs as an ERROR with a CancelledError
                # traceback: noise at this point, every result is in
                with quiet_distributed():
                    client.close()
        finally:
            with quiet_distributed():
                cluster.close()


_FORKS = threading.Condition()
_FORK_COUNT = [0]


def _count_fork() -> None:
    with _FORKS:
        _FORK_COUNT[0] += 1
        _FORKS.notify_all()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_parent=_count_fork)


class BackgroundClient:
    """:func:`get_client` started in a background thread, so that starting the cluster (and
    loading the libraries in its workers) overlaps with the caller's own work.

    Use as a context manager; :meth:`client` waits for the start and returns the client (or
    None for dask's local schedulers), re-raising any error of the start (e.g. an unreachable
    scheduler, as :class:`UserInputError`). Leaving the context waits for the start to finish
    and closes everything, whether or not :meth:`client` was called.

    With ``start_method="fork"`` a local cluster's worker processes are forked from this
    process before the constructor returns: it waits (without importing anything) until every
    worker process has been forked, because a fork while another thread of this process imports
    a module could leave the worker waiting forever on that module's lock. The workers' own
    start (registering with the scheduler) and loading the kernels run in the background.
    """

    def __init__(self, *args, **kwargs):
        import inspect
        import threading

        bound = inspect.signature(get_client).bind(*args, **kwargs)
        bound.apply_defaults()
        opts = bound.arguments
        self._value: Any = None
        self._error: BaseException | None = None
        self._entered = False
        self._leaving = threading.Event()  # the caller leaves the block: no warm-up to start
        fork_here = (opts["start_method"] == "fork" and opts["processes"]
                     and resolve_scheduler(opts["scheduler"]) is None)
        self._warm_after = fork_here
        if fork_here:
            self._cm = get_client(**{**opts, "warm": False})
            self._limit = opts["memory_limit"]
            self._imports = opts["warm_imports"]
            self._announce = opts["announce_compile"]
            n_workers, _ = local_layout(opts["n_workers"], opts["threads_per_worker"])
            with _FORKS:
                target_forks = _FORK_COUNT[0] + max(1, int(n_workers))
        else:
            self._cm = get_client(**opts)
        self._thread = threading.Thread(target=self._start, name="stcal-dask-cluster-start",
                                        daemon=True)
        self._thread.start()
        if fork_here:
            # back to the caller once every worker is forked (or the start failed: the error
            # is re-raised by client() / on exit)
            with _FORKS:
                while _FORK_COUNT[0] < target_forks and self._thread.is_alive():
                    _FORKS.wait(0.02)

    def _start(self) -> None:
        try:
            self._value = self._cm.__enter__()
            self._entered = True
            if self._warm_after and not self._leaving.is_set():
                warm_workers(self._value, self._limit, self._imports, self._announce)
        except BaseException as exc:  # re-raised in the caller's thread
            self._error = exc

    def stop_warm_up(self) -> None:
        """Give up the workers' warm-up (minutes of compiling on a cold cache) instead of
        waiting for it: the client is closed under it, which ends it (done when the block is
        left on an error or an interruption; a caller that catches its interruption inside the
        block calls it itself). No new computation can run on the client afterwards."""
        self._leaving.set()
        closed = False
        while self._thread.is_alive():
            if self._entered and not closed and self._value is not None:
                closed = True
                with quiet_distributed(), contextlib.suppress(Exception):
                    self._value.close()
            self._thread.join(0.05)

    def client(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value

    def __enter__(self) -> BackgroundClient:
        return self

    def __exit__(self, *exc_info):
        if exc_info[0] is not None:
            self.stop_warm_up()
        self._thread.join()
        if self._entered:  # started: close it
            return self._cm.__exit__(*exc_info)
        return False


def compute(*collections, quiet: bool = False, client=None, priority: int = 0):
    """Compute dask collections, with a progress bar on the terminal unless ``quiet``.

    Uses the given ``client`` (or the current default ``distributed`` client if there is one:
    inside :func:`get_client`); otherwise the local threaded scheduler with
    :class:`dask.diagnostics.ProgressBar`. Returns a tuple of results like :func:`dask.compute`.

    ``priority``: the distributed scheduler runs a ready task of a computation with a higher
    priority before any ready task of one with a lower priority (the batch of ``run`` gives
    each exposure a lower one than the exposure before it, so the next exposure's tasks only
    fill the threads the current one leaves idle); ignored by dask's local schedulers.
    """
    if client is None and dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        client = False  # inside get_client("threads") etc.: never pick up a distributed client
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ValueError, ImportError):
            client = None
    # No low-level fusion: it renames tasks per consumer, so a tile kernel shared by a Delayed
    # write and an array reduction would run twice.
    with dask.config.set({"optimization.fuse.active": False}):
        if client is not None and client is not False:
            from distributed import progress

            # Optimise (cull) here, all collections together and with this process's config,
            # and send the result as is: a scheduler in another process would otherwise
            # optimise each collection alone with its own config (low-level fusion on), fusing a
            # tile kernel into one consumer and running it again for the others.
            optimized = dask.optimize(*collections)
            futures = client.compute(list(optimized), optimize_graph=False,
                                     priority=priority)
            if not quiet:
                progress(futures, notebook=False)
                sys.stdout.write("\n")
                sys.stdout.flush()
            return tuple(client.gather(futures))
        if quiet:
            return dask.compute(*collections)
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stdout):
            return dask.compute(*collections)
