"""End-to-end tests of the ``stcal-dask`` command line: FITS and zarr inputs, stcal 1.20.0 parity
of the FITS products, stdatamodels opening them, and one-line user errors (exit code 2)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from astropy.io import fits

from stcal_dask import dqflags
from stcal_dask.cli import build_parser, main
from stcal_dask.kernels.jump import JumpParams
from stcal_dask.kernels.ramp_fit import RampFitParams, RampTiming

SHAPE = "2x6x40x48"
LOCAL = ["--scheduler", "threads", "--quiet"]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _run(argv, capsys=None):
    rc = main([str(a) for a in argv])
    return rc


@pytest.fixture(scope="module")
def fits_run(tmp_path_factory):
    """A seeded FITS exposure (with ZEROFRAME) and the CLI's run on it (all products)."""
    d = tmp_path_factory.mktemp("cli_fits")
    ramp = d / "expo_ramp.fits"
    assert main(["simulate", str(ramp), "--shape", SHAPE, "--seed", "7", "--zeroframe",
                 "--cr-rate", "0.05", *LOCAL]) == 0
    gain, rnoise = d / "expo_gain.fits", d / "expo_readnoise.fits"
    assert gain.exists() and rnoise.exists()
    before = {p: _sha(p) for p in (ramp, gain, rnoise)}
    out = d / "out"
    out.mkdir()
    rc = main(["run", str(ramp), "--gain", str(gain), "--readnoise", str(rnoise),
               "--output-dir", str(out), "--format", "both", "--save-opt", "--save-jump",
               "--tile", "16x20", *LOCAL])
    assert rc == 0
    after = {p: _sha(p) for p in (ramp, gain, rnoise)}
    return {"dir": d, "ramp": ramp, "gain": gain, "readnoise": rnoise, "out": out,
            "before": before, "after": after}


@pytest.fixture(scope="module")
def stcal_oracle(fits_run):
    """stcal 1.20.0 detect_jumps_data + ramp_fit_data on the same FITS input."""
    sys.path.insert(0, str(Path(__file__).parent))
    from oracle_jump import run_stcal_jump
    from oracle_ramp import run_stcal

    with fits.open(fits_run["ramp"]) as h:
        data = h["SCI"].data.astype(np.float32)
        gdq = h["GROUPDQ"].data.astype(np.uint8)
        pdq = h["PIXELDQ"].data.astype(np.uint32)
        zf = h["ZEROFRAME"].data.astype(np.float32)
        hdr = h[0].header
    gain = fits.getdata(fits_run["gain"], "SCI").astype(np.float32)
    rnoise = fits.getdata(fits_run["readnoise"], "SCI").astype(np.float32)
    jgdq, jpdq, total = run_stcal_jump(data, gdq, pdq, gain, rnoise, params=JumpParams(),
                                       nframes=hdr["NFRAMES"], group_time=hdr["TGROUP"])
    timing = RampTiming(hdr["TFRAME"], hdr["TGROUP"], hdr["NFRAMES"], hdr["GROUPGAP"],
                        hdr["DRPFRMS1"])
    image, integ, opt = run_stcal(data, jgdq, jpdq, gain, rnoise,
                                  params=RampFitParams(save_opt=True), timing=timing,
                                  zeroframe=zf)
    return {"gdq": jgdq, "pdq": jpdq, "total": total, "image": image, "integ": integ,
            "opt": opt}


def _close(name, ours, ref, rtol=1e-5):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: {ours.shape} != {ref.shape}"
    if ref.dtype.kind in "ui":
        assert np.array_equal(ours.astype(np.int64), ref.astype(np.int64)), f"{name} differs"
        return
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"{name}: NaN pattern differs"
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(ours[ok], ref[ok], rtol=rtol, atol=0, err_msg=name)


def test_run_fits_outputs_match_stcal(fits_run, stcal_oracle):
    out = fits_run["out"]
    with fits.open(out / "expo_jump.fits") as h:
        _close("GROUPDQ", h["GROUPDQ"].data, stcal_oracle["gdq"])
        _close("PIXELDQ", h["PIXELDQ"].data, stcal_oracle["pdq"])
    assert (stcal_oracle["gdq"] & dqflags.JUMP_DET).any()
    names = {"SCI": "slope", "ERR": "err", "DQ": "dq", "VAR_POISSON": "var_poisson",
             "VAR_RNOISE": "var_rnoise"}
    for fname, ref in (("expo_rate.fits", stcal_oracle["image"]),
                       ("expo_rateints.fits", stcal_oracle["integ"])):
        with fits.open(out / fname) as h:
            assert h["SCI"].header["BUNIT"] == "DN/s"
            for ext, key in names.items():
                _close(f"{fname}[{ext}]", h[ext].data, ref[key])
    with fits.open(out / "expo_fitopt.fits") as h:
        for key in ("slope", "sigslope", "yint", "sigyint", "weights", "var_poisson",
                    "var_rnoise", "pedestal", "crmag"):
            _close(f"fitopt[{key}]", h[key.upper()].data, stcal_oracle["opt"][key])


