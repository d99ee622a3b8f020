"""Synthetic JWST-like imaging WCSs and dither/mosaic pointing patterns (tests, demos, benchmarks).

The WCS of one exposure mimics the JWST pipeline's imaging gwcs, without distortion::

    detector (pix) --[Shift(-xref, -yref) | M_det | Scale(pscale") |
                      Shift(v2_ref, v3_ref)]--> v2v3 (")
    v2v3 (")       --[Shift(-v2_ref, -v3_ref) | R(roll) | Scale(1/3600) | TAN |
                      RotateNative2Celestial(ra_ref, dec_ref, 180)]--> world (ICRS, deg)

with ``M_det = calc_rotation_matrix(0, v3yangle, vparity)`` (the instrument's orientation and
parity in the telescope frame) and ``R(roll) = calc_rotation_matrix(roll_ref, 0, 1)`` (the
telescope roll). Their product is ``calc_rotation_matrix(roll_ref, v3yangle, vparity)``, exactly
the PC matrix the mosaic algorithm derives from the same wcsinfo, so an output WCS built with
``rotation=None`` is aligned with the detector axes. The reference pixel ``(xref, yref)`` (0-based,
the detector centre by default) maps to ``(ra_ref, dec_ref)``.

Units: angles in degrees, ``pixel_scale`` in arcsec/pixel, v2/v3 in arcsec.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import astropy.units as u
import gwcs
import numpy as np
from astropy.coordinates import ICRS
from astropy.modeling import models as m
from gwcs import coordinate_frames as cf

from stcal_dask.errors import UserInputError
from stcal_dask.mosaic.alignment import calc_rotation_matrix

__all__ = [
    "SimulatedWCS",
    "Pointing",
    "dither_pattern",
    "imaging_wcs",
    "offset_pointing",
    "simple_imaging_wcs",
]

NIRCAM_LW_SCALE = 0.0629970438
"""NIRCam long-wavelength pixel scale (arcsec/pixel)."""


class SimulatedWCS(NamedTuple):
    """The WCS built for a synthetic exposure and its JWST ``meta.wcsinfo`` values (for the WCS
    read back from a product see :class:`stcal_dask.mosaic.wcs.ProductWCS`)."""

    wcs: gwcs.WCS
    """detector -> v2v3 -> world gwcs, bounding box = full frame, pixel_shape (nx, ny)."""
    wcsinfo: dict
    """ra_ref, dec_ref, roll_ref, v3yangle (deg), vparity (+-1), v2_ref, v3_ref (arcsec)."""


class Pointing(NamedTuple):
    """Where one exposure points: reference RA, Dec and telescope roll (degrees)."""

    ra: float
    dec: float
    roll: float


def imaging_wcs(
    ra_ref: float,
    dec_ref: float,
    roll_ref: float = 0.0,
    shape: Sequence[int] = (2048, 2048),
    pixel_scale: float = NIRCAM_LW_SCALE,
    *,
    v3yangle: float = 0.02948617,
    vparity: int = -1,
    v2_ref: float = -89.387412,
    v3_ref: float = -491.352394,
    crpix: Sequence[float] | None = None,
) -> SimulatedWCS:
    """Build a JWST-like imaging gwcs (see the module docstring for the chain).

    Parameters
    ----------
    ra_ref, dec_ref : float
        World coordinates (deg) of the reference pixel.
    roll_ref : float
        Telescope roll at the reference point (deg, V3 North over East).
    shape : (ny, nx)
        Detector shape (numpy order); the bounding box is the full frame.
    pixel_scale : float
        arcsec/pixel.
    v3yangle, vparity, v2_ref, v3_ref
        Instrument aperture parameters (deg, +-1, arcsec, arcsec); defaults are NIRCam B5's.
    crpix : (x, y), optional
        0-based reference pixel; default the detector centre ((nx - 1) / 2, (ny - 1) / 2).
    """
    ny, nx = (int(s) for s in shape)
    if ny < 1 or nx < 1:
        raise UserInputError(f"shape must be positive (ny, nx), got {tuple(shape)}")
    if not pixel_scale > 0:
        raise UserInputError(f"pixel_scale must be > 0 arcsec, got {pixel_scale}")
    if not -90.0 <= dec_ref <= 90.0:
        raise UserInputError(f"dec_ref must be within [-90, 90] degrees, got {dec_ref}")
    xref, yref = ((nx - 1) / 2.0, (ny - 1) / 2.0) if crpix is None else map(float, crpix)
    m_det = np.reshape(calc_rotation_matrix(0.0, math.radians(v3yangle), vparity), (2, 2))
    r_roll = np.reshape(calc_rotation_matrix(math.radians(roll_ref), 0.0, 1), (2, 2))

    det2v23 = (
        (m.Shift(-xref, name="xref") & m.Shift(-yref, name="yref"))
        | m.AffineTransformation2D(matrix=m_det, name="det_orientation")
        | (m.Scale(pixel_scale, name="xscale") & m.Scale(pixel_scale, name="yscale"))
        | (m.Shift(v2_ref, name="v2_ref") & m.Shift(v3_ref, name="v3_ref"))
    )
    v23sky = (
        (m.Shift(-v2_ref) & m.Shift(-v3_ref))
        | m.AffineTransformation2D(matrix=r_roll, name="roll")
        | (m.Scale(1 / 3600.0) & m.Scale(1 / 3600.0))
        | m.Pix2Sky_TAN()
        | m.RotateNative2Celestial(ra_ref % 360.0, dec_ref, 180.0, name="v23tosky")
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(
        name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec)
    )
    world = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg))
    w = gwcs.WCS([(detector, det2v23), (v2v3, v23sky), (world, None)])
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.pixel_shape = (nx, ny)
    wcsinfo = {
        "ra_ref": float(ra_ref % 360.0),
        "dec_ref": float(dec_ref),
        "roll_ref": float(roll_ref),
        "v3yangle": float(v3yangle),
        "vparity": int(vparity),
        "v2_ref": float(v2_ref),
        "v3_ref": float(v3_ref),
    }
    return SimulatedWCS(w, wcsinfo)


def offset_pointing(ra: float, dec: float, dx: float, dy: float, pa: float = 0.0) -> tuple:
    """Sky position ``(dx, dy)`` arcsec from ``(ra, dec)`` in a tangent plane whose +y axis points
    at position angle ``pa`` (deg, East of North) and +x at ``pa - 90`` (West when ``pa = 0``).
    Returns (ra, dec) in degrees, RA in [0, 360)."""
    c, s = math.cos(math.radians(pa)), math.sin(math.radians(pa))
    # tangent-plane offsets East (e) and North (n); with lon_pole 180, native +x points East
    e = -dx * c + dy * s
    n = dx * s + dy * c
    tan = m.Pix2Sky_TAN() | m.RotateNative2Celestial(ra % 360.0, dec, 180.0)
    lon, lat = tan(e / 3600.0, n / 3600.0)
    return float(lon % 360.0), float(lat)


def dither_pattern(
    n: int,
    center: tuple[float, float] = (34.46, -5.24),
    roll: float = 70.0,
    *,
    tile: float = 120.0,
    dither: float = 3.0,
    roll_step: float = 0.0,
    seed: int = 0,
) -> list[Pointing]:
    """Pointings of ``n`` exposures forming a mosaic around ``center``.

    Exposures are laid out on a near-square grid of ``tile`` arcsec spacing (rows along the
    ``roll`` position angle), centred on ``center``; each gets a seeded random dither of up to
    ``dither`` arcsec per axis and a roll of ``roll + k * roll_step`` (k = 0..n-1) degrees.

    Parameters
    ----------
    n : int
        Number of exposures (>= 1).
    center : (ra, dec)
        Degrees.
    roll : float
        Telescope roll (deg) of the first exposure, also the grid orientation.
    tile, dither : float
        arcsec.
    roll_step : float
        Degrees added to the roll from one exposure to the next.
    seed : int
        Seeds the dithers.
    """
    if n < 1:
        raise UserInputError(f"number of exposures must be >= 1, got {n}")
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 4242]))
    out = []
    for k in range(n):
        row, col = divmod(k, ncol)
        dx = (col - (ncol - 1) / 2.0) * tile + rng.uniform(-dither, dither)
        dy = (row - (nrow - 1) / 2.0) * tile + rng.uniform(-dither, dither)
        ra, dec = offset_pointing(center[0], center[1], dx, dy, pa=roll)
        out.append(Pointing(ra, dec, float(roll + k * roll_step)))
    return out


def simple_imaging_wcs(
    fiducial: tuple[float, float],
    shape: Sequence[int] = (3, 3),
    scale: tuple[float, float] = (2.8e-5, 2.8e-5),
    *,
    frame: str = "fk5",
) -> gwcs.WCS:
    """The minimal imaging gwcs of stcal's alignment tests: pixel (0, 0) is the fiducial.

    ``Scale(sx) & Scale(sy) | TAN | RotateNative2Celestial(lon, lat, 180)``, Frame2D
    ``detector`` -> CelestialFrame (``frame``: ``"fk5"`` or ``"icrs"``), RA increasing with x,
    bounding box the full frame of ``shape`` (ny, nx). ``scale`` in degrees/pixel.
    """
    from astropy.coordinates import FK5

    refs = {"fk5": FK5(), "icrs": ICRS()}
    if frame not in refs:
        raise UserInputError(f"frame must be one of {sorted(refs)}, got {frame!r}")
    ny, nx = (int(s) for s in shape)
    transform = (
        (m.Shift(0.0) & m.Shift(0.0))
        | (m.Scale(scale[0]) & m.Scale(scale[1]))
        | m.Pix2Sky_TAN()
        | m.RotateNative2Celestial(fiducial[0], fiducial[1], 180.0)
    )
    detector = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=refs[frame], name=frame, unit=(u.deg, u.deg))
    w = gwcs.WCS([(detector, transform), (sky, None)])
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    return w
