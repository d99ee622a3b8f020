"""Seeded synthetic up-the-ramp exposures for tests, benchmarks and the demo.

The generator models a JWST-like near-infrared detector read out up the ramp:

* per-pixel true count rate ``flux`` (DN/s): a smooth background plus point sources, some bright
  enough to saturate early in the ramp;
* per-pixel gain (e/DN) around ``gain_mean``; a small fraction of pixels get a bad gain
  (0, negative or NaN), as real gain reference files have;
* Poisson-distributed accumulated charge (electrons) group by group, converted to DN;
* read noise: each group gets independent Gaussian noise with sigma ``readnoise / sqrt(2)``
  (``readnoise`` is the CDS read noise in DN, as in the JWST READNOISE reference file);
* cosmic rays: at a random group a step of ``cr_min_dn .. cr_max_dn`` DN is added to that group
  and every later group of the integration (the ``cr_mask`` records where);
* saturation: values at or above ``saturation_dn`` are clipped and the group, and every later
  group of the integration, flagged SATURATED in GROUPDQ.

Everything is deterministic for a given seed **and independent of the region asked for**:
randomness is drawn per fixed cell of ``CELL`` x ``CELL`` pixels with a seed derived from
``(seed, cell_y, cell_x)``, so :func:`simulate_region` of any window equals the same window of
:func:`simulate_exposure`. That lets the dataflow layer generate a cube larger than memory tile by
tile.

Shapes: data/groupdq/cr_mask (nints, ngroups, ny, nx); pixeldq/gain/readnoise/flux (ny, nx).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags

CELL = 128
"""Side (pixels) of the fixed cells that carry independent random streams."""


@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of a synthetic exposure. Times in seconds, signals in DN unless noted."""

    nints: int = 1
    ngroups: int = 10
    ny: int = 256
    nx: int = 256
    seed: int = 0
    nframes: int = 1
    groupgap: int = 0
    frame_time: float = 10.73677
    """TFRAME (s)."""
    drop_frames1: int = 0
    gain_mean: float = 2.0
    """Mean gain (e/DN)."""
    gain_sigma: float = 0.05
    readnoise: float = 10.0
    """Mean CDS read noise (DN)."""
    readnoise_sigma: float = 0.5
    bias_dn: float = 1000.0
    background_dn_s: float = 1.0
    """Background count rate (DN/s)."""
    source_density: float = 2e-3
    """Point sources per pixel."""
    source_peak_dn_s: tuple[float, float] = (5.0, 3000.0)
    """Log-uniform range of point-source peak rates (DN/s)."""
    cr_rate: float = 0.02
    """Probability that a pixel is hit by a cosmic ray in one group."""
    cr_min_dn: float = 50.0
    cr_max_dn: float = 2000.0
    saturation_dn: float = 60000.0
    bad_gain_fraction: float = 1e-3
    """Fraction of pixels with gain 0, negative or NaN."""
    nan_fraction: float = 0.0
    """Fraction of (group, pixel) samples replaced by NaN with no DQ flag (unflagged bad data)."""
    do_not_use_fraction: float = 0.0
    """Fraction of (group, pixel) samples flagged DO_NOT_USE in GROUPDQ."""
    zeroframe: bool = False
    """Also produce a ZEROFRAME (the first frame of each integration, DN)."""
    pointing: tuple[float, float, float] | None = None
    """Optional (ra_ref, dec_ref, roll_ref) in degrees; :func:`exposure_wcs` then gives the
    exposure a JWST-like imaging gwcs (see :mod:`stcal_dask.sim.wcs`). Does not change the data."""

    @property
    def group_time(self) -> float:
        """TGROUP (s): (nframes + groupgap) * TFRAME."""
        return (self.nframes + self.groupgap) * self.frame_time

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.nints, self.ngroups, self.ny, self.nx)

    def with_shape(self, nints: int, ngroups: int, ny: int, nx: int) -> SimulationConfig:
        return replace(self, nints=nints, ngroups=ngroups, ny=ny, nx=nx)

    def validate(self) -> None:
        for name in ("nints", "ngroups", "ny", "nx", "nframes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"simulation {name} must be >= 1, got {getattr(self, name)}")
        if self.groupgap < 0:
            raise ValueError(f"simulation groupgap must be >= 0, got {self.groupgap}")
        if self.frame_time <= 0:
            raise ValueError(f"simulation frame_time must be > 0 s, got {self.frame_time}")


class SyntheticExposure(NamedTuple):
    """A synthetic exposure and its ground truth. See the module docstring for shapes."""

    data: np.ndarray
    """float32 DN, (nints, ngroups, ny, nx)."""
    groupdq: np.ndarray
    """uint8, (nints, ngroups, ny, nx)."""
    pixeldq: np.ndarray
    """uint32, (ny, nx)."""
    gain: np.ndarray
    """float32 e/DN, (ny, nx); a few pixels 0, negative or NaN."""
    readnoise: np.ndarray
    """float32 CDS read noise in DN, (ny, nx)."""
    flux: np.ndarray
    """float32 true count rate in DN/s, (ny, nx) (uses the nominal gain for bad-gain pixels)."""
    cr_mask: np.ndarray
    """bool, (nints, ngroups, ny, nx): True at the group where a cosmic ray was injected."""
    zeroframe: np.ndarray | None
    """float32 DN, (nints, ny, nx), or None."""
    config: SimulationConfig

    @property
    def timing(self) -> dict[str, float | int]:
        """JWST timing keywords of this exposure."""
        c = self.config
        return {
            "NINTS": c.nints,
            "NGROUPS": c.ngroups,
            "NFRAMES": c.nframes,
            "GROUPGAP": c.groupgap,
            "TFRAME": c.frame_time,
            "TGROUP": c.group_time,
            "DRPFRMS1": c.drop_frames1,
        }


def _cell_rng(seed: int, cy: int, cx: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 7919, int(cy), int(cx)]))


