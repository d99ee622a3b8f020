"""The chain from ramps to a mosaic: a ramp's gwcs (``simulate --pointing``) survives ``ingest``
and ``run`` in FITS (stdatamodels' ASDF extension) and zarr (``wcs_asdf`` attrs), so ``run``'s
products feed ``mosaic-wcs`` and ``mosaic`` directly; a ramp without a WCS runs as before."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from stcal_dask.cli import main
from stcal_dask.io.wcs_asdf import wcs_from_asdf_text

pytestmark = pytest.mark.cluster

PIXELS = (np.array([0.0, 10.5, 31.0, 63.0]), np.array([0.0, 40.25, 7.0, 63.0]))


def same_wcs(a, b):
    """Two gwcs agree (exactly) at a few pixels, corners included."""
    np.testing.assert_array_equal(np.array(a(*PIXELS)), np.array(b(*PIXELS)))


def run_ok(argv, capsys):
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Two dithered FITS ramps and a zarr ramp with --pointing, and one FITS ramp without,
    simulated and run (jump + ramp fit) into FITS and zarr products."""
    import contextlib
    import io

    d = tmp_path_factory.mktemp("chain")
    common = ["--shape", "1x6x64x64", "--scheduler", "threads", "-q"]
    point = ["--pointing", "53.16", "-27.79", "45"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["simulate", str(d / "a_ramp.fits"), *common, *point]) == 0
        assert main(["simulate", str(d / "b_ramp.fits"), "--seed", "1", *common, *point,
                     "--dither", "1.5", "0.5"]) == 0
        assert main(["simulate", str(d / "c.zarr"), "--seed", "2", *common, *point,
                     "--dither", "-1", "1"]) == 0
        assert main(["simulate", str(d / "n_ramp.fits"), "--seed", "3", *common]) == 0
        assert main(["ingest", str(d / "b_ramp.fits"), "--output", str(d / "b_ramp.zarr"),
                     "--scheduler", "threads", "-q"]) == 0
        run = ["--scheduler", "threads", "-q"]
        assert main(["run", str(d / "a_ramp.fits"), str(d / "b_ramp.fits"),
                     str(d / "n_ramp.fits"), "-o", str(d / "out"), *run]) == 0
        assert main(["run", str(d / "c.zarr"), "-o", str(d / "out"), *run]) == 0
        assert main(["run", str(d / "b_ramp.zarr"), "-o", str(d / "outz"), "--format", "both",
                     *run]) == 0
    return d


def test_simulate_pointing_writes_a_gwcs_stdatamodels_reads(chain):
    from stdatamodels.jwst.datamodels import RampModel

    from stcal_dask.sim.ramp import SimulationConfig, exposure_wcs
    from stcal_dask.sim.wcs import offset_pointing

    ra, dec = offset_pointing(53.16, -27.79, 1.5, 0.5, pa=45.0)
    want, info = exposure_wcs(SimulationConfig(nints=1, ngroups=6, ny=64, nx=64,
                                               pointing=(ra, dec, 45.0)))
    with RampModel(str(chain / "b_ramp.fits")) as m:
        same_wcs(m.meta.wcs, want)
        assert m.meta.wcsinfo.ra_ref == pytest.approx(ra, abs=1e-12)
        assert m.meta.wcsinfo.roll_ref == 45.0 and m.meta.wcsinfo.vparity == info["vparity"]
    store = xr.open_zarr(chain / "c.zarr")
    assert store.attrs["wcsinfo"]["roll_ref"] == 45.0
    wcs_from_asdf_text(store.attrs["wcs_asdf"])  # a gwcs
    # ingest keeps it (FITS -> zarr)
    same_wcs(wcs_from_asdf_text(xr.open_zarr(chain / "b_ramp.zarr").attrs["wcs_asdf"]), want)


