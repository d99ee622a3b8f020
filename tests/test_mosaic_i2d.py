"""The mosaic product on a real distributed cluster: zarr store equal to stcal's Resample,
lazily openable, FITS product stdatamodels opens, quicklooks, and the one-line errors."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from resample_field import AREA, PSCALE, make_field, mosaic_wcs, oracle, ulp_diff

from stcal_dask.engine.datamodel import rate_dataset
from stcal_dask.errors import UserInputError
from stcal_dask.io.zarr_store import write_dataset_atomic
from stcal_dask.mosaic import i2d
from stcal_dask.mosaic import resample as rs
from stcal_dask.mosaic import wcs as mwcs

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    c = Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


def write_inputs(d, exps, units="DN/s"):
    """Inputs 0, 2, ... as JWST FITS, 1, 3, ... as zarr rate stores (exposure time 100 + k)."""
    paths = []
    for k, (w, info, a) in enumerate(exps):
        if k % 2 == 0:
            p = mwcs.write_rate_fits_with_wcs(
                d / f"e{k}_rate.fits", a["sci"], w, info, err=a["err"], dq=a["dq"],
                var_poisson=a["var_poisson"], var_rnoise=a["var_rnoise"],
                exposure_time=100.0 + k, pixelarea_steradians=AREA, units=units,
            )
        else:
            ds = rate_dataset(a["sci"], a["err"], a["dq"], a["var_poisson"], a["var_rnoise"])
            ds["sci"].attrs["units"] = units
            ds = ds.assign_attrs(**mwcs.wcs_attrs(w, info), EFFEXPTM=100.0 + k, PIXAR_SR=AREA)
            p = write_dataset_atomic(ds, d / f"e{k}_rate.zarr")
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    d = tmp_path_factory.mktemp("i2d")
    exps = make_field(4, seed=11, roll_step=5.0)
    return d, exps, write_inputs(d, exps)


def test_store_equals_stcal_and_opens_lazily(client, field, tmp_path):
    d, exps, paths = field
    out_wcs = mosaic_wcs(exps)
    params = rs.ResampleParams()
    res = i2d.build_mosaic(paths, out_wcs, tmp_path / "m_i2d.zarr", params, client=client,
                           tile=(48, 40), output_pixel_scale=PSCALE)
    assert res.tiles > 4 and res.inputs_used == 4 and not res.skipped
    assert 0.5 < res.coverage <= 1.0
    ref = oracle(exps, out_wcs, params)
    ds = xr.open_zarr(res.path)
    assert ds["sci"].chunks == ((48,) * (ds.sizes["y"] // 48) + ((ds.sizes["y"] % 48,)
                                if ds.sizes["y"] % 48 else ()), ds["sci"].chunks[1])
    assert ds["sci"].attrs["units"] == "DN/s" and ds["var_rnoise"].attrs["units"] == "(DN/s)^2"
    opened = i2d.open_i2d(res.path)
    assert opened.attrs["wcs"].array_shape == out_wcs.array_shape
    assert json.loads(opened.attrs["parameters"])["kernel"] == "square"
    for ours, theirs in [("sci", "data"), ("wht", "wht"), ("err", "err"),
                         ("var_rnoise", "var_rnoise"), ("var_poisson", "var_poisson")]:
        assert ulp_diff(opened[ours].values, ref[theirs]).max() == 0, ours
    np.testing.assert_array_equal(opened["con"].values, ref["con"])
    assert res.covered_pixels == int((ref["wht"] > 0).sum())
    assert not list(tmp_path.glob(".*partial*"))

    fits_path = i2d.write_i2d_fits(res.path, tmp_path / "m_i2d.fits")
    from stdatamodels.jwst.datamodels import ImageModel

    with ImageModel(str(fits_path)) as m:
        np.testing.assert_array_equal(m.data, opened["sci"].values)
        np.testing.assert_array_equal(m.con, opened["con"].values)
        assert m.meta.wcs is not None and m.meta.bunit_data == "DN/s"
        assert m.var_poisson.shape == m.data.shape
    for array, stretch in (("sci", "asinh"), ("sci", "zscale"), ("wht", "asinh")):
        png = i2d.quicklook_png(res.path, tmp_path / f"{array}_{stretch}.png", array=array,
                                stretch=stretch)
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_tiling_does_not_change_the_store(client, field, tmp_path):
    d, exps, paths = field
    out_wcs = mosaic_wcs(exps)
    params = rs.ResampleParams(kernel="turbo", pixfrac=0.5, weight_type="exptime")
    a = i2d.build_mosaic(paths, out_wcs, tmp_path / "a.zarr", params, client=client,
                         tile=(1000, 1000), output_pixel_scale=PSCALE)
    b = i2d.build_mosaic(paths, out_wcs, tmp_path / "b.zarr", params, client=None,
                         tile=(17, 64), output_pixel_scale=PSCALE)
    assert a.tiles == 1 and b.tiles > 10
    da_, db = xr.open_zarr(a.path), xr.open_zarr(b.path)
    for n in ("sci", "wht", "err", "con", "var_rnoise", "var_poisson"):
        np.testing.assert_array_equal(da_[n].values, db[n].values)


def test_non_overlapping_input_is_skipped_and_none_is_an_error(client, field, tmp_path):
    d, exps, paths = field
    far = make_field(1, seed=2)
    w, info, a = far[0]
    from stcal_dask.sim.wcs import imaging_wcs

    e = imaging_wcs(120.0, 30.0, 0.0, shape=a["sci"].shape)
    far_path = write_inputs(tmp_path, [(e.wcs, e.wcsinfo, a)])[0]
    out_wcs = mosaic_wcs(exps)
    with pytest.warns(UserWarning, match="does not overlap"):
        res = i2d.build_mosaic(paths + [far_path], out_wcs, tmp_path / "s.zarr", client=client,
                               output_pixel_scale=PSCALE)
    assert res.skipped == [far_path] and res.inputs_used == 4
    with pytest.raises(UserInputError, match="none of the 1 inputs overlaps"):
        i2d.build_mosaic([far_path], out_wcs, tmp_path / "n.zarr", client=client)
    assert not (tmp_path / "n.zarr").exists() and not list(tmp_path.glob(".n.zarr*"))


def test_user_errors_leave_nothing(client, field, tmp_path):
    d, exps, paths = field
    out_wcs = mosaic_wcs(exps)
    out = tmp_path / "e_i2d.zarr"
    # absurd output size
    big = mosaic_wcs(exps)
    big.array_shape = (200_000, 200_000)
    with pytest.raises(UserInputError, match="output_shape"):
        i2d.build_mosaic(paths, big, out, client=client)
    # mixed units
    other = write_inputs(tmp_path, make_field(1, seed=4), units="MJy/sr")
    with pytest.raises(UserInputError, match="mixed SCI units"):
        i2d.build_mosaic(paths + other, out_wcs, out, client=client)
    # ivm without var_rnoise
    w, info, a = exps[0]
    p = mwcs.write_rate_fits_with_wcs(tmp_path / "novar_rate.fits", a["sci"], w, info,
                                      dq=a["dq"], units="DN/s")
    with pytest.raises(UserInputError, match="VAR_RNOISE"):
        i2d.build_mosaic([str(p)], out_wcs, out, client=client)
    # no WCS
    ds = rate_dataset(a["sci"], a["err"], a["dq"], a["var_poisson"], a["var_rnoise"])
    nowcs = write_dataset_atomic(ds, tmp_path / "nowcs_rate.zarr")
    with pytest.raises(UserInputError, match="wcs_asdf"):
        i2d.build_mosaic([str(nowcs)], out_wcs, out, client=client)
    # existing output
    out.mkdir()
    with pytest.raises(UserInputError, match="already exists"):
        i2d.build_mosaic(paths, out_wcs, out, client=client)
    out.rmdir()
    assert not out.exists() and not list(tmp_path.glob(".e_i2d*"))


def test_params_validation_and_good_bits():
    assert rs.good_bits_value("~DO_NOT_USE+NON_SCIENCE") == ~(1 | 512)
    assert rs.good_bits_value("JUMP_DET, DROPOUT") == 12
    assert rs.good_bits_value(6) == 6 and rs.good_bits_value(None) is None
    for bad in ({"pixfrac": 0.0}, {"kernel": "tophat"}, {"weight_type": "ivm-sky"},
                {"fillval": "lots"}, {"good_bits": "NOT_A_FLAG"}, {"compute_err": "x"},
                {"pixel_scale": -1.0}, {"output_shape": (0, 5)}):
        with pytest.raises(UserInputError):
            rs.ResampleParams(**bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exps = make_field(2, shape=(30, 30))
        from resample_field import exposures

        rs.plan_mosaic(exposures(exps), mosaic_wcs(exps), rs.ResampleParams(kernel="lanczos3"))
    assert any("does not conserve flux" in str(w.message) for w in caught)
    help_texts = [f.metadata["help"] for f in rs.ResampleParams.__dataclass_fields__.values()]
    assert all(help_texts) and len(help_texts) == 14


def test_cli_mosaic_products_and_summary(field, tmp_path, capsys):
    from stcal_dask.cli import main

    d, exps, paths = field
    out_wcs = mosaic_wcs(exps)
    wfile = mwcs.write_mosaic_wcs(out_wcs, tmp_path / "w.asdf")
    out = tmp_path / "f_i2d.zarr"
    rc = main(["mosaic", *paths, "--wcs", str(wfile), "-o", str(out), "--format", "both",
               "--tile", "40x56", "--in-process", "--n-workers", "1",
               "--resample.pixfrac", "0.5", "--resample.good_bits", "~DO_NOT_USE"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mosaic: 4 inputs ->" in text and "tiles of 40 x 56" in text and "coverage" in text
    for name in ("f_i2d.zarr", "f_i2d.fits", "f_i2d_sci.png", "f_i2d_wht.png"):
        assert (tmp_path / name).exists(), name
    params = rs.ResampleParams(pixfrac=0.5, good_bits="~DO_NOT_USE")
    scale = float(json.loads(xr.open_zarr(out).attrs["parameters"])["pixfrac"])
    assert scale == 0.5
    ref = oracle(exps, out_wcs, params)
    got = xr.open_zarr(out)
    # the oracle was given the nominal input scale; the CLI measured the output's own scale
    np.testing.assert_array_equal(got["wht"].values, ref["wht"])
    np.testing.assert_array_equal(got["con"].values, ref["con"])
    assert ulp_diff(got["sci"].values, ref["data"]).max() == 0


def test_cli_mosaic_computed_wcs_fits_only_and_errors(field, tmp_path, capsys):
    from stcal_dask.cli import main

    d, exps, paths = field
    out = tmp_path / "g_i2d.fits"
    rc = main(["mosaic", *paths, "-o", str(out), "--format", "fits", "--no-quicklook",
               "--scheduler", "threads", "--resample.kernel", "point",
               "--resample.rotation", "0", "-q"])
    assert rc == 0 and capsys.readouterr().out == ""
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["g_i2d.fits"]
    rc = main(["mosaic", *paths, "missing_rate.fits", "-o", str(tmp_path / "h_i2d.zarr"),
               "--scheduler", "threads"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "missing_rate.fits does not exist" in err
    rc = main(["mosaic", *paths, "-o", str(tmp_path / "h_i2d.zarr"), "--scheduler", "threads",
               "--resample.kernel", "tophat"])
    assert rc == 2 and "kernel must be one of" in capsys.readouterr().err
    rc = main(["mosaic", *paths, "-o", str(tmp_path / "h_i2d.zarr"), "--scheduler", "threads",
               "--resample.output_shape", "5"])
    assert rc == 2 and "needs 2 values" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g_i2d.fits"]


def test_cli_mosaic_products_commit_together(field, tmp_path, capsys, monkeypatch):
    """zarr, FITS and PNGs are one block of outputs: a failure while writing the last (a
    quicklook) leaves none of them, nor any temporary."""
    from stcal_dask.cli import main
    from stcal_dask.mosaic import i2d

    d, exps, paths = field
    calls = []

    def failing_png(store, path, **kwargs):
        calls.append(Path(store))
        assert Path(store).is_dir() and not (tmp_path / "f_i2d.zarr").exists()
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(i2d, "quicklook_png", failing_png)
    rc = main(["mosaic", *paths, "-o", str(tmp_path / "f_i2d.zarr"), "--format", "both",
               "--scheduler", "threads", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device" in err and err.count("\n") == 1
    assert calls and sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_mosaic_fits_only_scratch_store_is_a_swept_temporary(field, tmp_path, capsys,
                                                                 monkeypatch):
    """--format fits drizzles into a scratch store named like every temporary (a killed run's
    is removed by the next run in that folder) and removed at the end."""
    from stcal_dask.cli import main
    from stcal_dask.io.atomic import owner_tag
    from stcal_dask.mosaic import i2d

    d, exps, paths = field
    host = owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".g_i2d.zarr.partial-{host}-999999999-0123abcd"  # a killed run's
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    seen = []
    real = i2d.write_i2d_fits

    def spy(store, path, **kwargs):
        seen.append(Path(store).name)
        return real(store, path, **kwargs)

    monkeypatch.setattr(i2d, "write_i2d_fits", spy)
    rc = main(["mosaic", *paths, "-o", str(tmp_path / "g_i2d.fits"), "--format", "fits",
               "--scheduler", "threads", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert seen and seen[0].startswith(".g_i2d.zarr.partial-" + owner_tag() + "-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "g_i2d.fits", "g_i2d_sci.png", "g_i2d_wht.png"]


def test_mosaic_commands_compile_no_kernels(field, tmp_path):
    """mosaic-wcs and mosaic run no numba kernel, so with a cold kernel cache they compile
    none (the cache folder stays empty) and say nothing about compiling."""
    import os
    import subprocess
    import sys

    d, exps, paths = field
    cache = tmp_path / "cache"
    env = {**os.environ, "STCAL_DASK_CACHE_DIR": str(cache),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    exe = [sys.executable, "-m", "stcal_dask.cli"]
    for argv in (["mosaic-wcs", *paths[:2], "-o", str(tmp_path / "w.asdf"), "--n-workers", "1"],
                 ["mosaic", *paths[:2], "--wcs", str(tmp_path / "w.asdf"), "-o",
                  str(tmp_path / "m_i2d.zarr"), "--n-workers", "1", "-q"]):
        proc = subprocess.run([*exe, *argv], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert "compil" not in proc.stderr
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]


def _fits_write_peak(store, path):
    """Peak of traced (Python and numpy) allocations while writing the FITS product."""
    import tracemalloc

    tracemalloc.start()
    try:
        i2d.write_i2d_fits(store, path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_fits_product_written_block_by_block(client, field, tmp_path):
    """The FITS product is written one store chunk at a time: the peak memory of writing it
    does not grow with the mosaic and stays far below its arrays (stdatamodels, which the
    product used to be saved with, held every array, more than 24 bytes per pixel);
    stdatamodels opens it as an ImageModel equal to the store, with the gwcs, the full shapes
    in its ASDF tree and its header hash matching (no re-read of the FITS keywords)."""
    from astropy.io import fits
    from stdatamodels import fits_support
    from stdatamodels.jwst.datamodels import ImageModel

    d, exps, paths = field
    peaks = {}
    for side in (600, 1200):
        out_wcs = mosaic_wcs(exps, shape=(side, side + 100))
        res = i2d.build_mosaic(paths, out_wcs, tmp_path / f"m{side}_i2d.zarr",
                               rs.ResampleParams(), client=client, tile=(150, 175),
                               output_pixel_scale=PSCALE)
        fits_path = tmp_path / f"m{side}_i2d.fits"
        peaks[side] = _fits_write_peak(res.path, fits_path)
        ds = i2d.open_i2d(res.path)
        with ImageModel(str(fits_path)) as m:
            for ours, theirs in [("sci", "data"), ("wht", "wht"), ("err", "err"),
                                 ("var_rnoise", "var_rnoise"), ("var_poisson", "var_poisson"),
                                 ("con", "con")]:
                np.testing.assert_array_equal(getattr(m, theirs), ds[ours].values)
            assert m.meta.wcs.array_shape == out_wcs.array_shape
            assert m.meta.bunit_data == "DN/s" and m.meta.filename == fits_path.name
        with fits.open(fits_path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "CON", "WHT",
                                              "VAR_POISSON", "VAR_RNOISE", "ASDF"]
            raw = bytes(hdul["ASDF"].data["ASDF_METADATA"][0])
            text = raw[:raw.index(b"\n...\n")].decode()
            assert text.count(f"shape: [{side}, {side + 100}]") == 5
            assert f"_fits_hash: {fits_support.fits_hash(hdul)}" in text
    # four times the pixels, not four times the memory; a small part of the arrays (37 MB)
    all_arrays = 6 * 1200 * 1300 * 4
    assert peaks[1200] < 1.5 * peaks[600] + 2**20, peaks
    assert peaks[1200] < all_arrays / 4, (peaks, all_arrays)


def test_small_pages_turns_numpy_huge_page_advice_off_and_back():
    """Drizzle's mosaic-wide output arrays are allocated without numpy's huge-page advice (a
    2 MiB page per few rows written); the advice is restored afterwards."""
    from stcal_dask.engine.threads import small_pages

    setter = np._core.multiarray._set_madvise_hugepage
    before = setter(True)
    try:
        with small_pages():
            assert setter(False) is False  # off inside the block
        assert setter(True) is True  # back on after it
    finally:
        setter(before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_heap_gives_a_task_threads_freed_memory_back():
    """A worker runs its tasks in a thread of its own: blocks freed there between live ones
    stay resident until trim_heap (malloc_trim) gives them back."""
    import threading

    import psutil

    from stcal_dask.engine.threads import lean_memory, trim_heap

    proc = psutil.Process()
    found = {}

    def task():
        lean_memory()
        big, keep = [], []
        for _ in range(160):  # 160 x 512 KiB, each followed by a small block that stays
            big.append(np.ones(2**16))
            keep.append(np.ones(2048))
        del big
        found["freed"] = proc.memory_info().rss
        trim_heap()
        found["trimmed"] = proc.memory_info().rss
        del keep

    t = threading.Thread(target=task)
    t.start()
    t.join()
    assert found["freed"] - found["trimmed"] > 40 * 2**20, found
