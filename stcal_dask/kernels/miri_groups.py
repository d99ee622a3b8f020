"""MIRI's first and last groups in ramp fitting, as stcal 1.20.0 treats them.

For ``INSTRUME = MIRI`` with more than one group, stcal's OLS ramp fitting
(``discard_miri_groups``) drops the leading groups that are DO_NOT_USE in *every* pixel of
*every* integration (clearing JUMP_DET on the group that becomes the first one each time), then
the last group if it too is DO_NOT_USE everywhere, and produces nothing if fewer than 2 groups
remain. JWST's firstframe/lastframe steps set exactly those flags on every MIRI exposure. It does
so *after* ``suppress_one_group`` has OR-ed DO_NOT_USE into every group of the ramps with a
single usable group, so the decision and the suppression both use the whole ramp.

The decision is whole-frame: per tile call :func:`trim_partial`, AND the results
(:func:`merge_trim_partials`), then :func:`decide_trim`; then per tile :func:`apply_trim` gives the
data and group DQ to fit (with ``suppressed=True`` in
:func:`stcal_dask.kernels.ramp_fit.fit_ramps_tile` when suppression was applied here).

Shapes: ``data``/``groupdq`` (nints, ngroups, ny, nx); inputs are never modified.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from stcal_dask import dqflags

__all__ = ["GroupTrim", "suppress_one_group", "trim_partial", "merge_trim_partials",
           "decide_trim", "apply_trim", "is_miri"]


def is_miri(instrument) -> bool:
    """Whether an INSTRUME value names MIRI (case and surrounding blanks ignored)."""
    return isinstance(instrument, str) and instrument.strip().upper() == "MIRI"


class GroupTrim(NamedTuple):
    """The groups stcal fits: ``first:stop`` of the original ones."""

    first: int
    stop: int
    ok: bool
    """False when nothing or fewer than 2 groups remain (stcal then returns no product)."""

    @property
    def trims(self) -> bool:
        return self.first > 0


def suppress_one_group(groupdq) -> np.ndarray:
    """stcal's ``suppress_one_good_group_ramps``: DO_NOT_USE OR-ed into every group of each
    (integration, pixel) ramp with exactly one group free of flags other than PERSISTENCE."""
    gdq = np.array(groupdq, copy=True)
    npers = np.invert(np.array(dqflags.PERSISTENCE, dtype=gdq.dtype))
    one = ((gdq & npers) == 0).sum(axis=1) == 1  # (nints, ny, nx)
    gdq[np.broadcast_to(one[:, None], gdq.shape)] |= gdq.dtype.type(dqflags.DO_NOT_USE)
    return gdq


def trim_partial(groupdq, *, suppress: bool) -> np.ndarray:
    """(ngroups,) bool for one tile: every pixel of every integration has DO_NOT_USE in that
    group (after ``suppress_one_group`` when ``suppress``)."""
    gdq = suppress_one_group(groupdq) if suppress else np.asarray(groupdq)
    return ((gdq & dqflags.DO_NOT_USE) != 0).all(axis=(0, 2, 3))


def merge_trim_partials(*parts) -> np.ndarray:
    """Logical AND of :func:`trim_partial` results."""
    return np.logical_and.reduce([np.asarray(p, dtype=bool) for p in parts])


def decide_trim(all_dnu) -> GroupTrim:
    """stcal's ``discard_miri_groups`` decision from the merged (ngroups,) flags."""
    all_dnu = np.asarray(all_dnu, dtype=bool)
    n = all_dnu.size
    first = 0
    while first < n and all_dnu[first]:
        first += 1
    if first == n:
        return GroupTrim(first, n, False)
    stop = n - 1 if all_dnu[n - 1] else n
    return GroupTrim(first, stop, stop - first >= 2)


def apply_trim(data, groupdq, trim: GroupTrim, *, suppress: bool):
    """(data, groupdq, chargeloss_groupdq) to fit: groups ``first:stop``; the group DQ
    suppressed first when ``suppress`` and JUMP_DET cleared on the new first group when leading
    groups were dropped; the group DQ of stcal's CHARGELOSS read-noise recomputation
    (``orig_gdq``) with the same groups dropped and nothing else changed."""
    gdq = suppress_one_group(groupdq) if suppress else np.array(groupdq, copy=True)
    gdq = gdq[:, trim.first : trim.stop].copy()
    if trim.first > 0:
        gdq[:, 0] &= np.invert(np.array(dqflags.JUMP_DET, dtype=gdq.dtype))
    orig = np.asarray(groupdq)[:, trim.first : trim.stop]
    return np.asarray(data)[:, trim.first : trim.stop], gdq, orig
