"""Seeded rough ramps for the jump tests: integer steps (many ties), noise on half the rows,
jumps of several sizes, NaN/inf data, DO_NOT_USE and SATURATED groups, odd gains and read
noises."""

from __future__ import annotations

import numpy as np

from stcal_dask import dqflags


def rough_ramps(rng, shape, *, dtype=np.float32, jumps=((0.05, 400.0), (0.03, -300.0)),
                dnu=0.06, sat=0.05):  # fmt: skip
    """``(data, groupdq, gain, readnoise)`` of ``shape`` (nints, ngroups, ny, nx): ``jumps``
    are (fraction of groups, DN) pairs; ``dnu``/``sat`` the fractions of DO_NOT_USE and
    SATURATED groups (drawn from one uniform number per group, so they rarely overlap)."""
    ny, nx = shape[2:]
    steps = rng.integers(0, 4, shape).astype(dtype) * dtype(7.0)
    data = np.cumsum(steps, axis=1).astype(dtype)
    data[:, :, : ny // 2] += rng.normal(0, 2.0, (*shape[:2], ny // 2, nx)).astype(dtype)
    for frac, jump in jumps:
        hit = rng.random(shape) < frac
        data += np.cumsum(hit * dtype(jump), axis=1).astype(dtype)
    data[rng.random(shape) < 0.01] = np.inf
    data[rng.random(shape) < 0.01] = np.nan
    u = rng.random(shape)
    gdq = np.zeros(shape, np.uint8)
    gdq[u < dnu] |= dqflags.DO_NOT_USE
    gdq[u > 1.0 - sat] |= dqflags.SATURATED
    gain = rng.choice(np.array([1.0, 2.2, 0.5], dtype), (ny, nx))
    rn = rng.choice(np.array([0.0, 1.0, 4.5, 30.0], dtype), (ny, nx))
    return data, gdq, gain, rn
