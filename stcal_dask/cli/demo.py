"""``stcal-dask demo``: the main job on an embedded default exposure.

1. Simulates a seeded 1x10x2048x2048 exposure (``--size``, ``--ngroups``, ``--nints`` change it)
   tile by tile into ``demo_ramp.zarr``, together with its ground truth (``demo_truth.zarr``:
   the true count rate and where cosmic rays were injected), on a ``LocalCluster``.
2. Runs jump detection + ramp fitting over the store's tiles (one dask graph, progress bar) and
   writes ``demo_rate`` / ``demo_rateints`` (zarr and/or FITS).
3. In the same graph, compares with the truth tile by tile and prints a short summary: injected
   cosmic rays recovered (fraction), false positives (flags with no injected ray in the pixel or
   its 4 neighbours in that group), and slope accuracy for good pixels (median relative error of
   the rate against the true flux).
4. Writes ``demo_quicklook.png`` (matplotlib Agg): the rate image and the jump map.

Existing ``demo_*`` products are replaced only with ``overwrite`` (``--overwrite``).
"""

from __future__ import annotations

import time
import warnings
from functools import partial
from pathlib import Path
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError

__all__ = ["DemoSummary", "run_demo", "simulate_with_truth", "tile_stats"]


class DemoSummary(NamedTuple):
    """Counts of one tile (or the frame) comparing the products with the truth."""

    injected: int
    """cosmic rays injected (integration, group, pixel), at pixels with a usable gain."""
    recovered: int
    """of those, flagged JUMP_DET in that group."""
    flagged: int
    """JUMP_DET flags in total (usable-gain pixels)."""
    false_positive: int
    """flags with no injected ray at the pixel or its 4 neighbours in that group."""
    samples: int
    """(integration, group, pixel) samples with a usable gain (for the false-positive rate)."""
    good_pixels: int
    """pixels with rate DQ == 0 and a finite rate and flux > 0."""
    rel_err_hist: np.ndarray
    """histogram of |rate - flux| / flux of the good pixels over :data:`_REL_BINS`."""
    bright_hist: np.ndarray
    """the same for good pixels with flux > :data:`BRIGHT_DN_S`."""

    def merge(self, other: DemoSummary) -> DemoSummary:
        return DemoSummary(*(a + b for a, b in zip(self, other, strict=True)))


BRIGHT_DN_S = 20.0
"""Pixels brighter than this (DN/s) get their own slope-accuracy figure."""

_REL_BINS = np.concatenate([[0.0], np.logspace(-6, 2, 801)])
"""Bin edges of the relative-error histograms (median read off the cumulative histogram)."""


def _hist_median(hist: np.ndarray) -> float:
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    c = np.cumsum(hist)
    half = n / 2.0
    i = int(np.searchsorted(c, half))
    below = c[i - 1] if i > 0 else 0
    frac = (half - below) / hist[i] if hist[i] else 0.5
    lo, hi = _REL_BINS[i], _REL_BINS[i + 1]
    if lo <= 0:
        return float(hi * frac)
    return float(lo * (hi / lo) ** frac)  # log-interpolated within the bin


def tile_stats(gdq, slope, dq, gain, flux, cr_mask) -> DemoSummary:
    """Compare one tile's products with its truth.

    ``gdq`` (nints, ngroups, ny, nx) flagged group DQ; ``slope`` (ny, nx) DN/s; ``dq`` (ny, nx)
    rate DQ; ``gain`` (ny, nx); ``flux`` (ny, nx) true rate DN/s; ``cr_mask`` (nints, ngroups, ny,
    nx) bool, injected rays. Neighbour checks see only this tile (a ray just across a tile edge
    counts its neighbour flag as false), so the false-positive count is a slight overestimate.
    """
    usable = np.isfinite(gain) & (gain > 0)
    jump = (gdq & dqflags.JUMP_DET) != 0
    jump &= usable
    cr = np.asarray(cr_mask, dtype=bool) & usable
    near = cr.copy()
    near[..., 1:, :] |= cr[..., :-1, :]
    near[..., :-1, :] |= cr[..., 1:, :]
    near[..., :, 1:] |= cr[..., :, :-1]
    near[..., :, :-1] |= cr[..., :, 1:]
    good = (dq == 0) & np.isfinite(slope) & (flux > 0)
    rel = np.abs(slope[good] - flux[good]) / flux[good]
    bright = flux[good] > BRIGHT_DN_S
    return DemoSummary(
        injected=int(cr.sum()),
        recovered=int((cr & jump).sum()),
        flagged=int(jump.sum()),
        false_positive=int((jump & ~near).sum()),
        samples=int(usable.sum()) * gdq.shape[0] * gdq.shape[1],
        good_pixels=int(good.sum()),
        rel_err_hist=np.histogram(np.clip(rel, 0, 99.0), _REL_BINS)[0],
        bright_hist=np.histogram(np.clip(rel[bright], 0, 99.0), _REL_BINS)[0],
    )


