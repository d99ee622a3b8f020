"""Seeded star fields observed through imaging WCSs (mosaic tests, demos and benchmarks).

A field is a list of stars with known sky positions and total fluxes; :func:`observe` renders
them into one exposure through its WCS with a circular Gaussian PSF whose pixel values are the
PSF integrated over each pixel (error functions), so a star's pixel sum equals its flux (to the
truncation at ``8 sigma``) wherever it lands.

Units: positions in degrees, fluxes in data units x pixels (DN/s summed over the star's pixels),
``psf_sigma`` in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from stcal_dask.errors import UserInputError

__all__ = ["Star", "observe", "star_field"]


class Star(NamedTuple):
    """One star: (RA, Dec) in degrees and its total flux (data units x pixels)."""

    ra: float
    dec: float
    flux: float


def star_field(
    n: int,
    center: tuple[float, float],
    radius_arcsec: float,
    *,
    flux_range: tuple[float, float] = (100.0, 1000.0),
    seed: int = 0,
) -> list[Star]:
    """``n`` stars uniformly within ``radius_arcsec`` of ``center`` (tangent plane), fluxes
    log-uniform in ``flux_range``; seeded."""
    from stcal_dask.sim.wcs import offset_pointing

    if n < 0 or radius_arcsec <= 0 or not 0 < flux_range[0] <= flux_range[1]:
        raise UserInputError(
            f"star_field needs n >= 0, radius > 0 and 0 < flux_min <= flux_max, got n={n}, "
            f"radius={radius_arcsec}, flux_range={flux_range}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 777]))
    stars = []
    for _ in range(n):
        r = radius_arcsec * math.sqrt(rng.uniform())
        a = rng.uniform(0, 2 * math.pi)
        ra, dec = offset_pointing(center[0], center[1], r * math.cos(a), r * math.sin(a))
        flux = math.exp(rng.uniform(math.log(flux_range[0]), math.log(flux_range[1])))
        stars.append(Star(ra, dec, flux))
    return stars


def _integrated_profile(edges: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    from scipy.special import erf

    cdf = 0.5 * (1.0 + erf((edges - centre) / (math.sqrt(2.0) * sigma)))
    return np.diff(cdf)


def observe(
    stars: Sequence[Star],
    wcs,
    shape: Sequence[int],
    *,
    psf_sigma: float = 1.2,
    sky: float = 0.0,
) -> np.ndarray:
    """Render ``stars`` into a (ny, nx) float32 image through ``wcs`` (world -> pixel).

    Each star adds ``flux`` times the pixel-integrated Gaussian PSF (``psf_sigma`` pixels,
    truncated at 8 sigma) centred on its pixel position; ``sky`` is added everywhere. Stars
    outside the frame contribute only the part of their PSF that falls on it.
    """
    ny, nx = (int(s) for s in shape)
    img = np.full((ny, nx), float(sky), dtype=np.float64)
    if not stars:
        return img.astype(np.float32)
    ras = np.array([s.ra for s in stars])
    decs = np.array([s.dec for s in stars])
    xs, ys = wcs.invert(ras, decs, with_bounding_box=False)
    half = int(math.ceil(8 * psf_sigma))
    for x, y, s in zip(np.atleast_1d(xs), np.atleast_1d(ys), stars, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        x0, x1 = max(0, int(round(x)) - half), min(nx, int(round(x)) + half + 1)
        y0, y1 = max(0, int(round(y)) - half), min(ny, int(round(y)) + half + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        px = _integrated_profile(np.arange(x0, x1 + 1) - 0.5, x, psf_sigma)
        py = _integrated_profile(np.arange(y0, y1 + 1) - 0.5, y, psf_sigma)
        img[y0:y1, x0:x1] += s.flux * np.outer(py, px)
    return img.astype(np.float32)
