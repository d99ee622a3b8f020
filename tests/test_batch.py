"""``stcal-dask run INPUT...``: a batch of exposures on one cluster (stcal_dask.cli.batch).

Every run is the real command in its own process, on the embedded LocalCluster or on a
``dask scheduler`` + ``dask worker`` cluster started here on 127.0.0.1: isolation of bad inputs,
the summary and JSON report, resume (skip complete, redo changed input or parameter,
``--overwrite``), a worker SIGKILLed mid-batch (products bit-identical to an undisturbed run),
SIGINT/SIGTERM of the batch (committed exposures kept, nothing in flight looks complete, no
process left, a re-run completes only the rest).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from astropy.io import fits
from conftest import dask_processes

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent / "stcal-dask")
DASK = str(Path(sys.executable).parent / "dask")
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SHAPE = "1x10x192x192"
N = 4


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    """N seeded FITS exposures with their references, in one folder."""
    d = tmp_path_factory.mktemp("batch-in")
    for i in range(N):
        subprocess.run([EXE, "simulate", str(d / f"e{i}_ramp.fits"), "--shape", SHAPE,
                        "--seed", str(10 + i), "-q", "--scheduler", "threads"], check=True,
                       env=ENV)
    return d


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """``dask scheduler`` and two single-threaded ``dask worker`` processes on 127.0.0.1."""
    with dask_processes(tmp_path_factory.mktemp("batch-cluster"), workers=2, threads=1,
                        env={"PYTHONPATH": str(REPO)}) as address:
        yield address


def _run(args, cwd, **kw):
    return subprocess.run([EXE, "run", *map(str, args)], env=ENV, cwd=cwd, capture_output=True,
                          text=True, timeout=900, **kw)


def _data(path: Path) -> list[bytes]:
    with fits.open(path) as hdul:
        return [np.ascontiguousarray(h.data).tobytes() for h in hdul if h.data is not None]


def _products(out: Path) -> dict[str, list[bytes]]:
    return {p.name: _data(p) for p in sorted(out.glob("*_rate*.fits"))}


def _report(path: Path) -> dict[str, dict]:
    return {Path(e["input"]).name: e for e in json.loads(path.read_text())["exposures"]}


@pytest.fixture(scope="module")
def reference(exposures, external, tmp_path_factory):
    """The products of an undisturbed batch over every exposure (external cluster)."""
    out = tmp_path_factory.mktemp("batch-ref")
    got = _run([exposures, "-o", out, "--scheduler", external, "-q"], exposures)
    assert got.returncode == 0, got.stderr
    return _products(out)


def test_isolation_summary_and_report_local_cluster(exposures, reference, tmp_path):
    """A corrupt file, a missing path, a pattern matching nothing and an input without its
    references fail alone with one line each; the good ones complete; exit status 1."""
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "corrupt_ramp.fits").write_bytes(b"SIMPLE  =  not a fits file" * 40)
    for ref in ("gain", "readnoise"):
        shutil.copy(exposures / f"e0_{ref}.fits", bad / f"corrupt_{ref}.fits")
    shutil.copy(exposures / "e1_ramp.fits", bad / "noref_ramp.fits")
    out = tmp_path / "out"
    out.mkdir()
    before = {p.name: p.read_bytes() for p in bad.iterdir()}
    got = _run([exposures / "e0_ramp.fits", bad, tmp_path / "missing_ramp.fits",
                f"{tmp_path}/nothing*_ramp.fits", exposures / "e1_ramp.fits", "-o", out,
                "--report", out / "report.json"], tmp_path)
    assert got.returncode == 1, got.stderr
    assert "Traceback" not in got.stderr
    report = _report(out / "report.json")
    status = {k: v["status"] for k, v in report.items()}
    assert status == {"e0_ramp.fits": "done", "e1_ramp.fits": "done",
                      "corrupt_ramp.fits": "failed", "noref_ramp.fits": "failed",
                      "missing_ramp.fits": "failed", "nothing*_ramp.fits": "failed"}, status
    for name, entry in report.items():
        if entry["status"] == "failed":
            assert entry["reason"] and "\n" not in entry["reason"]
            assert name.split("*")[0] in got.stderr
    assert "corrupt_ramp.fits" in report["corrupt_ramp.fits"]["reason"] or \
        "fits" in report["corrupt_ramp.fits"]["reason"].lower()
    assert report["e0_ramp.fits"]["primary_jumps"] > 0
    # the summary table: a header and one row per input
    table = [ln for ln in got.stderr.splitlines() if ln.startswith(("input ", str(exposures),
                                                                    str(bad), str(tmp_path)))]
    assert table[0].split() == ["input", "status", "primary", "jumps", "seconds"]
    ours = _products(out)
    assert set(ours) == {"e0_rate.fits", "e0_rateints.fits", "e1_rate.fits",
                         "e1_rateints.fits"}
    for name, blocks in ours.items():
        assert blocks == reference[name], name
    assert sorted(p.name for p in out.glob("*_complete.json")) == ["e0_complete.json",
                                                                   "e1_complete.json"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert {p.name: p.read_bytes() for p in bad.iterdir()} == before  # inputs untouched


def test_exposures_in_flight_never_exceed_the_bound(exposures, reference, tmp_path):
    """With --max-in-flight 3, three of the four exposures run at once (their [started,
    finished] intervals in the report overlap) and never a fourth; the products equal the
    reference run's."""
    out = tmp_path / "out"
    got = _run([exposures, "-o", out, "--max-in-flight", "3", "--report", tmp_path / "r.json",
                "-q"], tmp_path)
    assert got.returncode == 0, got.stderr
    spans = [(e["started"], e["finished"]) for e in _report(tmp_path / "r.json").values()]
    assert len(spans) == N and all(0 <= a < b for a, b in spans), spans
    in_flight = [sum(a <= start < b for a, b in spans) for start, _ in spans]
    assert max(in_flight) == 3, spans
    assert _products(out) == reference


