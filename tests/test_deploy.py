"""deploy/: the local cluster script, the SLURM job script and the Kubernetes pod spec they
generate, run for real on this host (no SLURM or Kubernetes: a job script is a shell script, a
pod's command is a command line), and the image's install + warm-up script in a fresh venv."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil
import pytest
from conftest import waits_for_lock

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_workers(address: str, n: int, timeout: float = 120.0) -> None:
    from distributed import Client

    with Client(address, timeout="20s") as client:
        client.wait_for_workers(n, timeout=timeout)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True and everything it started."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # the group's other members (workers of a nanny) end with it


# -- local_cluster.sh ----------------------------------------------------------------------------

def _local(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / "local_cluster.sh"), *args], capture_output=True,
                          text=True, timeout=300, env=_env(STCAL_DASK_CLUSTER_DIR=str(state)))


def _pids(state: Path) -> dict[str, int]:
    return {n: int((state / f"{n}.pid").read_text()) for n in ("scheduler", "worker")
            if (state / f"{n}.pid").exists()}


@pytest.mark.cluster
def test_local_cluster_script_refuses_a_second_start_and_binds_localhost(tmp_path):
    port = _free_port()
    state, other = tmp_path / "a", tmp_path / "b"
    first = _local(state, "1", "1GB", str(port))
    try:
        assert first.returncode == 0, first.stderr
        pids = _pids(state)
        assert set(pids) == {"scheduler", "worker"}
        _wait_workers(f"tcp://127.0.0.1:{port}", 1)
        # listens on 127.0.0.1 only (no authentication: never on every interface by default)
        tree = [psutil.Process(pids["scheduler"])]
        listening = {c.laddr.ip for p in tree for c in p.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}, listening

        again = _local(state, "1", "1GB", str(port))  # same state directory: refused
        assert again.returncode == 1
        assert "still running" in again.stderr and len(again.stderr.strip().splitlines()) == 1
        assert _pids(state) == pids  # its pid files are not overwritten

        taken = _local(other, "1", "1GB", str(port))  # other state, port in use: fails, cleans up
        assert taken.returncode == 1, taken.stdout
        assert "scheduler did not start" in taken.stderr
        assert _pids(other) == {}
        assert all(psutil.pid_exists(p) for p in pids.values())
    finally:
        stopped = _local(state, "stop")
    assert stopped.returncode == 0
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert _pids(state) == {}


# -- SLURM ---------------------------------------------------------------------------------------

@pytest.mark.cluster
def test_slurm_job_script_starts_a_worker_without_tmpdir(tmp_path):
    """The generated job script, run as SLURM would run it (bash, TMPDIR unset on the node),
    warms the cache and starts a worker that joins the cluster; its workers retire before the
    wall time (worker_extra_args --lifetime)."""
    slurm = _load("slurm_cluster")
    args = slurm.build_parser().parse_args(
        ["--jobs", "1", "--cores", "1", "--memory", "2GB", "--walltime", "01:00:00",
         "--interface", "lo", "--wait", "120"])
    assert slurm.lifetime_args("01:00:00") == ["--lifetime", "3240s", "--lifetime-stagger", "72s"]
    assert slurm.lifetime_args("2-00:00:00")[:2] == ["--lifetime", f"{2 * 86400 - 600}s"]
    cluster = slurm.make_cluster(args)
    try:
        script = cluster.job_script()
        assert "#SBATCH -t 01:00:00" in script
        assert "--lifetime 3240s --lifetime-stagger 72s" in script
        assert "--local-directory ${TMPDIR:-/tmp}" in script
        assert script.index("stcal-dask warmup") < script.index("distributed.cli.dask_worker")
        job = tmp_path / "job.sh"
        job.write_text(script)
        env = _env()
        env.pop("TMPDIR", None)
        proc = subprocess.Popen(["bash", str(job)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_workers(cluster.scheduler_address, 1)
        finally:
            _stop_group(proc)
    finally:
        cluster.close()


# -- Kubernetes ----------------------------------------------------------------------------------

@pytest.mark.cluster
def test_kubernetes_pod_commands_run(tmp_path):
    """The operator spec's scheduler and worker containers, run as their pods would run them:
    ``dask scheduler`` exists (``dask-scheduler`` is gone), and the worker's warm-up-then-exec
    command starts a worker that joins."""
    k8s = _load("kubernetes_cluster")
    args = k8s.build_parser().parse_args(["--image", "example/stcal-dask:1", "--workers", "2"])
    spec = k8s.make_spec(args)
    sched = spec["spec"]["scheduler"]["spec"]["containers"][0]
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    assert sched["args"][:2] == ["dask", "scheduler"]
    assert spec["spec"]["worker"]["replicas"] == 2
    assert worker["command"][:2] == ["sh", "-c"] and "stcal-dask warmup" in worker["command"][2]
    assert worker["args"][:4] == ["dask", "worker", "--nthreads", "1"]
    for role in ("scheduler", "worker"):
        pod = spec["spec"][role]["spec"]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "stcal-data"
    assert shutil.which("dask-scheduler", path=str(BIN)) is None

    port = _free_port()
    env = _env()
    # the pod listens on all of its own interfaces; here: this host's loopback only
    sched_args = [a if a != "0.0.0.0" else "127.0.0.1" for a in sched["args"]]
    scheduler = subprocess.Popen([*sched_args, "--port", str(port), "--dashboard-address", ":0"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    try:
        # what the operator substitutes into the worker pod
        wargs = [a.replace("$(DASK_WORKER_NAME)", "w0") for a in worker["args"]]
        wargs = [a if a != "8788" else ":0" for a in wargs]
        wenv = {**env, **{e["name"]: e["value"] for e in worker["env"]},
                "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{port}"}
        proc = subprocess.Popen([*worker["command"], *wargs, "--host", "127.0.0.1"], env=wenv,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            _wait_workers(f"tcp://127.0.0.1:{port}", 1)
        finally:
            _stop_group(proc)
    finally:
        _stop_group(scheduler)


# -- the image's install + warm-up script in a fresh venv ----------------------------------------

@pytest.mark.cluster
def test_install_script_in_a_fresh_venv_warms_a_read_only_install(tmp_path):
    """deploy/install.sh (the Dockerfile's install and warm-up steps) in a fresh venv: a real,
    non-editable install of this repository, the kernels compiled into STCAL_DASK_CACHE_DIR with
    a message; then, with the install and HOME read-only, another user's warm-up compiles
    nothing, and a warm-up that finds another process compiling waits for it.

    The dependencies come from this environment (a .pth file, as --system-site-packages would
    give a base image's) so that only stcal-dask itself is installed."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    (site / "_base_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "NUMBA_CACHE_DIR", "STCAL_DASK_CACHE_DIR")}
    env["STCAL_DASK_CACHE_DIR"] = str(cache)
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".ruff_cache"))
    out = subprocess.run(["bash", str(DEPLOY / "install.sh"), str(venv), str(src), "--no-deps"],
                         env=env, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    installed = next(site.glob("stcal_dask"))
    assert "compiling the numba kernels" in out.stderr
    assert not list(installed.rglob("*.nbi")), "compiled into the package directory"
    assert list(cache.rglob("*.nbi"))

    # read-only install and HOME; another user (another HOME) loads, compiles nothing
    for p in [venv, *venv.rglob("*")]:
        if not p.is_symlink():
            p.chmod(0o555 if p.is_dir() else p.stat().st_mode & 0o555)
    home = tmp_path / "home2"
    home.mkdir(mode=0o555)
    dac = "-dac_override,-dac_read_search,-fowner"
    as_user = (["setpriv", f"--inh-caps={dac}", f"--bounding-set={dac}"]
               if os.geteuid() == 0 else [])
    exe = str(venv / "bin" / "stcal-dask")
    user2 = {**env, "HOME": str(home)}
    try:
        again = subprocess.run([*as_user, exe, "warmup"], env=user2, capture_output=True,
                               text=True, timeout=600, cwd=home)
        assert again.returncode == 0, again.stderr
        assert "compiling" not in again.stderr

        # a warm-up that finds the lock taken (another process compiling) waits for it, then
        # finds the work done; here the stamp is removed so that it has to re-check everything
        import fcntl

        stamps = list(cache.glob("stcal-dask-kernels-*"))
        assert len(stamps) == 1
        stamps[0].unlink()
        with open(cache / ".stcal-dask-compile.lock", "a+") as lock:
            fcntl.lockf(lock, fcntl.LOCK_EX)
            waiter = subprocess.Popen([*as_user, exe, "warmup"], env=user2, cwd=home,
                                      stderr=subprocess.PIPE, text=True)
            # still waiting for the lock (blocked in the kernel's table of locks)
            assert waits_for_lock(waiter.pid, lock.name), waiter.stderr.read()
            assert waiter.poll() is None, waiter.stderr.read()
        assert waiter.wait(600) == 0
        err = waiter.stderr.read()
        assert "waiting for another process" in err, err
        assert stamps[0].exists()
    finally:
        for p in [venv, *venv.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
