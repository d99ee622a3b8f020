"""A/B run time of the jump and ramp-fit kernels: this checkout against another one.

For a change to the kernels that must not slow them down (e.g. how they are compiled): both
checkouts run the same seeded tile (default 1 x 10 x 512 x 512, the JWST case of 10 groups, and
optionally more shapes), each in its own fresh subprocess with ``PYTHONPATH`` pointing at it,
alternately (A B A B ...), so that the load of a shared machine falls on both alike. Each child
loads the kernels (from the compiled cache: a first call on a tiny tile, not timed), then times
``detect_jumps`` and ``fit_ramps_tile`` (one core; by default on the jump step's output, the
case of a pipeline run, where most pixels carry JUMP_DET: ``--fit-input raw`` fits the simulated
group DQ instead) ``--calls`` times each and keeps its best, in
CPU time of the calling thread (``time.thread_time``: on a shared, busy machine the wall time
mostly measures the others' load) and in wall time; the parent prints the median over the rounds
of each side's best, the ratio (this / other; also of the best rounds), the load average, and
checks that both sides' outputs (group and pixel DQ, primary counts, every ramp-fit array) are
identical bit for bit.

    git worktree add --detach /tmp/ref main
    python benchmarks/bench_kernels_ab.py --ref /tmp/ref [--rounds 5] [--shape 1x10x512x512 ...]
                                          [--cr-rate 0.2] [--fit-input raw]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]


def child(tile: Path, out: Path, calls: int, fit_input: str = "jump") -> dict:
    """Time the kernels on ``tile`` (an .npz) in this process; write their outputs to ``out``.
    ``fit_input``: the ramp fit's group and pixel DQ, "jump" (the jump step's) or "raw" (the
    tile's own)."""
    import numpy as np

    from stcal_dask.kernels import jump as jk
    from stcal_dask.kernels import ramp_fit as rk

    z = np.load(tile)
    data, gdq, pdq, gain, rn = (z[k] for k in ("data", "groupdq", "pixeldq", "gain", "readnoise"))
    timing = rk.RampTiming(10.73677, 10.73677, 1)

    def fit_dq(res, raw_gdq, raw_pdq):
        return (res.groupdq, res.pixeldq) if fit_input == "jump" else (raw_gdq, raw_pdq)

    # load (or compile) every kernel and lane function this tile uses, on a corner of it
    corner = (slice(None), slice(None), slice(0, 4), slice(0, 4))
    r0 = jk.detect_jumps(data[corner], gdq[corner], pdq[:4, :4], gain[:4, :4], rn[:4, :4],
                         nframes=1, group_time=10.73677)
    fg, fp = fit_dq(r0, gdq[corner], pdq[:4, :4])
    rk.fit_ramps_tile(data[corner], fg, fp, gain[:4, :4], rn[:4, :4],
                      params=rk.RampFitParams(), timing=timing)
    tj, tr, wj, wr = [], [], [], []
    for _ in range(calls):
        w0, t0 = time.perf_counter(), time.thread_time()
        res = jk.detect_jumps(data, gdq, pdq, gain, rn, nframes=1, group_time=10.73677)
        fg, fp = fit_dq(res, gdq, pdq)
        w1, t1 = time.perf_counter(), time.thread_time()
        fit = rk.fit_ramps_tile(data, fg, fp, gain, rn, params=rk.RampFitParams(), timing=timing)
        w2, t2 = time.perf_counter(), time.thread_time()
        tj.append(t1 - t0)
        tr.append(t2 - t1)
        wj.append(w1 - w0)
        wr.append(w2 - w1)
    arrays = {"groupdq": res.groupdq, "pixeldq": res.pixeldq,
              "primary": np.asarray(res.primary_count)}
    for part in ("rate", "rateints"):
        for name, value in getattr(fit, part)._asdict().items():
            arrays[f"{part}.{name}"] = value
    np.savez(out, **arrays)
    return {"jump": min(tj), "ramp": min(tr), "jump wall": min(wj), "ramp wall": min(wr)}


def _simulate(shape: str, seed: int, path: Path, cr_rate: float | None = None) -> None:
    import numpy as np

    from stcal_dask.sim.ramp import SimulationConfig, simulate_exposure

    nints, ngroups, ny, nx = (int(v) for v in shape.split("x"))
    extra = {} if cr_rate is None else {"cr_rate": cr_rate}
    exp = simulate_exposure(SimulationConfig(nints=nints, ngroups=ngroups, ny=ny, nx=nx,
                                             seed=seed, **extra))
    np.savez(path, data=exp.data, groupdq=exp.groupdq, pixeldq=exp.pixeldq, gain=exp.gain,
             readnoise=exp.readnoise)


def _same(a: Path, b: Path) -> list[str]:
    import numpy as np

    za, zb = np.load(a), np.load(b)
    bad = [k for k in za.files if k not in zb.files or
           not np.array_equal(za[k], zb[k], equal_nan=True) or za[k].dtype != zb[k].dtype]
    return bad + [k for k in zb.files if k not in za.files]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, help="the other checkout (repository root)")
    ap.add_argument("--shape", action="append", help="NINTSxNGROUPSxNYxNX (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3, help="timed calls per child (best kept)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cr-rate", type=float, default=None,
                    help="cosmic-ray rate of the simulated tile (default: the simulator's; "
                         "bench_batch's heavy exposures use 0.2)")
    ap.add_argument("--fit-input", choices=("jump", "raw"), default="jump",
                    help="group/pixel DQ the ramp fit is timed on: the jump step's output "
                         "(default; most pixels then carry JUMP_DET) or the simulated tile's")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]), args.calls,
                               args.fit_input)))
        return 0
    ref = Path(args.ref).resolve()
    sides = {"this": REPO, "ref": ref}
    ok = True
    with tempfile.TemporaryDirectory(prefix="stcal-dask-ab-") as tmp:
        for shape in args.shape or ["1x10x512x512"]:
            tile = Path(tmp) / f"{shape}.npz"
            _simulate(shape, args.seed, tile, args.cr_rate)
            kinds = ("jump", "ramp", "jump wall", "ramp wall")
            times = {name: {k: [] for k in kinds} for name in sides}
            load = []
            for r in range(args.rounds):
                order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                for name in order:
                    out = Path(tmp) / f"{name}.npz"
                    env = {**os.environ, "PYTHONPATH": str(sides[name])}
                    got = subprocess.run(
                        [sys.executable, str(Path(__file__).resolve()), "--ref", str(ref),
                         "--calls", str(args.calls), "--fit-input", args.fit_input,
                         "--child", str(tile), str(out)],
                        env=env, capture_output=True, text=True, cwd=str(sides[name]))
                    if got.returncode != 0:
                        sys.exit(f"{name} failed:\n{got.stderr[-3000:]}")
                    t = json.loads(got.stdout.strip().splitlines()[-1])
                    for k in kinds:
                        times[name][k].append(t[k])
                load.append(os.getloadavg()[0])
            bad = _same(Path(tmp) / "this.npz", Path(tmp) / "ref.npz")
            ok = ok and not bad
            rate = "" if args.cr_rate is None else f", cr-rate {args.cr_rate:g}"
            rate += f", ramp fit on the {args.fit_input} group DQ"
            print(f"{shape}{rate}: {args.rounds} rounds x {args.calls} calls, load average "
                  f"{min(load):.1f}-{max(load):.1f} on {os.cpu_count()} cores; outputs "
                  f"{'identical' if not bad else 'DIFFER: ' + ', '.join(bad)}")
            for kernel in kinds:
                a = statistics.median(times["this"][kernel])
                b = statistics.median(times["ref"][kernel])
                label = kernel if "wall" in kernel else f"{kernel} CPU"
                amin, bmin = min(times["this"][kernel]), min(times["ref"][kernel])
                print(f"  {label:9s} this {a * 1e3:8.1f} ms  ref {b * 1e3:8.1f} ms  "
                      f"this/ref {a / b:5.3f} (best rounds: {amin / bmin:5.3f})  (rounds: this "
                      f"{' '.join(f'{v * 1e3:.0f}' for v in times['this'][kernel])}; ref "
                      f"{' '.join(f'{v * 1e3:.0f}' for v in times['ref'][kernel])})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
