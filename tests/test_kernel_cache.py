"""Where the compiled numba kernels are cached: a read-only package directory and HOME, a
separate cache directory, a second user of the machine (stcal_dask.kernels.numba_cache).

The package copy and HOME are made read-only (mode 0555). As root, the probing subprocesses run
without the capabilities that let root ignore file modes (``setpriv``), so the modes bind them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import waits_for_lock

import stcal_dask

ROOT = os.geteuid() == 0
_DAC = "-dac_override,-dac_read_search,-fowner"
AS_USER = ["setpriv", f"--inh-caps={_DAC}", f"--bounding-set={_DAC}"] if ROOT else []

# import a numba kernel module (numba picks each function's cache directory as it is decorated:
# numba's default locators raise "cannot cache function ...: no locator available" here), then
# compile one small function and report whether it came from the cache
PROBE = """
import json, numpy as np
from numba.core import config
from stcal_dask.kernels import _median_numba as m
m.mid_scratch(np.zeros((3, 4), np.float32))
stats = m.mid_scratch.stats
print(json.dumps({"cache_dir": config.CACHE_DIR, "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


@pytest.fixture
def shared_tmp():
    """A directory other users can read (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="stcal-dask-cache-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:  # read-only copies must become removable again
            if p.is_dir() and not p.is_symlink():
                p.chmod(stat.S_IRWXU)
        shutil.rmtree(path)


def _read_only_install(base: Path) -> Path:
    """A copy of the package (no compiled cache in it) that the probing user cannot write."""
    site = base / "site"
    shutil.copytree(Path(stcal_dask.__file__).parent, site / "stcal_dask",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for p in [site, *site.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    return site


def _home(base: Path, name: str) -> Path:
    home = base / name
    home.mkdir()
    home.chmod(0o555)
    return home


def _probe(site: Path, home: Path, env_extra: dict[str, str]):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "STCAL_DASK_CACHE_DIR", "XDG_CACHE_HOME")}
    env.update({"PYTHONPATH": str(site), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1",
                **env_extra})
    if ROOT and shutil.which("setpriv") is None:
        pytest.fail("running as root needs setpriv to drop the capabilities that bypass modes")
    return subprocess.run([*AS_USER, sys.executable, "-c", PROBE], env=env,
                          capture_output=True, text=True, cwd=str(home))


def test_read_only_package_and_home_with_a_cache_dir(shared_tmp):
    """Package and HOME read-only, STCAL_DASK_CACHE_DIR writable: the kernels compile into the
    cache directory; a second user (another HOME) using it loads them instead of compiling."""
    import json

    site = _read_only_install(shared_tmp)
    cache = shared_tmp / "cache"
    cache.mkdir()
    first = _probe(site, _home(shared_tmp, "home1"), {"STCAL_DASK_CACHE_DIR": str(cache)})
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    assert got["cache_dir"] == str(cache) and got["misses"] == 1 and got["hits"] == 0
    assert list(cache.rglob("*.nbi")), "nothing was cached in STCAL_DASK_CACHE_DIR"
    assert not list(site.rglob("__pycache__"))
    second = _probe(site, _home(shared_tmp, "home2"), {"STCAL_DASK_CACHE_DIR": str(cache)})
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout)
    assert got["hits"] == 1 and got["misses"] == 0  # compiled at most once


def test_unusable_cache_dir_falls_back_with_a_warning(shared_tmp):
    """An explicit cache directory that cannot be written is reported in one line and a per-user
    default under TMPDIR is used instead."""
    import json

    site = _read_only_install(shared_tmp)
    blocked = shared_tmp / "blocked"
    blocked.mkdir()
    blocked.chmod(0o555)
    tmp = shared_tmp / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    out = _probe(site, _home(shared_tmp, "home"),
                 {"STCAL_DASK_CACHE_DIR": str(blocked / "c"), "TMPDIR": str(tmp)})
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(blocked / "c") in warnings[0], out.stderr
    chosen = Path(json.loads(out.stdout)["cache_dir"])
    # /var/tmp/stcal-dask-<uid> when /var/tmp is writable, else the TMPDIR one
    assert chosen.name == "numba" and chosen.parent.name == f"stcal-dask-{os.getuid()}"
    mode = chosen.parent.stat().st_mode
    assert not mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_default_cache_dir_refuses_one_another_user_can_write(shared_tmp, monkeypatch):
    """A per-user default directory that others can write into is not used (numba loads machine
    code from it)."""
    from stcal_dask.kernels.numba_cache import usable_dir

    top = shared_tmp / "stcal-dask-x"
    top.mkdir()
    top.chmod(0o777)
    assert usable_dir(top / "numba", explicit=False) is not None
    top.chmod(0o700)
    assert usable_dir(top / "numba", explicit=False) is None
    assert usable_dir(top / "numba", explicit=True) is None


def test_warmup_compiles_every_variant_a_run_uses(tmp_path):
    """After ensure_compiled with every lane median (as 'stcal-dask warmup' does), runs (one
    integration; several, on the sigma-clip path; with the optional fit outputs) compile nothing
    more: no new file in the cache."""
    from stcal_dask.engine.warmup import cache_dir, ensure_compiled, is_warm

    ensure_compiled(quiet=True, every=True)
    assert is_warm()
    cache = cache_dir()

    def files():
        return {p.name for p in cache.rglob("*.nb*")}

    before = files()
    exe = str(Path(sys.executable).parent / "stcal-dask")
    env = {**os.environ, "PYTHONPATH": str(Path(stcal_dask.__file__).parents[1])}
    for name, shape, extra in (("a", "1x10x64x64", []), ("b", "5x25x32x32", ["--save-opt"])):
        expo = tmp_path / f"{name}_ramp.fits"
        subprocess.run([exe, "simulate", str(expo), "--shape", shape, "--seed", "3", "-q",
                        "--scheduler", "threads"], check=True, env=env)
        out = tmp_path / f"out_{name}"
        out.mkdir()
        got = subprocess.run([exe, "run", str(expo), "--gain", str(tmp_path / f"{name}_gain.fits"),
                              "--readnoise", str(tmp_path / f"{name}_readnoise.fits"), "-o",
                              str(out), "-q", *extra], env=env, capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        assert "compiling" not in got.stderr
    assert files() == before


def test_an_exposures_variants_are_compiled_by_the_warm_up():
    """ensure_compiled with an exposure's shape and parameters (as a run does once it has
    opened its input) compiles, or loads, the variants that exposure's tiles call beyond the
    usual run's (here: the lane medians of its count of differences, in the jump and in the
    ramp fit, and the row-wise single-pass detection) before the first tile, and stamps them."""
    from stcal_dask.engine.warmup import ensure_compiled, exposure_kernels, is_warm
    from stcal_dask.kernels import _jump_numba, _median_numba
    from stcal_dask.kernels.jump import JumpParams
    from stcal_dask.kernels.ramp_fit import RampFitParams

    ensure_compiled(quiet=True)
    wanted = [_median_numba.lane_mid(np.float32, 6), _median_numba.lane_mid(np.float64, 6, True),
              _jump_numba.single_detection(np.float32)]
    iterative = exposure_kernels(1, 7, JumpParams(), RampFitParams())
    single = exposure_kernels(1, 7, JumpParams(min_diffs_single_pass=5), RampFitParams())
    ensure_compiled(quiet=True, exposures=(iterative, single))
    assert is_warm((iterative, single))
    for fn in wanted:
        assert fn.signature().args in fn.dispatcher.overloads, fn.dispatcher


# a process holding the compile lock forks a child (as a LocalCluster starting its workers may),
# leaves the block, says so and stays alive with its child
FORK_WHILE_LOCKED = """
import os, sys, time
from pathlib import Path
from stcal_dask.engine.warmup import compile_lock
with compile_lock(Path(sys.argv[1])):
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_a_child_forked_while_the_compile_lock_is_held_does_not_keep_it(tmp_path):
    """The compile lock is released when its holder's block ends, although a child forked
    meanwhile still has the file open (with flock the child kept it: every other process
    waited for that child to end)."""
    import fcntl

    lock = tmp_path / "compile.lock"
    env = {**os.environ, "PYTHONPATH": str(Path(stcal_dask.__file__).parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", FORK_WHILE_LOCKED, str(lock)], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(holder.stdout.readline())
        assert os.path.exists(f"/proc/{child}")
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises if still held
        finally:
            os.close(fd)
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()


def test_two_warmups_at_once_compile_once(tmp_path):
    """Two 'stcal-dask warmup' started together on a cache directory without its stamps: one
    compiles, the other waits for it and then only loads; both succeed. The cache directory is
    a copy of this machine's warm one without its stamps (as in test_cluster's cold-cache
    test): both go through the compile path, whose lock is what this test is about, but the
    one that compiles loads the machine code instead of generating it all again (the
    fresh-venv install test of test_deploy compiles everything from nothing)."""
    from numba.core.caching import _CacheLocator

    from stcal_dask import kernels
    from stcal_dask.engine.warmup import cache_dir, ensure_compiled

    ensure_compiled(quiet=True, every=True)
    sub = _CacheLocator.get_suitable_cache_subpath(kernels.__file__)
    exe = str(Path(sys.executable).parent / "stcal-dask")
    cache = tmp_path / "cache"
    shutil.copytree(cache_dir() / sub, cache / sub)
    assert not list(cache.glob("stcal-dask-*"))  # no stamp: the warm-ups must take the lock
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR",)}
    env.update({"PYTHONPATH": str(Path(stcal_dask.__file__).parents[1]),
                "STCAL_DASK_CACHE_DIR": str(cache)})
    procs = [subprocess.Popen([exe, "warmup"], env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = []
    for p in procs:
        errs.append(p.communicate(timeout=1500)[1])
        assert p.returncode == 0, errs[-1]
    compiled = [e for e in errs if "compiling the numba kernels for this machine" in e]
    assert len(compiled) == 1, errs
    waited = [e for e in errs if "waiting for another process" in e]
    assert len(waited) == 1 and "kernels compiled in" not in waited[0], errs


# compile one small kernel variant into the cache directory given as argv[1] and say so
COMPILE_ONE = """
import sys
import numpy as np
from stcal_dask.kernels import _median_numba as m
m.mid_scratch(np.zeros((3, 4), np.float32))
print("stored", flush=True)
"""


def test_a_variant_is_stored_under_its_functions_lock(tmp_path):
    """numba rewrites a function's cache index without a lock; the kernels' functions store a
    new variant only while holding that function's lock file, so a process storing one while
    another process holds the lock waits, then stores it (and loads it the next time)."""
    from stcal_dask.kernels import _median_numba
    from stcal_dask.kernels.numba_cache import file_lock

    cache = tmp_path / "cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update({"PYTHONPATH": str(Path(stcal_dask.__file__).parents[1]),
                "STCAL_DASK_CACHE_DIR": str(cache)})
    assert getattr(_median_numba.mid_scratch._cache.save_overload, "locked_by_stcal_dask", False)
    # the lock file of mid_scratch's cache writes
    lock = cache / f".save-{_median_numba.__name__}.mid_scratch"
    with file_lock(lock):
        proc = subprocess.Popen([sys.executable, "-c", COMPILE_ONE], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # compiles, then waits for the lock (blocked in the kernel's table of locks)
        assert waits_for_lock(proc.pid, lock), proc.stderr.read()
        time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read()
        assert waits_for_lock(proc.pid, lock, timeout=0)
        assert not list(cache.rglob("*mid_scratch*.nbi"))  # nothing stored while locked
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "stored" in out, err
    assert list(cache.rglob("*mid_scratch*.nbi"))
    again = subprocess.run([sys.executable, "-c", COMPILE_ONE + PROBE_STATS], env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "hits 1 misses 0" in again.stdout, again.stdout


PROBE_STATS = """
stats = m.mid_scratch.stats
print("hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()))
"""


def test_the_compile_helper_runs_this_package_whatever_its_start_directory(tmp_path,
                                                                           monkeypatch):
    """The helper process that compiles half of the kernels imports the package its parent
    runs, not another copy in the directory it starts in ("python -c" puts that first on its
    path: numba would file that copy's code apart, and the parent would compile it all again).
    Here that directory holds a copy that cannot be imported."""
    from stcal_dask.engine import warmup

    decoy = tmp_path / "stcal_dask"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the copy in the start directory')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    helper = warmup._helper((), False, ())  # compiles nothing: imports, then exits
    assert helper is not None
    assert helper.wait(timeout=120) == 0


def test_an_exposures_variants_alone_compile_without_a_helper_process(monkeypatch):
    """Once the usual run's variants are in the cache, an exposure's (a few small functions)
    are compiled in the process itself: a helper process would load the libraries and every
    kernel again for them."""
    from stcal_dask.engine import warmup
    from stcal_dask.kernels import _median_numba
    from stcal_dask.kernels.jump import JumpParams
    from stcal_dask.kernels.ramp_fit import RampFitParams

    warmup.ensure_compiled(quiet=True)
    started = []
    monkeypatch.setattr(warmup, "_helper", lambda *a: started.append(a))
    exposure = warmup.exposure_kernels(1, 8, JumpParams(), RampFitParams())
    warmup._compile_all(False, (exposure,), base_ready=True)
    assert started == []
    for fn in (_median_numba.lane_mid(np.float32, 7), _median_numba.lane_mid(np.float64, 7, True)):
        assert fn.signature().args in fn.dispatcher.overloads, fn.dispatcher
    warmup._compile_all(False, (exposure,))  # the usual run's too: the helper is asked for
    assert len(started) == 1
