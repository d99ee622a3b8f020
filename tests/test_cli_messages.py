"""What the command says and records when the run succeeds: output folders made as needed,
warnings about options that cannot do what was asked, a rate that is NaN everywhere, the JWST
calibration-step keywords of the products (the failures are in tests/test_bad_input.py)."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from astropy.io import fits

from stcal_dask.cli import main
from stcal_dask.cli.common import check_execution_options

THREADS = ["--scheduler", "threads", "--quiet"]


@pytest.fixture(scope="module")
def ramp(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_messages")
    path = d / "expo_ramp.fits"
    assert main(["simulate", str(path), "--shape", "1x5x24x32", "--seed", "5", *THREADS]) == 0
    with fits.open(path, mode="update") as h:  # as a header that went through a skipped step
        h[0].header["S_JUMP"] = "SKIPPED"
    return path


def test_run_creates_its_output_folder_and_marks_the_steps_complete(ramp, tmp_path, capfd):
    out = tmp_path / "new" / "folder"
    assert main(["run", str(ramp), "-o", str(out), "--save-jump", *THREADS]) == 0
    assert capfd.readouterr().err == ""
    for name in ("expo_rate.fits", "expo_rateints.fits"):
        header = fits.getheader(out / name)
        assert header["S_JUMP"] == "COMPLETE" and header["S_RAMP"] == "COMPLETE", name
    header = fits.getheader(out / "expo_jump.fits")
    assert header["S_JUMP"] == "COMPLETE" and "S_RAMP" not in header


def test_failed_run_removes_the_folder_it_created(ramp, tmp_path, capfd):
    out = tmp_path / "made"
    assert main(["run", str(ramp), "-o", str(out), "--gain", str(tmp_path / "nope.fits"),
                 *THREADS]) == 2
    assert not out.exists()


def _options(**kw):
    base = dict(scheduler=None, n_workers=None, threads_per_worker=None, memory_limit=None,
                in_process=False)
    return argparse.Namespace(**{**base, **kw})


def test_warnings_about_the_cluster_options(capsys, monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    cores = os.cpu_count() or 1
    check_execution_options(_options(n_workers=cores + 1))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stcal-dask: warning:" in err
    assert f"{cores + 1} workers x 1 threads" in err and f"{cores} CPU cores" in err
    check_execution_options(_options(scheduler="threads", n_workers=2))
    err = capsys.readouterr().err
    assert "--n-workers only shape the LocalCluster" in err and "--scheduler threads" in err
    check_execution_options(_options())  # the default layout fills the cores: no warning
    check_execution_options(_options(n_workers=1))
    assert capsys.readouterr().err == ""


def test_rate_nan_everywhere_is_a_warning(tmp_path, capfd):
    from stcal_dask.io import open_ramp, write_ramp

    store = tmp_path / "s.zarr"
    assert main(["simulate", str(store), "--shape", "1x5x16x16", *THREADS]) == 0
    ramp = open_ramp(store).load()
    ramp["gain"][:] = np.nan
    write_ramp(ramp, tmp_path / "nan_ramp.zarr")
    capfd.readouterr()
    assert main(["run", str(tmp_path / "nan_ramp.zarr"), "-o", str(tmp_path / "o"),
                 *THREADS]) == 0
    err = capfd.readouterr().err
    assert err.startswith("stcal-dask: warning: the rate of "), err
    assert "is NaN in every pixel" in err
    assert err.count("\n") == 1
    assert (tmp_path / "o" / "nan_rate.zarr").is_dir()


def test_max_shower_amplitude_is_said_to_have_no_effect(capsys):
    """The JWST step ignores its max_shower_amplitude parameter (stcal's own default is used);
    so do we, and a user who sets it is told, not silently ignored."""
    from stcal_dask.cli import build_parser
    from stcal_dask.cli.common import check_execution_options

    args = build_parser().parse_args(["run", "x_ramp.fits", "--jump.max_shower_amplitude", "9"])
    check_execution_options(args)
    err = capsys.readouterr().err
    assert err.startswith("stcal-dask: warning: --jump.max_shower_amplitude has no effect")
    check_execution_options(build_parser().parse_args(["run", "x_ramp.fits"]))
    assert "max_shower_amplitude" not in capsys.readouterr().err
