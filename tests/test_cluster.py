"""The dataflow on a real dask.distributed LocalCluster (2 single-threaded worker processes)."""

from __future__ import annotations

import os
import re
import threading
import time

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
import xarray as xr

from stcal_dask.cli import main
from stcal_dask.engine import dataflow
from stcal_dask.engine.cluster import compute, get_client, parse_memory_limit
from stcal_dask.engine.datamodel import make_ramp_dataset
from stcal_dask.errors import UserInputError
from stcal_dask.io import (
    open_product,
    open_ramp,
    write_dataset_atomic,
    write_ramp,
)
from stcal_dask.sim.lazy import simulate_to_zarr
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    with get_client(n_workers=2, memory_limit="1GB") as c:
        yield c


@pytest.fixture(scope="module")
def store(client, tmp_path_factory):
    """A seeded ramp store written by the cluster's workers (simulate_to_zarr)."""
    cfg = SimulationConfig(nints=2, ngroups=5, ny=96, nx=80, seed=21, cr_rate=0.05)
    path = tmp_path_factory.mktemp("cluster") / "expo_ramp.zarr"
    simulate_to_zarr(cfg, path, tile=(32, 40))
    return path


def test_local_cluster_shape(client):
    info = client.scheduler_info()
    workers = info["workers"].values()
    assert len(workers) == 2
    assert all(w["nthreads"] == 1 for w in workers)
    assert all(w["memory_limit"] == parse_memory_limit("1GB") for w in workers)
    env = client.run(lambda: {k: os.environ.get(k) for k in ("NUMBA_NUM_THREADS",
                                                              "OMP_NUM_THREADS")})
    assert all(e == {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"} for e in env.values())
    pids = client.run(os.getpid)
    assert os.getpid() not in pids.values()  # workers are separate processes
    http = client.cluster.scheduler.services.get("dashboard")
    port = http._sockets and next(iter(http._sockets.values())).getsockname()[1] if http else None
    assert port != 8787  # a free port, never the default one
    assert "/status" not in str(getattr(http, "request_callback", ""))


def test_cluster_results_equal_threaded(client, store):
    ramp = open_ramp(store)
    jumped = dataflow.detect_jumps(ramp)
    fit = dataflow.fit_ramps(jumped)
    rate, rateints = fit.rate, fit.rateints
    on_cluster = compute(jumped["groupdq"].data, rate["sci"].data, rateints["dq"].data,
                         jumped[dataflow.JUMP_COUNT_VARIABLE].data, quiet=True, client=client)
    local = dask.compute(jumped["groupdq"].data, rate["sci"].data, rateints["dq"].data,
                         jumped[dataflow.JUMP_COUNT_VARIABLE].data, scheduler="threads")
    for a, b in zip(on_cluster, local, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    exp = simulate_exposure(SimulationConfig(nints=2, ngroups=5, ny=96, nx=80, seed=21,
                                             cr_rate=0.05))
    assert np.array_equal(open_ramp(store)["sci"].values, exp.data)  # workers wrote the store


def test_progress_bar_and_quiet(client, capsys):
    x = da.ones((64, 64), chunks=16).sum()
    assert compute(x, client=client)[0] == 64 * 64
    assert "100%" in capsys.readouterr().out
    assert compute(x, client=client, quiet=True)[0] == 64 * 64
    assert capsys.readouterr().out == ""


def test_cli_on_an_existing_scheduler(client, store, tmp_path):
    """--scheduler tcp://... runs on that cluster; DASK_SCHEDULER_ADDRESS does the same."""
    address = client.scheduler.address
    assert main(["run", str(store), "-o", str(tmp_path), "--scheduler", address,
                 "--quiet", "--format", "both"]) == 0
    rate = xr.open_zarr(tmp_path / "expo_rate.zarr", consolidated=False, mask_and_scale=False)
    ramp = open_ramp(store)
    ref = dataflow.fit_ramps(dataflow.detect_jumps(ramp)).rate["sci"].data.compute(
        scheduler="threads"
    )
    assert np.array_equal(rate["sci"].values, ref, equal_nan=True)
    from astropy.io import fits

    assert np.array_equal(fits.getdata(tmp_path / "expo_rate.fits", "SCI"), ref, equal_nan=True)
    out2 = tmp_path / "env"
    out2.mkdir()
    os.environ["DASK_SCHEDULER_ADDRESS"] = address
    try:
        assert main(["rampfit", str(store), "-o", str(out2), "--quiet"]) == 0
    finally:
        del os.environ["DASK_SCHEDULER_ADDRESS"]
    assert (out2 / "expo_rateints.zarr").is_dir()


def test_unreachable_or_malformed_scheduler():
    t0 = time.perf_counter()
    with pytest.raises(UserInputError, match="cannot reach dask scheduler"):
        with get_client("tcp://127.0.0.1:9", connect_timeout=1.0):
            pass
    assert time.perf_counter() - t0 < 10
    with pytest.raises(UserInputError, match="tcp://HOST:PORT"):
        with get_client("not an address"):
            pass
    with pytest.raises(UserInputError, match="memory-limit"):
        parse_memory_limit("plenty")
    with pytest.raises(UserInputError, match="at least"):
        parse_memory_limit("1MB")


def _tiled_ramp(reps_y: int, reps_x: int, tile: tuple[int, int]) -> xr.Dataset:
    """A large ramp made cheaply: a seeded 1x10x128x128 exposure repeated over the frame."""
    exp = simulate_exposure(SimulationConfig(nints=1, ngroups=10, ny=128, nx=128, seed=4))

    def rep(a):
        d = da.from_array(a, chunks=a.shape)
        return da.tile(d, (1,) * (a.ndim - 2) + (reps_y, reps_x)).rechunk(
            (*a.shape[:-2], *tile)
        )

    return make_ramp_dataset(rep(exp.data), rep(exp.groupdq), rep(exp.pixeldq), rep(exp.gain),
                             rep(exp.readnoise), timing=exp.timing, source="tiled")


def test_memory_limited_cluster_streams_tiles(tmp_path):
    """2 workers with a 450 MB limit each process a store tile by tile, every worker's RSS
    staying under its limit (the >= 2x-of-total-memory case is benchmarks/bench_out_of_core.py).
    """
    limit = 450 * 2**20
    with get_client(n_workers=2, memory_limit=limit) as c:
        # an explicit limit: workers return freed memory to the OS promptly
        assert set(c.run(_getenv, "MALLOC_TRIM_THRESHOLD_").values()) == {"65536"}
        ramp = _tiled_ramp(4, 16, (64, 2048))  # 1x10x512x2048, 8 tiles of 64 rows
        store = write_ramp(ramp, tmp_path / "big_ramp.zarr", tile=(64, 2048))
        pids = list(c.run(os.getpid).values())
        peak = {p: 0 for p in pids}
        done = threading.Event()

        def poll():
            procs = [psutil.Process(p) for p in pids]
            while not done.is_set():
                for p in procs:
                    try:
                        peak[p.pid] = max(peak[p.pid], p.memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.05)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            jumped = dataflow.detect_jumps(open_ramp(store))
            rate = dataflow.fit_ramps(jumped).rate
            pend = write_dataset_atomic(rate, tmp_path / "big_rate.zarr", compute=False)
            compute(pend.delayed, quiet=True, client=c)
        finally:
            done.set()
            thread.join()
        assert set(c.run(os.getpid).values()) == set(pids)  # no worker was restarted
    assert max(peak.values()) < limit, {p: v / 2**20 for p, v in peak.items()}
    rate = xr.open_zarr(tmp_path / "big_rate.zarr", consolidated=False)
    assert rate["sci"].shape == (512, 2048)
    assert np.isfinite(rate["sci"].values).mean() > 0.9


def test_worker_thread_env_is_ours_and_parent_env_untouched(monkeypatch):
    """An inherited NUMBA_NUM_THREADS (e.g. left by an earlier 2-thread cluster, or set by CI)
    neither reaches our workers nor gets overwritten in the caller's environment."""
    monkeypatch.setenv("NUMBA_NUM_THREADS", "7")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with get_client(n_workers=1, memory_limit="500MB", quiet=True) as c:
        env = c.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
        assert list(env.values()) == ["1"]
        assert os.environ["NUMBA_NUM_THREADS"] == "7"
    with get_client(n_workers=1, threads_per_worker=2, memory_limit="500MB", quiet=True) as c:
        assert list(c.run(lambda: os.environ.get("NUMBA_NUM_THREADS")).values()) == ["2"]
    assert os.environ["NUMBA_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in os.environ


def test_memory_limit_smaller_than_worker_startup_is_a_user_error():
    """A limit the libraries alone fill would leave every worker paused forever: refused."""
    # 330 MB: the workers start but sit above the pause threshold once the libraries load;
    # 120 MB: the nanny kills them while they load
    keys = ("MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    before = {k: os.environ.get(k) for k in keys}
    advice = {}
    for limit, needle in (("330MB", "after start-up"), ("120MB", "died while loading")):
        with pytest.raises(UserInputError, match=f"too small.*{needle}") as err:
            with get_client(n_workers=1, memory_limit=limit, quiet=True):
                pass  # pragma: no cover - never reached
        advice[limit] = str(err.value)
    assert "use at least" not in advice["120MB"]  # no minimum guessed without a measurement
    # the minimum the message states is one the start-up check accepts
    minimum = int(re.search(r"use at least (\d+) MiB", advice["330MB"]).group(1))
    with get_client(n_workers=1, memory_limit=f"{minimum}MiB", quiet=True) as client:
        assert len(client.scheduler_info()["workers"]) == 1
    # the nanny restarted the killed worker after the start and wrote its pre-spawn environment
    # into this process: undone when the cluster closed
    assert {k: os.environ.get(k) for k in keys} == before


def test_local_layout_defaults():
    from stcal_dask.engine.cluster import local_layout

    cores = os.cpu_count() or 1
    n, t = local_layout(None, None)
    assert t == min(4, cores) and n == max(1, cores // t)  # threads share one worker's memory
    assert local_layout(3, None) == (3, 1)  # only --n-workers: single-threaded processes
    assert local_layout(None, 1) == (cores, 1)
    assert local_layout(2, 2) == (2, 2)


_GATE = threading.Event()
_HELD = threading.Event()


def _hold() -> None:
    _HELD.set()
    _GATE.wait(30)


def test_compute_priority_orders_graphs_queued_together():
    """Of two graphs waiting for the only worker thread, the tasks of the one computed with the
    higher ``priority`` run before those of the other, although it was submitted last (the
    batch of ``run`` gives each exposure a lower priority than the one before it). The
    scheduler sends a worker one task beyond its threads ahead of time (distributed's
    worker-saturation): that one task of the first graph may run before them."""
    _GATE.clear()
    _HELD.clear()
    with get_client(n_workers=1, threads_per_worker=1, processes=False, warm=False) as c:
        blocker = c.submit(_hold, pure=False)
        assert _HELD.wait(30)  # the worker's thread is taken: what follows queues up
        stamps = {}

        def run(name, priority):
            tasks = [dask.delayed(time.perf_counter_ns, pure=False)() for _ in range(6)]
            stamps[name] = compute(*tasks, client=c, quiet=True, priority=priority)

        low = threading.Thread(target=run, args=("low", -1))
        low.start()  # submitted first
        deadline = time.monotonic() + 30
        while len(c.cluster.scheduler.tasks) < 1 + 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        high = threading.Thread(target=run, args=("high", 0))
        high.start()
        while len(c.cluster.scheduler.tasks) < 1 + 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        _GATE.set()
        low.join(30)
        high.join(30)
        blocker.result()
    ahead = [t for t in stamps["low"] if t < max(stamps["high"])]
    assert len(ahead) <= 1, stamps


def test_background_client_starts_while_the_caller_works():
    from stcal_dask.engine.cluster import BackgroundClient

    with BackgroundClient("threads") as bg:
        assert bg.client() is None and dask.config.get("scheduler") == "threads"
    t0 = time.perf_counter()
    with BackgroundClient(n_workers=1, memory_limit="1GB", quiet=True) as bg:
        returned = time.perf_counter() - t0  # the caller goes on while the cluster starts
        c = bg.client()
        ready = time.perf_counter() - t0
        assert returned < 0.5 < ready  # a worker process and its libraries take > 0.5 s
        assert len(c.scheduler_info()["workers"]) == 1
        # the workers already loaded the libraries and compiled kernels (before any task)
        mods = c.run(lambda: "stcal_dask.engine.dataflow" in __import__("sys").modules)
        assert all(mods.values())
    assert c.status == "closed"
    # a start-up error surfaces in the caller's thread, as the user error it is
    with pytest.raises(UserInputError, match="cannot reach dask scheduler"):
        with BackgroundClient("tcp://127.0.0.1:9", connect_timeout=1) as bg:
            bg.client()


def _loaded(*names):
    import sys

    return {n: n in sys.modules for n in names}


def _profile_enabled():
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def _getenv(name):
    """The worker's own environment variable (``client.run(os.environ.get, ...)`` would pickle
    this process's ``os.environ`` along with the bound method)."""
    import os

    return os.environ.get(name)


def test_forked_workers_start_in_the_callers_thread_and_load_kernels_in_the_background():
    """start_method="fork": the worker process is forked before the constructor returns (no
    fork while the caller goes on importing), with the caller's libraries already loaded; its
    registration and the compiled kernels' loading run in the background; the result matches
    the threaded scheduler."""
    import multiprocessing

    from stcal_dask.engine import cluster
    from stcal_dask.engine.cluster import BackgroundClient

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    before = cluster._FORK_COUNT[0]
    with BackgroundClient(n_workers=1, threads_per_worker=2, memory_limit="2GB", quiet=True,
                          start_method="fork") as bg:
        assert cluster._FORK_COUNT[0] == before + 1  # forked before the constructor returned
        c = bg.client()
        assert len(c.scheduler_info()["workers"]) == 1
        loaded = c.run(_loaded, "xarray", "stcal_dask.kernels._jump_numba")
        assert all(all(v.values()) for v in loaded.values())
        ramp = _tiled_ramp(2, 2, (32, 32))
        rate = dataflow.fit_ramps(dataflow.detect_jumps(ramp)).rate["sci"]
        (ours,) = compute(rate.data, quiet=True, client=c)
    expected = rate.data.compute(scheduler="threads")
    np.testing.assert_array_equal(ours, expected)
    with pytest.raises(UserInputError, match="worker start method must be one of"):
        with get_client(n_workers=1, start_method="teleport"):
            pass


def test_workers_load_only_the_modules_asked_for():
    """warm_imports decides what a (spawned) worker loads at start, besides the kernels."""
    with get_client(n_workers=1, quiet=True, start_method="spawn",
                    warm_imports=("json",)) as c:
        loaded = list(c.run(_loaded, "json", "zarr", "stcal_dask.kernels._ramp_numba").values())
        trim = list(c.run(_getenv, "MALLOC_TRIM_THRESHOLD_").values())
        # no dashboard: no statistical profiler in the workers (it only feeds the dashboard)
        enabled = list(c.run(_profile_enabled).values())
    assert loaded == [{"json": True, "zarr": False, "stcal_dask.kernels._ramp_numba": True}]
    # no explicit memory limit: glibc's own trimming (faster tile tasks); with one, see
    # test_memory_limited_cluster_streams_tiles
    assert trim == [None]
    assert enabled == [False]


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """A scheduler and a worker as separate processes (`dask scheduler`, `dask worker`), as a
    user's cluster is: their dask config is not this process's."""
    from conftest import dask_processes

    with dask_processes(tmp_path_factory.mktemp("external"), workers=1, threads=2) as address:
        yield address


def test_external_scheduler_runs_each_tile_kernel_once(external_cluster, tmp_path):
    """A scheduler in another process must not re-optimise (fuse) the graph per collection:
    the jump and fit kernels run once per tile although the rate writes, the jump count and
    the saturation check all consume them."""
    from distributed import get_task_stream

    ramp = _tiled_ramp(2, 2, (64, 128))  # 1x10x256x256, 4 x 2 tiles
    with get_client(external_cluster, quiet=True) as c:
        c.wait_for_workers(1, timeout=60)
        jumped = dataflow.detect_jumps(ramp)
        rate = dataflow.fit_ramps(jumped).rate
        pend = write_dataset_atomic(rate, tmp_path / "x_rate.zarr", compute=False)
        with get_task_stream(c) as ts:
            _, count, all_sat = compute(pend.delayed, jumped["primary_jumps"].data,
                                        dataflow.all_group0_saturated(ramp), quiet=True,
                                        client=c)
    names = [str(r["key"][0] if isinstance(r["key"], tuple) else r["key"]) for r in ts.data]
    assert sum(n.startswith("stcal-dask-jump-tile") for n in names) == 8, sorted(set(names))
    assert sum(n.startswith("stcal-dask-fit-tile") for n in names) == 8
    assert int(count) > 0 and not bool(all_sat)
    local = dataflow.fit_ramps(dataflow.detect_jumps(ramp)).rate["sci"].compute(scheduler="sync")
    np.testing.assert_array_equal(open_product(tmp_path / "x_rate.zarr")["sci"].values,
                                  local.values)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_worker_failures_are_logged_to_a_file_not_the_terminal(start_method, capfd):
    """A failing task's 'Compute Failed' record and traceback (from a forked or a spawned
    worker) go to the log file, not the user's terminal; the exception still reaches the
    caller, and the log file is named by log_note()."""
    import operator

    from stcal_dask.engine.logs import log_note, log_path

    log_path().unlink(missing_ok=True)
    with pytest.raises(ZeroDivisionError):
        with get_client(n_workers=1, threads_per_worker=1, start_method=start_method,
                        warm=False) as c:
            c.submit(operator.truediv, 1, 0).result()
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback" not in err, err
    assert "Compute Failed" in log_path().read_text()
    assert log_note() == f" (details: {log_path()})"
    log_path().unlink()
    assert log_note() == ""


_ABANDONED_GATHER = """
import asyncio, gc, sys
from distributed.client import AllExit
from stcal_dask.engine.logs import drop_gather_exit_records
if sys.argv[1] == "filtered":
    drop_gather_exit_records()

async def wait_on_a_forgotten_future():
    raise AllExit()

async def main():
    # as Client._gather leaves its per-future waits when it is abandoned: never retrieved
    asyncio.ensure_future(wait_on_a_forgotten_future())
    await asyncio.sleep(0.05)

asyncio.run(main())
gc.collect()

async def other():
    raise ValueError("a real error")

async def main2():
    asyncio.ensure_future(other())
    await asyncio.sleep(0.05)

asyncio.run(main2())
gc.collect()
"""


@pytest.mark.parametrize("mode", ["filtered", "plain"])
def test_abandoned_gather_tasks_print_nothing(mode):
    """distributed's client leaves one waiting task per future when a gather is abandoned
    (Ctrl-C during a compute); each ends with AllExit and asyncio would print "Task exception was
    never retrieved" and a traceback on the terminal. With the filter every command installs,
    those records are dropped and other never-retrieved exceptions still show."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _ABANDONED_GATHER, mode], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ValueError: a real error" in res.stderr
    if mode == "filtered":
        assert "AllExit" not in res.stderr, res.stderr
        assert res.stderr.count("Task exception was never retrieved") == 1, res.stderr
    else:  # the record the filter exists for (so this test can fail)
        assert "AllExit" in res.stderr, res.stderr


def test_external_workers_with_a_cold_cache_say_so_on_the_client(tmp_path):
    """Workers of an external cluster whose kernel cache is cold: the command (not only the
    workers' logs) says that the kernels are compiling, where and for how many workers, and how
    long it took; the next run says nothing. The workers' cache is a copy of this machine's
    warm one without its stamp, so they go through the compile path but load quickly."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from conftest import dask_processes
    from numba.core.caching import _CacheLocator

    import stcal_dask.kernels
    from stcal_dask.engine.warmup import cache_dir, ensure_compiled

    ensure_compiled(quiet=True)
    sub = _CacheLocator.get_suitable_cache_subpath(stcal_dask.kernels.__file__)
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir() / sub, cache / sub)
    exe = str(Path(sys.executable).parent / "stcal-dask")
    env = {**os.environ, "PYTHONPATH": str(Path(stcal_dask.kernels.__file__).parents[2])}
    expo = tmp_path / "e_ramp.fits"
    subprocess.run([exe, "simulate", str(expo), "--shape", "1x5x32x32", "--seed", "1", "-q",
                    "--scheduler", "threads"], check=True, env=env)
    (tmp_path / "cluster").mkdir()
    with dask_processes(tmp_path / "cluster", workers=2, threads=1,
                        env={**env, "STCAL_DASK_CACHE_DIR": str(cache)}) as address:
        errs = []
        for _ in range(2):
            got = subprocess.run([exe, "run", str(expo), "-o", str(tmp_path), "--overwrite",
                                  "--scheduler", address, "-q"], env=env, capture_output=True,
                                 text=True)
            assert got.returncode == 0, got.stderr
            errs.append(got.stderr)
    assert f"compiling the numba kernels on {os.uname().nodename}" in errs[0], errs[0]
    assert f"(cache {cache})" in errs[0] and "for 2 of 2 workers" in errs[0], errs[0]
    assert "kernels compiled in" in errs[0], errs[0]
    # then the variants of this exposure's shape (its lane medians), before the first tile
    assert "compiling the numba kernels for 1x5 ramps" in errs[0], errs[0]
    assert "compil" not in errs[1], errs[1]


def test_two_exposures_in_flight_say_once_that_they_compile(tmp_path, capfd):
    """Two exposures of a batch in flight ask the workers (whose cache is cold) for the same
    kernel variants at once: one call compiles and says so, the other waits for it, then finds
    the caches warm and says nothing (each said it before). The workers' cache is a copy of this
    machine's warm one without its stamps, as in the test above."""
    import shutil
    import sys
    from pathlib import Path

    from conftest import dask_processes
    from distributed import Client
    from numba.core.caching import _CacheLocator

    import stcal_dask.kernels
    from stcal_dask.engine.cluster import compile_on_workers
    from stcal_dask.engine.warmup import cache_dir, ensure_compiled, exposure_kernels
    from stcal_dask.kernels.jump import JumpParams
    from stcal_dask.kernels.ramp_fit import RampFitParams

    exposure = exposure_kernels(1, 5, JumpParams(), RampFitParams())
    ensure_compiled(quiet=True, exposures=(exposure,))
    sub = _CacheLocator.get_suitable_cache_subpath(stcal_dask.kernels.__file__)
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir() / sub, cache / sub)
    env = {"PYTHONPATH": str(Path(stcal_dask.kernels.__file__).parents[2]),
           "STCAL_DASK_CACHE_DIR": str(cache)}
    (tmp_path / "cluster").mkdir()
    with dask_processes(tmp_path / "cluster", workers=1, threads=1, env=env) as address, \
            Client(address, timeout="30s") as client:
        capfd.readouterr()
        start = threading.Barrier(2)
        errors = []

        def exposure_in_flight():
            start.wait()
            try:
                compile_on_workers(client, exposures=(exposure,))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=exposure_in_flight) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        err = capfd.readouterr().err
    assert not errors, errors
    sys.stderr.write(err)
    assert err.count("stcal-dask: compiling the numba kernels for 1x5 ramps") == 1, err
    assert err.count("kernels compiled in") == 1, err


def _loaded_there(client, *names) -> dict:
    """:func:`_loaded` in the (one) worker without sending it a function of this module: its
    unpickling would import this module there, and xarray with it."""
    probe = f"{{n: n in __import__('sys').modules for n in {names!r}}}"
    return next(iter(client.run(eval, probe).values()))


def test_a_restarted_worker_loads_what_the_first_workers_loaded():
    """A worker killed mid-run is restarted by its nanny as a fresh interpreter: the
    WarmRestarted plugin has it load the cluster's modules without the optional packages and
    the kernels before its first task; without it, the first task's functions imported
    dask.array with xarray, pandas and pyarrow (seconds of CPU while the batch waits)."""
    from stcal_dask.engine.cluster import WORKER_IMPORTS_FITS

    with get_client(n_workers=1, threads_per_worker=1, quiet=True, start_method="fork",
                    warm_imports=WORKER_IMPORTS_FITS) as c:
        first = next(iter(c.run(os.getpid).values()))
        psutil.Process(first).kill()
        deadline = time.monotonic() + 120
        while True:
            try:
                pids = list(c.run(os.getpid).values())
            except OSError:  # the dead worker is still listed: distributed's CommClosedError
                pids = []
            if pids and pids[0] != first:
                break
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.2)
        names = ("dask.array", "stcal_dask.engine.tasks", "stcal_dask.kernels._ramp_numba",
                 "xarray", "pandas")
        loaded = _loaded_there(c, *names)
        # a task of a dask.array graph runs there and still leaves xarray and pandas out
        total = int(c.compute(da.ones((4, 4), chunks=2).sum()).result())
        after = _loaded_there(c, "xarray", "pandas")
    assert loaded == {"dask.array": True, "stcal_dask.engine.tasks": True,
                      "stcal_dask.kernels._ramp_numba": True, "xarray": False, "pandas": False}
    assert total == 16 and after == {"xarray": False, "pandas": False}
