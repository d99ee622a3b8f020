"""Shared pytest fixtures."""

from __future__ import annotations

import os

import numpy as np
import pytest

from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

# Keep numba/BLAS from oversubscribing the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def small_exposure():
    """A seeded 2-integration, 6-group, 40x50 exposure with every feature switched on."""
    return simulate_exposure(
        SimulationConfig(nints=2, ngroups=6, ny=40, nx=50, seed=11, cr_rate=0.05)
    )


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
