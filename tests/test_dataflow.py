"""The dataflow layer: chunk invariance against the whole-frame kernels, laziness, frame-wide
statistics, the threaded scheduler."""

from __future__ import annotations

from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

from stcal_dask import dqflags
from stcal_dask.engine import dataflow
from stcal_dask.engine.datamodel import make_ramp_dataset, ramp_from_exposure
from stcal_dask.kernels import jump as jk
from stcal_dask.kernels import ramp_fit as rk
from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

CHUNKINGS = [(40, 50), (16, 16), (7, 13), (1, 50), (40, 3)]
"""Whole frame, square tiles, odd tiles, one-row strips, three-column strips (all < 64 px)."""

RATE_MAP = {"sci": "sci", "err": "err", "dq": "dq", "var_poisson": "var_poisson",
            "var_rnoise": "var_rnoise"}


def _boom(*args, **kwargs):
    raise AssertionError("the graph was computed while it should only have been built")


class _CountTasks(Callback):
    """Counts executed tasks whose key name starts with a prefix."""

    def __init__(self, needle: str):
        super().__init__()
        self.needle, self.count = needle, 0

    def _posttask(self, key, result, dsk, state, worker_id):
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(self.needle):
            self.count += 1


@pytest.fixture(scope="module")
def exposure():
    cfg = SimulationConfig(nints=2, ngroups=6, ny=40, nx=50, seed=11, cr_rate=0.05,
                           zeroframe=True, do_not_use_fraction=0.01, nan_fraction=0.002)
    return simulate_exposure(cfg)


def _whole_frame(exp, jparams, rparams):
    """The kernels on the whole frame: the reference every chunking must reproduce."""
    cfg = exp.config
    g = jk.detect_jumps_globals(exp.data, exp.groupdq, exp.gain, params=jparams)
    jr = jk.detect_jumps_tile(exp.data, exp.groupdq, exp.pixeldq, exp.gain, exp.readnoise,
                              params=jparams, nframes=cfg.nframes, group_time=cfg.group_time,
                              jump_globals=g)
    timing = rk.RampTiming(cfg.frame_time, cfg.group_time, cfg.nframes, cfg.groupgap,
                           cfg.drop_frames1)
    dims = rk.fitopt_dims(jr.groupdq, params=rparams, zeroframe=exp.zeroframe)
    fr = rk.fit_ramps_tile(exp.data, jr.groupdq, jr.pixeldq, exp.gain, exp.readnoise,
                           params=rparams, timing=timing, zeroframe=exp.zeroframe,
                           n_segments=dims.n_segments, n_crmag=dims.n_crmag)
    return g, jr, fr


