"""JWST FITS: lazy ramp ingest, reference cutting, errors, atomic block-wise product writes that
stdatamodels opens (ImageModel, CubeModel, RampFitOutputModel, RampModel)."""

from __future__ import annotations

import os
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from astropy.io import fits
from stdatamodels.jwst import datamodels as dm

from stcal_dask import __version__, dqflags
from stcal_dask.engine.datamodel import (
    choose_tile_size,
    fitopt_dataset,
    make_ramp_dataset,
    ramp_from_exposure,
    rate_dataset,
    rateints_dataset,
)
from stcal_dask.errors import UserInputError
from stcal_dask.io import (
    PendingWrite,
    fits_io,
    open_ramp_fits,
    output_name,
    reference_paths,
    write_fitopt_fits,
    write_jump_fits,
    write_ramp_fits,
    write_rate_fits,
    write_rateints_fits,
    write_reference_fits,
)
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

STRICT = dict(strict_validation=True, validate_arrays=True)


@pytest.fixture
def ramp(small_exposure):
    ds = ramp_from_exposure(small_exposure)
    ds["pixeldq"][3, 4] = dqflags.REFERENCE_PIXEL | dqflags.DO_NOT_USE  # top bit: BZERO path
    ds["groupdq"][0, 2, 5, 6] = 255
    return ds


@pytest.fixture
def ramp_files(tmp_path, ramp):
    path = tmp_path / "jw_test_ramp.fits"
    write_ramp_fits(ramp, path, references=True)
    return (path, *reference_paths(path))


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    assert not caught, [str(w.message) for w in caught]
    return out


def test_ramp_round_trip_lazy_and_chunked(ramp_files, ramp, monkeypatch):
    path, gain, rn = ramp_files
    assert gain.name == "jw_test_gain.fits" and rn.name == "jw_test_readnoise.fits"
    reads = []
    original = fits_io.FitsImage.__getitem__
    monkeypatch.setattr(fits_io.FitsImage, "__getitem__",
                        lambda self, key: reads.append(key) or original(self, key))
    ds = open_ramp_fits(path, gain, rn, chunks=(16, 32))
    assert reads == []  # opening reads no data
    assert all(isinstance(ds[n].data, da.Array) for n in ds.data_vars)
    assert ds.sci.data.chunks == ((2,), (6,), (16, 16, 8), (32, 18))
    assert ds.gain.data.chunks == ((16, 16, 8), (32, 18))
    for n in ramp.data_vars:
        assert ds[n].dtype == ramp[n].dtype, n
        np.testing.assert_array_equal(ds[n].values, ramp[n].values, err_msg=n)
    assert reads  # computing did read through the memory map
    for key in ("NINTS", "NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP", "DRPFRMS1"):
        assert ds.attrs[key] == ramp.attrs[key]
    assert ds.attrs["source"] == str(path)
    # automatic and single-chunk tiling
    auto = open_ramp_fits(path, gain, rn, memory_budget_bytes=100_000)
    assert auto.sci.data.chunks[2][0] == choose_tile_size(2, 6, 40, 50, 100_000)[0]
    assert open_ramp_fits(path, gain, rn, chunks=None).sci.data.chunks[2:] == ((40,), (50,))
    assert open_ramp_fits(path, gain, rn, chunks={"y": 20}).sci.data.chunks[2:] == ((20, 20),
                                                                                    (50,))


def test_stdatamodels_reads_our_ramp_and_we_read_theirs(tmp_path, ramp_files, ramp):
    path, gain, rn = ramp_files
    with _no_warnings(dm.RampModel, path, **STRICT) as m:
        np.testing.assert_array_equal(m.data, ramp.sci.values)
        np.testing.assert_array_equal(m.groupdq, ramp.groupdq.values)
        np.testing.assert_array_equal(m.pixeldq, ramp.pixeldq.values)
        assert m.meta.exposure.ngroups == 6 and m.meta.exposure.group_time == ramp.attrs["TGROUP"]
        assert m.meta.model_type == "RampModel"
        # a file saved by stdatamodels itself (with its ASDF extension) reads back the same
        m.meta.exposure.drop_frames1 = 0
        m.save(tmp_path / "theirs_ramp.fits")
    theirs = open_ramp_fits(tmp_path / "theirs_ramp.fits", gain, rn)
    for n in ramp.data_vars:
        np.testing.assert_array_equal(theirs[n].values, ramp[n].values, err_msg=n)


