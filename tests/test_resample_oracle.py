"""The tiled mosaic drizzle against stcal 1.20.0's ``Resample`` run serially in memory.

Bound enforced: ``sci``, ``wht``, ``con``, ``err``
and the variances are IDENTICAL (0 ulp) for
every tiling (tiles smaller than an input, seams crossing inputs, a single tile), every kernel,
pixfrac 1.0 and 0.5, both weight types, NaN and flagged pixels, rotated and distorted input WCSs,
inputs partly outside the output and an input bounding box smaller than its frame.

Along the output's OUTER edge too: drizzle visits only the input pixels whose centres fall inside
the polygon it clips to its output array, computed from the whole rectangle it is given (an
approximate inversion, a few hundredths of a pixel); tiles on an outer edge that clips an input
give drizzle the whole exposure's rectangle (``resample.TileJob.whole``,
``mosaic.drizzle_clip``), so pixels centred within that hair of the edge are visited exactly as
stcal visits them (``test_outer_edge_clip_identical`` puts rows and columns of an input there).

The same holds at large output coordinates (a ~1100 x 1100 output in 256-pixel tiles).

The tiles read the inputs' pixel maps from files written once per input, as the mosaic
command's tiles do (``resample.write_pixmap``); every geometry and edge case is also run once
through tiles that evaluate the WCSs themselves (no pixel-map file, ``pixmaps=None``), which
costs several times more per tile.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from resample_field import PSCALE, make_field, mosaic_wcs, oracle, pixmap_files, tiled, ulp_diff

from stcal_dask.mosaic import resample as rs

pytestmark = pytest.mark.oracle

MAX_ULP = 0
"""Stated bound for the float arrays (float32 units in the last place)."""

TILINGS = [(29, 23), (64, 41), (10_000, 10_000)]
"""Tiles much smaller than an input (120 x 100), seams crossing inputs, a single tile."""

EDGE = 2
"""Width (output pixels) of the outer band where drizzle's edge clipping may differ."""

PAIRS = [("sci", "data"), ("wht", "wht"), ("var_rnoise", "var_rnoise"),
         ("var_poisson", "var_poisson"), ("err", "err")]


def _compare(res, ref, params, edge_band=False):
    band = np.zeros(res["sci"].shape, bool)
    if edge_band:
        band[:EDGE] = band[-EDGE:] = True
        band[:, :EDGE] = band[:, -EDGE:] = True
    for ours, theirs in PAIRS:
        if ours not in res:
            continue
        d = ulp_diff(res[ours], ref[theirs])
        inner = d[~band]
        assert inner.max() <= MAX_ULP, (
            f"{ours}: {int((inner > 0).sum())} pixels differ, max {inner.max()} ulp"
        )
        assert (d[band] > MAX_ULP).sum() <= 0.01 * band.sum()
    if params.enable_ctx:
        np.testing.assert_array_equal(res["con"][:, ~band], ref["con"][:, ~band])


@pytest.fixture(scope="module")
def plain_field():
    return make_field(4, roll_step=0.0)


@pytest.fixture(scope="module")
def plain_pixmaps(plain_field, tmp_path_factory):
    """The plain field's pixel-map files (its mosaic WCS)."""
    return pixmap_files(plain_field, mosaic_wcs(plain_field), tmp_path_factory.mktemp("pm"))


@pytest.mark.parametrize("kernel", rs.KERNELS)
@pytest.mark.parametrize("pixfrac", [1.0, 0.5])
def test_every_kernel_and_tiling(plain_field, plain_pixmaps, kernel, pixfrac):
    exps = plain_field
    out = mosaic_wcs(exps)
    params = rs.ResampleParams(kernel=kernel, pixfrac=pixfrac)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # flux-conservation warning
        ref = oracle(exps, out, params)
        for tile in TILINGS:
            # the single tile evaluates the WCSs itself, the smaller ones read the files
            maps = None if tile == TILINGS[2] else plain_pixmaps
            res, plan = tiled(exps, out, params, tile, pixmaps=maps)
            assert len(plan.jobs) >= (2 if tile[0] < 100 else 1)
            _compare(res, ref, params)