def _simulate_cell(cfg: SimulationConfig, cy: int, cx: int) -> SyntheticExposure:
    """Simulate the whole of cell (cy, cx), clipped to the detector edge."""
    y0, x0 = cy * CELL, cx * CELL
    h, w = min(CELL, cfg.ny - y0), min(CELL, cfg.nx - x0)
    rng = _cell_rng(cfg.seed, cy, cx)
    nints, ngroups = cfg.nints, cfg.ngroups

    # Reference arrays.
    gain = rng.normal(cfg.gain_mean, cfg.gain_sigma, (h, w)).astype(np.float32)
    readnoise = np.abs(rng.normal(cfg.readnoise, cfg.readnoise_sigma, (h, w))).astype(np.float32)
    bad = rng.random((h, w)) < cfg.bad_gain_fraction
    kind = rng.integers(0, 3, (h, w))
    true_gain = gain.copy()
    gain = np.where(bad & (kind == 0), np.float32(0.0), gain)
    gain = np.where(bad & (kind == 1), np.float32(-1.0), gain)
    gain = np.where(bad & (kind == 2), np.float32(np.nan), gain).astype(np.float32)

    # Scene: background plus point sources (a source sits inside one cell; a 3x3 footprint).
    flux = np.full((h, w), cfg.background_dn_s, dtype=np.float64)
    flux *= rng.uniform(0.8, 1.2, (h, w))
    nsrc = rng.poisson(cfg.source_density * h * w)
    lo, hi = np.log(cfg.source_peak_dn_s[0]), np.log(cfg.source_peak_dn_s[1])
    for _ in range(nsrc):
        sy, sx = rng.integers(0, h), rng.integers(0, w)
        peak = float(np.exp(rng.uniform(lo, hi)))
        ys, xs = slice(max(sy - 1, 0), min(sy + 2, h)), slice(max(sx - 1, 0), min(sx + 2, w))
        flux[ys, xs] += 0.25 * peak
        flux[sy, sx] += 0.75 * peak

    tgroup = cfg.group_time
    rn_read = readnoise.astype(np.float64) / np.sqrt(2.0)
    data = np.empty((nints, ngroups, h, w), dtype=np.float32)
    groupdq = np.zeros((nints, ngroups, h, w), dtype=np.uint8)
    cr_mask = np.zeros((nints, ngroups, h, w), dtype=bool)
    zeroframe = np.empty((nints, h, w), dtype=np.float32) if cfg.zeroframe else None
    electrons_per_group = flux * true_gain * tgroup
    for i in range(nints):
        charge = np.zeros((h, w))  # electrons accumulated
        crs = np.zeros((h, w))  # DN of cosmic-ray steps so far
        saturated = np.zeros((h, w), dtype=bool)
        bias = cfg.bias_dn + rng.normal(0.0, 5.0, (h, w))
        if zeroframe is not None:
            zf = bias + rng.poisson(flux * true_gain * cfg.frame_time) / true_gain
            zeroframe[i] = np.minimum(zf, cfg.saturation_dn)
        for g in range(ngroups):
            charge += rng.poisson(electrons_per_group)
            hit = rng.random((h, w)) < cfg.cr_rate
            if g == 0:
                hit[:] = False  # a jump needs a previous group to be seen
            amp = rng.uniform(cfg.cr_min_dn, cfg.cr_max_dn, (h, w))
            crs += np.where(hit, amp, 0.0)
            signal = bias + charge / true_gain + crs + rng.normal(0.0, 1.0, (h, w)) * rn_read
            saturated |= signal >= cfg.saturation_dn
            cr_mask[i, g] = hit & ~saturated
            data[i, g] = np.where(saturated, cfg.saturation_dn, signal)
            groupdq[i, g] = np.where(saturated, dqflags.SATURATED, 0)
        if cfg.nan_fraction > 0:
            nan = rng.random((ngroups, h, w)) < cfg.nan_fraction
            data[i][nan] = np.nan
        if cfg.do_not_use_fraction > 0:
            dnu = rng.random((ngroups, h, w)) < cfg.do_not_use_fraction
            groupdq[i][dnu] |= dqflags.DO_NOT_USE

    return SyntheticExposure(
        data=data,
        groupdq=groupdq,
        pixeldq=np.zeros((h, w), dtype=np.uint32),
        gain=gain,
        readnoise=readnoise,
        flux=flux.astype(np.float32),
        cr_mask=cr_mask,
        zeroframe=zeroframe,
        config=cfg,
    )


