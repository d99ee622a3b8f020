"""Benchmark: our OLS ramp-fitting kernel vs stcal 1.20.0's C fitter, on one core.

For each exposure shape the script

1. simulates a seeded exposure (:mod:`stcal_dask.sim.ramp`, cosmic rays flagged as JUMP_DET) and
   writes its arrays to ``.npy`` files in a temporary directory;
2. runs each fitter in a **fresh subprocess** (one thread): the worker loads the inputs, times the
   fit alone (ours: ``fit_ramps_tile`` on the whole frame after a tiny warm-up call that loads the
   numba cache; stcal: ``ramp_fit_data(..., algorithm="OLS_C", weighting="optimal",
   max_cores="none")``) and records its peak resident memory (VmHWM, reset just before the
   inputs are loaded) above its resident memory at that moment, so the figure covers the inputs
   themselves, the outputs and every temporary;
3. compares the rate/rateints products (DQ bit-identical, floats within 1e-5 relative, NaN where
   stcal has NaN) and prints times, memory, ratios and whether the targets are met
   (ours >= 2x faster; our peak <= 3x the input cube, input cube = data + groupdq bytes).

Usage::

    python benchmarks/bench_ramp_fit.py                 # 1x10x2048x2048 and 2x20x2048x2048
    python benchmarks/bench_ramp_fit.py --size 512      # scaled down
    python benchmarks/bench_ramp_fit.py --shapes 1x10x1024x1024 --save-opt
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

import numpy as np

SPEED_TARGET = 2.0
MEMORY_TARGET = 3.0
FIELDS = ("sci", "err", "dq", "var_poisson", "var_rnoise")
STCAL_KEY = {"sci": "slope"}  # stcal's rate dicts name the slope "slope"


def _status_bytes(key: str) -> int:
    """A ``/proc/self/status`` memory figure (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    try:
        return _status_bytes("VmHWM")
    except (OSError, RuntimeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timing(meta):
    from stcal_dask.kernels.ramp_fit import RampTiming

    return RampTiming(meta["frame_time"], meta["group_time"], meta["nframes"], meta["groupgap"], 0)


def worker(which: str, workdir: Path, save_opt: bool) -> None:
    """Run one fitter on the saved inputs; write its products and a JSON report."""
    if which == "ours":
        from stcal_dask.kernels.ramp_fit import RampFitParams, fit_ramps_tile
    else:
        from stcal.ramp_fitting import ramp_fit
        from stcal.ramp_fitting.ramp_fit_class import RampData

        from stcal_dask import dqflags
    meta = json.loads((workdir / "meta.json").read_text())
    timing = _timing(meta)
    if which == "ours":
        # load the numba cache / compile on a tiny problem before the baseline
        tiny = np.zeros((1, 3, 2, 2), np.float32)
        fit_ramps_tile(
            tiny,
            tiny.astype(np.uint8),
            np.zeros((2, 2), np.uint32),
            np.ones((2, 2)),
            np.ones((2, 2)),
            params=RampFitParams(save_opt=save_opt),
            timing=timing,
        )
    import gc

    gc.collect()
    if not _reset_peak():
        print("warning: cannot reset the peak RSS counter; memory figure is an upper bound")
    base = _status_bytes("VmRSS")
    data = np.load(workdir / "data.npy")
    gdq = np.load(workdir / "groupdq.npy")
    pdq = np.load(workdir / "pixeldq.npy")
    gain = np.load(workdir / "gain.npy")
    rn = np.load(workdir / "readnoise.npy")
    t0 = time.perf_counter()
    if which == "ours":
        res = fit_ramps_tile(
            data, gdq, pdq, gain, rn, params=RampFitParams(save_opt=save_opt), timing=timing
        )
        rate, rateints = res.rate._asdict(), res.rateints._asdict()
        out_bytes = sum(a.nbytes for a in (*res.rate, *res.rateints))
        if res.fitopt is not None:
            out_bytes += sum(a.nbytes for a in res.fitopt)
    else:
        rd = RampData()
        rd.set_arrays(data, gdq, pdq, np.zeros(gain.shape, np.float32))
        rd.set_meta(
            "NIRCAM", timing.frame_time, timing.group_time, timing.groupgap, timing.nframes, 0
        )
        rd.set_dqflags(dqflags.as_dict())
        rd.suppress_one_group_ramps = True
        rate, rateints, opt = ramp_fit.ramp_fit_data(
            rd, save_opt, rn, gain, "OLS_C", "optimal", "none"
        )
    elapsed = time.perf_counter() - t0
    peak = _peak_bytes() - base
    for f in FIELDS:
        key = f if which == "ours" else STCAL_KEY.get(f, f)
        np.save(workdir / f"{which}_rate_{f}.npy", rate[key])
        np.save(workdir / f"{which}_rateints_{f}.npy", rateints[key])
    if which == "stcal":
        out_bytes = sum(a.nbytes for a in (*rate.values(), *rateints.values()))
        if opt is not None:
            out_bytes += sum(a.nbytes for a in opt.values())
    report = {"seconds": elapsed, "peak_bytes": peak, "output_bytes": out_bytes}
    (workdir / f"{which}.json").write_text(json.dumps(report))


def _compare(workdir: Path) -> list[str]:
    problems = []
    for prod in ("rate", "rateints"):
        for f in FIELDS:
            a = np.load(workdir / f"ours_{prod}_{f}.npy")
            b = np.load(workdir / f"stcal_{prod}_{f}.npy")
            if a.shape != b.shape or a.dtype != b.dtype:
                problems.append(
                    f"{prod}.{f}: shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
                )
                continue
            if f == "dq":
                n = int(np.count_nonzero(a != b))
            else:
                nan_a, nan_b = np.isnan(a), np.isnan(b)
                ok = ~nan_b
                with np.errstate(invalid="ignore"):
                    diff = np.abs(a[ok].astype(np.float64) - b[ok])
                n = int(np.count_nonzero(nan_a != nan_b)) + int(
                    np.count_nonzero(diff > 1e-5 * np.abs(b[ok].astype(np.float64)))
                )
            if n:
                problems.append(f"{prod}.{f}: {n} mismatches")
    return problems


def run_shape(nints, ngroups, ny, nx, save_opt, seed=0):
    from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

    cfg = SimulationConfig(nints=nints, ngroups=ngroups, ny=ny, nx=nx, seed=seed)
    t0 = time.perf_counter()
    ex = simulate_exposure(cfg)
    gdq = ex.groupdq | (ex.cr_mask.astype(np.uint8) * np.uint8(4))
    with tempfile.TemporaryDirectory(prefix="bench_ramp_fit_") as tmp:
        workdir = Path(tmp)
        np.save(workdir / "data.npy", ex.data)
        np.save(workdir / "groupdq.npy", gdq)
        np.save(workdir / "pixeldq.npy", ex.pixeldq)
        np.save(workdir / "gain.npy", ex.gain)
        np.save(workdir / "readnoise.npy", ex.readnoise)
        meta = {
            "frame_time": cfg.frame_time,
            "group_time": cfg.group_time,
            "nframes": cfg.nframes,
            "groupgap": cfg.groupgap,
        }
        (workdir / "meta.json").write_text(json.dumps(meta))
        input_bytes = ex.data.nbytes + gdq.nbytes
        del ex, gdq
        print(
            f"\n== {nints}x{ngroups}x{ny}x{nx}  (input cube {input_bytes / 2**20:.0f} MiB = "
            f"float32 data + uint8 groupdq; simulated in {time.perf_counter() - t0:.1f} s)"
        )
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            NUMBA_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
        )
        reports = {}
        for which in ("stcal", "ours"):
            cmd = [sys.executable, __file__, "--worker", which, "--workdir", str(workdir)]
            if save_opt:
                cmd.append("--save-opt")
            subprocess.run(cmd, check=True, env=env)
            reports[which] = json.loads((workdir / f"{which}.json").read_text())
        problems = _compare(workdir)
    s, o = reports["stcal"], reports["ours"]
    nramps = nints * ny * nx
    speed = s["seconds"] / o["seconds"]
    mem_ratio = o["peak_bytes"] / input_bytes
    print(
        f"  stcal OLS_C : {s['seconds']:8.2f} s  ({1e6 * s['seconds'] / nramps:.3f} us/ramp)  "
        f"peak +{s['peak_bytes'] / 2**20:.0f} MiB ({s['peak_bytes'] / input_bytes:.2f}x input)"
    )
    print(
        f"  ours        : {o['seconds']:8.2f} s  ({1e6 * o['seconds'] / nramps:.3f} us/ramp)  "
        f"peak +{o['peak_bytes'] / 2**20:.0f} MiB ({mem_ratio:.2f}x input)"
    )
    print(
        f"  speed-up    : {speed:.2f}x  (target >= {SPEED_TARGET}x: "
        f"{'MET' if speed >= SPEED_TARGET else 'NOT MET'})"
    )
    print(
        f"  memory      : {mem_ratio:.2f}x input  (target <= {MEMORY_TARGET}x: "
        f"{'MET' if mem_ratio <= MEMORY_TARGET else 'NOT MET'})"
    )
    print(
        f"  (outputs    : {o['output_bytes'] / 2**20:.0f} MiB = "
        f"{o['output_bytes'] / input_bytes:.2f}x input; the memory target is for save_opt=False)"
    )
    print(
        "  agreement   : "
        + (
            "rate and rateints match stcal (DQ exact, floats 1e-5)"
            if not problems
            else "MISMATCH: " + "; ".join(problems)
        )
    )
    return speed >= SPEED_TARGET and mem_ratio <= MEMORY_TARGET and not problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--shapes",
        nargs="*",
        default=None,
        help="exposure shapes NINTSxNGROUPSxNYxNX (default: 1x10x2048x2048 2x20x2048x2048)",
    )
    ap.add_argument("--size", type=int, default=2048, help="NY = NX of the default shapes")
    ap.add_argument("--save-opt", action="store_true", help="also produce the fitopt product")
    ap.add_argument("--worker", choices=("ours", "stcal"), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.workdir, args.save_opt)
        return 0
    shapes = args.shapes or [f"1x10x{args.size}x{args.size}", f"2x20x{args.size}x{args.size}"]
    print(
        f"OLS ramp fitting benchmark: stcal_dask kernel vs stcal 1.20.0 C fitter, 1 core each, "
        f"save_opt={args.save_opt}, cpus on machine={os.cpu_count()}"
    )
    ok = True
    for shp in shapes:
        nints, ngroups, ny, nx = (int(v) for v in shp.lower().split("x"))
        ok &= run_shape(nints, ngroups, ny, nx, args.save_opt)
    print("\nALL TARGETS MET" if ok else "\nSOME TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