def _merge_stats(*parts: DemoSummary) -> DemoSummary:
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def simulate_with_truth(cfg, tile):
    """Lazy ramp Dataset and truth Dataset of ``cfg`` sharing one simulation task per tile."""
    import xarray as xr

    from stcal_dask.engine.datamodel import make_ramp_dataset
    from stcal_dask.sim.lazy import simulated_arrays, simulation_timing

    nints, ngroups = cfg.shape[:2]
    fields = {
        "data": ((nints, ngroups), np.float32),
        "groupdq": ((nints, ngroups), np.uint8),
        "pixeldq": ((), np.uint32),
        "gain": ((), np.float32),
        "readnoise": ((), np.float32),
        "flux": ((), np.float32),
        "cr_mask": ((nints, ngroups), bool),
    }
    arr = simulated_arrays(cfg, tile, fields)
    ramp = make_ramp_dataset(
        arr["data"], arr["groupdq"], arr["pixeldq"], arr["gain"], arr["readnoise"],
        timing=simulation_timing(cfg),
        source=f"stcal-dask demo simulation (seed {cfg.seed})",
    )
    truth = xr.Dataset(
        {
            "flux": (("y", "x"), arr["flux"], {"units": "DN/s"}),
            "cr_mask": (("integration", "group", "y", "x"), arr["cr_mask"].astype(np.uint8)),
        },
        attrs={"seed": cfg.seed, "description": "ground truth of the demo simulation"},
    )
    return ramp, truth


