"""Helpers to run stcal 1.20.0's OLS_C ramp fitter as an oracle and compare it with ours.

stcal is fed exactly what its C fitter requires (float32 data/gain/readnoise/dark/zeroframe, uint8
group DQ, uint32 pixel DQ), copies of every array it mutates (it scales ``readnoise`` in place and
ORs DO_NOT_USE into ``groupdq`` when suppressing one-group ramps), and the JWST flag dict from
:func:`stcal_dask.dqflags.as_dict`. The RampData is built as the JWST step builds it
(``create_ramp_fit_class``): ``orig_gdq`` is a copy of the group DQ when any group carries
CHARGELOSS, and ``suppress_one_group`` is forced off for NGROUPS == 1 (as ``ramp_fit`` does).
"""

from __future__ import annotations

import numpy as np

from stcal_dask import dqflags
from stcal_dask.kernels.ramp_fit import RampFitParams, RampTiming

RATE_FIELDS = ("sci", "err", "dq", "var_poisson", "var_rnoise")
"""Our RateProduct fields; stcal's dicts call ``sci`` ``slope``."""
STCAL_RATE_KEY = {"sci": "slope"}
FITOPT_FIELDS = (
    "slope",
    "sigslope",
    "yint",
    "sigyint",
    "weights",
    "var_poisson",
    "var_rnoise",
    "pedestal",
    "crmag",
)


def stcal_dqflags() -> dict[str, int]:
    """The keys stcal's ``RampData.set_dqflags`` needs, with the JWST values."""
    flags = dqflags.as_dict()
    keys = (
        "GOOD",
        "DO_NOT_USE",
        "SATURATED",
        "JUMP_DET",
        "PERSISTENCE",
        "NO_GAIN_VALUE",
        "UNRELIABLE_SLOPE",
        "CHARGELOSS",
    )
    return {k: flags[k] for k in keys}


def run_stcal(
    data,
    groupdq,
    pixeldq,
    gain,
    readnoise,
    *,
    params: RampFitParams,
    timing: RampTiming,
    zeroframe=None,
    average_dark_current=None,
    instrument: str = "NIRCAM",
):
    """Run ``stcal.ramp_fitting.ramp_fit.ramp_fit_data`` (OLS_C, one process).

    Returns stcal's ``(image_info, integ_info, opt_info)``; none of the arguments is modified.
    """
    from stcal.ramp_fitting import ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    data = np.array(data, dtype=np.float32, copy=True)
    gdq = np.array(groupdq, dtype=np.uint8, copy=True)
    pdq = np.array(pixeldq, dtype=np.uint32, copy=True)
    gain32 = np.array(gain, dtype=np.float32, copy=True)
    rn32 = np.array(readnoise, dtype=np.float32, copy=True)
    ny, nx = data.shape[2:]
    if average_dark_current is None:
        dark = np.zeros((ny, nx), dtype=np.float32)
    else:
        dark = np.array(average_dark_current, dtype=np.float32, copy=True)
    zf = None if zeroframe is None else np.array(zeroframe, dtype=np.float32, copy=True)

    flags = stcal_dqflags()
    orig_gdq = None
    if params.chargeloss_rnoise and np.any(gdq & flags["CHARGELOSS"]):
        orig_gdq = gdq.copy()

    rd = RampData()
    rd.set_arrays(data, gdq, pdq, dark, orig_gdq=orig_gdq, zeroframe=zf)
    rd.set_meta(
        instrument,
        timing.frame_time,
        timing.group_time,
        timing.groupgap,
        timing.nframes,
        timing.drop_frames1,
    )
    rd.algorithm = "OLS_C"
    rd.set_dqflags(flags)
    rd.start_row = 0
    rd.num_rows = ny
    rd.suppress_one_group_ramps = bool(params.suppress_one_group) and data.shape[1] > 1
    return ramp_fit.ramp_fit_data(rd, params.save_opt, rn32, gain32, "OLS_C", "optimal", "none")


def _close(name, ours, ref, rtol):
    ours = np.asarray(ours)
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != stcal {ref.shape}"
    assert ours.dtype == ref.dtype, f"{name}: dtype {ours.dtype} != stcal {ref.dtype}"
    if ref.dtype.kind in "ui":
        bad = ours != ref
        assert not bad.any(), (
            f"{name}: {bad.sum()} DQ mismatches, first at {np.argwhere(bad)[0]}: "
            f"ours {ours[bad][:5]} stcal {ref[bad][:5]}"
        )
        return
    nan_o, nan_r = np.isnan(ours), np.isnan(ref)
    assert (nan_o == nan_r).all(), (
        f"{name}: NaN pattern differs at {np.argwhere(nan_o != nan_r)[:5].tolist()}"
    )
    ok = ~nan_r
    a, b = ours[ok].astype(np.float64), ref[ok].astype(np.float64)
    both_inf = np.isinf(a) & np.isinf(b) & (np.sign(a) == np.sign(b))
    with np.errstate(invalid="ignore"):
        diff = np.abs(a - b)
    # relative tolerance, with a floor of float32 resolution of the array's scale for zeros
    tol = rtol * np.abs(b) + 1e-30
    bad = (diff > tol) & ~both_inf
    if bad.any():
        idx = np.argwhere(ok)[bad][:5]
        raise AssertionError(
            f"{name}: {bad.sum()} of {bad.size} values differ by more than rtol={rtol}; "
            f"first at {idx.tolist()}: ours {a[bad][:5]} stcal {b[bad][:5]}"
        )


def assert_matches_stcal(result, oracle, *, rtol: float = 1e-5) -> None:
    """Compare our :class:`RampFitResult` with stcal's ``(image, integ, opt)`` dicts."""
    image, integ, opt = oracle
    assert image is not None, "stcal returned None (all-saturated early exit)"
    for f in RATE_FIELDS:
        key = STCAL_RATE_KEY.get(f, f)
        _close(f"rate.{f}", getattr(result.rate, f), image[key], rtol)
        _close(f"rateints.{f}", getattr(result.rateints, f), integ[key], rtol)
    if opt is None:
        assert result.fitopt is None
        return
    assert result.fitopt is not None
    names = {"var_poisson": "var_poisson", "var_rnoise": "var_rnoise"}
    for f in FITOPT_FIELDS:
        _close(f"fitopt.{f}", getattr(result.fitopt, f), opt[names.get(f, f)], rtol)