def test_reference_files_interoperate_with_stdatamodels(tmp_path, ramp_files, ramp):
    path, gain, rn = ramp_files
    with _no_warnings(dm.GainModel, gain) as m:
        np.testing.assert_array_equal(m.data, ramp.gain.values)
        assert m.meta.reftype == "GAIN"
    with _no_warnings(dm.ReadnoiseModel, rn) as m:
        np.testing.assert_array_equal(m.data, ramp.readnoise.values)
    theirs = dm.GainModel(data=np.full((40, 50), 3.5, np.float32))
    theirs.save(tmp_path / "theirs_gain.fits")
    ds = open_ramp_fits(path, tmp_path / "theirs_gain.fits", rn)
    np.testing.assert_array_equal(ds.gain.values, 3.5)


def test_zeroframe_and_dark_round_trip(tmp_path):
    exp = simulate_exposure(SimulationConfig(nints=2, ngroups=3, ny=9, nx=11, zeroframe=True))
    dark = np.linspace(0, 1, 99, dtype=np.float32).reshape(9, 11)
    ds = make_ramp_dataset(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise,
                           timing=exp.timing, zeroframe=exp.zeroframe,
                           average_dark_current=dark)
    path = tmp_path / "z_ramp.fits"
    write_ramp_fits(ds, path, references=True)
    back = open_ramp_fits(path, *reference_paths(path))
    np.testing.assert_array_equal(back.zeroframe.values, exp.zeroframe)
    np.testing.assert_array_equal(back.average_dark_current.values, dark)
    with _no_warnings(dm.RampModel, path, **STRICT) as m:
        np.testing.assert_array_equal(m.zeroframe, exp.zeroframe)
        np.testing.assert_array_equal(m.average_dark_current, dark)


def _subarray_ramp(tmp_path, ramp, start=(5, 3)):
    """The 40x50 ramp as a subarray starting at x=start[0], y=start[1] (1-based)."""
    sub = {"SUBSTRT1": start[0], "SUBSTRT2": start[1], "SUBSIZE1": 50, "SUBSIZE2": 40}
    ds = ramp.assign_attrs(sub)
    path = tmp_path / "sub_ramp.fits"
    write_ramp_fits(ds, path)
    return path


def test_full_frame_references_are_cut(tmp_path, ramp):
    path = _subarray_ramp(tmp_path, ramp)
    full_gain = np.arange(60 * 70, dtype=np.float32).reshape(60, 70)
    full_rn = -full_gain
    write_reference_fits(full_gain, tmp_path / "gain.fits", reftype="GAIN")
    write_reference_fits(full_rn, tmp_path / "rn.fits", reftype="READNOISE")
    ds = open_ramp_fits(path, tmp_path / "gain.fits", tmp_path / "rn.fits", chunks=(16, 16))
    np.testing.assert_array_equal(ds.gain.values, full_gain[2:42, 4:54])
    np.testing.assert_array_equal(ds.readnoise.values, full_rn[2:42, 4:54])
    assert ds.attrs["SUBSTRT1"] == 5 and ds.attrs["SUBSIZE2"] == 40
    # a reference that is itself a (larger) subarray starting at x=3, y=2
    write_reference_fits(full_gain[1:, 2:], tmp_path / "gsub.fits", reftype="GAIN",
                         header={"SUBSTRT1": 3, "SUBSTRT2": 2})
    ds = open_ramp_fits(path, tmp_path / "gsub.fits", tmp_path / "rn.fits")
    np.testing.assert_array_equal(ds.gain.values, full_gain[2:42, 4:54])
    # one that does not cover the data
    write_reference_fits(full_gain[:30, :30], tmp_path / "small.fits", reftype="GAIN")
    with pytest.raises(UserInputError, match=r"GAIN reference file .*small.fits .* does not "
                                             r"cover the ramp's subarray SUBSTRT1=5"):
        open_ramp_fits(path, tmp_path / "small.fits", tmp_path / "rn.fits")


def test_reference_mismatch_without_subarray_keywords(tmp_path, ramp_files):
    path, gain, rn = ramp_files
    write_reference_fits(np.ones((60, 70)), tmp_path / "big.fits", reftype="READNOISE")
    with pytest.raises(UserInputError, match=r"READNOISE reference file .*big.fits has shape "
                                             r"\(60, 70\).*no SUBSTRT1/SUBSTRT2"):
        open_ramp_fits(path, gain, tmp_path / "big.fits")


