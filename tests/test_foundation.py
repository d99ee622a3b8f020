"""Tests of the package foundation: DQ flag values and the synthetic-exposure generator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stcal_dask import dqflags
from stcal_dask.sim.ramp import CELL, SimulationConfig, simulate_exposure, simulate_region


def test_dq_values_are_jwst():
    expected = {
        "GOOD": 0, "DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4, "DROPOUT": 8, "OUTLIER": 16,
        "PERSISTENCE": 32, "AD_FLOOR": 64, "CHARGELOSS": 128, "NO_GAIN_VALUE": 524288,
        "UNRELIABLE_SLOPE": 16777216, "REFERENCE_PIXEL": 2147483648,
    }
    d = dqflags.as_dict()
    for name, value in expected.items():
        assert d[name] == value
        assert getattr(dqflags, name) == value


def test_dq_values_match_stdatamodels():
    from stdatamodels.jwst.datamodels import dqflags as jwst_dq

    ours = dqflags.as_dict()
    for name, value in jwst_dq.pixel.items():
        assert ours[name] == value, name


def test_generator_is_seeded_and_typed(small_exposure):
    again = simulate_exposure(small_exposure.config)
    e = small_exposure
    assert e.data.shape == (2, 6, 40, 50) and e.data.dtype == np.float32
    assert e.groupdq.dtype == np.uint8 and e.pixeldq.dtype == np.uint32
    assert e.gain.shape == (40, 50) and e.readnoise.dtype == np.float32
    np.testing.assert_array_equal(e.data, again.data)
    np.testing.assert_array_equal(e.groupdq, again.groupdq)
    other = simulate_exposure(small_exposure.config, seed=12)
    assert not np.array_equal(e.data, other.data)


def test_generator_physics():
    cfg = SimulationConfig(nints=1, ngroups=8, ny=128, nx=128, seed=3, cr_rate=0.05,
                           bad_gain_fraction=0.02, source_density=5e-3)
    e = simulate_exposure(cfg)
    # cosmic rays injected, only after group 0, and visible as steps
    assert e.cr_mask.sum() > 100
    assert not e.cr_mask[:, 0].any()
    # saturation flagged, persistent to the end of the integration, data clipped
    sat = (e.groupdq & dqflags.SATURATED) > 0
    assert sat.any()
    assert np.all(sat[:, -1] >= sat[:, 0])
    assert np.all(np.diff(sat.astype(int), axis=1) >= 0)
    assert np.all(e.data[sat] == cfg.saturation_dn)
    # bad gains present: 0, negative and NaN
    assert np.isnan(e.gain).any() and (e.gain == 0).any() and (e.gain < 0).any()
    # mean slope of clean unsaturated pixels matches the true flux
    good = ~sat.any(axis=(0, 1)) & ~e.cr_mask.any(axis=(0, 1))
    slope = (e.data[0, -1] - e.data[0, 0]) / (cfg.group_time * (cfg.ngroups - 1))
    ratio = np.median(slope[good] / e.flux[good])
    assert 0.95 < ratio < 1.05


@settings(max_examples=15, deadline=None)
@given(
    y0=st.integers(0, 150), h=st.integers(1, 150), x0=st.integers(0, 150), w=st.integers(1, 150)
)
def test_region_equals_window_of_whole(y0, h, x0, w):
    cfg = SimulationConfig(nints=1, ngroups=3, ny=300, nx=300, seed=5, zeroframe=True)
    whole = _whole(cfg)
    y1, x1 = min(y0 + h, cfg.ny), min(x0 + w, cfg.nx)
    part = simulate_region(cfg, y0, y1, x0, x1)
    for name in ("data", "groupdq", "gain", "readnoise", "flux", "cr_mask", "zeroframe"):
        np.testing.assert_array_equal(
            getattr(part, name), getattr(whole, name)[..., y0:y1, x0:x1], err_msg=name
        )


_WHOLE = {}


def _whole(cfg):
    if cfg not in _WHOLE:
        _WHOLE[cfg] = simulate_exposure(cfg)
    return _WHOLE[cfg]


def test_region_validation():
    cfg = SimulationConfig(ny=10, nx=10)
    with pytest.raises(ValueError, match="outside"):
        simulate_region(cfg, 0, 11, 0, 5)
    with pytest.raises(ValueError, match="ngroups"):
        simulate_exposure(cfg, ngroups=0)


def test_cell_size_sane():
    assert CELL >= 64
