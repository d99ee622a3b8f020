"""The bad-input matrix: every kind of user mistake or damaged input, through the command line.

Each case runs ``stcal-dask`` (in this process, stderr captured at the file-descriptor level so
that worker processes' output counts too) in an empty working folder and asserts:

* the exit status (2 for a user error);
* exactly one line on stderr, ``stcal-dask: error: ...``, naming what is wrong (a needle);
* the inputs' bytes are unchanged (hash before / after of every file of the shared exposure and
  of the case's own inputs);
* nothing at the final output names and no temporaries: the working folder and the exposure's
  folder hold exactly the files they held before.

One small exposure (FITS ramp + references, the same as a zarr store with several chunks per
array, a rate product, a mosaic WCS input) is made once for the module; damaged copies are made
per case.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from stcal_dask.cli import main

SHAPE = "1x5x32x40"
THREADS = ["--scheduler", "threads", "--quiet"]


@pytest.fixture(scope="module")
def expo(tmp_path_factory):
    """The shared, never modified inputs of every case."""
    d = tmp_path_factory.mktemp("bad_input_expo")
    ramp = d / "expo_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", SHAPE, "--seed", "3", *THREADS]) == 0
    store = d / "expo_ramp.zarr"
    assert main(["ingest", str(ramp), "--output", str(store), "--tile", "16x20", *THREADS]) == 0
    out = d / "products"
    assert main(["run", str(ramp), "-o", str(out), *THREADS]) == 0
    # a mosaic input with a WCS (sidecar ASDF: wcs, wcsinfo, shape)
    import asdf

    from stcal_dask.sim.wcs import imaging_wcs

    exp = imaging_wcs(53.16, -27.79, 120.0, shape=(40, 48))
    side = d / "wcs_expo.asdf"
    asdf.AsdfFile({"wcs": exp.wcs, "wcsinfo": exp.wcsinfo, "shape": [40, 48]}).write_to(side)
    return {"dir": d, "ramp": ramp, "gain": d / "expo_gain.fits",
            "readnoise": d / "expo_readnoise.fits", "zarr": store,
            "rate": out / "expo_rate.fits", "wcs": side}


@dataclass
class Case:
    argv: list
    needle: str
    status: int = 2
    env: dict = field(default_factory=dict)


def _copy(src: Path, dst: Path) -> Path:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def _bad_fits(src: Path, dst: Path, edit) -> Path:
    with fits.open(src) as h:
        hdul = fits.HDUList([hdu.copy() for hdu in h])
    edit(hdul)
    hdul.writeto(dst)
    return dst


def _refs(e):
    return ["--gain", str(e["gain"]), "--readnoise", str(e["readnoise"])]


def _missing_chunk(e, w, array, key):
    store = _copy(e["zarr"], w / "cut_ramp.zarr")
    (store / array / key).unlink()
    return Case(["run", store, *THREADS], f"array {array} chunk {key} is missing")


def _corrupt_chunk(e, w, extra):
    store = _copy(e["zarr"], w / "bad_ramp.zarr")
    (store / "sci" / "c/0/0/1/1").write_bytes(b"x\n")
    return Case(["run", store, *extra], "array sci chunk c/0/0/1/1 cannot be read")


def _drop(key):
    def edit(h):
        del h[0].header[key]
    return edit


def _set(key, value):
    def edit(h):
        h[0].header[key] = value
    return edit


def _sci_3d(h):
    h["SCI"].data = h["SCI"].data[0]


def _float_groupdq(h):
    h["GROUPDQ"].data = h["GROUPDQ"].data.astype(np.float32) + 0.5


def _small_gain(w):
    p = w / "small_gain.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((10, 10), np.float32),
                                                   name="SCI")]).writeto(p)
    return p


def _existing_output(e, w):
    out = w / "exists"
    out.mkdir()
    (out / "expo_rate.fits").write_bytes(b"x")
    return Case(["run", e["ramp"], *_refs(e), "-o", out, *THREADS], "use --overwrite")


def _input_is_output(e, w):
    store = _copy(e["zarr"], w / "expo_rate.zarr")  # its rate product would be itself
    return Case(["rampfit", store, "-o", w, *THREADS], "expo_rate.zarr")


def _truncated(e, w):
    p = w / "trunc_ramp.fits"
    p.write_bytes(e["ramp"].read_bytes()[:8000])
    return Case(["run", p, *_refs(e), *THREADS], "trunc_ramp.fits")


def _text_as_fits(e, w):
    p = w / "text_ramp.fits"
    p.write_text("not a FITS file\n")
    return Case(["run", p, *_refs(e), *THREADS], "is not a FITS file")


def _file_as_output_dir(e, w, command):
    f = w / "afile"
    f.write_text("x")
    argv = (["run", e["ramp"], *_refs(e)] if command == "run" else ["demo", "--size", "16"])
    return Case([*argv, "-o", f, *THREADS], "is a file, not a directory")


def _uncreatable_output_dir(e, w):
    f = w / "afile"
    f.write_text("x")
    return Case(["run", e["ramp"], *_refs(e), "-o", f / "sub", *THREADS], "cannot be created")


def _workers_dying(e, w, monkeypatch):
    from distributed.scheduler import KilledWorker

    import stcal_dask.engine.cluster as cluster

    def dying(*collections, **kwargs):
        raise KilledWorker("('_jump_block-abc', 0, 0)", "tcp://127.0.0.1:1", 3)

    monkeypatch.setattr(cluster, "compute", dying)
    return Case(["run", e["ramp"], "-o", w, "--quiet", "--n-workers", "1", "--memory-limit",
                 "2GB"], "dask workers died repeatedly")


CASES: dict[str, Callable] = {
    # inputs that do not exist or are not what they claim
    "missing file": lambda e, w: Case(["run", w / "nope_ramp.fits", *_refs(e), *THREADS],
                                      "does not exist"),
    "missing reference": lambda e, w: Case(["run", _copy(e["ramp"], w / "lone_ramp.fits"),
                                            *THREADS], "--gain"),
    "missing gain file": lambda e, w: Case(["run", e["ramp"], "--gain", w / "nope.fits",
                                            "--readnoise", e["readnoise"], *THREADS],
                                           "does not exist"),
    "neither zarr nor fits": lambda e, w: Case(["run", _copy(e["ramp"], w / "x.txt"),
                                                *THREADS], "neither a zarr"),
    "empty folder as store": lambda e, w: Case(["run", _mkdir(w / "empty.zarr"), *THREADS],
                                               "is not a zarr"),
    "text file as fits": _text_as_fits,
    "truncated fits": _truncated,
    "gzip fits": lambda e, w: Case(["run", _gzip(e["ramp"], w / "z_ramp.fits.gz"), *_refs(e),
                                    *THREADS], "compressed"),
    # FITS content
    "missing keyword": lambda e, w: Case(["run", _bad_fits(e["ramp"], w / "a_ramp.fits",
                                                           _drop("NGROUPS")), *_refs(e),
                                          *THREADS], "NGROUPS"),
    "keyword mismatch": lambda e, w: Case(["run", _bad_fits(e["ramp"], w / "n_ramp.fits",
                                                            _set("NINTS", 3)), *_refs(e),
                                           *THREADS], "NINTS"),
    "wrong shape": lambda e, w: Case(["run", _bad_fits(e["ramp"], w / "b_ramp.fits", _sci_3d),
                                      *_refs(e), *THREADS], "SCI"),
    "wrong dtype": lambda e, w: Case(["run", _bad_fits(e["ramp"], w / "c_ramp.fits",
                                                       _float_groupdq), *_refs(e), *THREADS],
                                     "groupdq"),
    "reference shape": lambda e, w: Case(["run", e["ramp"], "--gain", _small_gain(w),
                                          "--readnoise", e["readnoise"], *THREADS], "gain"),
    # zarr stores: incomplete, corrupt, wrong content
    "missing sci chunk": lambda e, w: _missing_chunk(e, w, "sci", "c/0/0/1/0"),
    "missing readnoise chunk": lambda e, w: _missing_chunk(e, w, "readnoise", "c/0/1"),
    "corrupt chunk": lambda e, w: _corrupt_chunk(e, w, THREADS),
    "corrupt chunk on the local cluster": lambda e, w: _corrupt_chunk(
        e, w, ["--quiet", "--n-workers", "1", "--threads-per-worker", "2"]),
    "missing array": lambda e, w: Case(["run", _rm(_copy(e["zarr"], w / "d_ramp.zarr"),
                                                   "readnoise"), *THREADS],
                                       "missing array readnoise"),
    "references with a zarr input": lambda e, w: Case(["run", e["zarr"], *_refs(e), *THREADS],
                                                      "FITS ramps only"),
    # outputs
    "output exists": _existing_output,
    "input is the output": _input_is_output,
    "output dir is a file": lambda e, w: _file_as_output_dir(e, w, "run"),
    "demo output dir is a file": lambda e, w: _file_as_output_dir(e, w, "demo"),
    "output dir cannot be created": _uncreatable_output_dir,
    "simulate output exists": lambda e, w: Case(["simulate", _copy(e["zarr"], w / "s.zarr"),
                                                 "--shape", "1x3x8x8", *THREADS],
                                                "use --overwrite"),
    "ingest output exists": lambda e, w: Case(["ingest", e["ramp"], "--output",
                                               _copy(e["zarr"], w / "i.zarr"), *THREADS],
                                              "use --overwrite"),
    "ingest of a zarr store": lambda e, w: Case(["ingest", e["zarr"], *THREADS],
                                                "ingest reads a JWST FITS"),
    "bad output name": lambda e, w: Case(["simulate", w / "x.txt", "--shape", "1x3x8x8"],
                                         ".zarr"),
    # options
    "bad parameter value": lambda e, w: Case(["run", e["ramp"], "--jump.rejection_threshold",
                                              "-1", *THREADS], "rejection_threshold"),
    "bad parameter type": lambda e, w: Case(["run", e["ramp"], "--rampfit.save_opt", "perhaps",
                                             *THREADS], "true or false"),
    "bad integer parameter": lambda e, w: Case(["run", e["ramp"], "--jump.minimum_groups", "x",
                                                *THREADS], "must be an integer"),
    "option of another step": lambda e, w: Case(["jump", e["ramp"],
                                                 "--rampfit.save_opt", "true", *THREADS],
                                                "unrecognized"),
    "unknown option": lambda e, w: Case(["run", e["ramp"], "--no-such-option"], "unrecognized"),
    "bad format": lambda e, w: Case(["run", e["ramp"], "--format", "hdf5"], "invalid choice"),
    "bad shape option": lambda e, w: Case(["simulate", w / "x.zarr", "--shape", "2x3"],
                                          "--shape"),
    "zero shape": lambda e, w: Case(["simulate", w / "x.zarr", "--shape", "0x3x8x8"],
                                    "--shape"),
    "bad cr rate": lambda e, w: Case(["simulate", w / "x.zarr", "--shape", "1x3x8x8",
                                      "--cr-rate", "2"], "--cr-rate"),
    "dither without pointing": lambda e, w: Case(["simulate", w / "x.zarr", "--shape",
                                                  "1x3x8x8", "--dither", "1", "2"],
                                                 "--pointing"),
    "pointing dec out of range": lambda e, w: Case(["simulate", w / "x.zarr", "--shape",
                                                    "1x3x8x8", "--pointing", "10", "95", "0"],
                                                   "DEC must be within"),
    "bad tile": lambda e, w: Case(["run", e["ramp"], "--tile", "0x5", *THREADS], "--tile"),
    "bad memory limit": lambda e, w: Case(["run", e["ramp"], "--memory-limit", "lots",
                                           *THREADS], "--memory-limit"),
    "tiny memory limit": lambda e, w: Case(["run", e["ramp"], "--memory-limit", "1MB"],
                                           "at least 32 MiB"),
    "zero workers": lambda e, w: Case(["run", e["ramp"], "--n-workers", "0"], "--n-workers"),
    "zero threads": lambda e, w: Case(["run", e["ramp"], "--threads-per-worker", "0"],
                                      "--threads-per-worker"),
    "malformed scheduler": lambda e, w: Case(["run", e["ramp"], "--scheduler", "not an address",
                                              "--quiet"], "tcp://HOST:PORT"),
    "unreachable scheduler": lambda e, w: Case(["run", e["ramp"], "--quiet"],
                                               "cannot reach dask scheduler",
                                               env={"DASK_SCHEDULER_ADDRESS":
                                                    "tcp://127.0.0.1:9"}),
    "bad worker start method": lambda e, w: Case(["run", e["ramp"], "--quiet"],
                                                 "STCAL_DASK_WORKER_START",
                                                 env={"STCAL_DASK_WORKER_START": "teleport"}),
    "demo size": lambda e, w: Case(["demo", "--size", "4", "-o", w / "d"], "--size"),
    "no command": lambda e, w: Case([], "required"),
    "workers dying": _workers_dying,
    "unknown command": lambda e, w: Case(["frobnicate"], "invalid choice"),
    # mosaic-wcs
    "mosaic input without a WCS": lambda e, w: Case(["mosaic-wcs", e["rate"], "-o",
                                                     w / "m.asdf", *THREADS], "wcs"),
    "mosaic input missing": lambda e, w: Case(["mosaic-wcs", w / "nope.fits", "-o",
                                               w / "m.asdf", *THREADS], "does not exist"),
    "mosaic output exists": lambda e, w: Case(["mosaic-wcs", e["wcs"], "-o",
                                               _copy(e["wcs"], w / "m.asdf"), *THREADS],
                                              "use --overwrite"),
    "mosaic pscale not positive": lambda e, w: Case(["mosaic-wcs", e["wcs"], "-o",
                                                     w / "m.asdf", "--pscale", "0", *THREADS],
                                                    "--pscale"),
    "mosaic grid too large": lambda e, w: Case(["mosaic-wcs", e["wcs"], "-o", w / "m.asdf",
                                                "--pscale", "0.00001", *THREADS],
                                               "give --shape"),
}


def _gzip(src: Path, dst: Path) -> Path:
    dst.write_bytes(gzip.compress(src.read_bytes()))
    return dst


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


def _rm(store: Path, array: str) -> Path:
    shutil.rmtree(store / array)
    return store


def _snapshot(*folders: Path) -> dict[str, str]:
    """Path -> sha256 of every file (and every folder, as 'dir') under ``folders``."""
    out = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("label", list(CASES))
def test_bad_input(label, expo, tmp_path, monkeypatch, capfd):
    work = tmp_path / "work"
    work.mkdir()
    make = CASES[label]
    case = (make(expo, work, monkeypatch) if make is _workers_dying else make(expo, work))
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(work)
    before = _snapshot(expo["dir"], work)
    capfd.readouterr()
    status = main([str(a) for a in case.argv])
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert status == case.status, f"exit {status}, stderr {err!r}"
    assert len(lines) == 1, err
    assert lines[0].startswith("stcal-dask: error: "), err
    assert case.needle in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert _snapshot(expo["dir"], work) == before  # inputs unchanged, nothing new anywhere