def _assert_equal(name, ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == ref.dtype, f"{name}: dtype {ours.dtype} != {ref.dtype}"
    assert np.array_equal(ours, ref, equal_nan=ours.dtype.kind == "f"), f"{name} differs"


def _check_products(products, fr):
    rate, rateints, fitopt = products
    for var, field in RATE_MAP.items():
        _assert_equal(f"rate.{var}", rate[var].values, getattr(fr.rate, field))
        _assert_equal(f"rateints.{var}", rateints[var].values, getattr(fr.rateints, field))
    for var in fitopt.data_vars:
        _assert_equal(f"fitopt.{var}", fitopt[var].values, getattr(fr.fitopt, var))


@pytest.mark.parametrize("tile", CHUNKINGS)
def test_chunk_invariance_default_parameters(exposure, tile):
    jparams, rparams = jk.JumpParams(), rk.RampFitParams(save_opt=True)
    g, jr, fr = _whole_frame(exposure, jparams, rparams)
    ramp = ramp_from_exposure(exposure, chunks=tile)
    jumped = dataflow.detect_jumps(ramp, jparams)
    products = dataflow.fit_ramps(jumped, rparams)
    jumped, products = dask.compute(jumped, products, scheduler="threads")
    _assert_equal("groupdq", jumped["groupdq"].values, jr.groupdq)
    _assert_equal("pixeldq", jumped["pixeldq"].values, jr.pixeldq)
    assert int(jumped[dataflow.JUMP_COUNT_VARIABLE]) == jk.total_primary_crs(jr.n_primary, g)
    assert int(jumped[dataflow.JUMP_COUNT_VARIABLE]) > 0
    assert (jr.groupdq & dqflags.JUMP_DET).any()
    _check_products(products, fr)


@pytest.mark.parametrize(
    ("cfg", "jparams", "tile", "path"),
    [
        # single-pass path (>= 10 usable differences) with after-jump flagging (median gain)
        (SimulationConfig(nints=1, ngroups=12, ny=24, nx=30, seed=5, cr_rate=0.04),
         jk.JumpParams(after_jump_flag_dn1=200.0, after_jump_flag_time1=25.0,
                       after_jump_flag_dn2=1000.0, after_jump_flag_time2=50.0),
         (5, 11), "single"),
        # sigma-clip path (few integrations made enough by the parameter): reset pass 1b
        (SimulationConfig(nints=6, ngroups=4, ny=20, nx=18, seed=8, cr_rate=0.05),
         jk.JumpParams(minimum_sigclip_groups=5), (6, 7), "sigclip"),
        # sigma-clip over all differences of a pixel (only_use_ints=False)
        (SimulationConfig(nints=3, ngroups=5, ny=16, nx=16, seed=9, cr_rate=0.05),
         jk.JumpParams(minimum_sigclip_groups=12, only_use_ints=False, flag_4_neighbors=False),
         (3, 5), "sigclip"),
    ],
)
def test_chunk_invariance_other_paths(cfg, jparams, tile, path):
    exp = simulate_exposure(cfg)
    rparams = rk.RampFitParams(save_opt=True)
    g, jr, fr = _whole_frame(exp, jparams, rparams)
    assert g.path == path
    ramp = ramp_from_exposure(exp, chunks=tile)
    jumped = dataflow.detect_jumps(ramp, jparams)
    glob = dataflow.jump_globals(dataflow.prepare_ramp(ramp), jparams).compute()
    assert glob.path == path
    if jk.needs_median_gain(jparams):
        assert float(glob.median_gain) == float(g.median_gain)
    else:  # it only scales after-jump flagging: not gathered over the tiles when that is off
        assert np.isnan(glob.median_gain)
    if path == "sigclip":
        assert np.array_equal(glob.sigclip_reset, g.sigclip_reset)
    jumped, products = dask.compute(jumped, dataflow.fit_ramps(jumped, rparams),
                                    scheduler="threads")
    _assert_equal("groupdq", jumped["groupdq"].values, jr.groupdq)
    _assert_equal("pixeldq", jumped["pixeldq"].values, jr.pixeldq)
    assert int(jumped[dataflow.JUMP_COUNT_VARIABLE]) == jk.total_primary_crs(jr.n_primary, g)
    _check_products(products, fr)


def test_whole_plane_do_not_use_is_a_frame_decision():
    """Group planes flagged DO_NOT_USE in every pixel change the path for the whole frame (here:
    skip, count -99) even though each tile alone could not tell a whole plane from a partial one.
    """
    exp = simulate_exposure(SimulationConfig(nints=1, ngroups=4, ny=12, nx=12, seed=2))
    gdq = exp.groupdq.copy()
    gdq[:, 1:3] |= dqflags.DO_NOT_USE  # two whole planes -> 2 usable groups < 3: skipped
    gdq[0, 1, 0, 0] &= ~np.uint8(dqflags.DO_NOT_USE)  # ... except one pixel: not whole
    exp = exp._replace(groupdq=gdq)
    jparams = jk.JumpParams()
    g, jr, _ = _whole_frame(exp, jparams, rk.RampFitParams())
    assert g.path == "iterative"  # plane 1 is not whole, only plane 2 is
    out = dataflow.detect_jumps(ramp_from_exposure(exp, chunks=(4, 4)), jparams).compute()
    _assert_equal("groupdq", out["groupdq"].values, jr.groupdq)
    gdq[0, 1, 0, 0] |= dqflags.DO_NOT_USE  # now both planes are whole -> skip
    exp = exp._replace(groupdq=gdq)
    g, jr, _ = _whole_frame(exp, jparams, rk.RampFitParams())
    assert g.path == "skip"
    out = dataflow.detect_jumps(ramp_from_exposure(exp, chunks=(4, 4)), jparams).compute()
    assert int(out[dataflow.JUMP_COUNT_VARIABLE]) == jk.SKIPPED_PRIMARY_COUNT
    _assert_equal("groupdq", out["groupdq"].values, jr.groupdq)


def test_building_the_graphs_computes_nothing(exposure, tmp_path):
    from stcal_dask.io import open_ramp, write_ramp

    store = write_ramp(ramp_from_exposure(exposure), tmp_path / "r.zarr", tile=(16, 16))
    jparams = jk.JumpParams(minimum_sigclip_groups=2)  # also builds the sigma-clip pass
    with dask.config.set(scheduler=_boom):
        for ramp in (ramp_from_exposure(exposure, chunks=(16, 16)), open_ramp(store)):
            jumped = dataflow.detect_jumps(ramp, jparams)
            rate = dataflow.fit_ramps(jumped, rk.RampFitParams()).rate
            fitopt = dataflow.fit_ramps(jumped, rk.RampFitParams(save_opt=True),
                                        fitopt_dims=(3, 4)).fitopt
            dataflow.all_group0_saturated(ramp)
            dataflow.frame_fitopt_dims(jumped, rk.RampFitParams(save_opt=True))
    assert fitopt.sizes["segment"] == 3 and fitopt.sizes["cr"] == 4
    # ... and computing them does compute (the raising scheduler is really used)
    with dask.config.set(scheduler=_boom), pytest.raises(AssertionError, match="computed"):
        rate["sci"].values  # noqa: B018


def test_kernels_run_once_per_tile_for_all_outputs(exposure):
    ramp = ramp_from_exposure(exposure, chunks=(16, 25))  # 3 x 2 tiles
    jumped = dataflow.detect_jumps(ramp)
    fit = dataflow.fit_ramps(jumped)
    rate, rateints = fit.rate, fit.rateints
    with _CountTasks("stcal-dask-jump-tile") as cj, _CountTasks("stcal-dask-fit-tile") as cf:
        dask.compute(jumped, rate, rateints, scheduler="synchronous")
    assert cj.count == 6
    assert cf.count == 6


def test_threaded_and_synchronous_agree(exposure):
    ramp = ramp_from_exposure(exposure, chunks=(8, 10))
    jumped = dataflow.detect_jumps(ramp)
    fit = dataflow.fit_ramps(jumped)
    rate, rateints = fit.rate, fit.rateints
    a = dask.compute(jumped["groupdq"], rate["sci"], rateints["dq"], scheduler="threads")
    b = dask.compute(jumped["groupdq"], rate["sci"], rateints["dq"], scheduler="synchronous")
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.values, y.values, equal_nan=True)