def test_resume_skips_complete_and_redoes_changed(exposures, external, tmp_path):
    """Re-running skips every complete exposure; a changed input or parameter redoes only what
    it affects; --overwrite redoes all; --inputs-from lists inputs."""
    inputs = tmp_path / "in"
    shutil.copytree(exposures, inputs)
    out = tmp_path / "out"
    out.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("# the batch\n" + "".join(f"in/e{i}_ramp.fits\n" for i in range(N)))
    common = ["--inputs-from", listing, "-o", out, "--scheduler", external,
              "--report", tmp_path / "r.json"]
    first = _run(common, tmp_path)
    assert first.returncode == 0, first.stderr
    assert {e["status"] for e in _report(tmp_path / "r.json").values()} == {"done"}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = _run(common, tmp_path)
    assert again.returncode == 0, again.stderr
    assert {e["status"] for e in _report(tmp_path / "r.json").values()} == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    # a changed input: e2 rewritten with other data (another seed)
    subprocess.run([EXE, "simulate", str(inputs / "e2_ramp.fits"), "--shape", SHAPE, "--seed",
                    "99", "-q", "--scheduler", "threads", "--overwrite"], check=True, env=ENV)
    changed = _run(common, tmp_path)
    assert changed.returncode == 0, changed.stderr
    status = {k: v["status"] for k, v in _report(tmp_path / "r.json").items()}
    assert status == {"e0_ramp.fits": "skipped", "e1_ramp.fits": "skipped",
                      "e2_ramp.fits": "done", "e3_ramp.fits": "skipped"}

    # a changed parameter redoes all; --overwrite redoes all too
    for extra in (["--jump.rejection_threshold", "5"], ["--jump.rejection_threshold", "5",
                                                        "--overwrite"]):
        got = _run([*common, *extra], tmp_path)
        assert got.returncode == 0, got.stderr
        assert {e["status"] for e in _report(tmp_path / "r.json").values()} == {"done"}
    # a product removed by hand: that exposure is redone
    (out / "e3_rateints.fits").unlink()
    got = _run([*common, "--jump.rejection_threshold", "5"], tmp_path)
    status = {k: v["status"] for k, v in _report(tmp_path / "r.json").items()}
    assert status["e3_ramp.fits"] == "done" and status["e0_ramp.fits"] == "skipped"


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 600) -> str:
    """Read proc's stderr until a line containing ``text``; returns what was read."""
    seen = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never printed:\n{''.join(seen)}")