@pytest.mark.parametrize(
    "case",
    [
        {"roll_step": 7.0},  # rotated inputs
        {"distortion": 3e-4, "roll_step": 3.0},  # distorted (several pixels at the corners)
        {"small_bbox": True},  # NaN pixel map outside an input's bounding box
    ],
    ids=["rotated", "distorted", "small-bbox"],
)
@pytest.mark.parametrize("weight_type", ["ivm", "exptime"])
def test_geometries_and_weights(case, weight_type, tmp_path):
    exps = make_field(5, seed=3, **case)
    out = mosaic_wcs(exps)
    maps = pixmap_files(exps, out, tmp_path)
    for kernel in ("square", "gaussian"):
        params = rs.ResampleParams(kernel=kernel, pixfrac=0.5 if kernel == "square" else 1.0,
                                   weight_type=weight_type)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ref = oracle(exps, out, params)
            for tile in TILINGS[:2]:
                res, _ = tiled(exps, out, params, tile, pixmaps=maps)
                _compare(res, ref, params)
            if kernel == "square" and weight_type == "ivm":
                # tiles that evaluate the WCSs themselves (the pixel maps do not depend on the
                # weights: once per geometry)
                res, _ = tiled(exps, out, params, TILINGS[1])
                _compare(res, ref, params)