def test_run_products_carry_the_ramps_wcs(chain):
    from stdatamodels.jwst.datamodels import CubeModel, ImageModel, RampModel

    for name in ("a", "b"):
        with RampModel(str(chain / f"{name}_ramp.fits")) as ramp:
            want = ramp.meta.wcs
            info = ramp.meta.wcsinfo.instance
        with ImageModel(str(chain / "out" / f"{name}_rate.fits")) as rate:
            same_wcs(rate.meta.wcs, want)
            assert rate.meta.wcsinfo.instance == info
            assert rate.data.shape == (64, 64) and np.isfinite(rate.data).any()
        with CubeModel(str(chain / "out" / f"{name}_rateints.fits")) as ints:
            same_wcs(ints.meta.wcs, want)
    ramp_attrs = xr.open_zarr(chain / "c.zarr").attrs
    want = wcs_from_asdf_text(ramp_attrs["wcs_asdf"])
    for product in ("c_rate.zarr", "c_rateints.zarr"):
        attrs = xr.open_zarr(chain / "out" / product).attrs
        same_wcs(wcs_from_asdf_text(attrs["wcs_asdf"]), want)
        assert attrs["wcsinfo"] == ramp_attrs["wcsinfo"]
    # FITS ramp -> ingest -> zarr ramp -> run --format both: both formats carry it
    with RampModel(str(chain / "b_ramp.fits")) as ramp:
        want = ramp.meta.wcs
    with ImageModel(str(chain / "outz" / "b_rate.fits")) as rate:
        same_wcs(rate.meta.wcs, want)
    same_wcs(wcs_from_asdf_text(xr.open_zarr(chain / "outz" / "b_rate.zarr").attrs["wcs_asdf"]),
             want)


def test_ramp_without_wcs_runs_as_before_and_mosaic_says_so(chain, capsys):
    from astropy.io import fits

    with fits.open(chain / "out" / "n_rate.fits") as hdul:
        assert "ASDF" not in hdul and hdul["SCI"].data.shape == (64, 64)
    with fits.open(chain / "n_ramp.fits") as hdul:
        assert "ASDF" not in hdul
    rc = main(["mosaic", str(chain / "out" / "a_rate.fits"), str(chain / "out" / "n_rate.fits"),
               "-o", str(chain / "bad_i2d.zarr"), "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("stcal-dask: error: ")
    assert "n_rate.fits has no ASDF extension" in err
    assert not (chain / "bad_i2d.zarr").exists()


def stcal_resample(paths, out_wcs, pixel_scale):
    """stcal 1.20.0's Resample (ResampleStep's defaults) of the rate products, in memory."""
    import logging
    import warnings

    from stcal.resample import Resample

    from stcal_dask.mosaic import resample as rs

    logging.getLogger("stcal.resample").setLevel(logging.WARNING)
    params = rs.ResampleParams()
    r = Resample(output_wcs={"wcs": out_wcs, "pixel_scale": pixel_scale},
                 n_input_models=len(paths), pixfrac=params.pixfrac, kernel=params.kernel,
                 fillval=params.fillval, weight_type=params.weight_type,
                 good_bits=params.good_bits_int, enable_ctx=params.enable_ctx,
                 enable_var=params.enable_var, compute_err=params.compute_err)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for k, path in enumerate(paths):
            exp = rs.read_input_exposure(path, k)
            a = {n: np.asarray(src[:, :]) for n, src in exp.arrays.items()}
            r.add_model({
                "data": a["sci"], "dq": a["dq"], "var_rnoise": a["var_rnoise"],
                "var_poisson": a["var_poisson"], "var_flat": None, "err": a["err"],
                "filename": path, "group_id": str(k), "wcs": exp.wcs,
                "exposure_time": exp.exposure_time, "start_time": 0.0, "end_time": 1.0,
                "duration": 1.0, "measurement_time": None,
                "pixelarea_steradians": exp.pixelarea_steradians, "level": None,
                "subtracted": True,
            })
        r.finalize()
    return r.output_model


def test_run_products_feed_mosaic_wcs_and_mosaic(chain, capsys):
    import asdf

    from stcal_dask.mosaic.i2d import open_i2d
    from stcal_dask.mosaic.wcs import read_mosaic_wcs

    rates = [str(chain / "out" / n) for n in ("a_rate.fits", "b_rate.fits", "c_rate.zarr")]
    wfile = chain / "mosaic_wcs.asdf"
    run_ok(["mosaic-wcs", *rates, "-o", str(wfile), "--scheduler", "threads", "-q"], capsys)
    out = chain / "field_i2d.zarr"
    text = run_ok(["mosaic", *rates, "--wcs", str(wfile), "-o", str(out), "--format", "both",
                   "--scheduler", "threads", "--tile", "32x40"], capsys).out
    assert "mosaic: 3 inputs ->" in text
    assert (chain / "field_i2d.fits").exists()
    got = open_i2d(out)
    with asdf.open(wfile) as af:
        scale = float(af.tree["pixel_scale"]) * 3600.0
    ref = stcal_resample(rates, read_mosaic_wcs(wfile), scale)
    assert (got["wht"].values > 0).mean() > 0.5
    np.testing.assert_array_equal(got["wht"].values, ref["wht"])
    np.testing.assert_array_equal(got["con"].values, ref["con"])
    np.testing.assert_array_equal(got["sci"].values, ref["data"])
