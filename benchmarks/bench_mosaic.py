"""Mosaic benchmark: N dithered rate images drizzled onto their mosaic, ours vs stcal 1.20.0.

Jobs, each in its own process tree, on the same inputs and the same output WCS:

* **stcal**: one process reads the N ``_rate.fits`` (stdatamodels), runs stcal 1.20.0's
  ``Resample`` (``add_model`` for each, ``finalize``) and saves the ``_i2d.fits`` (ImageModel);
* **ours**: ``stcal-dask mosaic INPUTS --wcs W -o X_i2d.zarr --no-quicklook`` on its default
  LocalCluster (one task per output tile);
* **big** (scale): ``stcal-dask mosaic`` at a finer output pixel scale with ``--n-workers 2
  --memory-limit M``, so that the output arrays (sci, err, wht, con, var_rnoise, var_poisson)
  are at least twice the workers' total memory limit; stcal is not run (its output arrays alone
  would not fit that budget).

Peak memory is the peak of the summed RSS of the whole process tree (command, children, dask
workers and nannies), polled every 50 ms with psutil; per-process peaks are reported for the
workers. The peak of the summed PSS (proportional set size: each shared page counted once over
the processes sharing it) is reported too: workers forked from the command share its libraries'
pages, which the RSS sum counts once per process. The two mosaics are compared (wht, con and
sci identical).

Targets (issue 14): ours >= 2x faster than stcal's Resample, <= 1/4 of its peak memory, and the
big mosaic completes with per-worker peaks within the limit.

Usage::

    python benchmarks/bench_mosaic.py                            # 16 x 2048x2048
    python benchmarks/bench_mosaic.py --size 1024 --n 16 --workdir /tmp/bm
    python benchmarks/bench_mosaic.py --size 1024 --skip-stcal --big-shape 12000 12000 \
        --big-memory 800MB
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psutil

STCAL_SCRIPT = textwrap.dedent(
    """
    import sys, logging, warnings
    import asdf
    import numpy as np
    from stdatamodels.jwst.datamodels import ImageModel
    from stcal.resample import Resample
    logging.disable(logging.INFO)
    warnings.simplefilter("ignore")
    wcs_file, out, *inputs = sys.argv[1:]
    with asdf.open(wcs_file, lazy_load=False, memmap=False) as af:
        out_wcs = af.tree["wcs"]
        pscale = float(af.tree["pixel_scale"]) * 3600.0
    r = Resample(output_wcs={"wcs": out_wcs, "pixel_scale": pscale},
                 n_input_models=len(inputs), fillval="NAN", good_bits=~(1 | 512),
                 compute_err="from_var")
    for k, p in enumerate(inputs):
        with ImageModel(p) as m:
            r.add_model({
                "data": m.data, "dq": m.dq, "var_rnoise": m.var_rnoise,
                "var_poisson": m.var_poisson, "var_flat": None, "err": m.err,
                "filename": p, "group_id": str(k), "wcs": m.meta.wcs,
                "exposure_time": m.meta.exposure.exposure_time, "start_time": 0.0,
                "end_time": 1.0, "duration": 1.0, "measurement_time": None,
                "pixelarea_steradians": m.meta.photometry.pixelarea_steradians,
                "level": None, "subtracted": True,
            })
    r.finalize()
    o = r.output_model
    model = ImageModel(data=o["data"], wht=o["wht"], con=o["con"], err=o["err"],
                       var_rnoise=o["var_rnoise"], var_poisson=o["var_poisson"])
    model.meta.wcs = out_wcs
    model.save(out)
    """
)


def run_tree(cmd: list[str], *, cwd: Path) -> tuple[float, float, dict, str, float, float]:
    """Run ``cmd``; (wall s, peak summed RSS of its tree in MiB, {pid: ("command: ..." or
    "child: ...", peak RSS MiB, CPU s)},
    out, peak summed PSS of its tree in MiB, CPU seconds of its tree (user + system, each
    process's last polled value: a process living less than a poll is missed))."""
    peak = 0
    peak_pss = 0
    per: dict[int, list] = {}
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(proc.stdout.read()), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            procs = [proc]
        total = total_pss = 0
        for p in procs:
            try:
                full = p.memory_full_info()
                cpu = p.cpu_times()
                if p.pid not in per:
                    role = "command" if p.pid == proc.pid else "child"
                    per[p.pid] = [f"{role}: " + " ".join(p.cmdline()[:3])[:60], 0, 0.0]
                per[p.pid][2] = cpu.user + cpu.system
            except psutil.Error:
                continue
            total += full.rss
            total_pss += getattr(full, "pss", full.rss)
            per[p.pid][1] = max(per[p.pid][1], full.rss)
        peak = max(peak, total)
        peak_pss = max(peak_pss, total_pss)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    reader.join()
    out = "".join(chunks)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return (wall, peak / 2**20, {k: (v[0], v[1] / 2**20, v[2]) for k, v in per.items()}, out,
            peak_pss / 2**20, sum(v[2] for v in per.values()))


def make_inputs(work: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n dithered rate FITS files (size x size, 20 % overlap) with sky, noise and stars."""
    from stcal_dask.mosaic.wcs import write_rate_fits_with_wcs
    from stcal_dask.sim.wcs import NIRCAM_LW_SCALE, dither_pattern, imaging_wcs

    rng = np.random.default_rng(seed)
    tile = 0.8 * size * NIRCAM_LW_SCALE
    area = math.radians(NIRCAM_LW_SCALE / 3600.0) ** 2
    paths = []
    yy, xx = np.mgrid[-3:4, -3:4]
    psf = np.exp(-(xx**2 + yy**2) / 2.0).astype(np.float32)
    for k, p in enumerate(dither_pattern(n, tile=tile, dither=2.0, seed=seed)):
        e = imaging_wcs(p.ra, p.dec, p.roll, shape=(size, size))
        sci = rng.normal(1.0, 0.05, (size, size)).astype(np.float32)
        for y, x in rng.integers(4, size - 4, (200, 2)):
            sci[y - 3 : y + 4, x - 3 : x + 4] += rng.uniform(5, 50) * psf
        dq = np.zeros((size, size), np.uint32)
        dq[rng.random((size, size)) < 0.01] = 1
        vr = np.full((size, size), 0.0025, np.float32)
        vp = np.abs(sci) * 1e-3
        path = work / f"in{k:02d}_rate.fits"
        write_rate_fits_with_wcs(path, sci, e.wcs, e.wcsinfo, err=np.sqrt(vr + vp), dq=dq,
                                 var_poisson=vp, var_rnoise=vr, exposure_time=100.0,
                                 pixelarea_steradians=area, units="DN/s")
        paths.append(path)
    return paths


def compare(ours: Path, stcal: Path) -> str:
    import xarray as xr
    from stdatamodels.jwst.datamodels import ImageModel

    a = xr.open_zarr(ours)
    with ImageModel(str(stcal)) as m:
        wht_same = np.array_equal(a["wht"].values, m.wht)
        con_same = np.array_equal(a["con"].values, m.con)
        s1, s2 = a["sci"].values, m.data
        sci_same = np.array_equal(s1, s2, equal_nan=True)
        diff = ~((s1 == s2) | (np.isnan(s1) & np.isnan(s2))) | (a["wht"].values != m.wht)
    inner = diff[2:-2, 2:-2]
    return (f"wht identical: {wht_same}; con identical: {con_same}; sci identical: {sci_same} "
            f"({int(diff.sum())} pixels differ in sci or wht, {int(inner.sum())} of them more "
            "than 2 pixels inside the output's outer edge)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="number of exposures (default 16)")
    ap.add_argument("--size", type=int, default=2048, help="exposure side in pixels")
    ap.add_argument("--workdir", default=None, help="where inputs/outputs go (default: temp)")
    ap.add_argument("--big-ratio", type=float, default=0.5,
                    help="pixel_scale_ratio of the big mosaic (default 0.5)")
    ap.add_argument("--big-memory", default="600MB",
                    help="--memory-limit per worker of the big run (2 workers)")
    ap.add_argument("--big-shape", type=int, nargs=2, default=None, metavar=("NY", "NX"),
                    help="force the big mosaic's output shape (--resample.output_shape) instead "
                    "of a finer pixel scale: a large output the inputs only partly cover")
    ap.add_argument("--skip-stcal", action="store_true")
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-ours", action="store_true",
                    help="skip ours at the default scale (with --skip-stcal: the big run only)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_mosaic_"))
    work.mkdir(parents=True, exist_ok=True)
    exe = str(Path(sys.executable).with_name("stcal-dask"))
    t = time.perf_counter()
    existing = sorted(work.glob("in*_rate.fits"))
    inputs = existing if len(existing) == args.n else make_inputs(work, args.n, args.size)
    print(f"inputs: {args.n} x {args.size}x{args.size} rate FITS in "
          f"{time.perf_counter() - t:.1f} s ({work})", flush=True)

    wcs_file = work / "mosaic_wcs.asdf"
    if wcs_file.exists():
        wcs_file.unlink()
    # what 'stcal-dask mosaic-wcs' writes (in this process: no cluster, no kernels needed)
    from stcal_dask.mosaic.wcs import build_mosaic_wcs, write_mosaic_wcs

    write_mosaic_wcs(build_mosaic_wcs(list(map(str, inputs))), wcs_file)
    results = {}
    if not args.skip_stcal:
        script = work / "stcal_resample.py"
        script.write_text(STCAL_SCRIPT)
        out = work / "stcal_i2d.fits"
        if out.exists():
            out.unlink()
        results["stcal"] = run_tree([sys.executable, str(script), str(wcs_file), str(out),
                                     *map(str, inputs)], cwd=work)
    ours = work / "ours_i2d.zarr"
    if not args.skip_ours:
        shutil.rmtree(ours, ignore_errors=True)
        results["ours"] = run_tree([exe, "mosaic", *map(str, inputs), "--wcs", str(wcs_file),
                                    "-o", str(ours), "--no-quicklook"], cwd=work)
        print(results["ours"][3].strip().splitlines()[-2], flush=True)
    for name, (wall, peak, per, _, pss, cpu) in results.items():
        print(f"{name:6s} wall {wall:7.1f} s   CPU {cpu:7.1f} s   peak RSS (process tree) "
              f"{peak:8.0f} MiB   peak PSS {pss:8.0f} MiB; per process peak RSS MiB / CPU s: "
              + ", ".join(f"{v[1]:.0f}/{v[2]:.1f}" for v in sorted(per.values(),
                                                               key=lambda v: -v[1])))
    if "stcal" in results and "ours" in results:
        ws, ps, _, _, qs, cs = results["stcal"]
        wo, po, _, _, qo, co = results["ours"]
        print(f"ratios: ours is {ws / wo:.2f}x faster, uses {po / ps:.2f} of stcal's peak RSS "
              f"({qo / qs:.2f} of its peak PSS), {co / cs:.2f} of its CPU seconds; load "
              f"average now {os.getloadavg()[0]:.1f}")
        print(compare(ours, work / "stcal_i2d.fits"))
    if not args.skip_big:
        big = work / "big_i2d.zarr"
        shutil.rmtree(big, ignore_errors=True)
        shape_opts = (["--resample.output_shape", ",".join(map(str, args.big_shape))]
                      if args.big_shape
                      else ["--resample.pixel_scale_ratio", str(args.big_ratio)])
        wall, peak, per, out, _, _ = run_tree(
            [exe, "mosaic", *map(str, inputs), "-o", str(big), "--no-quicklook", *shape_opts,
             "--n-workers", "2", "--threads-per-worker", "1", "--memory-limit",
             args.big_memory], cwd=work)
        import xarray as xr

        ds = xr.open_zarr(big)
        nbytes = sum(ds[v].nbytes for v in ds.data_vars)
        from dask.utils import parse_bytes

        limit = 2 * parse_bytes(args.big_memory)
        # the workers are the command's child processes (forked by its local cluster)
        workers = sorted((v for v in per.values() if v[0].startswith("child")),
                         key=lambda v: -v[1])
        command = [v for v in per.values() if v[0].startswith("command")]
        print(f"big: {ds.sizes['y']} x {ds.sizes['x']} output, arrays {nbytes / 2**30:.2f} GiB"
              f" = {nbytes / limit:.2f} x the workers' total limit ({limit / 2**30:.2f} GiB); "
              f"wall {wall:.1f} s, tree peak {peak:.0f} MiB; worker-process peaks "
              + ", ".join(f"{v[1]:.0f} MiB ({v[2]:.0f} CPU s)" for v in workers)
              + f"; the command's own peak {command[0][1]:.0f} MiB; load average now "
              f"{os.getloadavg()[0]:.1f}")
        print(out.strip().splitlines()[-2])
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