def simulate_region(
    cfg: SimulationConfig, y0: int, y1: int, x0: int, x1: int
) -> SyntheticExposure:
    """Simulate the window ``[y0:y1, x0:x1]`` of the exposure described by ``cfg``.

    The result equals the same window of :func:`simulate_exposure` bit for bit, whatever the
    window, so a cube can be generated tile by tile (e.g. straight into a chunked zarr store).
    """
    cfg.validate()
    if not (0 <= y0 < y1 <= cfg.ny and 0 <= x0 < x1 <= cfg.nx):
        raise ValueError(
            f"region [{y0}:{y1}, {x0}:{x1}] outside the {cfg.ny}x{cfg.nx} detector"
        )
    h, w = y1 - y0, x1 - x0
    nints, ngroups = cfg.nints, cfg.ngroups
    out = {
        "data": np.empty((nints, ngroups, h, w), np.float32),
        "groupdq": np.empty((nints, ngroups, h, w), np.uint8),
        "pixeldq": np.empty((h, w), np.uint32),
        "gain": np.empty((h, w), np.float32),
        "readnoise": np.empty((h, w), np.float32),
        "flux": np.empty((h, w), np.float32),
        "cr_mask": np.empty((nints, ngroups, h, w), bool),
        "zeroframe": np.empty((nints, h, w), np.float32) if cfg.zeroframe else None,
    }
    for cy in range(y0 // CELL, (y1 - 1) // CELL + 1):
        for cx in range(x0 // CELL, (x1 - 1) // CELL + 1):
            cell = _simulate_cell(cfg, cy, cx)
            cy0, cx0 = cy * CELL, cx * CELL
            # overlap of the cell and the window, in detector coordinates
            oy0, oy1 = max(y0, cy0), min(y1, cy0 + cell.gain.shape[0])
            ox0, ox1 = max(x0, cx0), min(x1, cx0 + cell.gain.shape[1])
            src = (slice(oy0 - cy0, oy1 - cy0), slice(ox0 - cx0, ox1 - cx0))
            dst = (slice(oy0 - y0, oy1 - y0), slice(ox0 - x0, ox1 - x0))
            for name, arr in out.items():
                if arr is None:
                    continue
                cell_arr = getattr(cell, name)
                arr[(..., *dst)] = cell_arr[(..., *src)]
    return SyntheticExposure(config=cfg, **out)


def simulate_exposure(cfg: SimulationConfig | None = None, **overrides) -> SyntheticExposure:
    """Simulate a whole exposure.

    ``simulate_exposure(nints=2, ngroups=5, ny=64, nx=64, seed=3)`` is shorthand for
    ``simulate_exposure(SimulationConfig(nints=2, ngroups=5, ny=64, nx=64, seed=3))``.
    """
    cfg = replace(cfg or SimulationConfig(), **overrides)
    return simulate_region(cfg, 0, cfg.ny, 0, cfg.nx)


def exposure_wcs(cfg: SimulationConfig, pixel_scale: float | None = None):
    """JWST-like imaging gwcs and wcsinfo of the exposure described by ``cfg``.

    Requires ``cfg.pointing = (ra_ref, dec_ref, roll_ref)`` (degrees); the detector is
    ``(cfg.ny, cfg.nx)`` with the reference pixel at its centre. ``pixel_scale`` is in
    arcsec/pixel (default: NIRCam long wavelength, 0.063"). Returns
    :class:`stcal_dask.sim.wcs.SimulatedWCS` ``(wcs, wcsinfo)``.
    """
    from stcal_dask.errors import UserInputError
    from stcal_dask.sim.wcs import NIRCAM_LW_SCALE, imaging_wcs

    if cfg.pointing is None:
        raise UserInputError("SimulationConfig.pointing is None: set (ra_ref, dec_ref, roll_ref)")
    ra, dec, roll = (float(v) for v in cfg.pointing)
    scale = NIRCAM_LW_SCALE if pixel_scale is None else pixel_scale
    return imaging_wcs(ra, dec, roll, shape=(cfg.ny, cfg.nx), pixel_scale=scale)