def _kill_one_worker(address: str) -> int:
    from distributed import Client

    with Client(address, timeout="30s") as c:
        pids = c.run(os.getpid)
    pid = sorted(pids.values())[0]
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("where", ["local", "external"])
def test_worker_sigkill_mid_batch_gives_identical_products(where, exposures, external,
                                                           reference, tmp_path):
    """A worker SIGKILLed while the batch runs: its tasks re-run elsewhere, every exposure
    completes, and the products are bit-identical to the undisturbed run's."""
    out = tmp_path / "out"
    out.mkdir()
    args = [exposures, "-o", out, "--max-in-flight", "2"]
    args += ["--scheduler", external] if where == "external" else ["--n-workers", "2",
                                                                    "--threads-per-worker", "1"]
    proc = subprocess.Popen([EXE, "run", *map(str, args)], env=ENV, cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        _wait_for(proc, "[1/")  # one exposure committed, the next ones in flight
        if where == "external":
            _kill_one_worker(external)
        else:  # a worker process of the embedded LocalCluster (a child of the command)
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "resource_tracker" not in " ".join(c.cmdline())]
            assert len(workers) >= 2, workers
            workers[0].send_signal(signal.SIGKILL)
        rest = proc.stderr.read()
        assert proc.wait(600) == 0, rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert _products(out) == reference
    assert len(list(out.glob("*_complete.json"))) == N


@pytest.mark.parametrize(("where", "sig", "status"), [
    ("local", signal.SIGTERM, 143), ("external", signal.SIGINT, 130),
])
def test_interrupted_batch_keeps_committed_and_resumes(where, sig, status, exposures, external,
                                                       reference, tmp_path):
    """SIGTERM/SIGINT after the first exposure is committed: exit 143/130, committed
    exposures keep their products and records, nothing else looks complete (no record, no
    temporaries), no process is left; a re-run does only the rest, and the products equal an
    undisturbed run's."""
    out = tmp_path / "out"
    out.mkdir()
    args = [exposures, "-o", out, "--max-in-flight", "1", "--report", tmp_path / "r.json"]
    if where == "external":
        args += ["--scheduler", external]
    proc = subprocess.Popen([EXE, "run", *map(str, args)], env=ENV, cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        _wait_for(proc, "[1/")
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(sig)
        rest = proc.stderr.read()
        assert proc.wait(120) == status, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1.0)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, alive
    records = sorted(p.name for p in out.glob("*_complete.json"))
    report = _report(tmp_path / "r.json")
    done = sorted(k for k, v in report.items() if v["status"] == "done")
    assert 1 <= len(done) < N and len(records) == len(done)
    assert all(v["status"] == "interrupted" for k, v in report.items() if k not in done), \
        (report, rest)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())
    for name in done:
        stem = name.replace("_ramp.fits", "")
        assert _products(out)[f"{stem}_rate.fits"] == reference[f"{stem}_rate.fits"]

    again = _run([exposures, "-o", out, "--report", tmp_path / "r.json", "-q"]
                 + (["--scheduler", external] if where == "external" else []), tmp_path)
    assert again.returncode == 0, again.stderr
    report = _report(tmp_path / "r.json")
    assert sorted(k for k, v in report.items() if v["status"] == "skipped") == done
    assert all(v["status"] == "done" for k, v in report.items() if k not in done)
    assert _products(out) == reference


