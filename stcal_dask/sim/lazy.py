"""Synthetic exposures as lazy dask graphs: one shared task per tile of the seeded generator.

:func:`simulate_ramp_lazy` gives a ramp Dataset whose every tile is produced by
:func:`stcal_dask.sim.ramp.simulate_region`, so the values equal
:func:`stcal_dask.sim.ramp.simulate_exposure` bit for bit whatever the tile;
:func:`simulate_to_zarr` streams it into a zarr ramp store on any dask scheduler, so a cube larger
than memory can be produced.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr

from stcal_dask.engine.datamodel import (
    DEFAULT_MEMORY_BUDGET,
    choose_tile_size,
    make_ramp_dataset,
    normalize_tile,
)
from stcal_dask.errors import UserInputError
from stcal_dask.io.wcs_asdf import wcs_attrs
from stcal_dask.io.zarr_store import write_dataset_atomic
from stcal_dask.sim import ramp

__all__ = ["simulate_ramp_lazy", "simulate_to_zarr", "simulated_arrays", "simulation_timing"]


def _simulated_tile(cfg, y0, y1, x0, x1):
    return ramp.simulate_region(cfg, y0, y1, x0, x1)


def _field(exposure, name):
    return getattr(exposure, name)


def simulated_arrays(cfg, tile: tuple[int, int], fields: dict) -> dict[str, da.Array]:
    """Dask arrays of the fields of ``simulate_region(cfg, ...)``, one shared task per tile.

    ``fields`` maps a field name of the simulated exposure to ``(leading shape, dtype)``; every
    array is (*leading, ny, nx), chunked by ``tile = (ty, tx)``.
    """
    nints, ngroups, ny, nx = cfg.shape
    ty, tx = tile
    blocks = {n: [] for n in fields}
    for y0 in range(0, ny, ty):
        y1 = min(y0 + ty, ny)
        rows = {n: [] for n in fields}
        for x0 in range(0, nx, tx):
            x1 = min(x0 + tx, nx)
            tile_task = dask.delayed(_simulated_tile, pure=True)(cfg, y0, y1, x0, x1)
            for n, (lead, dtype) in fields.items():
                part = dask.delayed(_field, pure=True)(tile_task, n)
                rows[n].append(
                    da.from_delayed(part, shape=(*lead, y1 - y0, x1 - x0), dtype=dtype)
                )
        for n in fields:
            blocks[n].append(rows[n])
    return {n: da.block(b) for n, b in blocks.items()}


def simulation_timing(cfg) -> dict:
    """The JWST timing keywords of a simulated exposure."""
    nints, ngroups = cfg.shape[:2]
    return {
        "NINTS": nints, "NGROUPS": ngroups, "NFRAMES": cfg.nframes, "GROUPGAP": cfg.groupgap,
        "TFRAME": cfg.frame_time, "TGROUP": cfg.group_time, "DRPFRMS1": cfg.drop_frames1,
    }


def simulate_ramp_lazy(cfg, *, tile=None, memory_budget_bytes: int | None = None) -> xr.Dataset:
    """A lazy ramp Dataset of the synthetic exposure ``cfg``, one dask task per tile.

    Each tile is produced by :func:`stcal_dask.sim.ramp.simulate_region` (once per tile, shared
    by all variables), so the values equal :func:`stcal_dask.sim.ramp.simulate_exposure` bit for
    bit whatever the tile. Default tiles come from the memory budget, rounded to multiples of the
    generator's 128-pixel cells where possible. With ``cfg.pointing`` set, the exposure's
    JWST-like gwcs (:func:`stcal_dask.sim.ramp.exposure_wcs`) is in the attrs ``wcs_asdf`` /
    ``wcsinfo`` (:mod:`stcal_dask.io.wcs_asdf`), so its products carry it.
    """
    try:
        cfg.validate()
    except ValueError as exc:
        raise UserInputError(str(exc)) from None
    nints, ngroups, ny, nx = cfg.shape
    if tile is None:
        ty, tx = choose_tile_size(nints, ngroups, ny, nx,
                                  memory_budget_bytes or DEFAULT_MEMORY_BUDGET)
        ty = ty - ty % ramp.CELL if ramp.CELL <= ty < ny else ty
        tx = tx - tx % ramp.CELL if ramp.CELL <= tx < nx else tx
    else:
        ty, tx = normalize_tile(tile, ny, nx)
    names = {
        "data": ((nints, ngroups), np.float32),
        "groupdq": ((nints, ngroups), np.uint8),
        "pixeldq": ((), np.uint32),
        "gain": ((), np.float32),
        "readnoise": ((), np.float32),
    }
    if cfg.zeroframe:
        names["zeroframe"] = ((nints,), np.float32)
    arrays = simulated_arrays(cfg, (ty, tx), names)
    timing = simulation_timing(cfg)
    ds = make_ramp_dataset(
        arrays["data"], arrays["groupdq"], arrays["pixeldq"], arrays["gain"],
        arrays["readnoise"], timing=timing, zeroframe=arrays.get("zeroframe"),
        source=f"simulate(seed={cfg.seed}, shape={nints}x{ngroups}x{ny}x{nx})",
    )
    if cfg.pointing is not None:
        ds.attrs.update(wcs_attrs(*ramp.exposure_wcs(cfg)))
    return ds


def simulate_to_zarr(cfg, path, *, tile=None, overwrite: bool = False,
                     memory_budget_bytes: int | None = None, compute: bool = True):
    """Generate the synthetic exposure ``cfg`` tile by tile into a zarr ramp store.

    Works on whatever dask scheduler is active (threads, processes, a distributed client); peak
    memory is a few tiles, not the cube. The store equals ``simulate_exposure(cfg)`` bit for bit.
    ``tile``/``memory_budget_bytes`` as in :func:`simulate_ramp_lazy`; the zarr chunks are the
    tiles. Returns the final ``Path`` (or a :class:`PendingWrite` with ``compute=False``).
    """
    ds = simulate_ramp_lazy(cfg, tile=tile, memory_budget_bytes=memory_budget_bytes)
    return write_dataset_atomic(ds, path, overwrite=overwrite, compute=compute)
