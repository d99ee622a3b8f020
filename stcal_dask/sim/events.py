"""Large events for synthetic exposures: NIR snowballs and MIRI-like showers, seeded, with truth.

:func:`add_large_events` takes a :class:`~stcal_dask.sim.ramp.SyntheticExposure` and returns a
new one (the input is not modified) with:

* **snowballs** -- a disk of radius ``core_radius`` that saturates from group ``g0`` on (data
  clipped to ``saturation_dn``, GROUPDQ SATURATED for g0 and every later group) inside a disk of
  radius ``halo_radius`` whose pixels get a charge step of ``halo_dn`` DN at g0 (what the jump
  detection flags around the core). Positions are drawn at random, plus the ones asked for
  explicitly: ``edge`` ones within ``edge_size`` pixels of the detector edge (where stcal needs
  no saturated core) and ``seam`` ones centred on given rows (tile seams);
* **showers** -- a disk of radius ``shower_radius`` whose pixels get a faint step of
  ``shower_sigma`` times the pixel's per-difference noise at group g0 (too faint for the
  two-point detection alone, found by stcal's ring-convolution search).

Every event's integration, group, centre and radii are returned as :class:`EventTruth` records.
The events are drawn from ``numpy.random.default_rng(seed)`` over the whole frame, so this works
on whole exposures held in memory (tests, benchmarks), not tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags
from stcal_dask.sim.ramp import SyntheticExposure

__all__ = ["EventConfig", "EventTruth", "add_large_events"]


@dataclass(frozen=True)
class EventConfig:
    """What to add. Radii in pixels, amplitudes in DN unless noted."""

    seed: int = 0
    n_snowballs: int = 4
    """Snowballs at random positions (away from the edges), per integration."""
    snowball_rows: tuple[int, ...] = ()
    """Extra snowballs centred on these rows (e.g. tile seams), at random columns."""
    n_edge_snowballs: int = 1
    """Extra snowballs per integration centred within ``edge_size`` of an edge."""
    edge_size: int = 25
    core_radius: tuple[float, float] = (3.0, 6.0)
    """Uniform range of the saturated core's radius."""
    halo_factor: tuple[float, float] = (2.0, 3.0)
    """The halo's radius is this (uniform range) times the core's."""
    halo_dn: tuple[float, float] = (300.0, 2000.0)
    """Uniform range of the halo's jump (DN)."""
    saturation_dn: float = 60000.0
    n_showers: int = 0
    """Showers at random positions, per integration."""
    shower_radius: tuple[float, float] = (8.0, 14.0)
    shower_sigma: float = 3.0
    """Shower step in units of the pixel's per-difference noise (read noise and Poisson)."""


class EventTruth(NamedTuple):
    """One injected event."""

    kind: str
    """"snowball" or "shower"."""
    integration: int
    group: int
    """The group in which the event appears (>= 1)."""
    y: float
    x: float
    core_radius: float
    """Saturated core radius (0 for showers)."""
    radius: float
    """Halo (snowball) or disk (shower) radius."""


def _disk(ny, nx, y, x, r):
    yy, xx = np.ogrid[:ny, :nx]
    return (yy - y) ** 2 + (xx - x) ** 2 <= r * r


def add_large_events(exp: SyntheticExposure, cfg: EventConfig | None = None
                     ) -> tuple[SyntheticExposure, list[EventTruth]]:
    """``exp`` with snowballs and showers added (new arrays) and the list of events."""
    cfg = cfg or EventConfig()
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 1213]))
    data = exp.data.copy()
    gdq = exp.groupdq.copy()
    cr = exp.cr_mask.copy()
    nints, ngroups, ny, nx = data.shape
    truth: list[EventTruth] = []
    if ngroups < 2:
        return exp, truth
    gain = np.where(np.isfinite(exp.gain) & (exp.gain > 0), exp.gain, 2.0).astype(np.float64)
    tgroup = exp.config.group_time
    margin = cfg.edge_size + 10

    def inner(n):  # away from the edges where the frame allows it
        lo, hi = min(margin, n / 2), max(n - margin, n / 2)
        return rng.uniform(lo, hi)

    for i in range(nints):
        centres = []
        for _ in range(cfg.n_snowballs):
            centres.append((inner(ny), inner(nx)))
        for row in cfg.snowball_rows:
            centres.append((float(row) + rng.uniform(-0.5, 0.5), inner(nx)))
        for _ in range(cfg.n_edge_snowballs):
            side = rng.integers(0, 4)
            d = rng.uniform(2, cfg.edge_size - 2)
            if side == 0:
                centres.append((d, rng.uniform(0, nx)))
            elif side == 1:
                centres.append((ny - 1 - d, rng.uniform(0, nx)))
            elif side == 2:
                centres.append((rng.uniform(0, ny), d))
            else:
                centres.append((rng.uniform(0, ny), nx - 1 - d))
        for y, x in centres:
            g0 = int(rng.integers(1, ngroups))
            rc = float(rng.uniform(*cfg.core_radius))
            rh = rc * float(rng.uniform(*cfg.halo_factor))
            amp = float(rng.uniform(*cfg.halo_dn))
            halo = _disk(ny, nx, y, x, rh)
            core = _disk(ny, nx, y, x, rc)
            data[i, g0:, halo] += np.float32(amp)
            cr[i, g0][halo] = True
            data[i, g0:, core] = np.float32(cfg.saturation_dn)
            gdq[i, g0:, core] |= np.uint8(dqflags.SATURATED)
            truth.append(EventTruth("snowball", i, g0, float(y), float(x), rc, rh))
        for _ in range(cfg.n_showers):
            g0 = int(rng.integers(1, ngroups))
            r = float(rng.uniform(*cfg.shower_radius))
            y, x = rng.uniform(r, ny - r), rng.uniform(r, nx - r)
            disk = _disk(ny, nx, y, x, r)
            # per-difference noise (DN): read noise of a difference and the Poisson noise
            noise = np.sqrt(exp.readnoise.astype(np.float64) ** 2
                            + np.abs(exp.flux.astype(np.float64)) * tgroup / gain)
            step = (cfg.shower_sigma * noise).astype(np.float32)
            data[i, g0:][:, disk] += step[disk]
            truth.append(EventTruth("shower", i, g0, float(y), float(x), 0.0, r))
    out = exp._replace(data=data, groupdq=gdq, cr_mask=cr)
    return out, truth
