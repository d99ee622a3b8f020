"""Interruptions that must not get lost: Ctrl-C/SIGTERM while the kernels compile on a cold
cache stops the run at once (not after minutes of compiling); an interrupt whose exception a
library swallowed still ends the command with status 130 and commits nothing; one swallowed in
a finaliser while the main thread is blocked in a wait is delivered again at once."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from stcal_dask.cli import main
from stcal_dask.cli.common import exit_status
from stcal_dask.errors import Terminated, clear_signals, record_signal, signalled
from stcal_dask.io.atomic import atomic_outputs

EXE = shutil.which("stcal-dask") or str(Path(sys.executable).parent / "stcal-dask")


def _swallowing_command(signum: int, out: Path):
    """A command that receives ``signum`` where a library swallows its exception, then writes
    an output as if nothing had happened."""

    def command() -> int:
        try:
            os.kill(os.getpid(), signum)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                time.sleep(0.001)
        except KeyboardInterrupt:  # what some library code does with it
            pass
        with atomic_outputs() as outputs:
            outputs.reserve(out / "product_rate.fits").write_text("looks complete")
        return 0

    return command


@pytest.mark.parametrize(("signum", "status", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                        (signal.SIGTERM, 143, "terminated")])
def test_a_swallowed_interrupt_still_ends_the_command_and_commits_nothing(
        tmp_path, capsys, signum, status, word):
    rc = exit_status(_swallowing_command(signum, tmp_path))
    assert rc == status
    assert capsys.readouterr().err.strip() == f"stcal-dask: {word}"
    assert list(tmp_path.iterdir()) == []
    assert signalled() is None  # forgotten when the command ends


def test_commit_refused_after_a_recorded_signal(tmp_path):
    """The one output mechanism commits nothing once a signal was recorded, in any thread."""
    errors = []

    def write() -> None:
        try:
            with atomic_outputs() as outputs:
                outputs.reserve(tmp_path / "x_rate.fits").write_text("data")
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    record_signal(signal.SIGTERM)
    try:
        t = threading.Thread(target=write)
        t.start()
        t.join()
    finally:
        clear_signals()
    assert len(errors) == 1 and isinstance(errors[0], Terminated)
    assert list(tmp_path.iterdir()) == []
    write()  # without a signal the same block commits
    assert [p.name for p in tmp_path.iterdir()] == ["x_rate.fits"]


class _RaisesInFinaliser:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the KeyboardInterrupt is raised (and swallowed) in here
            time.sleep(0.001)


def test_interrupt_swallowed_in_a_finaliser_reaches_a_blocked_main_thread(capsys):
    """Python drops the KeyboardInterrupt of a ``__del__``; it is delivered again as a signal,
    which also ends a wait the main thread is blocked in (a thread join, an event) at once."""

    def command() -> int:
        obj = _RaisesInFinaliser()
        del obj
        gc.collect()
        threading.Event().wait(30)  # blocked: only a real signal ends this wait early
        return 0

    t0 = time.perf_counter()
    assert exit_status(command) == 130
    assert time.perf_counter() - t0 < 10
    # (with a cluster log file in this process, the line names it: the swallowed report is there)
    err = capsys.readouterr().err.strip()
    assert err.startswith("stcal-dask: interrupted") and "\n" not in err, err


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    path = tmp_path_factory.mktemp("interrupts") / "big_ramp.fits"
    assert main(["simulate", str(path), "--shape", "2x10x256x256", "--seed", "1",
                 "--scheduler", "threads", "--quiet"]) == 0
    return path


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
def test_ctrl_c_while_the_kernels_compile_stops_at_once(ramp, tmp_path, batch):
    """A first run on a cold kernel cache compiles for minutes; Ctrl-C then stops it within
    seconds (a minute at the most on a loaded machine; the workers' compile is not waited
    for): status 130, the compile message and then only ``stcal-dask: interrupted``, no worker
    left, nothing in the output folder, and the cache holds no stamp of a compile that did not
    finish."""
    out = tmp_path / "out"
    out.mkdir()
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("STCAL_DASK_WORKER_START",
                                                          "NUMBA_CACHE_DIR")}
    env["STCAL_DASK_CACHE_DIR"] = str(cache)
    inputs = [str(ramp)]
    if batch:  # a batch catches its interruption itself (to report the exposures in flight)
        inputs.append(str(tmp_path / "copy_ramp.fits"))
        shutil.copy(ramp, inputs[-1])
    proc = subprocess.Popen([EXE, "run", *inputs, "-o", str(out), "--format", "fits",
                             "--quiet", "--n-workers", "2", "--threads-per-worker", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = ""
        while "compiling the numba kernels" not in first:  # the workers have started compiling
            first = proc.stderr.readline()
            assert first, "no compile message"
        time.sleep(1.0)
        children = psutil.Process(proc.pid).children(recursive=True)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert elapsed < 60, (elapsed, err)  # the compile takes minutes (~2 at load 2)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if batch:  # its summary table and report line follow
        assert "compiled in" not in err and "Traceback" not in err, err
        assert "interrupted" in err
    else:
        assert len(lines) == 1 and lines[0].startswith("stcal-dask: interrupted"), err
    assert [p for p in out.iterdir() if not p.name.startswith("copy")] == []
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], alive
    stamp = subprocess.run([sys.executable, "-c", "from stcal_dask.engine.warmup import "
                            "stamp_path; print(stamp_path())"], env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(stamp).parent == cache and not Path(stamp).exists()


def test_cleanup_interrupted_is_finished_then_the_interruption_raised(tmp_path):
    """The outputs' cleanup (temporaries, claims) runs to its end although an interruption
    lands in it; the first interruption is raised afterwards; one that never stops is raised
    after a few attempts."""
    from stcal_dask.io.atomic import to_the_end

    files = [tmp_path / f"f{i}" for i in range(4)]
    for f in files:
        f.write_text("x")
    hits = []

    def cleanup() -> None:
        for f in files:
            if f.exists() and not hits:
                hits.append(f)
                raise Terminated()  # lands after nothing was removed
            f.unlink(missing_ok=True)

    with pytest.raises(Terminated):
        to_the_end(cleanup)
    assert not any(f.exists() for f in files) and len(hits) == 1

    calls = []

    def never_done() -> None:
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        to_the_end(never_done, attempts=3)
    assert len(calls) == 3
    to_the_end(lambda: None)  # nothing raised without an interruption
