"""Zarr ramp stores: round trip, chunking, laziness, errors, atomic writes, simulate_to_zarr."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from zarr.storage import LocalStore

from stcal_dask.engine.datamodel import choose_tile_size, ramp_from_exposure, rate_dataset
from stcal_dask.errors import UserInputError
from stcal_dask.io import (
    PendingWrite,
    open_product,
    open_ramp,
    write_dataset_atomic,
    write_ramp,
)
from stcal_dask.sim.lazy import simulate_ramp_lazy, simulate_to_zarr
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure


@pytest.fixture
def ramp(small_exposure):
    return ramp_from_exposure(small_exposure)


def _assert_same(a: xr.Dataset, b: xr.Dataset):
    assert set(a.data_vars) == set(b.data_vars)
    for n in a.data_vars:
        assert a[n].dtype == b[n].dtype, n
        assert a[n].dims == b[n].dims, n
        np.testing.assert_array_equal(a[n].values, b[n].values, err_msg=n)


def test_round_trip_and_chunks(tmp_path, ramp):
    out = write_ramp(ramp, tmp_path / "r.zarr", tile=(16, 20))
    assert out == tmp_path / "r.zarr"
    back = open_ramp(out)
    _assert_same(back, ramp)
    assert back.sci.data.chunks == ((2,), (6,), (16, 16, 8), (20, 20, 10))
    assert back.pixeldq.data.chunks == ((16, 16, 8), (20, 20, 10))
    for key in ("NINTS", "NGROUPS", "NFRAMES", "GROUPGAP", "TFRAME", "TGROUP", "DRPFRMS1"):
        assert back.attrs[key] == ramp.attrs[key]
    assert back.attrs["source"] == str(out)
    assert back.sci.attrs["units"] == "DN"
    # xarray alone opens the store too
    plain = xr.open_zarr(out, consolidated=False)
    assert plain.groupdq.dtype == np.uint8
    # re-chunk on open
    assert open_ramp(out, chunks=(40, 50)).sci.data.chunks[2:] == ((40,), (50,))
    # an opened store can be written again (stale encodings are dropped), NaNs are data
    assert "_FillValue" not in back.sci.attrs
    write_ramp(back, tmp_path / "again.zarr", tile=(40, 25))
    _assert_same(open_ramp(tmp_path / "again.zarr"), ramp)


def test_automatic_tile_from_budget(tmp_path, ramp):
    budget = 200_000
    write_ramp(ramp, tmp_path / "r.zarr", memory_budget_bytes=budget)
    back = open_ramp(tmp_path / "r.zarr")
    ty, tx = choose_tile_size(2, 6, 40, 50, budget)
    assert back.sci.data.chunks[2][0] == ty and back.sci.data.chunks[3][0] == tx
    assert (ty, tx) != (40, 50)


def test_open_ramp_reads_no_chunk_data(tmp_path, ramp, monkeypatch):
    write_ramp(ramp, tmp_path / "r.zarr", tile=(20, 25))
    keys = []
    original = LocalStore.get

    async def counting_get(self, key, *args, **kwargs):
        keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "get", counting_get)
    ds = open_ramp(tmp_path / "r.zarr")
    assert all(isinstance(ds[n].data, da.Array) for n in ds.data_vars)
    assert not [k for k in keys if "/c/" in k], keys
    _ = ds.sci[0, 0, :5, :5].values  # a read does go through the store (the test can fail)
    assert [k for k in keys if k.startswith("sci/c/")]


def test_open_ramp_errors(tmp_path, ramp):
    with pytest.raises(UserInputError, match=r"ramp store .*nope.zarr does not exist"):
        open_ramp(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match=r"empty is not a zarr ramp store"):
        open_ramp(tmp_path / "empty")
    write_dataset_atomic(ramp.drop_vars("readnoise"), tmp_path / "norn.zarr")
    with pytest.raises(UserInputError, match=r"norn.zarr: missing array readnoise"):
        open_ramp(tmp_path / "norn.zarr")
    bad = ramp.copy()
    bad.attrs.pop("TGROUP")
    write_dataset_atomic(bad, tmp_path / "nokw.zarr")
    with pytest.raises(UserInputError, match=r"nokw.zarr: missing keyword TGROUP"):
        open_ramp(tmp_path / "nokw.zarr")
    with pytest.raises(UserInputError, match=r"product store .* does not exist"):
        open_product(tmp_path / "x_rate.zarr")


def test_write_existing_overwrite_and_missing_dir(tmp_path, ramp):
    target = tmp_path / "r.zarr"
    write_ramp(ramp, target, tile=(40, 50))
    with pytest.raises(UserInputError, match="already exists"):
        write_ramp(ramp, target)
    ramp2 = ramp.copy()
    ramp2["sci"] = ramp2.sci + np.float32(1)
    write_ramp(ramp2, target, overwrite=True)
    np.testing.assert_array_equal(open_ramp(target).sci.values, ramp2.sci.values)
    assert sorted(os.listdir(tmp_path)) == ["r.zarr"]  # nothing left aside
    with pytest.raises(UserInputError, match="directory .* does not exist"):
        write_ramp(ramp, tmp_path / "no" / "r.zarr")
    (tmp_path / "f.zarr").write_text("a file in the way")
    write_ramp(ramp, tmp_path / "f.zarr", overwrite=True)
    _assert_same(open_ramp(tmp_path / "f.zarr"), ramp)


def _failing(shape, chunks, bad_block=1):
    def block(x, block_info=None):
        if block_info[None]["chunk-location"][0] == bad_block:
            raise RuntimeError("disk on fire")
        return x

    return da.zeros(shape, chunks=chunks, dtype=np.float32).map_blocks(block, dtype=np.float32)


def test_failed_write_leaves_nothing_and_keeps_old(tmp_path):
    ok = rate_dataset(*(np.ones((8, 8)),) * 5)
    bad = rate_dataset(_failing((8, 8), (4, 8)), *(np.ones((8, 8)),) * 4)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset_atomic(bad, tmp_path / "x_rate.zarr")
    assert os.listdir(tmp_path) == []
    write_dataset_atomic(ok, tmp_path / "x_rate.zarr")
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_dataset_atomic(bad, tmp_path / "x_rate.zarr", overwrite=True)
    assert os.listdir(tmp_path) == ["x_rate.zarr"]
    np.testing.assert_array_equal(open_product(tmp_path / "x_rate.zarr").sci.values, 1)


def test_pending_write(tmp_path):
    ds = rate_dataset(*(da.ones((30, 20), chunks=(7, 20)),) * 5, parameters={"a": 1})
    pending = write_dataset_atomic(ds, tmp_path / "x_rate.zarr", compute=False)
    assert isinstance(pending, PendingWrite)
    assert not pending.path.exists() and pending.partial.exists()
    assert pending.partial.name.startswith(".x_rate.zarr.partial-")
    (result,) = dask.compute(pending.delayed, scheduler="threads")
    assert result == str(tmp_path / "x_rate.zarr") and not pending.partial.exists()
    back = open_product(result)
    assert back.attrs["stcal_dask_version"]
    assert back.sci.data.chunks == ((7, 7, 7, 7, 2), (20,))  # irregular last chunk kept
    assert back.attrs["parameters"] == '{"a": 1}' and back.sci.attrs["units"] == "DN/s"
    # abort removes the partial
    p2 = write_dataset_atomic(ds, tmp_path / "y_rate.zarr", compute=False)
    p2.abort()
    assert sorted(os.listdir(tmp_path)) == ["x_rate.zarr"]
    # a failing pending write cleans up after itself
    bad = rate_dataset(_failing((40, 8), (4, 8), bad_block=3), *(np.ones((40, 8)),) * 4)
    p3 = write_dataset_atomic(bad, tmp_path / "z_rate.zarr", compute=False)
    with pytest.raises(RuntimeError, match="disk on fire"):
        p3.compute(scheduler="threads", num_workers=4)
    assert sorted(os.listdir(tmp_path)) == ["x_rate.zarr"]


def test_irregular_dask_chunks_and_odd_attrs(tmp_path):
    sci = da.ones((30, 20), chunks=((5, 10, 15), (20,)))
    ds = rate_dataset(sci, sci, sci, sci, sci,
                      attrs={"shape": np.array([1, 2]), "n": np.int32(3), "d": {"a": (1, 2)}})
    write_dataset_atomic(ds, tmp_path / "x.zarr")
    back = open_product(tmp_path / "x.zarr")
    assert back.attrs["shape"] == [1, 2] and back.attrs["n"] == 3
    assert back.attrs["d"] == {"a": [1, 2]}
    np.testing.assert_array_equal(back.sci.values, 1)


def test_simulate_to_zarr_bit_identical(tmp_path):
    cfg = SimulationConfig(nints=2, ngroups=4, ny=150, nx=140, seed=5, zeroframe=True,
                           nan_fraction=0.01, do_not_use_fraction=0.01)
    exp = simulate_exposure(cfg)
    simulate_to_zarr(cfg, tmp_path / "s.zarr", tile=(48, 100))
    back = open_ramp(tmp_path / "s.zarr")
    assert back.sci.data.chunks[2:] == ((48, 48, 48, 6), (100, 40))
    _assert_same(back, ramp_from_exposure(exp))
    # automatic tiles (cell-aligned) give the same store contents
    simulate_to_zarr(cfg, tmp_path / "auto.zarr", memory_budget_bytes=3_600_000)
    auto = open_ramp(tmp_path / "auto.zarr")
    assert auto.sci.data.chunks[2:] == ((128, 22), (140,))
    _assert_same(auto, back)
    with pytest.raises(UserInputError, match="nints must be >= 1"):
        simulate_to_zarr(SimulationConfig(nints=0), tmp_path / "bad.zarr")
    assert not (tmp_path / "bad.zarr").exists()


def test_simulate_lazy_builds_nothing():
    calls = []
    import stcal_dask.sim.ramp as sim

    original = sim.simulate_region

    def spy(*a, **k):
        calls.append(a)
        return original(*a, **k)

    sim.simulate_region = spy
    try:
        ds = simulate_ramp_lazy(SimulationConfig(ny=64, nx=64, ngroups=3), tile=(32, 32))
        assert calls == []
        _ = ds.gain.values, ds.sci.values
        assert len(calls) == 8  # 4 tiles, each simulated once per compute
    finally:
        sim.simulate_region = original


@pytest.mark.cluster
def test_distributed_writes(tmp_path):
    """simulate_to_zarr, a pending zarr write and a block-wise FITS write on a LocalCluster."""
    from distributed import Client, LocalCluster

    from stcal_dask.io import open_ramp_fits, write_rate_fits

    cfg = SimulationConfig(nints=1, ngroups=4, ny=96, nx=80, seed=9)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster):
        simulate_to_zarr(cfg, tmp_path / "s.zarr", tile=(48, 40))
        ramp = open_ramp(tmp_path / "s.zarr")
        rate = rate_dataset(ramp.sci[0, -1] - ramp.sci[0, 0], ramp.gain, ramp.pixeldq,
                            ramp.readnoise, ramp.gain)
        zpending = write_dataset_atomic(rate, tmp_path / "s_rate.zarr", compute=False)
        fpending = write_rate_fits(rate, tmp_path / "s_rate.fits", compute=False)
        dask.compute(zpending.delayed, fpending.delayed)
        from stcal_dask.io import write_ramp_fits

        write_ramp_fits(ramp, tmp_path / "s_ramp.fits", references=True)
        fits_ramp = open_ramp_fits(tmp_path / "s_ramp.fits", tmp_path / "s_gain.fits",
                                   tmp_path / "s_readnoise.fits", chunks=(32, 32))
        total = float(fits_ramp.sci.sum().compute())
    exp = simulate_exposure(cfg)
    _assert_same(open_ramp(tmp_path / "s.zarr"), ramp_from_exposure(exp))
    expected = exp.data[0, -1] - exp.data[0, 0]
    np.testing.assert_array_equal(open_product(tmp_path / "s_rate.zarr").sci.values, expected)
    from astropy.io import fits

    with fits.open(tmp_path / "s_rate.fits") as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, expected)
        np.testing.assert_array_equal(hdul["ERR"].data, exp.gain)
    assert total == pytest.approx(float(exp.data.astype(np.float64).sum()), rel=1e-6)


def _chunk_files(store, name):
    root = store / name
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != "zarr.json")


def test_every_chunk_is_written_also_fill_value_chunks(tmp_path, ramp):
    """pixeldq is all 0 (the fill value) in most tiles: the chunks are written all the same, so
    that an absent chunk always means an incomplete store."""
    ramp = ramp.assign(pixeldq=ramp.pixeldq * 0)
    out = write_ramp(ramp, tmp_path / "r.zarr", tile=(16, 20))
    assert len(_chunk_files(out, "pixeldq")) == 9  # 3 x 3 tiles
    assert len(_chunk_files(out, "sci")) == 9
    open_ramp(out)  # complete


@pytest.mark.parametrize("name, key", [("sci", "c/0/0/1/2"), ("readnoise", "c/2/0")])
def test_missing_chunk_is_refused_without_reading(tmp_path, ramp, name, key):
    """zarr reads an absent chunk as the fill value (rate 0, or NaN, with DQ 0): an input store
    with a chunk missing is refused at open, naming the store, the array and the chunk."""
    out = write_ramp(ramp, tmp_path / "r.zarr", tile=(16, 20))
    (out / name / key).unlink()
    with pytest.raises(UserInputError) as err:
        open_ramp(out)
    msg = str(err.value)
    assert str(out) in msg and f"array {name} chunk {key} is missing" in msg
    assert "\n" not in msg
    # a product store likewise
    plane = ramp.sci.isel(integration=0, group=0).chunk({"y": 16, "x": 20})
    prod = write_dataset_atomic(xr.Dataset({"sci": plane, "dq": ramp.pixeldq.chunk(16)}),
                                tmp_path / "p_rate.zarr")
    first = _chunk_files(prod, "sci")[0]
    (prod / "sci" / first).unlink()
    with pytest.raises(UserInputError, match=f"array sci chunk {first} is missing"):
        open_product(prod)


def test_written_store_is_verified_before_it_is_committed(tmp_path, ramp):
    """The step between the chunk writes and the rename into place refuses a partial store with
    a chunk missing (the rename then never happens)."""
    from stcal_dask.io.zarr_store import finish_store

    pending = write_ramp(ramp, tmp_path / "r.zarr", tile=(16, 20), compute=False)
    graph = dict(pending.delayed.__dask_graph__())
    assert any("finish_store" in str(k) for k in graph)
    dask.compute(pending.delayed)
    # a store written by hand, then a chunk lost
    ramp_path = tmp_path / "r.zarr"
    (ramp_path / "gain" / "c/1/1").unlink()
    with pytest.raises(UserInputError, match="array gain chunk c/1/1 is missing"):
        finish_store(str(ramp_path), str(tmp_path / "final.zarr"))


@pytest.mark.parametrize("chunks", [None, (40, 50)])
def test_corrupt_chunk_names_store_array_and_chunk(tmp_path, ramp, chunks):
    """A chunk zarr cannot decode is one UserInputError naming it, also when a read spans
    several chunks (re-chunked on open)."""
    out = write_ramp(ramp, tmp_path / "r.zarr", tile=(16, 20))
    (out / "sci" / "c/0/0/1/1").write_bytes(b"x\n")
    ds = open_ramp(out, chunks=chunks)
    assert np.isfinite(ds.gain.values).all()  # other arrays read fine
    with pytest.raises(UserInputError) as err:
        ds.sci.compute()
    msg = str(err.value)
    assert f"zarr store {out}: array sci chunk c/0/0/1/1 cannot be read" in msg
    assert "\n" not in msg