def test_input_never_modified(fits_run):
    assert fits_run["before"] == fits_run["after"]
    leftovers = [p.name for p in fits_run["out"].iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_stdatamodels_open_our_products(fits_run):
    dm = pytest.importorskip("stdatamodels.jwst.datamodels")
    out = fits_run["out"]
    with dm.ImageModel(str(out / "expo_rate.fits")) as m:
        assert m.data.shape == (40, 48) and m.dq.dtype == np.uint32
    with dm.CubeModel(str(out / "expo_rateints.fits")) as m:
        assert m.data.shape == (2, 40, 48)
    with dm.RampFitOutputModel(str(out / "expo_fitopt.fits")) as m:
        assert m.slope.shape[0] == 2 and m.pedestal.shape == (2, 40, 48)
    with dm.RampModel(str(out / "expo_jump.fits")) as m:
        assert m.groupdq.shape == (2, 6, 40, 48)


def test_zarr_outputs_equal_fits_outputs(fits_run):
    out = fits_run["out"]
    for kind in ("rate", "rateints"):
        ds = xr.open_zarr(out / f"expo_{kind}.zarr", consolidated=False, mask_and_scale=False)
        with fits.open(out / f"expo_{kind}.fits") as h:
            for var, ext in (("sci", "SCI"), ("err", "ERR"), ("dq", "DQ"),
                             ("var_poisson", "VAR_POISSON"), ("var_rnoise", "VAR_RNOISE")):
                assert np.array_equal(ds[var].values, h[ext].data, equal_nan=True), (kind, var)
        params = json.loads(ds.attrs["parameters"])
        assert params["jump"]["rejection_threshold"] == 4.0
        assert params["rampfit"]["save_opt"] is True


def test_zarr_input_ingest_and_separate_steps(fits_run, tmp_path):
    """simulate .zarr (same seed) == ingest of the FITS; jump then rampfit == run."""
    ref_rate = fits.getdata(fits_run["out"] / "expo_rate.fits", "SCI")
    ref_dq = fits.getdata(fits_run["out"] / "expo_rate.fits", "DQ")
    store = tmp_path / "ingested_ramp.zarr"
    assert main(["ingest", str(fits_run["ramp"]), "--gain", str(fits_run["gain"]),
                 "--readnoise", str(fits_run["readnoise"]), "--output", str(store),
                 *LOCAL]) == 0
    sim = tmp_path / "expo.zarr"
    assert main(["simulate", str(sim), "--shape", SHAPE, "--seed", "7", "--zeroframe",
                 "--cr-rate", "0.05", "--tile", "24", *LOCAL]) == 0
    for src in (store, sim):
        out = tmp_path / ("o_" + src.stem)
        out.mkdir()
        assert main(["run", str(src), "-o", str(out), *LOCAL]) == 0
        name = src.name.replace("_ramp.zarr", "").replace(".zarr", "")
        rate = xr.open_zarr(out / f"{name}_rate.zarr", consolidated=False,
                            mask_and_scale=False)
        assert np.array_equal(rate["sci"].values, ref_rate, equal_nan=True)
        assert np.array_equal(rate["dq"].values, ref_dq)
    # two steps: jump -> X_jump.fits, then rampfit on it
    two = tmp_path / "two"
    two.mkdir()
    refs = ["--gain", str(fits_run["gain"]), "--readnoise", str(fits_run["readnoise"])]
    assert main(["jump", str(fits_run["ramp"]), *refs, "-o", str(two), *LOCAL]) == 0
    assert main(["rampfit", str(two / "expo_jump.fits"), *refs, "-o", str(two), *LOCAL]) == 0
    assert np.array_equal(fits.getdata(two / "expo_rate.fits", "SCI"), ref_rate, equal_nan=True)
    assert np.array_equal(fits.getdata(two / "expo_jump.fits", "GROUPDQ"),
                          fits.getdata(fits_run["out"] / "expo_jump.fits", "GROUPDQ"))


def test_step_options_are_generated_from_the_dataclasses(fits_run, tmp_path):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["run"]
    options = {o for a in sub._actions for o in a.option_strings}
    for prefix, cls in (("jump", JumpParams), ("rampfit", RampFitParams)):
        for f in dataclasses.fields(cls):
            assert f"--{prefix}.{f.name}" in options
    # without help texts (what main builds unless --help is given) the same options parse alike
    argv = ["run", "x.zarr", "--jump.rejection_threshold", "5", "--rampfit.save_opt", "true"]
    assert vars(build_parser(help_texts=False).parse_args(argv)) == vars(parser.parse_args(argv))
    out = tmp_path / "opts"
    out.mkdir()
    store = fits_run["out"] / "expo_jump.zarr"  # a zarr ramp (flagged; re-flagging is fine)
    assert main(["run", str(store), "-o", str(out), "--jump.rejection_threshold", "5",
                 "--jump.flag_4_neighbors", "false", "--rampfit.suppress_one_group", "FALSE",
                 *LOCAL]) == 0
    params = json.loads(xr.open_zarr(out / "expo_rate.zarr", consolidated=False)
                        .attrs["parameters"])
    assert params["jump"]["rejection_threshold"] == 5.0
    assert params["jump"]["flag_4_neighbors"] is False
    assert params["rampfit"]["suppress_one_group"] is False


@pytest.mark.parametrize("command", ["simulate", "ingest", "jump", "rampfit", "run", "demo"])
def test_help_explains_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and "stcal-dask" in text


def test_top_level_help_and_mosaic_registration(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("simulate", "ingest", "jump", "rampfit", "run", "demo", "mosaic-wcs"):
        assert command in text
    with pytest.raises(SystemExit) as exc:
        main(["mosaic-wcs", "--help"])
    assert exc.value.code == 0
    assert "--output" in capsys.readouterr().out


# the user errors (one line, exit 2, inputs unchanged, nothing written) are the cases of
# tests/test_bad_input.py


def test_console_script_subprocess(fits_run, tmp_path):
    exe = shutil.which("stcal-dask") or str(Path(sys.executable).parent / "stcal-dask")
    store = fits_run["out"] / "expo_jump.zarr"
    ok = subprocess.run([exe, "run", str(store), "-o", str(tmp_path), "--scheduler", "threads"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stdout and (tmp_path / "expo_rate.zarr").is_dir()
    bad = subprocess.run([exe, "run", str(tmp_path / "missing.zarr")], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"stcal-dask: error: input {tmp_path / 'missing.zarr'} does not exist"
    ]


def test_console_script_default_cluster_forks_its_worker(fits_run, tmp_path):
    """The console script on its default LocalCluster, in a fresh process as a user runs it:
    the worker is forked from the CLI after its imports (Linux) and the products equal the
    in-process run's; a bad STCAL_DASK_WORKER_START is one line."""
    from astropy.io import fits

    exe = shutil.which("stcal-dask") or str(Path(sys.executable).parent / "stcal-dask")
    ramp = fits_run["ramp"]
    argv = [exe, "run", str(ramp), "-o", str(tmp_path), "--format", "fits", "--quiet",
            "--tile", "16x20"]
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    for kind in ("rate", "rateints"):
        with fits.open(tmp_path / f"expo_{kind}.fits") as a, \
                fits.open(fits_run["out"] / f"expo_{kind}.fits") as b:
            for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE"):
                np.testing.assert_array_equal(a[ext].data, b[ext].data, err_msg=ext)
    # with the progress bar: closing the cluster must not log the bar's cancelled feed
    loud = subprocess.run([a for a in argv if a != "--quiet"] + ["--overwrite"],
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "Traceback" not in loud.stderr and "ERROR" not in loud.stderr, loud.stderr
    assert "100% Completed" in loud.stdout.replace("\r", "\n") or "100%" in loud.stdout
    bad = subprocess.run(argv + ["--overwrite"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "STCAL_DASK_WORKER_START": "teleport"})
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "stcal-dask: error: STCAL_DASK_WORKER_START must be 'fork' or 'spawn', got 'teleport'"
    ]


_WORKER_MODULES_PROBE = """
import json, sys
from stcal_dask import cli
from stcal_dask.engine import cluster
seen = []
original = cluster.compute
def compute(*args, **kwargs):
    out = original(*args, **kwargs)
    from distributed import default_client
    names = ("xarray", "pandas", "astropy", "zarr", "stcal_dask.engine.dataflow")
    seen.extend(default_client().run(
        lambda: sorted(m for m in names if m in sys.modules)).values())
    return out
cluster.compute = compute
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "workers": seen}))
"""


def test_fits_run_workers_never_load_xarray(fits_run, tmp_path):
    """A FITS-in, FITS-out run on the default (forked) cluster: the workers are forked before
    the CLI loads xarray/astropy and their tasks never need them (stcal_dask.engine.tasks,
    io._fits_blocks), so the workers hold none of xarray, pandas, astropy, zarr; the products
    equal the in-process run's. With a zarr output the workers get the full set and the run
    still works."""
    from astropy.io import fits

    probe = tmp_path / "probe.py"
    probe.write_text(_WORKER_MODULES_PROBE)
    base = [sys.executable, str(probe), "run", str(fits_run["ramp"]), "--quiet", "--tile",
            "16x20"]
    env = {k: v for k, v in os.environ.items() if k != "STCAL_DASK_WORKER_START"}
    (tmp_path / "fits").mkdir()
    (tmp_path / "zarr").mkdir()
    lean = subprocess.run([*base, "-o", str(tmp_path / "fits"), "--format", "fits"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert lean.returncode == 0, lean.stderr
    report = json.loads(lean.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, lean.stderr
    assert report["workers"] == [[]], report
    for kind in ("rate", "rateints"):
        with fits.open(tmp_path / "fits" / f"expo_{kind}.fits") as a, \
                fits.open(fits_run["out"] / f"expo_{kind}.fits") as b:
            for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE"):
                np.testing.assert_array_equal(a[ext].data, b[ext].data, err_msg=ext)
    full = subprocess.run([*base, "-o", str(tmp_path / "zarr"), "--format", "zarr"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert full.returncode == 0, full.stderr
    report = json.loads(full.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0, full.stderr
    assert "xarray" in report["workers"][0], report
    assert (tmp_path / "zarr" / "expo_rate.zarr").is_dir()


def test_task_modules_do_not_import_xarray():
    """What the workers run imports neither xarray (nor pandas) nor astropy."""
    code = ("import sys, stcal_dask.engine.tasks, stcal_dask.io.fits_blocks, stcal_dask.io.atomic; "
            "print(sorted(m for m in ('xarray', 'pandas', 'astropy', 'zarr') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_optional_packages_are_skipped_only_inside_the_block(tmp_path, monkeypatch):
    """While the CLI loads its libraries, packages it never uses look absent (so dask and
    pandas do not load them); afterwards they import normally."""
    import importlib

    from stcal_dask import optional_imports as _imports

    pkg = tmp_path / "stcal_dask_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_imports, "UNUSED_OPTIONAL", ("stcal_dask_probe_pkg",))
    with _imports.skipping_optional_imports():
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("stcal_dask_probe_pkg")
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module("stcal_dask_probe_pkg.sub")
    assert "stcal_dask_probe_pkg" not in sys.modules
    assert importlib.import_module("stcal_dask_probe_pkg.sub").VALUE == 2
    assert not any(isinstance(f, _imports.SkipImports) for f in sys.meta_path)
    for name in list(sys.modules):
        if name.startswith("stcal_dask_probe_pkg"):
            del sys.modules[name]


def test_demo_small(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--size", "64", "--ngroups", "5", "--nints", "2", "--seed", "3",
                 "-o", str(out), "--scheduler", "threads"]) == 0
    text = capsys.readouterr().out
    assert "jumps recovered" in text and "slope accuracy" in text
    assert (out / "demo_quicklook.png").stat().st_size > 1000
    assert (out / "demo_rate.zarr").is_dir() and (out / "demo_rateints.zarr").is_dir()


@pytest.mark.parametrize("layout", [["--n-workers", "1", "--threads-per-worker", "2"],
                                    ["--in-process", "--n-workers", "2"]])
def test_threaded_worker_cluster_gives_the_same_products(fits_run, tmp_path, layout):
    """A real LocalCluster with one two-threaded worker process, or with its workers as threads
    of this process (the numba kernels release the GIL), writes the same rate/rateints as the
    module's run."""
    out = tmp_path / "out"
    out.mkdir()
    assert main(["run", str(fits_run["ramp"]), "--output-dir", str(out), "--format", "fits",
                 *layout, "--tile", "16x20", "--quiet"]) == 0
    for kind in ("rate", "rateints"):
        with fits.open(out / f"expo_{kind}.fits") as a, \
                fits.open(fits_run["out"] / f"expo_{kind}.fits") as b:
            for ext in ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE"):
                assert np.array_equal(a[ext].data, b[ext].data, equal_nan=True), (kind, ext)
