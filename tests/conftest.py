"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

# Keep numba/BLAS from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def small_exposure():
    """A seeded 2-integration, 6-group, 40x50 exposure with every feature switched on."""
    return simulate_exposure(
        SimulationConfig(nints=2, ngroups=6, ny=40, nx=50, seed=11, cr_rate=0.05)
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@contextlib.contextmanager
def dask_processes(work, *, workers: int = 1, threads: int = 2, env=None):
    """A ``dask scheduler`` and ``dask worker --nworkers WORKERS --nthreads THREADS`` started as
    separate processes on 127.0.0.1 (a user's cluster: their dask config is not this
    process's); yields the scheduler address once the workers have registered, stops both
    process groups at exit."""
    import json
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from distributed import Client

    exe = str(Path(sys.executable).parent / "dask")
    sched_file = Path(work) / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": str(threads),
           **(env or {})}
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
             "start_new_session": True}
    procs = [subprocess.Popen([exe, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(sched_file), "--no-dashboard"], **quiet)]
    try:
        deadline = time.time() + 60
        while not (sched_file.exists() and sched_file.stat().st_size) and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen([exe, "worker", address, "--host", "127.0.0.1",
                                       "--nworkers", str(workers), "--nthreads", str(threads),
                                       "--no-dashboard"], **quiet))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


def waits_for_lock(pid: int, lock, timeout: float = 300.0) -> bool:
    """Wait until process ``pid`` is blocked asking for a record lock (``fcntl.lockf``) on the
    file ``lock`` (the kernel's table of locks, /proc/locks, lists a blocked request as
    ``->``); False if the process ends first. Raises AssertionError after ``timeout`` s."""
    import time
    from pathlib import Path

    ino = Path(lock).stat().st_ino
    deadline = time.monotonic() + timeout
    while True:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields and str(pid) in fields and fields[-3].endswith(f":{ino}"):
                return True
        if not Path(f"/proc/{pid}").exists() or _ended(pid):
            return False
        assert time.monotonic() < deadline, f"process {pid} never asked for the lock {lock}"
        time.sleep(0.2)


def _ended(pid: int) -> bool:
    """Whether ``pid`` is a zombie (ended, not yet waited for)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