def test_fitopt_dims_reduction_and_saturation(exposure):
    rparams = rk.RampFitParams(save_opt=True)
    jumped = dataflow.detect_jumps(ramp_from_exposure(exposure, chunks=(9, 9)))
    gdq = jumped["groupdq"].values
    whole = rk.fitopt_dims(gdq, params=rparams, zeroframe=exposure.zeroframe)
    dims = dataflow.frame_fitopt_dims(jumped, rparams).compute()
    assert dims == (whole.n_segments, whole.n_crmag)
    assert not bool(dataflow.all_group0_saturated(jumped).compute())
    sat = exposure.groupdq | np.uint8(dqflags.SATURATED)
    ramp = ramp_from_exposure(exposure._replace(groupdq=sat), chunks=(9, 9))
    assert bool(dataflow.all_group0_saturated(ramp).compute())


def test_products_carry_schema_and_parameters(exposure):
    jparams = jk.JumpParams(rejection_threshold=5.0)
    jumped = dataflow.detect_jumps(ramp_from_exposure(exposure, chunks=(20, 25)), jparams)
    fit = dataflow.fit_ramps(jumped, rk.RampFitParams(suppress_one_group=False))
    rate, rateints = fit.rate, fit.rateints
    assert rate["sci"].dims == ("y", "x") and rate["sci"].dtype == np.float32
    assert rateints["dq"].dims == ("integration", "y", "x") and rateints["dq"].dtype == np.uint32
    assert rate["sci"].attrs["units"] == "DN/s"
    import json

    recorded = json.loads(rate.attrs["parameters"])
    assert recorded["jump"]["rejection_threshold"] == 5.0
    assert recorded["rampfit"]["suppress_one_group"] is False
    assert rate.attrs["NGROUPS"] == exposure.config.ngroups