def _hdul(sci_shape=(1, 3, 4, 5), drop=(), primary=None, sci_ndim=None):
    p = fits.PrimaryHDU()
    keys = {"NINTS": 1, "NGROUPS": 3, "NFRAMES": 1, "GROUPGAP": 0, "TFRAME": 10.0,
            "TGROUP": 10.0, "DRPFRMS1": 0}
    keys.update(primary or {})
    for k, v in keys.items():
        if v is not None:
            p.header[k] = v
    sci = np.zeros(sci_shape if sci_ndim is None else sci_shape[-sci_ndim:], np.float32)
    hdus = [p, fits.ImageHDU(sci, name="SCI"),
            fits.ImageHDU(np.zeros(sci_shape, np.uint8), name="GROUPDQ"),
            fits.ImageHDU(np.zeros(sci_shape[-2:], np.uint32), name="PIXELDQ")]
    return fits.HDUList([h for h in hdus if h.name not in drop])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(drop=("GROUPDQ",)), r"ramp file .*bad_ramp.fits: missing extension GROUPDQ"),
        (dict(drop=("PIXELDQ",)), r"missing extension PIXELDQ"),
        (dict(sci_ndim=3), r"extension SCI has 3 dimensions .* expected 4"),
        (dict(primary={"TGROUP": None}), r"bad_ramp.fits: missing keyword TGROUP"),
        (dict(primary={"NGROUPS": 5}), r"NGROUPS=5 do not match array sci"),
        (dict(primary={"TFRAME": "fast"}), r"keyword TFRAME must be a time in seconds"),
        (dict(primary={"SUBSIZE1": 7}), r"keyword SUBSIZE1=7 does not match the SCI x size 5"),
        (dict(primary={"SUBSTRT1": "left"}), r"keyword SUBSTRT1 must be an integer >= 1"),
    ],
)
def test_ramp_file_errors(tmp_path, kwargs, match):
    _hdul(**kwargs).writeto(tmp_path / "bad_ramp.fits")
    write_reference_fits(np.ones((4, 5)), tmp_path / "g.fits")
    with pytest.raises(UserInputError, match=match) as info:
        open_ramp_fits(tmp_path / "bad_ramp.fits", tmp_path / "g.fits", tmp_path / "g.fits")
    assert "\n" not in str(info.value)


def test_file_level_errors(tmp_path, ramp_files):
    path, gain, rn = ramp_files
    with pytest.raises(UserInputError, match=r"ramp file .*missing_ramp.fits does not exist"):
        open_ramp_fits(tmp_path / "missing_ramp.fits", gain, rn)
    with pytest.raises(UserInputError, match=r"GAIN reference file .*nogain.fits does not exist"):
        open_ramp_fits(path, tmp_path / "nogain.fits", rn)
    (tmp_path / "text.fits").write_text("not a fits file at all\n" * 200)
    with pytest.raises(UserInputError, match=r"text.fits is not a FITS file"):
        open_ramp_fits(tmp_path / "text.fits", gain, rn)
    import gzip

    (tmp_path / "r_ramp.fits.gz").write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(UserInputError, match=r"r_ramp.fits.gz is a compressed file"):
        open_ramp_fits(tmp_path / "r_ramp.fits.gz", gain, rn)
    (tmp_path / "trunc.fits").write_bytes(path.read_bytes()[:4000])
    with pytest.raises(UserInputError, match=r"trunc.fits: (missing|extension SCI is trunc)"):
        open_ramp_fits(tmp_path / "trunc.fits", gain, rn)
    with fits.open(path) as hdul:
        end = hdul["GROUPDQ"].fileinfo()["datLoc"] + 100
    (tmp_path / "trunc2.fits").write_bytes(path.read_bytes()[:end])
    with pytest.raises(UserInputError, match=r"trunc2.fits: extension GROUPDQ is truncated"):
        open_ramp_fits(tmp_path / "trunc2.fits", gain, rn)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((2, 4, 5)), name="SCI")]).writeto(
        tmp_path / "g3.fits")
    with pytest.raises(UserInputError, match=r"g3.fits: extension SCI has 3 dimensions"):
        open_ramp_fits(path, tmp_path / "g3.fits", rn)
    fits.HDUList([fits.PrimaryHDU()]).writeto(tmp_path / "nosci.fits")
    with pytest.raises(UserInputError, match=r"nosci.fits: missing extension SCI"):
        open_ramp_fits(path, gain, tmp_path / "nosci.fits")
    with pytest.raises(UserInputError, match="reftype must be 'GAIN' or 'READNOISE'"):
        write_reference_fits(np.ones((2, 2)), tmp_path / "x.fits", reftype="FLAT")


