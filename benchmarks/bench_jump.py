"""Benchmark: stcal_dask's jump kernel vs stcal 1.20.0 ``detect_jumps_data`` on one core.

Simulates an exposure (default 1 x 10 x 2048 x 2048, like a NIRCam full frame), writes it to a
temporary directory and runs each implementation in a **fresh subprocess** (so peak RSS is that
run's own): ours (``detect_jumps`` on the whole frame, numba warmed up on a tiny array first)
and stcal (``detect_jumps_data`` with ``max_cores='none'``, i.e. one process). Each child
reports the wall time of the detection call alone, its peak RSS (VmHWM, reset after the imports,
since ``ru_maxrss`` would include the parent's peak) and its RSS just before loading the inputs
(imports only). The parent checks that GROUPDQ, PIXELDQ and the primary
count agree bit for bit and prints a table with the ratios and whether the targets are met:
>= 5x faster than stcal, and peak memory <= 3x the input cube (the float32 data array) -- the
latter judged on the memory above the import baseline, with the raw peak printed as well.

    python benchmarks/bench_jump.py                       # full frame
    python benchmarks/bench_jump.py --ny 512 --nx 512     # quicker
    python benchmarks/bench_jump.py --case snowball       # + snowballs (expand_large_events)
    python benchmarks/bench_jump.py --case shower --nints 2 --ngroups 20 --ny 1024 --nx 1032

``--case snowball`` adds seeded snowballs (:mod:`stcal_dask.sim.events`) and turns
``expand_large_events`` on; ``--case shower`` makes a MIRI-like exposure (2.775 s frames, group 0
and the last group DO_NOT_USE everywhere, 4 reference-pixel columns on each side, showers) and
turns ``find_showers`` on. Ours then runs the large-event kernel on the whole frame after
``detect_jumps`` (one core); stcal's ``detect_jumps_data`` gets the same settings as the JWST step
passes them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

NAMES = ("data", "groupdq", "pixeldq", "gain", "readnoise")


def _rss_mib() -> float:
    """Current resident set size (MiB) from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM). ``ru_maxrss`` cannot be used: a child started by
    fork/vfork + exec inherits the parent's high-water mark."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_mib() -> float:
    """Peak RSS (VmHWM) since the last :func:`_reset_peak` (MiB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """CPU time (user + system, s) of this process: less sensitive than the wall time to other
    processes on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _load(d: Path):
    import numpy as np

    return [np.load(d / f"{n}.npy") for n in NAMES]


def _params(case: str):
    from stcal_dask.kernels.jump import JumpParams

    if case == "snowball":
        return JumpParams(expand_large_events=True)
    if case == "shower":
        return JumpParams(find_showers=True)
    return JumpParams()


def child_ours(d: Path, nframes: int, group_time: float, case: str = "plain") -> dict:
    import numpy as np

    from stcal_dask.kernels import large_events as le
    from stcal_dask.kernels.jump import (
        detect_jumps,
        detect_jumps_globals,
        total_primary_crs,
    )

    params = _params(case)
    if params.large_events:
        # the libraries the large-event kernel imports on first use (stcal imports them with
        # its module, before its timer starts)
        import scipy.signal  # noqa: F401
        import skimage.draw  # noqa: F401
        import skimage.measure  # noqa: F401
    # warm up numba (loads the on-disk cache or compiles) on a tiny array of the frame's
    # (nints, ngroups): the lane medians are compiled per count of differences
    nints, ngroups = np.load(d / "data.npy", mmap_mode="r").shape[:2]
    tiny = np.zeros((nints, ngroups, 3, 3), np.float32)
    ones = np.ones((3, 3), np.float32)
    detect_jumps(tiny, np.zeros(tiny.shape, np.uint8), np.zeros((3, 3), np.uint32), ones, ones,
                 params=params, nframes=1)  # fmt: skip
    _reset_peak()
    base = _rss_mib()
    data, gdq, pdq, gain, rn = _load(d)
    c0 = _cpu_s()
    t0 = time.perf_counter()
    res = detect_jumps(
        data, gdq, pdq, gain, rn, params=params, nframes=nframes, group_time=group_time
    )
    n_ext = 0
    if params.large_events:
        big = le.flag_large_events(data, res.groupdq, res.pixeldq, gain, rn,
                                   snowballs=params.snowball_settings(group_time),
                                   showers=params.shower_settings(group_time, nframes))
        res = res._replace(groupdq=big.groupdq)
        n_ext = big.n_showers if params.find_showers else big.n_snowballs
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - c0
    peak = _peak_mib()
    g = detect_jumps_globals(data, gdq, gain, params=params)
    np.save(d / "ours_gdq.npy", res.groupdq)
    np.save(d / "ours_pdq.npy", res.pixeldq)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_mib": peak,
        "base_mib": base,
        "n_primary": total_primary_crs(res.n_primary, g),
        "n_extended": n_ext,
        "path": g.path,
    }