def test_auto_tile_keeps_workers_busy_and_fits_budget():
    from stcal_dask.engine.datamodel import choose_tile_size

    for shape in [(1, 10, 2048, 2048), (2, 6, 40, 50), (1, 10, 1024, 4096), (50, 5, 512, 512)]:
        for nw in (1, 2, 8):
            ty, tx = dataflow.auto_tile(*shape, n_workers=nw)
            bty, btx = choose_tile_size(*shape)
            assert ty * tx <= bty * btx
            ntiles = -(-shape[2] // ty) * -(-shape[3] // tx)
            assert ntiles >= min(4 * nw, -(-shape[2] // 16))


def test_numpy_backed_ramp_is_accepted_and_parameters_are_validated(exposure):
    ramp = make_ramp_dataset(exposure.data, exposure.groupdq, exposure.pixeldq, exposure.gain,
                             exposure.readnoise, timing=exposure.timing)
    jumped = dataflow.detect_jumps(ramp, tile=(20, 20))
    assert jumped["groupdq"].data.chunks[2:] == ((20, 20), (20, 20, 10))
    from stcal_dask.errors import UserInputError

    with pytest.raises(UserInputError):
        dataflow.detect_jumps(ramp, params=rk.RampFitParams())
    with pytest.raises(UserInputError):
        dataflow.fit_ramps(ramp, params=replace(rk.RampFitParams(), save_opt=True),
                           fitopt_dims=(-1, 0))


def test_writes_and_count_share_the_tile_kernels(exposure, tmp_path):
    """A Delayed write and an array reduction of the same graph, computed together with
    cluster.compute, run every tile kernel once (no per-consumer fusion)."""
    from stcal_dask.engine.cluster import compute
    from stcal_dask.io import write_dataset_atomic

    jumped = dataflow.detect_jumps(ramp_from_exposure(exposure, chunks=(16, 25)))
    rate = dataflow.fit_ramps(jumped).rate
    pending = write_dataset_atomic(rate, tmp_path / "rate.zarr", compute=False)
    with dask.config.set(scheduler="synchronous"):
        with _CountTasks("stcal-dask-jump-tile") as cj, _CountTasks("stcal-dask-fit") as cf:
            _, count = compute(pending.delayed, jumped[dataflow.JUMP_COUNT_VARIABLE].data,
                               quiet=True)
    assert (cj.count, cf.count) == (6, 6)
    assert int(count) > 0 and (tmp_path / "rate.zarr").is_dir()


def test_fits_rate_and_rateints_writes_share_the_fit_tiles(exposure, tmp_path):
    """The rate and rateints FITS writers each write a tile's five extensions in one task, and
    the fit kernel feeding both runs once per tile (the writers' graphs, optimised one file at
    a time when they are built, must not inline it)."""
    from stcal_dask.engine.cluster import compute
    from stcal_dask.io import write_rate_fits, write_rateints_fits

    jumped = dataflow.detect_jumps(ramp_from_exposure(exposure, chunks=(16, 25)))  # 6 tiles
    fit = dataflow.fit_ramps(jumped)
    rate, rateints = fit.rate, fit.rateints
    pendings = [write_rate_fits(rate, tmp_path / "x_rate.fits", compute=False),
                write_rateints_fits(rateints, tmp_path / "x_rateints.fits", compute=False)]
    graph = {}
    for p in pendings:
        graph.update(dict(p.delayed.__dask_graph__()))
    names = [str(k[0] if isinstance(k, tuple) else k) for k in graph]
    assert sum(n.startswith("stcal-dask-fits-write") for n in names) == 2 * 6
    with dask.config.set(scheduler="synchronous"):
        with _CountTasks("stcal-dask-jump-tile") as cj, _CountTasks("stcal-dask-fit-tile") as cf:
            compute(*(p.delayed for p in pendings), quiet=True)
    assert (cj.count, cf.count) == (6, 6)
    from astropy.io import fits

    with fits.open(tmp_path / "x_rate.fits") as hdul:
        np.testing.assert_array_equal(hdul["SCI"].data, rate["sci"].values)
        np.testing.assert_array_equal(hdul["DQ"].data, rate["dq"].values)


def test_halo_exchange_costs_two_tasks_per_tile(exposure):
    """The jump halo is exchanged as one border task per tile (not dask.array.overlap's ~9
    slicing tasks and a concatenation per input and tile): the graph stays small."""
    ramp = ramp_from_exposure(exposure, chunks=(8, 10))  # 5 x 5 tiles
    jumped = dataflow.detect_jumps(ramp)
    graph = dict(jumped["groupdq"].data.__dask_graph__())
    names = [k[0] if isinstance(k, tuple) else k for k in graph]
    n_tiles = 25
    assert sum(str(n).startswith("stcal-dask-borders") for n in names) == n_tiles
    assert sum(str(n).startswith("stcal-dask-jump-tile") for n in names) == n_tiles
    assert not any(str(n).startswith(("overlap", "getitem")) for n in names)
    assert len(graph) < 16 * n_tiles


def test_tile_tasks_take_their_blocks_without_concatenating(exposure, monkeypatch):
    """The ramp-fit tiles and the group-0 check receive each (nints, ngroups, y, x) block as
    it is: no task concatenates (copies) a block along the leading axes first (as
    ``map_blocks`` with ``drop_axis`` does); the jump tiles neither."""
    import dask.array.core

    calls = []
    real = dask.array.core.concatenate_axes

    def counting(arrays, axes):
        calls.append(axes)
        return real(arrays, axes)

    monkeypatch.setattr(dask.array.core, "concatenate_axes", counting)
    ramp = ramp_from_exposure(exposure, chunks=(16, 25))  # 3 x 2 tiles
    jumped = dataflow.detect_jumps(ramp)
    products = dataflow.fit_ramps(jumped)
    flags = (dataflow.all_group0_saturated(ramp), dataflow.all_nan(products.rate["sci"].data))
    got = dask.compute(products.rate["sci"].data, products.rateints["dq"].data, *flags,
                       scheduler="sync")
    assert calls == []
    assert got[0].shape == (40, 50) and got[1].shape == (2, 40, 50)
    assert not bool(got[2]) and not bool(got[3])


@pytest.mark.parametrize("halo", [1, 2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_halo_windows_equal_slices_of_the_frame(halo, seed):
    """Every tile's window is exactly the frame slice [y0-h, y1+h) x [x0-h, x1+h) clipped at the
    frame edges, for irregular chunkings, leading axes and a pass-through Delayed; the crop
    gives back the tile."""
    rng = np.random.default_rng(seed)
    ny, nx = int(rng.integers(halo, 40)), int(rng.integers(halo, 40))

    def chunks(n):
        out, left = [], n
        while left:
            c = int(min(left, rng.integers(halo, max(halo + 1, n // 2 + 1))))
            if 0 < left - c < halo:
                c = left
            out.append(c)
            left -= c
        return tuple(out)

    cy, cx = chunks(ny), chunks(nx)
    frame = rng.normal(size=(2, 3, ny, nx))
    arr = da.from_array(frame, chunks=((2,), (3,), cy, cx))
    plane = da.from_array(frame[0, 0] * 10, chunks=(cy, cx))
    extra = dask.delayed(lambda: "globals")()
    out = dataflow._map_tiles_with_halo(_probe_block, [arr, plane], extra=[extra], halo=halo,
                                        name=f"probe-{halo}-{seed}", dtype=object)
    blocks = out.to_delayed()
    y0 = 0
    for i, hy in enumerate(cy):
        x0 = 0
        for j, wx in enumerate(cx):
            (w, p, crop, g) = blocks[i, j].compute(scheduler="sync")[0, 0]
            ys = slice(max(0, y0 - halo), min(ny, y0 + hy + halo))
            xs = slice(max(0, x0 - halo), min(nx, x0 + wx + halo))
            np.testing.assert_array_equal(w, frame[..., ys, xs])
            np.testing.assert_array_equal(p, frame[0, 0, ys, xs] * 10)
            np.testing.assert_array_equal(w[..., crop[0], crop[1]],
                                          frame[..., y0:y0 + hy, x0:x0 + wx])
            assert g == "globals"
            x0 += wx
        y0 += hy


def _probe_block(w, p, g, *, crop):
    """Tile function of the halo test: hands back what it was given (one object per tile)."""
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = (w, p, crop, g)
    return out


def test_fit_takes_the_jump_tiles_packed_blocks(exposure):
    """fit_ramps on detect_jumps' result reads the jump tiles' packed blocks (no unpacking task
    per tile and field); on a re-tiled result (other graph names) it unpacks them instead; the
    products are identical either way. The primary count and the group-0 check are one
    aggregation task each."""
    ramp = ramp_from_exposure(exposure, chunks=(16, 25))
    jumped = dataflow.detect_jumps(ramp)
    fit = dataflow.fit_ramps(jumped)
    rate, rateints = fit.rate, fit.rateints
    names = {str(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0]
             for k in dict(dask.optimize(rate["sci"].data)[0].__dask_graph__())}
    assert not any("unpack-groupdq" in n or "unpack-pixeldq" in n for n in names), names
    assert any(n.startswith("stcal-dask-jump-tile") for n in names)
    other = dataflow.detect_jumps(ramp).chunk({"y": 8})  # new names: no packed source
    fit = dataflow.fit_ramps(other, tile=(16, 25))
    rate2, rateints2 = fit.rate, fit.rateints
    names2 = {str(k[0] if isinstance(k, tuple) else k)
              for k in dict(dask.optimize(rate2["sci"].data)[0].__dask_graph__())}
    assert any("unpack-groupdq" in n for n in names2)
    (a, b, a2, b2) = dask.compute(rate, rateints, rate2, rateints2, scheduler="threads")
    for var in RATE_MAP:
        _assert_equal(f"rate.{var}", a[var].values, a2[var].values)
        _assert_equal(f"rateints.{var}", b[var].values, b2[var].values)
    for arr, name in ((jumped[dataflow.JUMP_COUNT_VARIABLE].data, "primary_count"),
                      (dataflow.all_group0_saturated(ramp), "all_of")):
        keys = [str(k[0] if isinstance(k, tuple) else k)
                for k in dict(dask.optimize(arr)[0].__dask_graph__())]
        assert len([k for k in keys if k.startswith(name)]) == 1
        assert not [k for k in keys if k.startswith(("sum", "all-", "where", "getitem"))], keys
    # the aggregation depends on small per-tile results only, never on the tiles' packed
    # blocks themselves (which would stay in memory until every tile is done)
    from dask.core import get_dependencies

    with dask.config.set({"optimization.fuse.active": False}):  # as cluster.compute runs it
        (count,) = dask.optimize(jumped[dataflow.JUMP_COUNT_VARIABLE].data)
    graph = dict(count.__dask_graph__())
    (agg,) = [k for k in graph if str(k).startswith("primary_count")]
    deps = get_dependencies(graph, agg)
    assert deps and not [d for d in deps if "jump-tile" in str(d)], deps
    assert any(str(d).startswith("primary_sum") for d in deps), deps


def test_fit_ramps_returns_named_products(exposure):
    """rate, rateints and fitopt by name; fitopt is None unless save_opt."""
    jumped = dataflow.detect_jumps(ramp_from_exposure(exposure, chunks=(16, 16)))
    fit = dataflow.fit_ramps(jumped)
    assert isinstance(fit, dataflow.RampFitProducts) and fit.fitopt is None
    assert fit.rate["sci"].dims == ("y", "x") and fit.rateints["sci"].dims[0] == "integration"
    fit = dataflow.fit_ramps(jumped, rk.RampFitParams(save_opt=True), fitopt_dims=(3, 4))
    assert fit.fitopt.sizes["segment"] == 3