def _rate(ny=12, nx=9, nints=None, lazy=False):
    rng = np.random.default_rng(3)
    shape = (ny, nx) if nints is None else (nints, ny, nx)
    arrs = [rng.normal(size=shape).astype(np.float32) for _ in range(5)]
    arrs[2] = rng.integers(0, 2**32, size=shape, dtype=np.uint32)  # dq with high bits
    if lazy:
        arrs = [da.from_array(a, chunks=(5,) * len(shape)) for a in arrs]
    build = rate_dataset if nints is None else rateints_dataset
    return build(*arrs, parameters={"rampfit": {"suppress_one_group": True}},
                 attrs={"NINTS": 2, "source": "memory"}), arrs


def test_rate_fits_opens_as_image_model(tmp_path, ramp_files):
    path = ramp_files[0]
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["INSTRUME"] = "NIRCAM"
        hdul[0].header["TARGNAME"] = "M31"
    rate, arrs = _rate()
    out = output_name(path, "rate")
    assert out.name == "jw_test_rate.fits"
    assert write_rate_fits(rate, out, header_from=path) == out
    with _no_warnings(dm.ImageModel, out, **STRICT) as m:
        for name, a in zip(("data", "err", "dq", "var_poisson", "var_rnoise"), arrs,
                           strict=True):
            np.testing.assert_array_equal(getattr(m, name), np.asarray(a), err_msg=name)
        assert m.meta.instrument.name == "NIRCAM" and m.meta.target.catalog_name == "M31"
        assert m.meta.bunit_data == "DN/s" and m.meta.bunit_err == "DN/s"
        assert m.meta.exposure.ngroups == 6 and m.meta.filename == "jw_test_rate.fits"
    assert type(dm.open(out)) is dm.ImageModel
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "SCI", "ERR", "DQ", "VAR_POISSON",
                                          "VAR_RNOISE"]
        assert hdul[0].header["DATAMODL"] == "ImageModel"
        assert hdul[0].header["STCDASKV"] == __version__
        assert "suppress_one_group" in "".join(hdul[0].header["HISTORY"])
        assert hdul["DQ"].data.dtype == np.uint32


def test_rateints_and_dask_blockwise(tmp_path, monkeypatch):
    rate, arrs = _rate(nints=3, lazy=True)
    calls = []
    original = fits_io.FitsRegion.__setitem__
    monkeypatch.setattr(fits_io.FitsRegion, "__setitem__",
                        lambda self, k, v: calls.append(v.shape) or original(self, k, v))
    out = tmp_path / "x_rateints.fits"
    write_rateints_fits(rate, out)
    assert len(calls) == 5 * arrs[0].npartitions  # one write per dask block, per extension
    assert max(np.prod(s) for s in calls) == 3 * 5 * 5  # blocks, not whole arrays
    with _no_warnings(dm.CubeModel, out, **STRICT) as m:
        assert m.data.shape == (3, 12, 9)
        for name, a in zip(("data", "err", "dq", "var_poisson", "var_rnoise"), arrs,
                           strict=True):
            np.testing.assert_array_equal(getattr(m, name), a.compute(), err_msg=name)
    with pytest.raises(UserInputError, match=r"rateints Dataset: array sci has 2 dimensions"):
        write_rateints_fits(_rate()[0], tmp_path / "y_rateints.fits")


def test_fitopt_opens_as_rampfitoutput(tmp_path):
    rng = np.random.default_rng(5)
    seg = [rng.normal(size=(2, 3, 6, 7)).astype(np.float32) for _ in range(7)]
    ped = rng.normal(size=(2, 6, 7)).astype(np.float32)
    crmag = rng.normal(size=(2, 4, 6, 7)).astype(np.float32)
    fo = fitopt_dataset(*seg, ped, crmag)
    out = tmp_path / "x_fitopt.fits"
    write_fitopt_fits(fo, out)
    with _no_warnings(dm.RampFitOutputModel, out, **STRICT) as m:
        for name in ("slope", "sigslope", "yint", "sigyint", "weights", "var_poisson",
                     "var_rnoise", "pedestal", "crmag"):
            np.testing.assert_array_equal(getattr(m, name), fo[name].values, err_msg=name)
    with fits.open(out) as hdul:
        assert [h.name for h in hdul][1:] == ["SLOPE", "SIGSLOPE", "VAR_POISSON", "VAR_RNOISE",
                                              "YINT", "SIGYINT", "PEDESTAL", "WEIGHTS", "CRMAG"]