def test_interrupt_between_queue_and_future_keeps_the_outcome(exposures, tmp_path, monkeypatch):
    """A Ctrl-C landing right after an exposure was handed to its thread, before the batch kept
    its future (the signal can arrive at any bytecode): the exposure is reported as what its
    completion record says (done, or interrupted with nothing committed), never left pending,
    and every "done" has its record."""
    from stcal_dask.cli import batch, main

    class InterruptedAfterSecondSubmit(batch.ThreadPoolExecutor):
        calls = 0

        def submit(self, *args, **kwargs):
            fut = super().submit(*args, **kwargs)
            type(self).calls += 1
            if type(self).calls == 2:
                fut.result()  # let it finish: its outcome must still be reported
                raise KeyboardInterrupt
            return fut

    monkeypatch.setattr(batch, "ThreadPoolExecutor", InterruptedAfterSecondSubmit)
    out = tmp_path / "out"
    rc = main(["run", str(exposures), "-o", str(out), "--max-in-flight", "1", "--scheduler",
               "threads", "--report", str(tmp_path / "r.json"), "-q"])
    assert rc == 130
    report = _report(tmp_path / "r.json")
    status = {k: v["status"] for k, v in report.items()}
    assert status == {"e0_ramp.fits": "done", "e1_ramp.fits": "done",
                      "e2_ramp.fits": "interrupted", "e3_ramp.fits": "interrupted"}, status
    assert report["e1_ramp.fits"]["primary_jumps"] > 0
    assert sorted(p.name for p in out.glob("*_complete.json")) == ["e0_complete.json",
                                                                   "e1_complete.json"]


def test_in_flight_and_whole_frame_tiles_by_default(exposures):
    """On the embedded LocalCluster the default --max-in-flight is its threads + 1 and every
    exposure whose working memory fits its share is one whole-frame tile; an explicit bound no
    larger than the threads, an external cluster or a memory limit too small for a frame keeps
    the tiles of a single run."""
    import argparse

    from stcal_dask.cli import batch, steps
    from stcal_dask.engine.cluster import local_layout

    def ns(**kw):
        base = {"max_in_flight": None, "scheduler": None, "n_workers": None,
                "threads_per_worker": None, "memory_limit": None}
        return argparse.Namespace(**{**base, **kw})

    n, t = local_layout(None, None)
    assert batch.in_flight(ns()) == n * t + 1
    assert batch.in_flight(ns(n_workers=3)) == 4  # 3 single-threaded workers
    assert batch.in_flight(ns(max_in_flight=1)) == 1
    assert batch.in_flight(ns(scheduler="tcp://127.0.0.1:8786")) == batch.EXTERNAL_IN_FLIGHT
    assert batch.frame_budget(ns(), n * t) is None  # no more exposures than threads
    assert batch.frame_budget(ns(scheduler="tcp://127.0.0.1:8786"), 8) is None
    assert batch.frame_budget(ns(n_workers=1, memory_limit="1GB"), 3) == 10**9 // 6

    ramp_path = str(exposures / "e0_ramp.fits")
    ny, nx = (int(v) for v in SHAPE.split("x")[2:])

    def tile(**kw):
        args = ns(input=ramp_path, gain=None, readnoise=None, **kw)
        ramp = steps.open_input(args, ramp_path, None)
        return steps.tile_of(steps._retile(args, ramp, 2))

    assert tile(frame_budget=batch.frame_budget(ns(), n * t + 1)) == (ny, nx)
    tiled = tile(frame_budget=1000, tiles_per_thread=batch.BATCH_TILES_PER_THREAD)
    assert tiled[0] * tiled[1] < ny * nx  # the frame does not fit 1000 bytes: tiles
