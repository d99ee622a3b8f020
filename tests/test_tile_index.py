"""The mosaic's tile index (:func:`stcal_dask.mosaic.resample.build_tile_index`) against its
definition checked tile by tile and cell by cell: a tile needs an input's grid cell when the
cell's mapped box, widened by the slack, meets the tile's window (the tile plus the halo, in
pixel-centre coordinates); its rectangle of that input is the bounding box of the needed cells'
input boxes, clipped to the input; inputs in global order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stcal_dask.mosaic.resample import build_tile_index, tile_grid


def _cells(rng, n, in_shape, out_shape):
    """``n`` random grid cells of an input: integer input boxes (y0, y1, x0, x1), float mapped
    boxes in the output (some partly or wholly outside it), a validity mask."""
    iy, ix = in_shape
    y0 = rng.integers(-3, iy, n)
    x0 = rng.integers(-3, ix, n)
    in_boxes = np.stack([y0, y0 + rng.integers(1, 12, n), x0, x0 + rng.integers(1, 12, n)], 1)
    oy0 = rng.uniform(-20, out_shape[0] + 10, n)
    ox0 = rng.uniform(-20, out_shape[1] + 10, n)
    out_boxes = np.stack([oy0, oy0 + rng.uniform(0, 15, n), ox0, ox0 + rng.uniform(0, 15, n)],
                         1)
    # half the boxes on a quarter-pixel grid: edges exactly on the windows' edges (ties)
    snap = rng.random(n) < 0.5
    out_boxes[snap] = np.round(out_boxes[snap] * 4) / 4
    valid = rng.random(n) > 0.2
    return in_boxes, out_boxes, valid


def _by_definition(cells, shapes, out_shape, tile, halo, slack):
    ny, nx = out_shape
    jobs = []
    for ty0, ty1, tx0, tx1 in tile_grid(out_shape, tile):
        wy0, wy1 = max(0, ty0 - halo), min(ny, ty1 + halo)
        wx0, wx1 = max(0, tx0 - halo), min(nx, tx1 + halo)
        regions = []
        for k, (in_boxes, out_boxes, valid) in enumerate(cells):
            need = [i for i in range(len(valid)) if valid[i]
                    and out_boxes[i, 1] + slack >= wy0 - 0.5
                    and out_boxes[i, 0] - slack <= wy1 - 0.5
                    and out_boxes[i, 3] + slack >= wx0 - 0.5
                    and out_boxes[i, 2] - slack <= wx1 - 0.5]
            if need:
                b = in_boxes[need]
                iy, ix = shapes[k]
                regions.append((k, (max(0, int(b[:, 0].min())), min(iy, int(b[:, 1].max())),
                                    max(0, int(b[:, 2].min())), min(ix, int(b[:, 3].max())))))
        jobs.append(((ty0, ty1, tx0, tx1), (wy0, wy1, wx0, wx1), tuple(regions)))
    return jobs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ny=st.integers(1, 90), nx=st.integers(1, 90),
       ty=st.integers(1, 40), tx=st.integers(1, 40), halo=st.integers(0, 6),
       slack=st.sampled_from([0.0, 0.5, 1.25, 3.0]), n_inputs=st.integers(1, 4))
def test_index_equals_its_definition(seed, ny, nx, ty, tx, halo, slack, n_inputs):
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(v) for v in rng.integers(5, 40, 2)) for _ in range(n_inputs)]
    cells = [_cells(rng, int(rng.integers(1, 30)), s, (ny, nx)) for s in shapes]
    got = build_tile_index(cells, shapes, (ny, nx), (ty, tx), halo, slack)
    want = _by_definition(cells, shapes, (ny, nx), (ty, tx), halo, slack)
    assert [(j.tile, j.window, j.regions) for j in got] == want
    assert all(j.whole == () for j in got)  # no clip given: no whole-input drizzles