def test_jump_fits_opens_as_ramp_model(tmp_path, ramp):
    flagged = ramp.copy()
    flagged["groupdq"] = flagged.groupdq | np.uint8(dqflags.JUMP_DET)
    out = tmp_path / "x_jump.fits"
    write_jump_fits(flagged.chunk({"y": 16}), out)
    with _no_warnings(dm.RampModel, out, **STRICT) as m:
        np.testing.assert_array_equal(m.groupdq, flagged.groupdq.values)
        np.testing.assert_array_equal(m.data, ramp.sci.values)


def test_atomic_fits_writes(tmp_path):
    rate, _ = _rate()
    out = tmp_path / "x_rate.fits"
    write_rate_fits(rate, out)
    before = out.read_bytes()
    with pytest.raises(UserInputError, match=r"x_rate.fits already exists"):
        write_rate_fits(rate, out)

    def boom(x, block_info=None):
        if block_info[None]["chunk-location"] == (1, 1):
            raise RuntimeError("worker died")
        return x

    bad = rate.copy()
    bad["err"] = (("y", "x"), da.zeros((12, 9), chunks=5).map_blocks(boom, dtype=np.float32))
    with pytest.raises(RuntimeError, match="worker died"):
        write_rate_fits(bad, out, overwrite=True)
    assert os.listdir(tmp_path) == ["x_rate.fits"] and out.read_bytes() == before
    with pytest.raises(RuntimeError, match="worker died"):
        write_rate_fits(bad, tmp_path / "y_rate.fits")
    assert os.listdir(tmp_path) == ["x_rate.fits"]
    rate2 = rate.copy()
    rate2["sci"] = rate2.sci + 1
    write_rate_fits(rate2, out, overwrite=True)
    with fits.open(out) as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, rate2.sci.values)
    with pytest.raises(UserInputError, match="directory .* does not exist"):
        write_rate_fits(rate, tmp_path / "nope" / "x_rate.fits")


