"""Two-point-difference jump detection of one spatial tile, faithful to stcal 1.20.0.

Re-implements ``stcal.jump.jump.detect_jumps_data`` as run by the JWST pipeline in a single
process (``maximum_cores='1'``, so ``minimum_groups`` is forced to 3) without snowballs or showers:
the iterative (few groups), single-pass (>= ``min_diffs_single_pass`` usable differences per
integration) and sigma-clip (>= ``minimum_sigclip_groups`` integrations) detection paths,
four-neighbour flagging, after-jump flagging, redundant-bit removal and the NO_GAIN_VALUE pixel
flags. GROUPDQ/PIXELDQ are bit-identical to stcal and the primary count equal.

Units and shapes
----------------
* ``data``: (nints, ngroups, ny, nx) DN (float32 for JWST); ``groupdq``: same shape, unsigned
  integer group DQ; ``pixeldq``: (ny, nx) uint32; ``gain``: (ny, nx) electron/DN; ``readnoise``:
  (ny, nx) **CDS** read noise in DN. Data and read noise are converted to electrons with the
  per-pixel gain, in the inputs' dtype, exactly as stcal does.
* ``nframes``: frames averaged per group (enters as RN^2 / nframes); ``group_time``: seconds per
  group (converts ``after_jump_flag_time1/2`` to a number of groups: ``int(time // group_time)``).
* Outputs: new arrays (inputs are never modified): ``groupdq`` (input dtype), ``pixeldq`` (input
  dtype), ``primary_count`` (ny, nx) int32.

Whole-frame decisions and the sequence a dataflow layer must follow
-------------------------------------------------------------------
stcal takes four decisions over the whole frame. A tile cannot, so they are computed once from
per-tile partials and passed to every tile as :class:`JumpGlobals`:

1. **Pass 1 (tiles without halo, partitioning the frame** -- the gain values are pooled for a
   median, so no pixel may be counted twice): for every tile call
   ``jump_globals_partial(groupdq_tile, gain_tile) -> JumpGlobalsPartial`` (the tile's non-NaN
   gain values and its per-(integration, group) "every pixel DO_NOT_USE" flags).
2. **Reduce**: ``merge_jump_globals_partials(*partials)`` is associative (use it in a tree
   reduction), then ``finalize_jump_globals(merged, params=params) -> JumpGlobals``. This gives
   the median gain (``np.nanmedian`` of the frame's gain, bad gains included, NaN excluded; used
   for the after-jump electron thresholds), the whole-plane DO_NOT_USE flags and the path
   (``"skip"``, ``"sigclip"``, ``"single"``, ``"iterative"``). ``combine_jump_globals(partials,
   params=params)`` does both steps for a list.
3. **Sigma-clip path only** (``jump_globals.needs_sigclip_pass``): stcal resets pure-JUMP values of
   every (integration, group) plane in which *every* pixel carries JUMP or DO_NOT_USE after
   detection. For every tile (no halo needed) call ``sigclip_reset_partial(data, groupdq, gain,
   params=params, jump_globals=jump_globals)``, reduce with ``merge_sigclip_reset_partials(*parts)``
   (logical AND) and attach it: ``jump_globals = with_sigclip_reset(jump_globals, merged)``.
4. **Pass 2**: for every tile *with a halo of* ``jump_halo(params)`` pixels (clipped at the array
   edges) call ``detect_jumps_tile(data, groupdq, pixeldq, gain, readnoise, params=params,
   nframes=nframes, group_time=group_time, jump_globals=jump_globals)`` and crop the halo off
   every field of the :class:`JumpResult`. The frame's primary count is
   ``total_primary_crs(sum of the cropped primary_count maps, jump_globals)`` (stcal reports -99
   when the exposure is skipped).

:func:`detect_jumps` does all of this for a whole frame in memory.

Implementation
--------------
Per-pixel numba loops (:mod:`stcal_dask.kernels._jump_numba`) stream the frame row by row through
small buffers: no whole-cube float temporaries, so memory is the inputs plus the outputs
(GROUPDQ copy, PIXELDQ copy, the int32 count map) plus O(nx * nints * ngroups). stcal's
arithmetic precision is reproduced where it decides a threshold or a tie (float32 electrons and
differences, float64 medians and ratios, float32 numerators and later-round medians in the
iterative path). The sigma-clip path re-implements astropy's fast ``sigma_clip`` (median centre,
population std, 5 iterations) operation for operation, so its bounds are bit-identical.

Large events
------------
Snowballs (``expand_large_events``) and showers (``find_showers``) follow the two-point detection
in stcal; they are whole-plane algorithms, in :mod:`stcal_dask.kernels.large_events` (settings
from :meth:`JumpParams.snowball_settings` / :meth:`JumpParams.shower_settings`), which
:func:`detect_jumps_tile` and :func:`detect_jumps` do not run. stcal's multiprocessing row slicing
(whose whole-plane tests are per slice) is not reproduced: results equal the single-process run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags
from stcal_dask.errors import UserInputError
from stcal_dask.kernels.common import LazyModule, readonly_c

_nb = LazyModule("stcal_dask.kernels._jump_numba")
_mn = LazyModule("stcal_dask.kernels._median_numba")

__all__ = [
    "JumpParams",
    "JWST_INSTRUMENT_DEFAULTS",
    "STCAL_SHOWER_AMPLITUDE",
    "instrument_jump_defaults",
    "JumpGlobalsPartial",
    "JumpGlobals",
    "JumpResult",
    "jump_halo",
    "jump_globals_partial",
    "merge_jump_globals_partials",
    "finalize_jump_globals",
    "combine_jump_globals",
    "sigclip_reset_partial",
    "merge_sigclip_reset_partials",
    "with_sigclip_reset",
    "detect_jumps_tile",
    "detect_jumps",
    "total_primary_crs",
    "choose_path",
    "uses_sigclip",
    "detect_jumps_globals",
    "needs_median_gain",
    "SKIPPED_PRIMARY_COUNT",
    "PATHS",
]

SKIPPED_PRIMARY_COUNT = -99
"""What stcal reports as the primary-jump count when the exposure is skipped."""

PATHS = ("skip", "sigclip", "single", "iterative")
_PATH_CODE = {  # equal to _jump_numba.PATH_* (tested); literal so numba loads only on use
    "skip": 0,
    "sigclip": 1,
    "single": 2,
    "iterative": 3,
    "reset-only": 4,  # internal: sigma-clip detections already in groupdq
}


def _is_bool(v) -> bool:
    return isinstance(v, bool | np.bool_)


def _is_int(v) -> bool:
    return isinstance(v, int | np.integer) and not _is_bool(v)


def _is_real(v) -> bool:
    return isinstance(v, int | float | np.integer | np.floating) and not _is_bool(v)


@dataclass(frozen=True)
class JumpParams:
    """Jump-step parameters, with the JWST ``JumpStep`` names and defaults.

    Thresholds are in sigma; ``after_jump_flag_dn*`` in DN (converted to electrons with the
    frame's median gain); ``after_jump_flag_time*`` in seconds (converted to groups with the group
    time). ``minimum_groups`` is accepted for compatibility but, as in a single-process stcal run
    (JWST default ``maximum_cores='1'``), the effective value is always 3.
    """

    rejection_threshold: float = field(default=4.0, metadata={
        "help": "jump threshold (sigma) with >= 4 usable differences, and of the single-pass and "
                "sigma-clip paths"})
    three_group_rejection_threshold: float = field(default=6.0, metadata={
        "help": "jump threshold (sigma) when exactly 2 usable differences remain (3 groups)"})
    four_group_rejection_threshold: float = field(default=5.0, metadata={
        "help": "jump threshold (sigma) when exactly 3 usable differences remain (4 groups)"})
    flag_4_neighbors: bool = field(default=True, metadata={
        "help": "also flag the 4 edge-adjacent pixels of a jump, in the same group"})
    max_jump_to_flag_neighbors: float = field(default=1000.0, metadata={
        "help": "upper limit (sigma, exclusive) of a jump whose neighbours are flagged"})
    min_jump_to_flag_neighbors: float = field(default=10.0, metadata={
        "help": "lower limit (sigma, exclusive) of a jump whose neighbours are flagged"})
    after_jump_flag_dn1: float = field(default=0.0, metadata={
        "help": "jumps of at least this many DN get the groups within after_jump_flag_time1 "
                "(s) flagged"})
    after_jump_flag_time1: float = field(default=0.0, metadata={
        "help": "seconds after a jump >= after_jump_flag_dn1 to flag (0 disables)"})
    after_jump_flag_dn2: float = field(default=0.0, metadata={
        "help": "second (larger) after-jump threshold (DN), with after_jump_flag_time2 (s)"})
    after_jump_flag_time2: float = field(default=0.0, metadata={
        "help": "seconds after a jump >= after_jump_flag_dn2 to flag (0 disables)"})
    minimum_groups: int = field(default=3, metadata={
        "help": "groups per integration (count); accepted for compatibility, single-process "
                "stcal always uses 3"})
    minimum_sigclip_groups: int = field(default=100, metadata={
        "help": "integrations (or total groups without only_use_ints) needed for the sigma-clip "
                "path (count)"})
    only_use_ints: bool = field(default=True, metadata={
        "help": "sigma-clip each difference across integrations only (else across all "
                "differences of a pixel)"})
    min_diffs_single_pass: int = field(default=10, metadata={
        "help": "usable differences per integration needed for the single-pass path (count)"})
    # large events (stcal_dask.kernels.large_events)
    expand_large_events: bool = field(default=False, metadata={
        "help": "flag snowballs (JWST turns this on for NIRCam, NIRISS and NIRSpec)"})
    min_jump_area: float = field(default=5.0, metadata={
        "help": "minimum filled area (pixels) of a JUMP region to be a snowball candidate"})
    min_sat_area: float = field(default=1.0, metadata={
        "help": "minimum filled area (pixels) of a new-saturation region (a snowball core)"})
    expand_factor: float = field(default=2.0, metadata={
        "help": "a snowball's ellipse: minor axis times this, major axis plus (factor - 1) "
                "minor axes"})
    use_ellipses: bool = field(default=False, metadata={
        "help": "deprecated in JWST and unused (accepted for compatibility)"})
    sat_required_snowball: bool = field(default=True, metadata={
        "help": "a snowball needs a new saturated core inside it (unless near an edge)"})
    min_sat_radius_extend: float = field(default=2.5, metadata={
        "help": "cores whose minor axis (pixels) exceeds this are enlarged and set SATURATED"})
    sat_expand: int = field(default=2, metadata={
        "help": "pixels added to a core's radius when it is enlarged (twice this on its axes)"})
    edge_size: int = field(default=25, metadata={
        "help": "within this many pixels of the edge a snowball needs no saturated core"})
    mask_snowball_core_next_int: bool = field(default=True, metadata={
        "help": "flag snowball cores as JUMP in the first groups of the next integration"})
    snowball_time_masked_next_int: float = field(default=4000.0, metadata={
        "help": "seconds of the next integration masked by a core (int(time // group_time) "
                "groups)"})
    max_extended_radius: int = field(default=200, metadata={
        "help": "cap (pixels) of the radius of any enlarged core, snowball or shower ellipse"})
    find_showers: bool = field(default=False, metadata={
        "help": "flag MIRI showers (JWST turns this on for MIRI)"})
    extend_snr_threshold: float = field(default=1.2, metadata={
        "help": "threshold of the ring-smoothed difference signal-to-noise ratio for showers"})
    extend_min_area: int = field(default=90, metadata={
        "help": "minimum filled area (pixels) of a shower region"})
    extend_inner_radius: float = field(default=1.0, metadata={
        "help": "inner radius (pixels) of the ring kernel"})
    extend_outer_radius: float = field(default=2.6, metadata={
        "help": "width (pixels) of the ring kernel beyond its inner radius (astropy "
                "Ring2DKernel's)"})
    extend_ellipse_expand_ratio: float = field(default=1.1, metadata={
        "help": "factor enlarging a shower's ellipse"})
    time_masked_after_shower: float = field(default=15.0, metadata={
        "help": "seconds after a shower also flagged (int(time // group_time) groups)"})
    max_shower_amplitude: float = field(default=4.0, metadata={
        "help": "DN/s; no effect, as in the JWST jump step, which does not pass it to stcal: "
                "pixels whose mean rate a shower changes by more than stcal's own 6 times the "
                "group time (on data multiplied by the gain) keep their flags"})

    def __post_init__(self):
        for name in (
            "rejection_threshold",
            "three_group_rejection_threshold",
            "four_group_rejection_threshold",
            "max_jump_to_flag_neighbors",
            "min_jump_to_flag_neighbors",
            "after_jump_flag_dn1",
            "after_jump_flag_time1",
            "after_jump_flag_dn2",
            "after_jump_flag_time2",
        ):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(float(v)) or float(v) < 0:
                raise UserInputError(
                    f"jump parameter {name} must be a finite number >= 0, got {v!r}"
                )
        for name in (
            "min_jump_area",
            "min_sat_area",
            "expand_factor",
            "min_sat_radius_extend",
            "snowball_time_masked_next_int",
            "extend_snr_threshold",
            "extend_inner_radius",
            "extend_outer_radius",
            "extend_ellipse_expand_ratio",
            "time_masked_after_shower",
            "max_shower_amplitude",
        ):
            v = getattr(self, name)
            if not _is_real(v) or not math.isfinite(float(v)) or float(v) < 0:
                raise UserInputError(
                    f"jump parameter {name} must be a finite number >= 0, got {v!r}"
                )
        for name in ("sat_expand", "edge_size", "max_extended_radius", "extend_min_area"):
            v = getattr(self, name)
            if not _is_int(v) or int(v) < 0:
                raise UserInputError(f"jump parameter {name} must be an integer >= 0, got {v!r}")
        for name in ("expand_large_events", "use_ellipses", "sat_required_snowball",
                     "mask_snowball_core_next_int", "find_showers"):
            v = getattr(self, name)
            if not _is_bool(v):
                raise UserInputError(f"jump parameter {name} must be True or False, got {v!r}")
        for name in ("flag_4_neighbors", "only_use_ints"):
            v = getattr(self, name)
            if not _is_bool(v):
                raise UserInputError(f"jump parameter {name} must be True or False, got {v!r}")
        for name in ("minimum_groups", "minimum_sigclip_groups", "min_diffs_single_pass"):
            v = getattr(self, name)
            if not _is_int(v) or int(v) < 1:
                raise UserInputError(f"jump parameter {name} must be an integer >= 1, got {v!r}")

    @property
    def large_events(self) -> bool:
        """Whether a large-event stage (snowballs or showers) runs after two-point detection."""
        return bool(self.expand_large_events or self.find_showers)

    def snowball_settings(self, group_time: float):
        """The snowball settings in stcal's units, as the JWST step passes them: ``sat_expand``
        and ``max_extended_radius`` doubled (full axes), the next-integration masking time in
        groups (``int(time // group_time)``); None when snowballs are off."""
        from stcal_dask.kernels.large_events import SnowballSettings

        if not self.expand_large_events:
            return None
        return SnowballSettings(
            min_jump_area=float(self.min_jump_area),
            min_sat_area=float(self.min_sat_area),
            expand_factor=float(self.expand_factor),
            sat_required_snowball=bool(self.sat_required_snowball),
            min_sat_radius_extend=float(self.min_sat_radius_extend),
            sat_expand=int(self.sat_expand) * 2,
            edge_size=int(self.edge_size),
            max_extended_width=int(self.max_extended_radius) * 2,
            mask_persist_next_int=bool(self.mask_snowball_core_next_int),
            persist_groups=_time_groups(self.snowball_time_masked_next_int, group_time),
        )

    def shower_settings(self, group_time: float, nframes: int):
        """The shower settings in stcal's units, as the JWST step passes them (times in groups;
        the revert amplitude :data:`STCAL_SHOWER_AMPLITUDE` times the group time, whatever
        ``max_shower_amplitude`` says); None when showers are off."""
        from stcal_dask.kernels.large_events import ShowerSettings

        if not self.find_showers:
            return None
        return ShowerSettings(
            extend_snr_threshold=float(self.extend_snr_threshold),
            extend_min_area=float(self.extend_min_area),
            extend_inner_radius=float(self.extend_inner_radius),
            extend_outer_radius=float(self.extend_outer_radius),
            extend_ellipse_expand_ratio=float(self.extend_ellipse_expand_ratio),
            grps_masked_after_shower=_time_groups(self.time_masked_after_shower, group_time),
            # the JWST step multiplies stcal's JumpData default, not its own parameter
            max_shower_amplitude=STCAL_SHOWER_AMPLITUDE * float(group_time),
            max_extended_width=int(self.max_extended_radius) * 2,
            minimum_sigclip_groups=int(self.minimum_sigclip_groups),
            nframes=int(nframes),
        )

    def to_dict(self) -> dict:
        """Parameters as a plain JSON-serialisable dict."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = bool(v) if _is_bool(v) else (int(v) if _is_int(v) else float(v))
        return out


class JumpResult(NamedTuple):
    """Output of :func:`detect_jumps_tile` / :func:`detect_jumps` (all spatial, new arrays)."""

    groupdq: np.ndarray
    """(nints, ngroups, ny, nx), input dtype: GROUPDQ with JUMP_DET added."""
    pixeldq: np.ndarray
    """(ny, nx), input dtype: PIXELDQ with NO_GAIN_VALUE|DO_NOT_USE where gain <= 0 or NaN."""
    primary_count: np.ndarray
    """(ny, nx) int32: JUMP bits per pixel right after detection (stcal's primary count,
    including JUMP bits already in the input; 0 everywhere when the exposure is skipped)."""

    @property
    def n_primary(self) -> int:
        """Sum of ``primary_count`` (use :func:`total_primary_crs` for stcal's -99 on skip)."""
        return int(self.primary_count.sum(dtype=np.int64))


class JumpGlobalsPartial(NamedTuple):
    """Per-tile partial of the whole-frame statistics (see the module docstring)."""

    gain_values: np.ndarray
    """1-D, gain dtype: the tile's non-NaN gain values (for the frame's nanmedian)."""
    plane_dnu: np.ndarray
    """(nints, ngroups) bool: every pixel of the tile has DO_NOT_USE in that group."""


class JumpGlobals(NamedTuple):
    """Whole-frame statistics passed to every tile."""

    median_gain: np.floating
    """nanmedian of the frame's gain (electron/DN), kept as a numpy scalar of the gain dtype so
    that ``dn * median_gain`` rounds as in stcal (float32); NaN if every gain is NaN, or when
    it was not computed because it cannot matter (:func:`needs_median_gain`)."""
    plane_dnu: np.ndarray
    """(nints, ngroups) bool: every pixel of the frame has DO_NOT_USE in that group."""
    path: str
    """"skip", "sigclip", "single" or "iterative" (chosen once for the frame)."""
    sigclip_reset: np.ndarray | None = None
    """(nints, ngroups) bool, sigma-clip path only: planes where every pixel has JUMP or
    DO_NOT_USE after detection (pure-JUMP values there are reset). None until pass 1b."""

    @property
    def skip(self) -> bool:
        """True when stcal skips detection for this exposure (too few usable groups)."""
        return self.path == "skip"

    @property
    def needs_sigclip_pass(self) -> bool:
        """True when the sigma-clip reset planes must still be computed (step 3)."""
        return self.path == "sigclip" and self.sigclip_reset is None


def jump_halo(params: JumpParams) -> int:
    """Spatial halo (pixels on each side) a tile needs: 1 with neighbour flagging, else 0."""
    return 1 if params.flag_4_neighbors else 0


def uses_sigclip(nints: int, usable_groups: int, params: JumpParams) -> bool:
    """stcal 1.20.0's test for the sigma-clip path.

    Parameters
    ----------
    nints : int
        Integrations in the exposure.
    usable_groups : int
        Groups of the exposure (all integrations) outside the planes in which every pixel is
        DO_NOT_USE. ``nints * ngroups`` (an upper bound) tells whether the path can be chosen
        at all for a shape, whatever the DQ planes.
    params : JumpParams
        ``only_use_ints`` picks what is counted (integrations, or usable groups), compared with
        ``minimum_sigclip_groups``.

    Returns
    -------
    bool
        True when the sigma-clip path is taken (or, with the upper bound, can be taken).
    """
    count = nints if params.only_use_ints else usable_groups
    return count >= params.minimum_sigclip_groups


def choose_path(plane_dnu: np.ndarray, params: JumpParams) -> str:
    """stcal 1.20.0's single-process skip test and path choice.

    Parameters
    ----------
    plane_dnu : numpy.ndarray
        (nints, ngroups) bool: every pixel of the frame has DO_NOT_USE in that group.
    params : JumpParams
        The step parameters (``minimum_sigclip_groups``, ``only_use_ints``,
        ``min_diffs_single_pass``).

    Returns
    -------
    str
        One of :data:`PATHS`.
    """
    plane_dnu = np.asarray(plane_dnu, dtype=bool)
    nints, ngroups = plane_dnu.shape
    per_int = plane_dnu.sum(axis=1)
    max_flagged = int(per_int.max()) if nints else 0
    total_flagged = int(per_int.sum())
    min_usable_groups = ngroups - max_flagged
    total_groups = nints * ngroups - total_flagged
    min_usable_diffs = min_usable_groups - 1
    minimum_groups = 3  # single-process stcal overrides the parameter
    sigclip = uses_sigclip(nints, total_groups, params)
    if min_usable_groups < minimum_groups and not sigclip:
        return "skip"
    if sigclip:
        return "sigclip"
    if min_usable_diffs >= params.min_diffs_single_pass:
        return "single"
    return "iterative"


# ---------------------------------------------------------------------------------------------
# input checks


def _check_cube(data, groupdq):
    data = np.asarray(data)
    groupdq = np.asarray(groupdq)
    if data.ndim != 4:
        raise UserInputError(
            f"jump: data must be 4-D (nints, ngroups, ny, nx), got shape {data.shape}"
        )
    if data.dtype.kind != "f":
        raise UserInputError(f"jump: data must be floating point, got dtype {data.dtype}")
    if groupdq.shape != data.shape:
        raise UserInputError(
            f"jump: groupdq shape {groupdq.shape} does not match data shape {data.shape}"
        )
    if groupdq.dtype.kind != "u":
        raise UserInputError(f"jump: groupdq must be unsigned integer, got dtype {groupdq.dtype}")
    if data.shape[1] < 1 or data.shape[0] < 1:
        raise UserInputError(f"jump: data needs at least one integration and group, {data.shape}")
    return data, groupdq


def _check_plane(name, arr, shape, kinds):
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise UserInputError(f"jump: {name} shape {arr.shape} does not match (ny, nx) = {shape}")
    if arr.dtype.kind not in kinds:
        raise UserInputError(f"jump: {name} has unsupported dtype {arr.dtype}")
    return arr


def _check_globals(jump_globals, nints, ngroups):
    if not isinstance(jump_globals, JumpGlobals):
        raise UserInputError("jump: jump_globals must be a JumpGlobals (see combine_jump_globals)")
    if jump_globals.path not in PATHS:
        raise UserInputError(
            f"jump: jump_globals.path must be one of {PATHS}, got {jump_globals.path!r}"
        )
    if jump_globals.plane_dnu.shape != (nints, ngroups):
        raise UserInputError(
            f"jump: jump_globals are for (nints, ngroups) = {jump_globals.plane_dnu.shape}, "
            f"tile has {(nints, ngroups)}"
        )
    if jump_globals.needs_sigclip_pass:
        raise UserInputError(
            "jump: sigma-clip path needs jump_globals.sigclip_reset (run sigclip_reset_partial, "
            "merge_sigclip_reset_partials and with_sigclip_reset first)"
        )


STCAL_SHOWER_AMPLITUDE = 6.0
"""stcal 1.20.0 ``JumpData.max_shower_amplitude``'s default. The JWST jump step (since its
refactor to ``JumpData``) sets the amplitude stcal's ``max_flux_showers`` uses to this default
times the group time, and does not pass its own ``max_shower_amplitude`` parameter (4 DN/s by
default) on; the shower settings do the same, so that the DQ equals the JWST pipeline's. stcal
compares it with mean differences of data already multiplied by the gain."""


JWST_INSTRUMENT_DEFAULTS = {
    "NIRCAM": {"expand_large_events": True},
    "NIRISS": {"expand_large_events": True},
    "NIRSPEC": {"expand_large_events": True},
    "MIRI": {"find_showers": True},
}
"""JumpParams values that differ from the step defaults in the JWST jump parameter reference
files, per INSTRUME: snowball flagging for the near-infrared detectors, shower flagging for
MIRI."""


def instrument_jump_defaults(instrument) -> dict:
    """The :data:`JWST_INSTRUMENT_DEFAULTS` entry of an INSTRUME value (case and surrounding
    blanks ignored; {} for an unknown or missing instrument)."""
    if not isinstance(instrument, str):
        return {}
    return dict(JWST_INSTRUMENT_DEFAULTS.get(instrument.strip().upper(), {}))


def _time_groups(time_s: float, group_time) -> int:
    """A time (s) in whole groups, as the JWST step converts its times: ``int(t // tgroup)``."""
    if group_time is None or not _is_real(group_time) or not float(group_time) > 0:
        raise UserInputError(
            f"jump: group_time must be a number > 0 s for large events, got {group_time!r}"
        )
    return int(float(time_s) // float(group_time))


def _after_jump_groups(time_s: float, group_time) -> int:
    if time_s <= 0:
        return 0
    if group_time is None or not _is_real(group_time) or not float(group_time) > 0:
        raise UserInputError(
            f"jump: group_time must be a number > 0 s for after-jump flagging, got {group_time!r}"
        )
    return int(float(time_s) // float(group_time))


# ---------------------------------------------------------------------------------------------
# global statistics


def needs_median_gain(params: JumpParams) -> bool:
    """Whether the frame's median gain can matter: it only scales the after-jump flagging
    thresholds, which are off unless ``after_jump_flag_time1`` or ``..._time2`` is > 0."""
    return params.after_jump_flag_time1 > 0 or params.after_jump_flag_time2 > 0


def jump_globals_partial(groupdq, gain) -> JumpGlobalsPartial:
    """Pass-1 partial for one tile (tiles must partition the frame: no halo, no overlap).

    ``groupdq``: (nints, ngroups, ty, tx); ``gain``: (ty, tx) electron/DN, or None when the
    median gain is not needed (:func:`needs_median_gain`): it is then NaN in the globals.
    """
    groupdq = np.asarray(groupdq)
    if groupdq.ndim != 4:
        raise UserInputError(f"jump: groupdq tile must be 4-D, got shape {groupdq.shape}")
    if gain is None:
        values = np.empty(0, dtype=np.float32)
    else:
        gain = np.asarray(gain)
        if gain.shape != groupdq.shape[2:]:
            raise UserInputError(
                f"jump: groupdq {groupdq.shape} and gain {gain.shape} tiles do not match"
            )
        flat = gain.reshape(-1)
        values = flat[~np.isnan(flat)].copy()
    plane = _nb.whole_plane_flags(readonly_c(groupdq), dqflags.DO_NOT_USE)
    return JumpGlobalsPartial(values, plane)


def merge_jump_globals_partials(*partials: JumpGlobalsPartial) -> JumpGlobalsPartial:
    """Associative merge of pass-1 partials (concatenate gain values, AND the plane flags)."""
    if not partials:
        raise ValueError("merge_jump_globals_partials needs at least one partial")
    plane = partials[0].plane_dnu.copy()
    for p in partials[1:]:
        if p.plane_dnu.shape != plane.shape:
            raise UserInputError("jump: partials disagree on (nints, ngroups)")
        plane &= p.plane_dnu
    values = np.concatenate([p.gain_values for p in partials])
    return JumpGlobalsPartial(values, plane)


def finalize_jump_globals(partial: JumpGlobalsPartial, *, params: JumpParams) -> JumpGlobals:
    """Turn the frame's merged pass-1 partial into :class:`JumpGlobals`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(partial.gain_values) if partial.gain_values.size else np.float32(np.nan)
    return JumpGlobals(
        median_gain=med,
        plane_dnu=np.asarray(partial.plane_dnu, dtype=bool),
        path=choose_path(partial.plane_dnu, params),
        sigclip_reset=None,
    )


def combine_jump_globals(partials, *, params: JumpParams) -> JumpGlobals:
    """``finalize_jump_globals(merge_jump_globals_partials(*partials), params=params)``."""
    return finalize_jump_globals(merge_jump_globals_partials(*partials), params=params)


_NAN32 = np.float32(np.nan)


def _run_frame(data, groupdq, gain, readnoise, *, params, path, reset, nframes=1, n1=0, n2=0,
               median_gain=_NAN32, neighbors=True, redundant=True, rowwise=True):  # fmt: skip
    """Call the numba frame driver on read-only C arrays; returns (groupdq, primary_count).
    ``rowwise=False`` detects pixel by pixel (the same flags; to check the row-wise paths)."""
    nints, ngroups, ny, nx = data.shape
    # stcal: e = dn * nanmedian(gain), a python float times a numpy scalar (gain dtype).
    e1 = float(float(params.after_jump_flag_dn1) * median_gain)
    e2 = float(float(params.after_jump_flag_dn2) * median_gain)
    # stcal: RN^2 / (0.5 * n_reads_groupdiff) with n_reads_groupdiff = ones(1) * 2 * nframes
    nreads_half = float((0.5 * (np.ones(1) * 2 * nframes))[0])
    eproto = np.empty(1, dtype=np.result_type(data.dtype, gain.dtype))
    out_dtype = groupdq.dtype
    if out_dtype != np.uint8 and (groupdq.size == 0 or int(groupdq.max()) < 256):
        # wider group DQ holding only 8-bit flags (as in stcal's tests): run the uint8
        # specialisation (compiling another one costs tens of seconds) and widen the result
        groupdq = readonly_c(groupdq.astype(np.uint8))
    gdq = np.empty_like(groupdq)
    primary = np.zeros((ny, nx), dtype=np.int32)
    code = _PATH_CODE[path]
    ntot = nints * (ngroups - 1)
    # the row detections this frame calls (only those are compiled, see run_frame)
    rowwise = bool(_nb.detects_rowwise(code, ntot, bool(rowwise)))
    inputs = _nb.FrameInputs(data=data, groupdq=groupdq, gain=gain, readnoise=readnoise,
                             eproto=eproto)
    with np.errstate(all="ignore"):
        args = (
            inputs,
            _nb.DetectSettings(
                path=code,
                only_use_ints=bool(params.only_use_ints),
                # a writable C array (the type detect_pixels is compiled for)
                reset_planes=np.array(reset, dtype=np.bool_, order="C"),
                nreads_half=nreads_half,
                rej=float(params.rejection_threshold),
                thr_3diff=float(params.four_group_rejection_threshold),
                thr_2diff=float(params.three_group_rejection_threshold),
                rowwise=bool(rowwise),
            ),
            _nb.FlagSettings(
                neighbors=bool(params.flag_4_neighbors) and neighbors,
                nbr_min=float(params.min_jump_to_flag_neighbors),
                nbr_max=float(params.max_jump_to_flag_neighbors),
                after=n1 > 0 or n2 > 0,
                e1=e1,
                jmax1=max(0, min(n1, ngroups - 2)),
                e2=e2,
                jmax2=max(0, min(n2, ngroups - 2)),
                remove_redundant=redundant,
            ),
            _nb.FrameOutputs(groupdq=gdq, primary=primary),
            _nb.row_rings(data.shape, eproto.dtype, groupdq.dtype, rowwise),
            # the lane median of the iterative path's count (another path calls none)
            _mn.lane_mid(eproto.dtype, ntot if path == "iterative" and rowwise else 0),
            # and its median of all usable values, for the neighbour centres
            _mn.lane_mid(eproto.dtype, ntot if path == "iterative" and rowwise and neighbors
                         and params.flag_4_neighbors else 0, keep_all=True),
            _nb.single_detection(eproto.dtype, used=rowwise and path == "single"),
            _nb.pixel_detection(eproto.dtype, groupdq.dtype, used=not rowwise),
            _mn.median_function(),
        )
        _nb.run_frame(*args, *_nb.row_phases(*args[:6]))
    return gdq.astype(out_dtype, copy=False), primary


def sigclip_reset_partial(data, groupdq, gain, *, params: JumpParams, jump_globals: JumpGlobals):
    """Pass-1b partial (sigma-clip path only; any tiling, halo not needed).

    Returns (nints, ngroups) bool: every pixel of the tile has JUMP or DO_NOT_USE in that plane
    after sigma-clip detection (before any reset, neighbour or after-jump flagging and
    redundant-bit removal). Merge with :func:`merge_sigclip_reset_partials`.
    """
    data, groupdq = _check_cube(data, groupdq)
    gain = _check_plane("gain", gain, data.shape[2:], "fiu")
    if jump_globals.path != "sigclip":
        raise UserInputError(
            f"jump: sigclip_reset_partial called on the {jump_globals.path!r} path"
        )
    gdq = _sigclip_detected(data, groupdq, gain, params)
    return _nb.whole_plane_flags(readonly_c(gdq), dqflags.JUMP_DET | dqflags.DO_NOT_USE)


def _sigclip_detected(data, groupdq, gain, params: JumpParams) -> np.ndarray:
    """Group DQ right after sigma-clip detection (no reset, neighbours, after-jump flags or
    redundant-bit removal)."""
    data, groupdq, gain = (readonly_c(a) for a in (data, groupdq, gain))
    nints, ngroups = data.shape[:2]
    gdq, _ = _run_frame(
        data,
        groupdq,
        gain,
        gain,  # read noise is not used by sigma-clip detection itself
        params=params,
        path="sigclip",
        reset=np.zeros((nints, ngroups), dtype=bool),
        neighbors=False,
        redundant=False,
    )
    return gdq


def merge_sigclip_reset_partials(*parts) -> np.ndarray:
    """Associative merge of :func:`sigclip_reset_partial` results (logical AND)."""
    if not parts:
        raise ValueError("merge_sigclip_reset_partials needs at least one partial")
    out = np.asarray(parts[0], dtype=bool).copy()
    for p in parts[1:]:
        out &= np.asarray(p, dtype=bool)
    return out


def with_sigclip_reset(jump_globals: JumpGlobals, reset) -> JumpGlobals:
    """Attach the merged sigma-clip reset planes to ``jump_globals``."""
    reset = np.asarray(reset, dtype=bool)
    if reset.shape != jump_globals.plane_dnu.shape:
        raise UserInputError(
            f"jump: sigclip reset shape {reset.shape} != {jump_globals.plane_dnu.shape}"
        )
    return jump_globals._replace(sigclip_reset=reset)


def total_primary_crs(primary_sum: int, jump_globals: JumpGlobals) -> int:
    """stcal's ``total_primary_crs``: summed primary count, or -99 if the exposure is skipped."""
    return SKIPPED_PRIMARY_COUNT if jump_globals.skip else int(primary_sum)


# ---------------------------------------------------------------------------------------------
# the tile kernel


def detect_jumps_tile(
    data,
    groupdq,
    pixeldq,
    gain,
    readnoise,
    *,
    params: JumpParams,
    nframes: int,
    group_time: float | None,
    jump_globals: JumpGlobals,
) -> JumpResult:
    """Detect jumps in one tile (the arrays are treated as a frame whose edges are the tile's).

    Give the tile with a halo of :func:`jump_halo` pixels (clipped at the frame edges) and crop
    the halo off the result; with ``jump_globals`` from the whole frame the cropped result equals
    the whole-frame result. Shapes and units: see the module docstring. Inputs are not modified.
    """
    return _detect_jumps_tile(
        data,
        groupdq,
        pixeldq,
        gain,
        readnoise,
        params=params,
        nframes=nframes,
        group_time=group_time,
        jump_globals=jump_globals,
    )


def _detect_jumps_tile(
    data, groupdq, pixeldq, gain, readnoise, *, params, nframes, group_time, jump_globals,
    detected=None,
):  # fmt: skip
    """:func:`detect_jumps_tile`; ``detected`` (sigma-clip path, whole frame only) is the group
    DQ after sigma-clip detection from the reset pass, which is then not clipped again."""
    if not isinstance(params, JumpParams):
        raise UserInputError("jump: params must be a JumpParams")
    data, groupdq = _check_cube(data, groupdq)
    nints, ngroups, ny, nx = data.shape
    pixeldq = _check_plane("pixeldq", pixeldq, (ny, nx), "ui")
    gain = _check_plane("gain", gain, (ny, nx), "fiu")
    readnoise = _check_plane("readnoise", readnoise, (ny, nx), "fiu")
    if not _is_int(nframes) or int(nframes) < 1:
        raise UserInputError(f"jump: nframes must be an integer >= 1, got {nframes!r}")
    _check_globals(jump_globals, nints, ngroups)
    data, groupdq, gain, readnoise = (readonly_c(a) for a in (data, groupdq, gain, readnoise))
    n1 = _after_jump_groups(params.after_jump_flag_time1, group_time)
    n2 = _after_jump_groups(params.after_jump_flag_time2, group_time)

    # PIXELDQ: bad gains (<= 0 or NaN) get NO_GAIN_VALUE | DO_NOT_USE.
    pdq = _nb.with_bad_gain(gain, readonly_c(pixeldq), dqflags.NO_GAIN_VALUE | dqflags.DO_NOT_USE)

    if jump_globals.skip or ny == 0 or nx == 0 or ngroups < 2:
        gdq = groupdq.copy()
        _nb.remove_redundant(gdq)
        return JumpResult(gdq, pdq, np.zeros((ny, nx), dtype=np.int32))

    path = jump_globals.path
    reset = jump_globals.sigclip_reset if path == "sigclip" else np.zeros((nints, ngroups), bool)
    if detected is not None and path == "sigclip":
        groupdq, path = readonly_c(detected), "reset-only"
    gdq, primary = _run_frame(
        data,
        groupdq,
        gain,
        readnoise,
        params=params,
        path=path,
        reset=reset,
        nframes=int(nframes),
        n1=n1,
        n2=n2,
        median_gain=jump_globals.median_gain,
    )
    return JumpResult(gdq, pdq, primary)


def detect_jumps(
    data,
    groupdq,
    pixeldq,
    gain,
    readnoise,
    *,
    params: JumpParams | None = None,
    nframes: int,
    group_time: float | None = None,
) -> JumpResult:
    """Whole-frame jump detection: computes the globals itself and runs one tile.

    Equivalent to stcal 1.20.0 ``detect_jumps_data`` in a single process up to its large-event
    stage (:func:`stcal_dask.kernels.large_events.flag_large_events` adds it). The primary
    count stcal reports is ``total_primary_crs(result.n_primary, jump_globals)`` (-99 on skipped
    exposures); :func:`detect_jumps_globals` gives the globals used.
    """
    params = JumpParams() if params is None else params
    # the median gain only where it is used (it costs a median of the whole frame)
    g, detected = _frame_globals(data, groupdq, gain, params=params,
                                 median_gain=needs_median_gain(params))
    return _detect_jumps_tile(
        data,
        groupdq,
        pixeldq,
        gain,
        readnoise,
        params=params,
        nframes=nframes,
        group_time=group_time,
        jump_globals=g,
        detected=detected,
    )


def detect_jumps_globals(data, groupdq, gain, *, params: JumpParams) -> JumpGlobals:
    """The :class:`JumpGlobals` of a whole frame held in memory (steps 1-3 on one tile)."""
    return _frame_globals(data, groupdq, gain, params=params)[0]


def _frame_globals(data, groupdq, gain, *, params: JumpParams, median_gain: bool = True):
    """Whole-frame globals, and on the sigma-clip path the group DQ after sigma-clip detection
    (so the detection pass is not repeated), else None. ``median_gain=False``: the median gain
    is left NaN (see :func:`needs_median_gain`)."""
    data, groupdq = _check_cube(data, groupdq)
    gain = _check_plane("gain", gain, data.shape[2:], "fiu")
    g = combine_jump_globals([jump_globals_partial(groupdq, gain if median_gain else None)],
                             params=params)
    if not g.needs_sigclip_pass:
        return g, None
    detected = _sigclip_detected(data, groupdq, gain, params)
    reset = _nb.whole_plane_flags(readonly_c(detected), dqflags.JUMP_DET | dqflags.DO_NOT_USE)
    return with_sigclip_reset(g, reset), detected
