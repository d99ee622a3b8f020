"""Helpers that run stcal 1.20.0's jump detection (the test oracle) the way the JWST step does.

``run_stcal_jump`` builds a ``stcal.jump.jump_class.JumpData`` from plain arrays (copies, so the
caller's arrays are untouched), sets ``dt_group``/``n_reads_groupdiff`` as JumpData does for a
JWST model without a read pattern, converts the after-jump times to groups as the JWST step does
(``int(time // group_time)``) and calls ``detect_jumps_data`` in a single process.
"""

from __future__ import annotations

import logging

import numpy as np

from stcal_dask import dqflags
from stcal_dask.kernels.jump import JumpParams

logging.getLogger("stcal").setLevel(logging.WARNING)


def stcal_jump_data(data, groupdq, pixeldq, gain, readnoise, *, params, nframes, group_time):
    """A ready-to-run ``JumpData`` (on copies of the inputs)."""
    from stcal.jump.jump_class import JumpData

    params = JumpParams() if params is None else params
    jd = JumpData(
        gain2d=np.array(gain, copy=True),
        rnoise2d=np.array(readnoise, copy=True),
        dqflags=dqflags.as_dict(),
    )
    jd.init_arrays_from_arrays(
        np.array(data, copy=True), np.array(groupdq, copy=True), np.array(pixeldq, copy=True)
    )
    jd.nframes = nframes
    jd.dt_group = np.ones(1)
    jd.n_reads_groupdiff = np.ones(1) * 2 * nframes
    jd.set_detection_settings(
        params.rejection_threshold,
        params.three_group_rejection_threshold,
        params.four_group_rejection_threshold,
        params.max_jump_to_flag_neighbors,
        params.min_jump_to_flag_neighbors,
        params.flag_4_neighbors,
    )
    n1 = int(params.after_jump_flag_time1 // group_time) if params.after_jump_flag_time1 else 0
    n2 = int(params.after_jump_flag_time2 // group_time) if params.after_jump_flag_time2 else 0
    jd.set_after_jump(float(params.after_jump_flag_dn1), n1, float(params.after_jump_flag_dn2), n2)
    jd.set_sigma_clipping_info(
        params.minimum_groups, params.minimum_sigclip_groups, params.only_use_ints
    )
    jd.min_diffs_single_pass = params.min_diffs_single_pass
    # large events, as the JWST step passes them (sat_expand and max_extended_radius doubled,
    # times converted to groups, the shower amplitude per group)
    jd.set_snowball_info(
        params.expand_large_events,
        params.min_jump_area,
        params.min_sat_area,
        params.expand_factor,
        params.sat_required_snowball,
        params.min_sat_radius_extend,
        params.sat_expand * 2,
        params.edge_size,
    )
    jd.set_shower_info(
        params.find_showers,
        params.extend_snr_threshold,
        params.extend_min_area,
        params.extend_inner_radius,
        params.extend_outer_radius,
        params.extend_ellipse_expand_ratio,
        params.min_diffs_single_pass,
        params.max_extended_radius * 2,
    )
    jd.mask_persist_grps_next_int = params.mask_snowball_core_next_int
    jd.persist_grps_flagged = int(params.snowball_time_masked_next_int // group_time)
    jd.grps_masked_after_shower = int(params.time_masked_after_shower // group_time)
    # the JWST step multiplies JumpData's own default, not its max_shower_amplitude parameter
    jd.max_shower_amplitude = jd.max_shower_amplitude * group_time
    jd.max_cores = "none"
    return jd


def run_stcal_jump(
    data, groupdq, pixeldq, gain, readnoise, *, params=None, nframes=1, group_time=10.0,
    extended=False,
):
    """stcal 1.20.0 ``detect_jumps_data`` on copies: returns ``(gdq, pdq, total_primary_crs)``
    (and the number of extended events as a fourth item with ``extended=True``)."""
    from stcal.jump.jump import detect_jumps_data

    jd = stcal_jump_data(
        data,
        groupdq,
        pixeldq,
        gain,
        readnoise,
        params=params,
        nframes=nframes,
        group_time=group_time,
    )
    with np.errstate(all="ignore"):
        gdq, pdq, total, _n_ext = detect_jumps_data(jd)
    if extended:
        return gdq, pdq, int(total), int(_n_ext)
    return gdq, pdq, int(total)