def test_pending_fits_write(tmp_path, ramp):
    out = tmp_path / "p_ramp.fits"
    pending = write_ramp_fits(ramp.chunk({"y": 20}), out, references=True, compute=False)
    assert isinstance(pending, PendingWrite)
    assert not out.exists() and len(pending.also_partial) == 2
    assert sorted(p.name.split(".partial-")[0] for p in tmp_path.iterdir()) == [
        ".p_gain.fits", ".p_ramp.fits", ".p_readnoise.fits"]
    dask.compute(pending.delayed)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "p_gain.fits", "p_ramp.fits", "p_readnoise.fits"]
    back = open_ramp_fits(out, *reference_paths(out))
    np.testing.assert_array_equal(back.gain.values, ramp.gain.values)
    p2 = write_ramp_fits(ramp, tmp_path / "q_ramp.fits", references=True, compute=False)
    p2.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "p_gain.fits", "p_ramp.fits", "p_readnoise.fits"]
    # an existing reference file blocks the whole write before anything is created
    out.unlink()
    with pytest.raises(UserInputError, match="p_gain.fits already exists"):
        write_ramp_fits(ramp, out, references=True, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_gain.fits", "p_readnoise.fits"]


@pytest.mark.parametrize(
    "inp, suffix, kw, expected",
    [
        ("d/jw01_nrca1_ramp.fits", "rate", {}, "d/jw01_nrca1_rate.fits"),
        ("d/jw01_nrca1_ramp.fits", "rateints", {}, "d/jw01_nrca1_rateints.fits"),
        ("d/jw01_nrca1_uncal.fits", "fitopt", {}, "d/jw01_nrca1_fitopt.fits"),
        ("d/X_ramp.fits", "jump", {}, "d/X_jump.fits"),
        ("d/X.zarr", "rate", {}, "d/X_rate.zarr"),
        ("d/X_ramp.zarr/", "rateints", {}, "d/X_rateints.zarr"),
        ("d/X_ramp.fits", "rate", {"ext": "zarr", "output_dir": "o"}, "o/X_rate.zarr"),
        ("d/ramp.fits", "rate", {}, "d/ramp_rate.fits"),
    ],
)
def test_output_name(inp, suffix, kw, expected):
    assert str(output_name(inp, suffix, **kw)) == expected


def test_output_names_load_no_heavy_library():
    """The CLI checks output names before it starts a cluster: that needs neither astropy nor
    xarray nor zarr (stcal_dask.io resolves its names lazily)."""
    import subprocess
    import sys

    code = ("import sys; from stcal_dask.io import output_name; "
            "from stcal_dask.io.atomic import check_target; "
            "assert str(output_name('a/X_ramp.fits', 'rate')) == 'a/X_rate.fits'; "
            "heavy = [m for m in ('astropy', 'xarray', 'zarr') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    from stcal_dask.io import open_ramp_fits, output_name, write_rate_fits  # still importable

    assert callable(open_ramp_fits) and callable(write_rate_fits) and callable(output_name)


@pytest.mark.parametrize("dtype", [np.float32, np.uint32, np.uint8, np.int16, np.float64])
def test_region_writes_pwrite_runs_and_memmap_agree(tmp_path, dtype):
    """A block written into a FITS data region lands exactly where a memory map would put it,
    whether it goes out as contiguous ``pwrite`` runs (long runs: full-width tiles, rateints
    planes) or through the map (short runs); bytes outside the block are untouched."""
    from stcal_dask.io.fits_blocks import FitsRegion

    rng = np.random.default_rng(3)
    used = set()
    for shape in [(64, 96), (3, 64, 96), (2, 5, 40, 300), (1, 9000), (7,), (2, 3, 64, 2048)]:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        for _ in range(8):
            path = tmp_path / "region.bin"
            path.write_bytes(b"H" * 100 + bytes(size) + b"T" * 50)
            region = FitsRegion(str(path), 100, shape, dtype)
            key = []
            for n in shape:
                a = int(rng.integers(0, n))
                b = int(rng.integers(a + 1, n + 1))
                key.append(slice(0, n) if rng.random() < 0.6 else slice(a, b))
            key = tuple(key)
            used.add(region._runs(key) is not None)
            value = (rng.random([k.stop - k.start for k in key]) * 200).astype(dtype)
            region[key] = value
            expected = np.zeros(shape, region._raw)
            ref = np.memmap(tmp_path / "ref.bin", dtype=region._raw, mode="w+", shape=shape)
            ref[...] = expected
            ref[key] = value.astype(dtype) ^ dtype(region._xor) if region._xor else value
            ref.flush()
            raw = path.read_bytes()
            assert raw[:100] == b"H" * 100 and raw[-50:] == b"T" * 50
            assert raw[100:-50] == (tmp_path / "ref.bin").read_bytes(), (shape, key)
            del ref
    assert used == {True, False}  # both paths exercised


@pytest.mark.parametrize("name", ["é_ramp.fits", "ümlaut ünd spaces_ramp.fits",
                                  os.fsdecode(b"bad\xff_ramp.fits"),
                                  "x" * 90 + "ö_ramp.fits"])
def test_any_file_name_the_os_accepts(tmp_path, ramp, name):
    """FITS strings are printable ASCII: FILENAME gets '?' for other characters and the exact
    name (its UTF-8 / OS bytes %-escaped) is kept in a HISTORY record; the files open in
    stdatamodels and read back."""
    from urllib.parse import unquote_to_bytes

    folder = tmp_path / "ö"
    folder.mkdir()
    path = folder / name
    write_ramp_fits(ramp, path, references=True)
    back = open_ramp_fits(path, *reference_paths(path))
    np.testing.assert_array_equal(back.sci.values, ramp.sci.values)
    rate, _ = _rate()
    out = output_name(path, "rate")
    write_rate_fits(rate, out, header_from=path)
    with fits.open(out) as hdul:
        card = hdul[0].header["FILENAME"]
        assert card == "".join(c if " " <= c <= "~" else "?" for c in out.name)
        history = "".join(hdul[0].header["HISTORY"])
    escaped = history.split("FILENAME in full (UTF-8, %-escaped): ")[-1].split("stcal_dask")[0]
    assert unquote_to_bytes(escaped) == os.fsencode(out.name)
    with dm.open(out) as m:
        assert type(m) is dm.ImageModel