def child_stcal(d: Path, nframes: int, group_time: float, case: str = "plain") -> dict:
    import logging

    import numpy as np
    from stcal.jump.jump import detect_jumps_data
    from stcal.jump.jump_class import JumpData

    from stcal_dask import dqflags

    logging.getLogger("stcal").setLevel(logging.WARNING)
    _reset_peak()
    base = _rss_mib()
    data, gdq, pdq, gain, rn = _load(d)
    jd = JumpData(gain2d=gain, rnoise2d=rn, dqflags=dqflags.as_dict())
    jd.init_arrays_from_arrays(data, gdq, pdq)
    jd.nframes = nframes
    jd.dt_group = np.ones(1)  # as JumpData sets them for a JWST model
    jd.n_reads_groupdiff = np.ones(1) * 2 * nframes
    jd.max_cores = "none"
    p = _params(case)
    # the large-event settings as the JWST step passes them
    jd.set_snowball_info(p.expand_large_events, p.min_jump_area, p.min_sat_area, p.expand_factor,
                         p.sat_required_snowball, p.min_sat_radius_extend, p.sat_expand * 2,
                         p.edge_size)
    jd.set_shower_info(p.find_showers, p.extend_snr_threshold, p.extend_min_area,
                       p.extend_inner_radius, p.extend_outer_radius,
                       p.extend_ellipse_expand_ratio, p.min_diffs_single_pass,
                       p.max_extended_radius * 2)
    jd.mask_persist_grps_next_int = p.mask_snowball_core_next_int
    jd.persist_grps_flagged = int(p.snowball_time_masked_next_int // group_time)
    jd.grps_masked_after_shower = int(p.time_masked_after_shower // group_time)
    jd.max_shower_amplitude = jd.max_shower_amplitude * group_time  # JumpData's own
    c0 = _cpu_s()
    t0 = time.perf_counter()
    with np.errstate(all="ignore"):
        out_gdq, out_pdq, total, n_ext = detect_jumps_data(jd)
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - c0
    peak = _peak_mib()
    np.save(d / "stcal_gdq.npy", out_gdq)
    np.save(d / "stcal_pdq.npy", out_pdq)
    return {"wall_s": wall, "cpu_s": cpu, "peak_mib": peak, "base_mib": base,
            "n_primary": int(total),
            "n_extended": int(n_ext)}


def _run_child(which: str, d: Path, nframes: int, group_time: float, case: str) -> dict:
    cmd = [sys.executable, __file__, "--child", which, "--dir", str(d),
           "--nframes", str(nframes), "--group-time", repr(group_time), "--case", case]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nints", type=int, default=1)
    ap.add_argument("--ngroups", type=int, default=10)
    ap.add_argument("--ny", type=int, default=2048)
    ap.add_argument("--nx", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each, interleaved; medians are reported")
    ap.add_argument("--case", choices=("plain", "snowball", "shower"), default="plain",
                    help="large events added and flagged (see the module docstring)")
    ap.add_argument("--child", choices=("ours", "stcal"), help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    ap.add_argument("--nframes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--group-time", type=float, default=10.73677, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        fn = child_ours if args.child == "ours" else child_stcal
        print(json.dumps(fn(Path(args.dir), args.nframes, args.group_time, args.case)))
        return 0

    import numpy as np

    from stcal_dask import dqflags
    from stcal_dask.sim.events import EventConfig, add_large_events
    from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

    cfg = SimulationConfig(
        nints=args.nints, ngroups=args.ngroups, ny=args.ny, nx=args.nx, seed=args.seed,
        **({"frame_time": 2.775, "cr_rate": 0.002} if args.case == "shower" else {}),
    )
    print(f"simulating {cfg.shape} (nints, ngroups, ny, nx), case {args.case} ...", flush=True)
    exp = simulate_exposure(cfg)
    if args.case == "snowball":
        per = max(1, args.ny * args.nx // 100_000)
        exp, _ = add_large_events(exp, EventConfig(seed=args.seed, n_snowballs=per,
                                                   snowball_rows=(args.ny // 2,)))
    elif args.case == "shower":
        per = max(1, args.ny * args.nx // 200_000)
        exp, _ = add_large_events(exp, EventConfig(seed=args.seed, n_snowballs=0,
                                                   n_edge_snowballs=0, n_showers=per))
        gdq = exp.groupdq.copy()
        gdq[:, 0] |= dqflags.DO_NOT_USE
        gdq[:, -1] |= dqflags.DO_NOT_USE
        pdq = exp.pixeldq.copy()
        pdq[:, :4] = dqflags.REFERENCE_PIXEL
        pdq[:, -4:] = dqflags.REFERENCE_PIXEL
        exp = exp._replace(groupdq=gdq, pixeldq=pdq)
    cube_mib = exp.data.nbytes / 2**20
    with tempfile.TemporaryDirectory(prefix="bench_jump_") as tmp:
        d = Path(tmp)
        for n in NAMES:
            np.save(d / f"{n}.npy", getattr(exp, n))
        del exp
        # interleaved (ours, stcal, ours, stcal, ...); medians of the wall and CPU times
        trials: dict = {"ours": [], "stcal": []}
        for _ in range(args.repeat):
            for which in ("ours", "stcal"):
                r = _run_child(which, d, cfg.nframes, cfg.group_time, args.case)
                trials[which].append(r)
                print(f"{which}: {r}", flush=True)
        runs = {}
        for which, rs in trials.items():
            runs[which] = dict(rs[0])
            for key in ("wall_s", "cpu_s", "peak_mib", "base_mib"):
                runs[which][key] = float(np.median([r[key] for r in rs]))
        same_gdq = np.array_equal(np.load(d / "ours_gdq.npy"), np.load(d / "stcal_gdq.npy"))
        same_pdq = np.array_equal(np.load(d / "ours_pdq.npy"), np.load(d / "stcal_pdq.npy"))
    same_n = runs["ours"]["n_primary"] == runs["stcal"]["n_primary"]
    same_n = same_n and runs["ours"]["n_extended"] == runs["stcal"]["n_extended"]

    o, s = runs["ours"], runs["stcal"]
    speedup = s["wall_s"] / o["wall_s"]
    cpu_speedup = s["cpu_s"] / o["cpu_s"]
    o_work, s_work = o["peak_mib"] - o["base_mib"], s["peak_mib"] - s["base_mib"]
    print()
    print(f"exposure {cfg.shape}, path {o['path']}, input cube (float32 data) {cube_mib:.1f} MiB,"
          f" one core, cpu_count {os.cpu_count()}")  # fmt: skip
    print(f"{'':8s} {'wall s':>9s} {'CPU s':>9s} {'peak RSS MiB':>13s} {'imports MiB':>12s} "
          f"{'above imports':>14s} {'x cube':>7s}")  # fmt: skip
    for name, r, work in (("stcal", s, s_work), ("ours", o, o_work)):
        print(f"{name:8s} {r['wall_s']:9.3f} {r['cpu_s']:9.3f} {r['peak_mib']:13.1f} "
              f"{r['base_mib']:12.1f} {work:14.1f} {work / cube_mib:7.2f}")  # fmt: skip
    print()
    print(f"speed-up (stcal / ours), wall      : {speedup:.1f}x  target >= 5x: "
          f"{'MET' if speedup >= 5 else 'NOT MET'}")  # fmt: skip
    print(f"speed-up (stcal / ours), CPU time  : {cpu_speedup:.1f}x  (medians of {args.repeat}"
          f" interleaved runs each)")  # fmt: skip
    print(f"our memory above imports / cube    : {o_work / cube_mib:.2f}  target <= 3: "
          f"{'MET' if o_work <= 3 * cube_mib else 'NOT MET'}")  # fmt: skip
    print(f"our raw peak RSS / cube            : {o['peak_mib'] / cube_mib:.2f}  "
          f"({'<=' if o['peak_mib'] <= 3 * cube_mib else '>'} 3)")  # fmt: skip
    print(f"memory ratio (stcal / ours, above imports): {s_work / o_work:.1f}x")
    print(
        f"GROUPDQ identical: {same_gdq}; PIXELDQ identical: {same_pdq}; "
        f"primary count {o['n_primary']} vs {s['n_primary']}, extended events "
        f"{o['n_extended']} vs {s['n_extended']}: {'equal' if same_n else 'DIFFER'}"
    )
    return 0 if (same_gdq and same_pdq and same_n) else 1


if __name__ == "__main__":
    sys.exit(main())