def _quietly(func, x, axis=None, **kwargs):
    """``func(x, axis)`` (np.nanmean / np.nanmax) without the warnings of all-NaN blocks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(x, axis=axis, **kwargs)


def _block_reduce(a: da.Array, f: int, how: str) -> da.Array:
    """Down-sample a 2-D dask array by an integer factor (max or mean over f x f blocks)."""
    if f <= 1:
        return a
    ny, nx = a.shape
    a = a[: ny - ny % f, : nx - nx % f]
    func = partial(_quietly, np.nanmax if how == "max" else np.nanmean)
    return da.coarsen(func, a, {0: f, 1: f}, trim_excess=True)


def _quicklook(path, rate_img: np.ndarray, jump_img: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    finite = rate_img[np.isfinite(rate_img)]
    lo, hi = (np.percentile(finite, [1, 99.5]) if finite.size else (0, 1))
    im = axes[0].imshow(rate_img, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-3),
                        interpolation="nearest")
    axes[0].set_title("rate (DN/s)")
    fig.colorbar(im, ax=axes[0], shrink=0.85)
    im = axes[1].imshow(jump_img, origin="lower", cmap="magma", interpolation="nearest",
                        vmin=0, vmax=max(1, int(np.nanmax(jump_img)) if jump_img.size else 1))
    axes[1].set_title("jump map (JUMP_DET groups per pixel)")
    fig.colorbar(im, ax=axes[1], shrink=0.85)
    for ax in axes:
        ax.set_xlabel("x (pixel)")
        ax.set_ylabel("y (pixel)")
    fig.suptitle(title)
    try:
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)


def _announce_and_tile(client, tile, cfg, say):
    """Announce the cluster; the tile (given, or chosen for the cluster's threads)."""
    from stcal_dask.engine import dataflow
    from stcal_dask.sim.ramp import CELL

    if client is not None:
        workers = client.scheduler_info().get("workers", {})
        say(f"dask cluster: {client.scheduler.address} with {len(workers)} worker processes"
            + (f" (dashboard {client.dashboard_link})" if client.cluster is not None
               and getattr(client.cluster, "scheduler", None) is not None
               and client.cluster.scheduler.services.get("dashboard") else ""))
    if tile is not None:
        return tile
    # tiles per thread that runs them (a worker may have several)
    workers = {} if client is None else client.scheduler_info().get("workers", {})
    nw = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    # tiles of whole simulator cells where possible, so each cell is simulated once
    nints, ngroups, size = cfg.nints, cfg.ngroups, cfg.nx
    return dataflow.auto_tile(nints, ngroups, size, size, n_workers=nw,
                              align=CELL if size >= 8 * CELL else 16)


def _summary_graph(ramp, jumped, rate, truth_path, size):
    """Lazy comparison with the truth (per-tile :func:`tile_stats`, merged) and the binned
    quicklook images; returns (stats, rate image, jump image, binning factor)."""
    import xarray as xr

    truth = xr.open_zarr(truth_path, consolidated=False, mask_and_scale=False)
    gdq_b = jumped["groupdq"].data.to_delayed(optimize_graph=False)
    slope_b = rate["sci"].data.to_delayed(optimize_graph=False)
    dq_b = rate["dq"].data.to_delayed(optimize_graph=False)
    gain_b = ramp["gain"].data.to_delayed(optimize_graph=False)
    flux_b = truth["flux"].data.rechunk(rate["sci"].data.chunks)
    flux_b = flux_b.to_delayed(optimize_graph=False)
    cr_b = truth["cr_mask"].data.rechunk(jumped["groupdq"].data.chunks)
    cr_b = cr_b.to_delayed(optimize_graph=False)
    parts = [
        dask.delayed(tile_stats, pure=True)(
            gdq_b[0, 0, i, j], slope_b[i, j], dq_b[i, j], gain_b[i, j], flux_b[i, j],
            cr_b[0, 0, i, j],
        )
        for i in range(slope_b.shape[0])
        for j in range(slope_b.shape[1])
    ]
    stats = dask.delayed(_merge_stats, pure=True)(*parts)
    f = max(1, size // 1024)
    rate_img = _block_reduce(rate["sci"].data, f, "mean")
    jmap = ((jumped["groupdq"].data & np.uint8(dqflags.JUMP_DET)) != 0).sum(
        axis=(0, 1), dtype=np.int16
    )
    return stats, rate_img, _block_reduce(jmap, f, "max"), f


def run_demo(
    *,
    size: int = 2048,
    nints: int = 1,
    ngroups: int = 10,
    seed: int = 2026,
    output_dir="stcal-dask-demo",
    formats=("zarr",),
    scheduler=None,
    n_workers=None,
    memory_limit=None,
    tile=None,
    overwrite: bool = False,
    quiet: bool = False,
    start_method: str | None = None,
) -> int:
    """Run the demo (see the module docstring); returns 0. Prints the summary unless ``quiet``.
    ``start_method`` is :func:`~stcal_dask.engine.cluster.get_client`'s (the CLI forks on Linux)."""
    from stcal_dask.engine import dataflow
    from stcal_dask.engine.cluster import compute, get_client
    from stcal_dask.io import (
        open_ramp,
        write_dataset_atomic,
        write_rate_fits,
        write_rateints_fits,
    )
    from stcal_dask.io.atomic import atomic_outputs, remove_path
    from stcal_dask.sim.ramp import SimulationConfig

    for name, value, low in (("--size", size, 8), ("--nints", nints, 1), ("--ngroups", ngroups, 2)):
        if int(value) < low:
            raise UserInputError(f"{name} must be >= {low}, got {value}")
    from stcal_dask.cli.steps import make_output_dir

    out = Path(output_dir).expanduser()

    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise UserInputError(f"--output-dir {output_dir} is a file, not a directory")
    make_output_dir(out)

    def say(*lines):
        if not quiet:
            for line in lines:
                print(line, flush=True)

    cfg = SimulationConfig(nints=nints, ngroups=ngroups, ny=size, nx=size, seed=seed)
    ramp_path, truth_path = out / "demo_ramp.zarr", out / "demo_truth.zarr"
    png = out / "demo_quicklook.png"
    written = [out / f"demo_{kind}.{fmt}" for fmt in formats for kind in ("rate", "rateints")]
    t_start = time.perf_counter()
    with atomic_outputs() as products:
        for target in (ramp_path, truth_path, *written, png):  # at once, before any work
            products.claim(target, overwrite=overwrite)
        # started here, in this thread, after the imports above: safe to fork the workers
        with get_client(scheduler, n_workers=n_workers, memory_limit=memory_limit,
                        start_method=start_method) as client:
            tile = _announce_and_tile(client, tile, cfg, say)
            say(f"[1/3] simulating a {nints}x{ngroups}x{size}x{size} exposure (seed {seed}) "
                f"into {ramp_path} in {tile[0]}x{tile[1]} tiles")
            t0 = time.perf_counter()
            ramp_ds, truth_ds = simulate_with_truth(cfg, tile)
            with atomic_outputs() as simulated:
                for target, ds in ((ramp_path, ramp_ds), (truth_path, truth_ds)):
                    simulated.add(write_dataset_atomic(ds, target, overwrite=overwrite,
                                                       compute=False))
                compute(*simulated.writes, quiet=quiet)
            t_sim = time.perf_counter() - t0

            say("[2/3] jump detection + ramp fitting (one graph over the store's tiles)")
            t0 = time.perf_counter()
            ramp = open_ramp(ramp_path)
            jumped = dataflow.detect_jumps(ramp)
            fit = dataflow.fit_ramps(jumped)
            rate, rateints = fit.rate, fit.rateints
            for target in written:
                kind, fmt = target.stem.split("_", 1)[1], target.suffix[1:]
                ds = rate if kind == "rate" else rateints
                if fmt == "zarr":
                    products.add(write_dataset_atomic(ds, target, overwrite=overwrite,
                                                      compute=False))
                else:
                    writer = write_rate_fits if kind == "rate" else write_rateints_fits
                    products.add(writer(ds, target, overwrite=overwrite, compute=False))
            stats, rate_img, jump_img, f = _summary_graph(ramp, jumped, rate, truth_path, size)
            writes = products.writes
            res = compute(*writes, stats, rate_img, jump_img, jumped["primary_jumps"].data,
                          quiet=quiet)
            stats, rate_np, jump_np, n_primary = res[len(writes):]
            t_run = time.perf_counter() - t0

        _quicklook(products.reserve(png, overwrite=overwrite, suffix=".png"),
                   np.asarray(rate_np), np.asarray(jump_np),
                   f"stcal-dask demo: {nints}x{ngroups}x{size}x{size}, seed {seed}"
                   + (f" (binned {f}x{f})" if f > 1 else ""))
    # the truth store is an internal by-product; keep the ramp for re-runs with `stcal-dask run`
    remove_path(truth_path)

    rec = stats.recovered / stats.injected if stats.injected else float("nan")
    fp_rate = stats.false_positive / stats.samples if stats.samples else float("nan")
    say(
        "[3/3] summary",
        f"  exposure            : {nints}x{ngroups}x{size}x{size}, tiles {tile[0]}x{tile[1]}",
        f"  jumps injected      : {stats.injected}",
        f"  jumps recovered     : {stats.recovered} ({100 * rec:.2f} %)",
        f"  JUMP_DET flags      : {stats.flagged} (primary {int(n_primary)}; the rest are "
        "neighbour flags)",
        f"  false positives     : {stats.false_positive} flags with no injected ray in the pixel "
        f"or its 4 neighbours ({100 * fp_rate:.4f} % of {stats.samples} samples)",
        f"  slope accuracy      : median |rate - flux| / flux = "
        f"{100 * _hist_median(stats.rel_err_hist):.2f} % over {stats.good_pixels} good pixels "
        f"(DQ = 0); {100 * _hist_median(stats.bright_hist):.2f} % for flux > "
        f"{BRIGHT_DN_S:g} DN/s ({int(stats.bright_hist.sum())} pixels)",
        f"  time                : simulate {t_sim:.1f} s, jump + ramp fit + write {t_run:.1f} s,"
        f" total {time.perf_counter() - t_start:.1f} s",
        *(f"  wrote               : {w}" for w in [ramp_path, *written, png]),
    )
    return 0