def test_inputs_partly_outside_the_output(tmp_path):
    exps = make_field(4, seed=5, roll_step=4.0)
    full = mosaic_wcs(exps)
    ny, nx = full.array_shape
    # a user shape that cuts every input's outer part off
    out = mosaic_wcs(exps, shape=(ny * 2 // 3, nx * 2 // 3))
    params = rs.ResampleParams()
    ref = oracle(exps, out, params)
    maps = pixmap_files(exps, out, tmp_path)
    for tile in TILINGS:
        res, _ = tiled(exps, out, params, tile, pixmaps=maps)
        _compare(res, ref, params)
    res, _ = tiled(exps, out, params, TILINGS[1])  # tiles that evaluate the WCSs themselves
    _compare(res, ref, params)


def _shifted(w, dx, dy):
    """``w`` with its pixel grid moved by (dx, dy) output pixels (a pixel (x, y) of ``w`` is
    (x + dx, y + dy) of the result)."""
    import gwcs
    from astropy.modeling import models as m

    steps = [(step.frame, step.transform) for step in w.pipeline]
    steps[0] = (steps[0][0], (m.Shift(-dx) & m.Shift(-dy)) | steps[0][1])
    out = gwcs.WCS(steps)
    out.array_shape = w.array_shape
    return out


def _edge_case(side, eps):
    """Inputs aligned with an output that cuts through them, a row and a column of input 0
    centred ``eps`` pixel beyond the output's far (or near) sides."""
    from stcal_dask.mosaic import alignment as al

    exps = make_field(4, seed=5, shape=(90, 80))
    ny, nx = mosaic_wcs(exps).array_shape
    shape = (ny * 3 // 4, nx * 3 // 4)
    base = mosaic_wcs(exps, shape=shape)
    pm = al.calc_pixmap(exps[0][0], base, exps[0][2]["sci"].shape)
    if side == "far":  # input 0's row/column nearest the far sides moved eps beyond them
        ty, tx = shape[0] - 0.5 + eps, shape[1] - 0.5 + eps
        yrow, xcol = pm[:, 40, 1], pm[45, :, 0]
        dy = ty - yrow[np.argmin(np.abs(yrow - ty))]
        dx = tx - xcol[np.argmin(np.abs(xcol - tx))]
    else:  # input 0's row/column 30 moved eps beyond the near sides (x, y = -0.5)
        dy = -0.5 - eps - pm[30, 40, 1]
        dx = -0.5 - eps - pm[45, 30, 0]
    return exps, _shifted(base, dx, dy)


@pytest.mark.parametrize("eps", [0.03, 0.045])
@pytest.mark.parametrize("side", ["far", "near"])
def test_outer_edge_clip_identical(side, eps, tmp_path):
    """A row and a column of input pixels centred ``eps`` pixel beyond the output's outer edges
    (inputs aligned with the output, the output cutting through them): whether drizzle visits
    them hangs on its clip polygon, which stcal computes from the whole exposure. Before tiles
    on an outer edge gave drizzle the whole exposure's rectangle, tens of pixels along the edge
    differed (weights and means) for 29 x 23 and 40 x 37 tiles."""
    exps, out = _edge_case(side, eps)
    params = rs.ResampleParams()
    ref = oracle(exps, out, params)
    maps = pixmap_files(exps, out, tmp_path)
    # from the pixel-map files (the clip's values too), and with the WCSs evaluated by the tiles
    for tile, tile_maps in [(TILINGS[0], maps), ((40, 37), maps), (TILINGS[2], maps),
                            ((40, 37), None)]:
        res, plan = tiled(exps, out, params, tile, pixmaps=tile_maps)
        assert any(j.whole for j in plan.jobs)
        _compare(res, ref, params)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compute_err": "driz_err"},
        {"enable_ctx": False, "enable_var": False, "compute_err": None},
        {"fillval": "0", "good_bits": "~DO_NOT_USE"},
        {"good_bits": 0},
    ],
    ids=["driz_err", "no-ctx-no-var", "fill-0-goodbits", "all-flags-bad"],
)
def test_options(plain_field, plain_pixmaps, kwargs):
    exps = plain_field
    out = mosaic_wcs(exps)
    params = rs.ResampleParams(**kwargs)
    ref = oracle(exps, out, params)
    res, _ = tiled(exps, out, params, (33, 47), pixmaps=plain_pixmaps)
    _compare(res, ref, params)
    if not params.enable_ctx:
        assert "con" not in res
    if params.compute_err is None:
        assert "err" not in res and ref.get("err") is None


def test_context_ids_are_global_with_many_inputs(tmp_path):
    """40 inputs: two context planes; bits follow the global order in every tile."""
    exps = make_field(40, shape=(40, 36), seed=9)
    out = mosaic_wcs(exps)
    params = rs.ResampleParams()
    ref = oracle(exps, out, params)
    assert ref["con"].shape[0] == 2
    res, plan = tiled(exps, out, params, (25, 25), pixmaps=pixmap_files(exps, out, tmp_path))
    assert any(len(j.regions) < 40 for j in plan.jobs)  # tiles skip inputs
    _compare(res, ref, params)


def test_large_output_coordinates_identical():
    """Far from the output's origin too: the tiles drizzle in the mosaic's own coordinates
    (their drizzle arrays start at pixel (0, 0); only the pages they write are allocated), so
    drizzle's geometry rounds as stcal's does on the whole mosaic. With coordinates relative to
    the tile's window instead, a few pixels in 10^5 came out a few ulp apart."""
    from stcal_dask.sim.wcs import imaging_wcs, offset_pointing

    exps = make_field(9, shape=(420, 400), seed=21, roll_step=2.0)
    # spread the 9 exposures over a ~1100 x 1100 output (coordinates up to ~1100 pixels)
    spread = []
    for k, (_, _, a) in enumerate(exps):
        ra, dec = offset_pointing(34.46, -5.24, (k % 3) * 22.0, (k // 3) * 23.0, 70.0)
        e = imaging_wcs(ra, dec, 70.0 + 2.0 * k, shape=(420, 400))
        spread.append((e.wcs, e.wcsinfo, a))
    out = mosaic_wcs(spread)
    assert min(out.array_shape) > 900
    params = rs.ResampleParams()
    ref = oracle(spread, out, params)
    res, plan = tiled(spread, out, params, (256, 256))
    assert len(plan.jobs) >= 16
    np.testing.assert_array_equal(res["con"], ref["con"])
    for ours, theirs in PAIRS:
        d = ulp_diff(res[ours], ref[theirs])
        assert d.max() == 0, (ours, int((d > 0).sum()), int(d.max()))


FAR_TILE_SCRIPT = """
import resource, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from resample_field import exposures, make_field, mosaic_wcs
from stcal_dask.mosaic import resample as rs
exps = make_field(2, shape=(200, 200), seed=3)
# a 40000 x 40000 output whose inputs lie near its far corner
out = mosaic_wcs(exps, shape=(40000, 40000), crpix=(39800.0, 39800.0))
plan = rs.plan_mosaic(exposures(exps), out, rs.ResampleParams(), tile=(256, 256))
job = next(j for j in plan.jobs if len(j.regions) == 2 and j.tile[0] > 39000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = rs.drizzle_tile(job, plan.exposures, out, plan.params, plan.pixel_scale_ratio,
                      plan.variances)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(int(np.count_nonzero(res["wht"] > 0)), (after - before) // 1024)
"""


def test_far_tile_allocates_only_its_window(tmp_path):
    """A tile far from the output's origin drizzles onto arrays spanning the mosaic from (0, 0)
    (6.4 GB each here), of which only the written pages are ever allocated: its peak memory is
    about that of its window (~100 MiB seen, with the page tables of the large mappings)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "far.py"
    script.write_text(FAR_TILE_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    covered, grew_mib = map(int, proc.stdout.split())
    assert covered > 1000, proc.stdout
    assert grew_mib < 250, proc.stdout  # whole arrays: 6400 MiB each


def test_window_coordinates_when_lazy_arrays_are_refused(plain_field, monkeypatch):
    """Where the system refuses the large lazy mapping, tiles fall back to arrays covering their
    window alone (pixel map shifted by its origin): still equal to stcal's on small outputs."""
    import mmap

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    exps = plain_field
    out = mosaic_wcs(exps)
    params = rs.ResampleParams()
    ref = oracle(exps, out, params)
    monkeypatch.setattr(mmap, "mmap", refuse)
    res, plan = tiled(exps, out, params, (29, 23))
    _compare(res, ref, params, edge_band=True)


def test_pixmap_file_equals_calc_pixmap(tmp_path):
    """An input's whole pixel map written once (row blocks) equals calc_pixmap's, and tiles
    reading their rectangles of it (and, on the outer edge, the values drizzle's clip reads)
    equal stcal's Resample."""
    from resample_field import exposures

    from stcal_dask.mosaic import alignment as al

    exps, out = _edge_case("far", 0.03)
    params = rs.ResampleParams()
    plan = rs.plan_mosaic(exposures(exps), out, params, tile=(29, 23),
                          output_pixel_scale=PSCALE)
    assert any(j.whole for j in plan.jobs)
    files = {}
    for e in plan.exposures:
        files[e.index] = rs.write_pixmap(e, out, tmp_path / f"{e.index}.npy", rows=7)
        full = al.calc_pixmap(e.wcs, al.without_bounding_box(out), e.shape)
        np.testing.assert_array_equal(np.load(files[e.index].path), full)
        assert (files[e.index].clip is None) == (not any(e.clip.sides))
    ref = oracle(exps, out, params)
    ny, nx = plan.out_shape
    res = {"sci": np.zeros((ny, nx), np.float32), "wht": np.zeros((ny, nx), np.float32)}
    for job in plan.jobs:
        t = rs.drizzle_tile(job, plan.exposures, out, params, plan.pixel_scale_ratio,
                            plan.variances, pixmaps=files)
        y0, y1, x0, x1 = job.tile
        for name in res:
            res[name][y0:y1, x0:x1] = t[name]
    assert ulp_diff(res["sci"], ref["data"]).max() == 0
    assert ulp_diff(res["wht"], ref["wht"]).max() == 0
