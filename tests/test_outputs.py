"""The one output protocol (:func:`stcal_dask.io.atomic.atomic_outputs`) and what the commands
get from it: outputs appear together or not at all; no command writes over an input; a full
disk, a file-size limit or an unwritable folder is one line with nothing left behind; SIGTERM
unwinds like Ctrl-C (exit 143); stale temporaries of dead runs are removed; output names are
claimed before any work, so a second run into the same names fails at once."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stcal_dask.cli import main
from stcal_dask.errors import UserInputError
from stcal_dask.io.atomic import (
    atomic_outputs,
    claim_path,
    owner_tag,
    partial_path,
    remove_path,
)

LOCAL = ["--scheduler", "threads", "--quiet"]
EXE = shutil.which("stcal-dask") or str(Path(sys.executable).parent / "stcal-dask")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def expo(tmp_path_factory):
    """A seeded FITS ramp with its reference files beside it."""
    d = tmp_path_factory.mktemp("outputs")
    ramp = d / "expo_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", "1x6x48x40", "--seed", "2", *LOCAL]) == 0
    return ramp


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stcal-dask: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------------
# the context manager


def test_outputs_appear_together_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError, match="second"):
        with atomic_outputs() as out:
            out.reserve(tmp_path / "a.txt").write_text("a")
            out.reserve(tmp_path / "b.txt").write_text("b")
            raise RuntimeError("the second output failed")
    assert list(tmp_path.iterdir()) == []
    with atomic_outputs() as out:
        a = out.reserve(tmp_path / "a.txt")
        a.write_text("a")
        out.reserve(tmp_path / "b.txt").write_text("b")
        assert not (tmp_path / "a.txt").exists()  # nothing appears before the block ends
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_a_failed_rename_takes_back_the_outputs_already_renamed(tmp_path):
    with pytest.raises(UserInputError, match="already exists"):
        with atomic_outputs() as out:
            out.reserve(tmp_path / "a.txt").write_text("a")
            out.reserve(tmp_path / "b.txt").write_text("b")
            (tmp_path / "b.txt").write_text("someone else's")  # appears meanwhile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    assert (tmp_path / "b.txt").read_text() == "someone else's"


def test_cleanup_never_raises_a_second_time():
    undeletable = Path("/proc/self/status")  # a real file that nobody may delete
    remove_path(undeletable)
    assert undeletable.exists()


def test_an_output_may_not_be_an_input_or_overlap_one(tmp_path):
    store = tmp_path / "in.zarr"
    store.mkdir()
    for target, needle in ((store, "would overwrite the input"),
                           (store / "inner", "overlap"),
                           (tmp_path, "overlap")):
        with pytest.raises(UserInputError, match=needle):
            with atomic_outputs(inputs=[store]) as out:
                out.claim(target, overwrite=True)


# ------------------------------------------------------------------------------------------------
# commands: inputs are never written over (one rule)


def _same_name_cases(expo: Path, tmp: Path):
    gain, rn = expo.with_name("expo_gain.fits"), expo.with_name("expo_readnoise.fits")
    out = tmp / "out"
    out.mkdir()
    fake_gain = out / "expo_rate.fits"
    shutil.copy(gain, fake_gain)
    return {
        "ingest over its FITS input": (
            ["ingest", expo, "--output", expo, "--overwrite"], expo, "zarr store"),
        "ingest into a FITS name": (["ingest", expo, "--output", tmp / "x.h5"], None, ".zarr"),
        "run over its gain file": (
            ["run", expo, "--gain", fake_gain, "--readnoise", rn, "-o", out, "--format", "fits",
             "--overwrite"], fake_gain, "would overwrite the input"),
        "jump over its input": (
            ["jump", expo.with_name("expo_jump.fits"), "--gain", gain, "--readnoise", rn,
             "-o", expo.parent, "--overwrite"], None, "would overwrite the input"),
    }


def test_no_command_writes_over_its_inputs(expo, tmp_path, capsys):
    # an X_jump.fits to run `jump` on (its output would be itself)
    assert main(["jump", str(expo), "-o", str(expo.parent), "--overwrite", *LOCAL]) == 0
    capsys.readouterr()  # (a cold kernel cache's compile message is that command's)
    before = {p: _sha(p) for p in expo.parent.iterdir() if p.is_file()}
    for label, (argv, protected, needle) in _same_name_cases(expo, tmp_path).items():
        snapshot = _sha(protected) if protected is not None else None
        rc = main([str(a) for a in argv] + LOCAL)
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and needle in line, (label, line)
        if protected is not None:
            assert protected.is_file() and _sha(protected) == snapshot, label
    assert {p: _sha(p) for p in before} == before
    assert _hidden(expo.parent) == [] and _hidden(tmp_path / "out") == []


def test_mosaic_wcs_never_writes_over_an_input(tmp_path, capsys):
    asdf = pytest.importorskip("asdf")
    from stcal_dask.sim.wcs import simple_imaging_wcs

    src = tmp_path / "a.asdf"
    asdf.AsdfFile({"wcs": simple_imaging_wcs((53.16, -27.79), (10, 10), (1e-5, 1e-5))}).write_to(
        src)
    snapshot = _sha(src)
    rc = main(["mosaic-wcs", str(src), "-o", str(src), "--overwrite", *LOCAL])
    assert rc == 2 and "would overwrite the input" in _one_error_line(capsys.readouterr().err)
    assert _sha(src) == snapshot and _hidden(tmp_path) == []


def test_demo_does_not_replace_an_earlier_demo_without_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--size", "32", "--ngroups", "4", "--seed", "1", "-o", str(out),
            "--scheduler", "threads", "--quiet"]
    assert main(argv) == 0
    before = {p.name: _sha(p) for p in out.iterdir()}
    assert main([*argv, "--seed", "2"]) == 2
    assert "already exists (use --overwrite" in _one_error_line(capsys.readouterr().err)
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert main([*argv, "--overwrite", "--seed", "2"]) == 0
    after = {p.name: _sha(p) for p in out.iterdir()}
    assert after.keys() == before.keys() and after["demo_rate.zarr"] != before["demo_rate.zarr"]


# ------------------------------------------------------------------------------------------------
# conditions of the machine: one line, nothing written


def _limited(fsize: int):
    def setup():
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return setup


def test_file_size_limit_is_one_line_and_nothing_is_written(tmp_path):
    """A real "file too large" (RLIMIT_FSIZE, as a quota stops a write): the rateints product
    (2 integrations) is larger than the limit, the rate product fits under it and is prepared
    first; neither may be left."""
    ramp = tmp_path / "two_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", "2x5x48x40", "--seed", "2", *LOCAL]) == 0
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [EXE, "run", str(ramp), "-o", str(out), "--format", "fits", *LOCAL],
        capture_output=True, text=True, timeout=300, preexec_fn=_limited(fsize=80_000))
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert f"file too large while writing {out / 'two_rateints.fits'}" in line, line
    assert line.endswith("; nothing was written")
    assert list(out.iterdir()) == []


def _mount_tmpfs(where: Path, options: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_unwritable_output_folder_is_one_line_before_any_work(expo, tmp_path):
    """A folder this user may not write (mode 555), or for root, who may write any folder, a
    read-only file system."""
    out = tmp_path / "locked"
    out.mkdir()
    if os.getuid() == 0:
        if not _mount_tmpfs(out, "ro,size=64k"):
            pytest.skip("root, and no read-only file system can be mounted here")
        reason = "read-only file system"
    else:
        out.chmod(0o555)
        reason = "permission denied"
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([EXE, "run", str(expo), "-o", str(out), "--format", "fits"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        line = _one_error_line(proc.stderr)
        assert f"cannot write to output directory {out} ({reason}" in line, line
        assert time.perf_counter() - t0 < 30  # no cluster was started
        assert list(out.iterdir()) == []
    finally:
        if os.getuid() == 0:
            subprocess.run(["umount", str(out)], check=True)
        else:
            out.chmod(0o755)


def test_full_disk_is_one_line_and_nothing_is_written(expo, tmp_path):
    """A real full file system: a 64 KiB tmpfs as the output folder (needs mount rights)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if not _mount_tmpfs(mnt, "size=64k"):
        pytest.skip("cannot mount a tmpfs here (the file-size-limit test covers the class)")
    try:
        proc = subprocess.run(
            [EXE, "run", str(expo), "-o", str(mnt), "--format", "zarr", "--save-jump",
             *LOCAL], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        line = _one_error_line(proc.stderr)
        assert "no space left on device while writing" in line, line
        assert line.endswith("nothing was written")
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ------------------------------------------------------------------------------------------------
# interrupted runs and concurrent runs


def test_sigterm_unwinds_like_ctrl_c(tmp_path):
    """SIGTERM during a run on the default (forked) cluster: exit 143, one line, the workers
    stopped, no temporary left."""
    ramp = tmp_path / "big_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", "2x10x512x512", "--seed", "1", *LOCAL]) == 0
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "STCAL_DASK_WORKER_START"}
    proc = subprocess.Popen([EXE, "run", str(ramp), "-o", str(out), "--format", "fits",
                             "--quiet", "--save-jump", "--tile", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not any(".partial-" in p.name for p in out.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the run should have forked its workers"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()  # "(details: LOG)" when the unwinding logged something
    assert len(lines) == 1 and lines[0].startswith("stcal-dask: terminated"), err
    assert list(out.iterdir()) == []
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], alive


def test_stale_temporaries_of_dead_runs_are_removed(expo, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    host = owner_tag().rsplit("-", 1)[0]
    stale_file = out / f".expo_rate.fits.partial-{host}-{dead}-0123abcd"
    stale_store = out / f".expo_rate.zarr.partial-{host}-{dead}-4567cdef"
    stale_jump = out / f".stcal-dask-jump.zarr.partial-{host}-{dead}-89abcdef"
    stale_claim = claim_path(out / "expo_rateints.fits")
    stale_file.write_bytes(b"x" * 100)
    (stale_store / "sci").mkdir(parents=True)
    stale_jump.mkdir()
    stale_claim.write_text(f"{host} {dead}\n")
    live = partial_path(out / "other.fits")  # this (live) process's temporary
    live.write_bytes(b"y")
    foreign = out / f".expo_rate.fits.partial-elsewhere-{dead}-0123abcd"  # another host's
    foreign.write_bytes(b"z")
    assert main(["run", str(expo), "-o", str(out), "--format", "fits", *LOCAL]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["expo_rate.fits", "expo_rateints.fits", live.name, foreign.name])


def test_output_names_are_claimed_before_any_work(expo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        host = owner_tag().rsplit("-", 1)[0]
        claim_path(out / "expo_rateints.fits").write_text(f"{host} {other.pid}\n")
        t0 = time.perf_counter()
        rc = main(["run", str(expo), "-o", str(out), "--format", "fits", "--overwrite",
                   "--n-workers", "1"])  # a LocalCluster would take seconds to start
        elapsed = time.perf_counter() - t0
        line = _one_error_line(capsys.readouterr().err)
        assert rc == 2 and "is being written by another stcal-dask run" in line, line
        assert f"process {other.pid}" in line
        assert elapsed < 2.0, elapsed
        assert sorted(p.name for p in out.iterdir()) == [".expo_rateints.fits.claim"]
    finally:
        other.kill()
        other.wait()
    # the claiming process is gone: its claim is stale and the next run takes over
    assert main(["run", str(expo), "-o", str(out), "--format", "fits", *LOCAL]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["expo_rate.fits", "expo_rateints.fits"]


@pytest.fixture(scope="module")
def big_expo(tmp_path_factory):
    """A ramp whose run lasts long enough to be interrupted at any of the delays below; the
    kernel variants its runs use are compiled here (a run on a cold cache says so on stderr:
    that case is tests/test_interrupts.py's)."""
    d = tmp_path_factory.mktemp("big")
    ramp = d / "big_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", "2x10x512x512", "--seed", "1", *LOCAL]) == 0
    assert main(["run", str(ramp), "-o", str(d / "warm"), "--format", "fits", "--save-jump",
                 "--tile", "64", *LOCAL]) == 0
    return ramp


@pytest.mark.parametrize("delay_s", [0.5, 1.0, 3.0])
def test_early_ctrl_c_is_one_line_with_no_worker_tracebacks(big_expo, tmp_path, delay_s):
    """Ctrl-C while the default (forked) cluster starts or its first tasks run: exit 130, the
    single line ``stcal-dask: interrupted`` (the workers' ``Compute Failed``/heartbeat
    records go to the log file, not to the terminal), no worker left, nothing in the output
    folder."""
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "STCAL_DASK_WORKER_START"}
    proc = subprocess.Popen([EXE, "run", str(big_expo), "-o", str(out), "--format", "fits",
                             "--quiet", "--save-jump", "--tile", "64", "--n-workers", "2",
                             "--threads-per-worker", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(delay_s)
    assert proc.poll() is None, proc.communicate()
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("stcal-dask: interrupted"), err
    assert "Traceback" not in err and "Compute Failed" not in err
    assert list(out.iterdir()) == []
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], alive


# ------------------------------------------------------------------------------------------------
# tasks that run again (a worker holding their results died while the results were still wanted)


def _rate_dataset(seed: int = 0):
    import dask.array as da
    import numpy as np
    import xarray as xr

    rng = np.random.default_rng(seed)
    ny, nx = 40, 36

    def var(dtype):
        a = (rng.normal(size=(ny, nx)) * 100).astype(dtype)
        return (("y", "x"), da.from_array(a, chunks=(20, 18)))

    return xr.Dataset({"sci": var("f4"), "err": var("f4"), "dq": var("u4"),
                       "var_poisson": var("f4"), "var_rnoise": var("f4")})


def _write_again(delayed) -> None:
    """Run every task of ``delayed``'s graph again, as a scheduler does after losing results."""
    import dask

    dask.compute(delayed, scheduler="sync")


@pytest.mark.parametrize("fmt", ["fits", "zarr"])
def test_write_and_commit_tasks_run_again_after_the_commit_change_nothing(fmt, tmp_path):
    """The write tasks and the commit task of a product, run again after the product was
    committed: no error, the product unchanged, no temporary left; a temporary removed before
    the commit is still an error (the re-run is not a silent success)."""
    from stcal_dask.io import write_dataset_atomic
    from stcal_dask.io.fits_io import write_rate_fits

    def pending_for(path):
        if fmt == "fits":
            return write_rate_fits(_rate_dataset(), path, header_from={}, compute=False)
        return write_dataset_atomic(_rate_dataset(), path, compute=False)

    target = tmp_path / f"x_rate.{fmt}"
    pending = pending_for(target)
    _write_again(pending.delayed)  # written and committed by its own commit task
    first = _sha(target)
    _write_again(pending.written)  # the write tasks alone, after the commit
    _write_again(pending.delayed)  # writes and commit again
    assert _sha(target) == first
    assert _hidden(tmp_path) == []

    # committed at the end of an atomic_outputs block, then the write tasks again
    target2 = tmp_path / f"y_rate.{fmt}"
    with atomic_outputs() as out:
        pending2 = out.add(pending_for(target2))
        _write_again(out.writes)
    second = _sha(target2)
    _write_again(pending2.written)
    assert _sha(target2) == second
    assert _hidden(tmp_path) == []

    # a temporary that disappeared before any commit: the write fails, nothing is committed
    target3 = tmp_path / f"z_rate.{fmt}"
    pending3 = pending_for(target3)
    remove_path(pending3.partial)
    with pytest.raises(Exception):  # noqa: B017, PT011 - FileNotFoundError or a missing chunk
        _write_again(pending3.delayed)
    assert not target3.exists()
    pending3.abort()
    assert _hidden(tmp_path) == []
