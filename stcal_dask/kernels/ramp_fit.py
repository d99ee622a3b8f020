"""OLS ramp fitting of one spatial tile, faithful to stcal 1.20.0 (``algorithm="OLS_C"``).

This is a re-implementation of ``stcal.ramp_fitting.ramp_fit.ramp_fit_data`` with
``algorithm="OLS_C"`` and ``weighting="optimal"`` as a pure numpy/numba kernel. Every pixel is
independent (the median rate couples only the integrations *of one pixel*), so the kernel works on
any spatial tile with a halo of 0 and stitching tiles gives exactly the whole-frame result.

Units and shapes
----------------
* ``data``: (nints, ngroups, ny, nx) DN; ``groupdq``: same shape, group DQ bits;
  ``pixeldq``: (ny, nx); ``gain``: (ny, nx) electron/DN; ``readnoise``: (ny, nx) **CDS** read noise
  in DN (the JWST READNOISE reference file); ``average_dark_current``: (ny, nx) DN/s (stcal adds it
  directly to a DN/s rate); ``zeroframe``: (nints, ny, nx) DN, 0 meaning "not usable".
* Rates are DN/s, variances (DN/s)^2, ``err`` DN/s.

Any input dtype is accepted and converted the way stcal needs it (float32 data, gain, readnoise,
dark and zero frame; uint8 group DQ; uint32 pixel DQ). Inputs are never modified (stcal overwrites
``readnoise`` in place and, with ``suppress_one_group``, the group DQ; this kernel does neither).

Whole-exposure decisions that are *not* taken here
--------------------------------------------------
stcal makes two decisions over the whole exposure before fitting; a tile cannot take them, so the
dataflow layer must:

* **all-saturated early exit**: if group 0 is SATURATED for every pixel of every integration,
  stcal returns ``(None, None, None)``. Per tile, :func:`all_group0_saturated` gives the partial
  answer (combine with ``all``); this kernel itself returns the per-pixel result (NaN, DNU|SAT).
* **MIRI group trimming** (instrument "MIRI" only): leading/trailing groups that are DO_NOT_USE for
  every pixel are dropped before fitting. The kernel has no instrument name; trim the cube (and
  clear JUMP_DET on the new first group) before calling it.

CHARGELOSS
----------
The JWST step (``stcal.ramp_fitting.ramp_fit.ramp_fit`` -> ``create_ramp_fit_class``) enables
stcal's CHARGELOSS read-noise recomputation whenever any group carries CHARGELOSS. That
recomputation leaves every pixel without a CHARGELOSS group untouched, so it is a per-pixel rule
and this kernel always applies it (``params.chargeloss_rnoise=True``, the JWST behaviour). Set it to
False to get the ``ramp_fit_data`` behaviour without ``orig_gdq``.

Slope weighting
---------------
``params.slope_weighting="readnoise"`` (default) is stcal >= 1.19.0: segment slopes are combined
into integration and exposure slopes with weights 1/var_rnoise, and fitopt ``weights`` = 1/var_r.
``"combined"`` is the earlier (1.7 - 1.18) rule: weights 1/(var_poisson + var_rnoise) and fitopt
``weights`` = (1/(var_poisson + var_rnoise))^2. Variances and ERR are the same under both rules.

Other choices
-------------
* ``suppress_one_group`` is ignored for NGROUPS == 1, as the JWST entry point ``ramp_fit`` does
  (``ramp_fit_data`` alone would suppress every single-group ramp).
* stcal's multiprocessing quirks (suppression lost in worker slices, fitopt segment axis >= 1) are
  not reproduced: results equal stcal's single-process (``max_cores="none"``) run.
* Precision: every per-pixel quantity is computed in double from the float32 inputs in stcal's
  order of operations (the converted read noise is rounded to float32 as stcal's in-place
  conversion does; optimal weights use single-precision powers) and rounded to float32 once, so
  results normally agree with stcal bit for bit, and always within float32 rounding.
* The fitopt segment axis follows stcal, including its quirk of counting every length-1 segment
  when only length-1 segments exist (the extra slots stay 0).

The compiled core lives in :mod:`stcal_dask.kernels._ramp_numba` (``nogil``: tiles can be fitted
in parallel threads); this module validates, converts and names.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError
from stcal_dask.kernels.common import LazyModule, readonly_c

_rn = LazyModule("stcal_dask.kernels._ramp_numba")
_mn = LazyModule("stcal_dask.kernels._median_numba")

__all__ = [
    "FitoptDims",
    "FitoptProduct",
    "RampFitParams",
    "RampFitResult",
    "RampTiming",
    "RateProduct",
    "all_group0_saturated",
    "fit_ramps_tile",
    "fitopt_dims",
]

_ALGORITHMS = ("OLS_C",)
_WEIGHTINGS = ("optimal",)
_SLOPE_WEIGHTINGS = ("readnoise", "combined")


@dataclass(frozen=True)
class RampFitParams:
    """Parameters of the ramp-fitting step (JWST ``RampFitStep`` names and defaults).

    Attributes
    ----------
    algorithm:
        Only ``"OLS_C"`` (case-insensitive) is supported.
    weighting:
        Only ``"optimal"`` (Fixsen et al. 2000 optimal weighting), as in stcal.
    suppress_one_group:
        Suppress (DO_NOT_USE, NaN slope) integrations with exactly one usable group. JWST default
        True. As in ``stcal.ramp_fitting.ramp_fit.ramp_fit`` it is ignored when NGROUPS == 1.
    save_opt:
        Also produce the optional per-segment "fitopt" product.
    slope_weighting:
        ``"readnoise"`` (stcal >= 1.19.0, default) or ``"combined"`` (stcal 1.7 - 1.18): how segment
        slopes are weighted into integration and exposure slopes (see the module docstring).
    chargeloss_rnoise:
        Recompute the read-noise variance of integrations with CHARGELOSS groups as the JWST step
        does (default True); False reproduces ``ramp_fit_data`` without ``orig_gdq``.
    """

    algorithm: str = field(default="OLS_C", metadata={
        "help": "fitting algorithm; only OLS_C (ordinary least squares, case-insensitive)"})
    weighting: str = field(default="optimal", metadata={
        "help": "weighting of the groups within a segment; only optimal (Fixsen et al. 2000)"})
    suppress_one_group: bool = field(default=True, metadata={
        "help": "give integrations with exactly one usable group a NaN slope (DN/s) and "
                "DO_NOT_USE; ignored when NGROUPS == 1"})
    save_opt: bool = field(default=False, metadata={
        "help": "also produce the per-segment fit product (fitopt: slopes DN/s, intercepts DN)"})
    slope_weighting: str = field(default="readnoise", metadata={
        "help": "how segment slopes (DN/s) are combined: readnoise (stcal >= 1.19) or combined "
                "(stcal 1.7-1.18)"})
    chargeloss_rnoise: bool = field(default=True, metadata={
        "help": "recompute the read-noise variance ((DN/s)^2) of integrations with CHARGELOSS "
                "groups, as the JWST step does"})

    def __post_init__(self):
        if not isinstance(self.algorithm, str) or self.algorithm.upper() not in _ALGORITHMS:
            raise UserInputError(
                f"ramp fit parameter algorithm must be 'OLS_C', got {self.algorithm!r}"
            )
        if self.weighting not in _WEIGHTINGS:
            raise UserInputError(
                f"ramp fit parameter weighting must be 'optimal', got {self.weighting!r}"
            )
        if self.slope_weighting not in _SLOPE_WEIGHTINGS:
            raise UserInputError(
                "ramp fit parameter slope_weighting must be 'readnoise' or 'combined', "
                f"got {self.slope_weighting!r}"
            )
        for name in ("suppress_one_group", "save_opt", "chargeloss_rnoise"):
            value = getattr(self, name)
            if not isinstance(value, bool | np.bool_):
                raise UserInputError(f"ramp fit parameter {name} must be a bool, got {value!r}")


@dataclass(frozen=True)
class RampTiming:
    """Exposure timing (JWST keywords in brackets).

    Attributes
    ----------
    frame_time : float
        Seconds per frame [TFRAME].
    group_time : float
        Seconds per group [TGROUP].
    nframes : int
        Frames averaged per group [NFRAMES], >= 1.
    groupgap : int
        Frames dropped between groups [GROUPGAP], >= 0.
    drop_frames1 : int
        Frames dropped at the start of an integration [DRPFRMS1], >= 0 (used only by the
        fitopt pedestal).
    """

    frame_time: float
    group_time: float
    nframes: int
    groupgap: int = 0
    drop_frames1: int = 0

    def __post_init__(self):
        for name in ("frame_time", "group_time"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float | np.number)
                or not math.isfinite(value)
                or (value <= 0)
            ):
                raise UserInputError(
                    f"ramp timing {name} must be a finite number > 0 s, got {value!r}"
                )
        for name, low in (("nframes", 1), ("groupgap", 0), ("drop_frames1", 0)):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | np.integer)
                or int(value) < low
            ):
                raise UserInputError(
                    f"ramp timing {name} must be an integer >= {low}, got {value!r}"
                )


class RateProduct(NamedTuple):
    """Slope image(s), named and ordered as the JWST rate product: 2-D (ny, nx) for "rate",
    3-D (nints, ny, nx) for "rateints"."""

    sci: np.ndarray
    """float32 slope, DN/s; NaN where the result is unusable (DO_NOT_USE or SATURATED)."""
    err: np.ndarray
    """float32 DN/s."""
    dq: np.ndarray
    """uint32 DQ bits."""
    var_poisson: np.ndarray
    """float32 (DN/s)^2."""
    var_rnoise: np.ndarray
    """float32 (DN/s)^2."""


class FitoptProduct(NamedTuple):
    """The optional per-segment product (stcal's ``opt_info``), all float32.

    ``slope, sigslope, yint, sigyint, weights, var_poisson, var_rnoise``: (nints, nseg, ny, nx);
    ``pedestal``: (nints, ny, nx) DN; ``crmag``: (nints, ncr, ny, nx) DN.
    """

    slope: np.ndarray
    sigslope: np.ndarray
    yint: np.ndarray
    sigyint: np.ndarray
    weights: np.ndarray
    var_poisson: np.ndarray
    var_rnoise: np.ndarray
    pedestal: np.ndarray
    crmag: np.ndarray


class RampFitResult(NamedTuple):
    """Result of :func:`fit_ramps_tile`."""

    rate: RateProduct
    rateints: RateProduct
    fitopt: FitoptProduct | None


class FitoptDims(NamedTuple):
    """Sizes of the fitopt segment and cosmic-ray axes needed by one tile."""

    n_segments: int
    n_crmag: int


def fitopt_dims(
    groupdq: np.ndarray,
    *,
    params: RampFitParams,
    zeroframe: np.ndarray | None = None,
    suppressed: bool = False,
) -> FitoptDims:
    """Sizes of the fitopt segment and CR axes that this tile needs.

    stcal sizes the fitopt arrays by the largest segment count and the largest JUMP_DET count over
    the *whole* frame; combine the per-tile results with ``max`` and pass them to
    :func:`fit_ramps_tile` as ``n_segments``/``n_crmag``.

    Parameters
    ----------
    groupdq : numpy.ndarray
        (nints, ngroups, ny, nx) group DQ.
    params : RampFitParams
        The step parameters (``suppress_one_group`` changes the segments).
    zeroframe : numpy.ndarray, optional
        (nints, ny, nx) DN; a usable zero frame adds a one-group segment.
    suppressed : bool
        As in :func:`fit_ramps_tile`.

    Returns
    -------
    FitoptDims
        The tile's largest segment count and largest JUMP_DET count.
    """
    gdq, zf = _prepare_dims_inputs(groupdq, zeroframe)
    suppress = suppress_mode(params, gdq.shape[1], suppressed)
    has_zf = zf is not None
    if not has_zf:
        zf = np.zeros((1, 1, 1), dtype=np.float32)
    nseg, ncr = _rn.fitopt_dims_tile(
        readonly_c(gdq, np.uint8), readonly_c(zf, np.float32), has_zf, suppress
    )
    return FitoptDims(int(nseg), int(ncr))


def all_group0_saturated(groupdq: np.ndarray) -> bool:
    """Whether group 0 is SATURATED in every pixel of every integration of this tile.

    stcal returns ``(None, None, None)`` when this holds for the whole frame (combine tiles with
    ``all``); the decision belongs to the dataflow layer.

    Parameters
    ----------
    groupdq : numpy.ndarray
        (nints, ngroups, ny, nx) group DQ.

    Returns
    -------
    bool
    """
    g0 = np.asarray(groupdq)[:, 0]
    return bool(np.all((g0.astype(np.uint32) & dqflags.SATURATED) != 0))


def fit_ramps_tile(
    data: np.ndarray,
    groupdq: np.ndarray,
    pixeldq: np.ndarray,
    gain: np.ndarray,
    readnoise: np.ndarray,
    *,
    params: RampFitParams,
    timing: RampTiming,
    zeroframe: np.ndarray | None = None,
    average_dark_current: np.ndarray | None = None,
    n_segments: int | None = None,
    n_crmag: int | None = None,
    suppressed: bool = False,
    chargeloss_groupdq: np.ndarray | None = None,
) -> RampFitResult:
    """Fit the ramps of one spatial tile with stcal 1.20.0's OLS_C rules.

    Parameters
    ----------
    data : numpy.ndarray
        (nints, ngroups, ny, nx) science ramps, DN.
    groupdq : numpy.ndarray
        (nints, ngroups, ny, nx) group DQ (uint8 bits).
    pixeldq : numpy.ndarray
        (ny, nx) pixel DQ (uint32 bits), OR-ed into every output DQ.
    gain : numpy.ndarray
        (ny, nx) electron/DN; 0, negative or NaN gain gives DO_NOT_USE | NO_GAIN_VALUE.
    readnoise : numpy.ndarray
        (ny, nx) CDS read noise, DN.
    params : RampFitParams
        The step parameters.
    timing : RampTiming
        The exposure timing.
    zeroframe : numpy.ndarray, optional
        (nints, ny, nx) ZEROFRAME, DN (0 = unusable).
    average_dark_current : numpy.ndarray, optional
        (ny, nx) DN/s.
    n_segments, n_crmag : int, optional
        Sizes of the fitopt segment / CR axes (the frame-wide maxima from
        :func:`fitopt_dims`); None means this tile's own maxima. Ignored unless ``save_opt``.
    suppressed : bool
        The group DQ has already had ``suppress_one_group`` applied on the whole ramp, before
        MIRI's leading/trailing groups were dropped, as stcal orders them
        (:mod:`stcal_dask.kernels.miri_groups`): the fit follows stcal's suppress_one_group rules
        without suppressing again.
    chargeloss_groupdq : numpy.ndarray, optional
        (nints, ngroups, ny, nx) group DQ for the CHARGELOSS read-noise recomputation (stcal's
        ``orig_gdq``); default ``groupdq``. For MIRI exposures whose groups were dropped it is
        the input group DQ with the same groups dropped, neither suppressed nor with JUMP_DET
        cleared on the new first group (:func:`~stcal_dask.kernels.miri_groups.apply_trim`).

    Returns
    -------
    RampFitResult
        ``rate`` (ny, nx), ``rateints`` (nints, ny, nx), and ``fitopt`` a
        :class:`FitoptProduct` when ``params.save_opt``, else None.

    Raises
    ------
    UserInputError
        Wrong array shapes or parameter types.
    ValueError
        ``n_segments``/``n_crmag`` smaller than this tile needs.
    """
    if not isinstance(params, RampFitParams):
        raise UserInputError(f"params must be a RampFitParams, got {type(params).__name__}")
    if not isinstance(timing, RampTiming):
        raise UserInputError(f"timing must be a RampTiming, got {type(timing).__name__}")
    data = np.asarray(data)
    if data.ndim != 4:
        raise UserInputError(f"data must be 4-D (nints, ngroups, ny, nx), got shape {data.shape}")
    nints, ngroups, ny, nx = data.shape
    if min(nints, ngroups) < 1:
        raise UserInputError(f"data needs at least 1 integration and 1 group, got {data.shape}")
    img = (ny, nx)
    has_zf = zeroframe is not None
    if average_dark_current is None:
        average_dark_current = np.zeros(img, dtype=np.float32)
    inputs = _rn.RampInputs(
        data=_checked(data, np.float32, "data", data.shape),
        groupdq=_checked(groupdq, np.uint8, "groupdq", data.shape),
        pixeldq=_checked(pixeldq, np.uint32, "pixeldq", img),
        gain=_checked(gain, np.float32, "gain", img),
        readnoise=_checked(readnoise, np.float32, "readnoise", img),
        dark=_checked(average_dark_current, np.float32, "average_dark_current", img),
        zeroframe=(_checked(zeroframe, np.float32, "zeroframe", (nints, ny, nx)) if has_zf
                   else readonly_c(np.zeros((1, 1, 1), dtype=np.float32))),
        has_zf=has_zf,
        cl_groupdq=None,
    )
    inputs = inputs._replace(cl_groupdq=inputs.groupdq if chargeloss_groupdq is None else
                             _checked(chargeloss_groupdq, np.uint8, "chargeloss_groupdq",
                                      data.shape))
    settings = _rn.RampSettings(
        frame_time=float(np.float32(timing.frame_time)),
        group_time=float(np.float32(timing.group_time)),
        nframes=int(timing.nframes),
        groupgap=int(timing.groupgap),
        drop_frames1=int(timing.drop_frames1),
        suppress=suppress_mode(params, ngroups, suppressed),
        save_opt=bool(params.save_opt),
        chargeloss_rnoise=bool(params.chargeloss_rnoise),
        combined=params.slope_weighting == "combined",
        tg_reciprocal=_tg_reciprocal(float(np.float32(timing.group_time))),
    )
    if settings.save_opt:
        if n_segments is None or n_crmag is None:
            own = fitopt_dims(inputs.groupdq, params=params,
                              zeroframe=inputs.zeroframe if has_zf else None,
                              suppressed=suppressed)
            n_segments = own.n_segments if n_segments is None else n_segments
            n_crmag = own.n_crmag if n_crmag is None else n_crmag
        nseg, ncr = int(n_segments), int(n_crmag)
        if nseg < 0 or ncr < 0:
            raise UserInputError(f"n_segments/n_crmag must be >= 0, got {nseg}, {ncr}")
        seg_shape = (nints, nseg, ny, nx)
        ped_shape = (nints, ny, nx)
        cr_shape = (nints, ncr, ny, nx)
    else:
        seg_shape, ped_shape, cr_shape = (1, 0, 1, 1), (1, 1, 1), (1, 0, 1, 1)
    # the outputs, filled in place by the compiled core
    fitopt = FitoptProduct(
        *(np.zeros(seg_shape, dtype=np.float32) for _ in range(7)),
        pedestal=np.zeros(ped_shape, dtype=np.float32),
        crmag=np.zeros(cr_shape, dtype=np.float32),
    )
    rate = _empty_rate(img)
    rateints = _empty_rate((nints, ny, nx))
    if ny > 0 and nx > 0:
        # the lane median of the flag-free rows (ngroups - 1 first differences; unused with
        # save_opt)
        mid = _mn.lane_mid(np.float64, 0 if settings.save_opt else ngroups - 1, keep_all=True)
        sc = _rn.pixel_scratch(nints, ngroups)
        _rn.fit_tile_core(inputs, settings, rate, rateints, fitopt, sc, mid,
                          *_rn.row_fitters(inputs, settings, rate, rateints, fitopt, sc, mid))
    return RampFitResult(rate, rateints, fitopt if settings.save_opt else None)


# ------------------------------------------------------------------------------------------------
# helpers


def effective_suppress(params: RampFitParams, ngroups: int) -> bool:
    """``suppress_one_group`` as stcal's ``ramp_fit`` applies it (forced off for NGROUPS == 1)."""
    return bool(params.suppress_one_group) and ngroups > 1


def suppress_mode(params: RampFitParams, ngroups: int, suppressed: bool = False) -> int:
    """The compiled kernels' ``suppress`` setting: 0 off, 1 suppress one-group ramps and fit
    with the suppress_one_group rules, 2 only the rules (``suppressed``: the group DQ was
    already suppressed on the whole ramp, before MIRI's groups were dropped)."""
    if not effective_suppress(params, ngroups):
        return 0
    return 2 if suppressed else 1


@functools.lru_cache(maxsize=32)
def _tg_reciprocal(group_time: float) -> bool:
    """Whether the kernel may take the samples' rates by the reciprocal of TGROUP (s): checked
    once per value and process (a few ms)."""
    return bool(_rn.reciprocal_quotients_exact(group_time))


def _empty_rate(shape):
    """Uninitialised arrays of a rate product (the kernel writes every element)."""
    return RateProduct(
        sci=np.empty(shape, dtype=np.float32),
        err=np.empty(shape, dtype=np.float32),
        dq=np.empty(shape, dtype=np.uint32),
        var_poisson=np.empty(shape, dtype=np.float32),
        var_rnoise=np.empty(shape, dtype=np.float32),
    )


def _checked(arr, dtype, name, shape):
    """``arr`` checked for ``shape``, as a read-only C array of ``dtype``."""
    a = np.asarray(arr)
    if a.shape != shape:
        raise UserInputError(f"{name} must have shape {shape}, got {a.shape}")
    return readonly_c(a, dtype)


def _prepare_dims_inputs(groupdq, zeroframe):
    gdq = np.asarray(groupdq)
    if gdq.ndim != 4:
        raise UserInputError(f"groupdq must be 4-D (nints, ngroups, ny, nx), got shape {gdq.shape}")
    gdq = gdq.astype(np.uint8, copy=False)
    zf = None
    if zeroframe is not None:
        zf = np.asarray(zeroframe).astype(np.float32, copy=False)
        expected = (gdq.shape[0],) + gdq.shape[2:]
        if zf.shape != expected:
            raise UserInputError(f"zeroframe must have shape {expected}, got {zf.shape}")
    return gdq, zf
