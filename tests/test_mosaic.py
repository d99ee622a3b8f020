"""The mosaic-WCS workflow on a real distributed LocalCluster, and the ``mosaic-wcs`` CLI path."""

from __future__ import annotations

import argparse
from pathlib import Path

import asdf
import numpy as np
import pytest
from stcal.alignment import util as stcal_util

from stcal_dask.cli.commands import mosaic_wcs as mosaic_cli
from stcal_dask.engine.datamodel import rate_dataset
from stcal_dask.errors import UserInputError
from stcal_dask.io.zarr_store import write_dataset_atomic
from stcal_dask.mosaic import alignment as al
from stcal_dask.mosaic import wcs as mosaic
from stcal_dask.sim.wcs import dither_pattern, imaging_wcs

pytestmark = pytest.mark.cluster

SHAPE = (24, 32)  # (ny, nx) of every small exposure


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    c = Client(cluster, set_as_default=False)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def exposures():
    pts = dither_pattern(5, center=(53.16, -27.79), roll=120.0, tile=1.5, dither=0.2, roll_step=2)
    return [imaging_wcs(p.ra, p.dec, p.roll, shape=SHAPE) for p in pts]


def _rate_arrays(seed):
    rng = np.random.default_rng(seed)
    sci = rng.normal(1.0, 0.1, SHAPE).astype(np.float32)
    return sci, np.full(SHAPE, 0.1, np.float32), np.zeros(SHAPE, np.uint32)


def _zarr_rate(path, exp, seed, with_wcs=True, with_info=True):
    sci, err, dq = _rate_arrays(seed)
    ds = rate_dataset(sci, err, dq, err**2, err**2)
    if with_wcs:
        attrs = mosaic.wcs_attrs(exp.wcs, exp.wcsinfo)
        if not with_info:
            attrs.pop(mosaic.WCSINFO_ATTR)
        ds = ds.assign_attrs(**attrs)
    write_dataset_atomic(ds, path)
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, exposures):
    """exposure 0, 1, 2 as zarr stores; 3 as a JWST _rate.fits; 4 as a sidecar ASDF."""
    d = tmp_path_factory.mktemp("mosaic_inputs")
    paths = [_zarr_rate(d / f"exp{i}_rate.zarr", e, i) for i, e in enumerate(exposures[:3])]
    sci, err, dq = _rate_arrays(3)
    e3 = exposures[3]
    paths.append(
        str(
            mosaic.write_rate_fits_with_wcs(
                d / "exp3_rate.fits", sci, e3.wcs, e3.wcsinfo, err=err, dq=dq
            )
        )
    )
    e4 = exposures[4]
    w4 = e4.wcs
    side = d / "exp4_wcs.asdf"
    asdf.AsdfFile({"wcs": w4, "wcsinfo": e4.wcsinfo, "shape": list(SHAPE)}).write_to(side)
    paths.append(str(side))
    return paths


def _expected(exposures, **kw):
    fps = [e.wcs.footprint() for e in exposures]
    return al.wcs_from_sregions(fps, *exposures[0], **kw), fps


def _same_wcs(a, b, tol=1e-6):
    assert a.array_shape == b.array_shape
    np.testing.assert_allclose(
        a.bounding_box.bounding_box(order="F"), b.bounding_box.bounding_box(order="F"), atol=tol
    )
    np.testing.assert_allclose(
        a.forward_transform.crpix.value, b.forward_transform.crpix.value, atol=tol
    )
    np.testing.assert_allclose(
        a.forward_transform.crval.value, b.forward_transform.crval.value, atol=1e-10
    )
    np.testing.assert_allclose(
        a.forward_transform.cdelt.value, b.forward_transform.cdelt.value, rtol=1e-12
    )


def test_read_each_input_kind(inputs, exposures):
    from stdatamodels.jwst.datamodels import ImageModel

    for path, exp in zip(inputs, exposures, strict=True):
        got = mosaic.read_exposure_wcs(path)
        assert got.shape == SHAPE
        assert got.wcsinfo["roll_ref"] == exp.wcsinfo["roll_ref"]
        np.testing.assert_allclose(got.wcs(3.0, 7.0), exp.wcs(3.0, 7.0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(al.footprint(got.wcs), exp.wcs.footprint(), atol=1e-12)
    # the FITS file is what JWST's datamodels read
    with ImageModel(inputs[3]) as model:
        np.testing.assert_allclose(model.meta.wcs(3.0, 7.0), exposures[3].wcs(3.0, 7.0), atol=1e-12)
        assert model.meta.wcsinfo.vparity == -1
        assert model.data.shape == SHAPE


def test_footprints_one_task_per_exposure_on_cluster(client, inputs, exposures):
    from distributed import get_task_stream

    with get_task_stream(client) as ts:
        records = mosaic.compute_footprints(inputs, client=client)
    keys = [t["key"] for t in ts.data]
    names = [k if isinstance(k, str) else k[0] for k in keys]
    assert sum(str(n).startswith("mosaic-footprint") for n in names) == len(inputs)
    assert [r.path for r in records] == inputs
    assert records[0].wcs is not None and all(r.wcs is None for r in records[1:])
    for r, e in zip(records, exposures, strict=True):
        np.testing.assert_allclose(r.footprint, e.wcs.footprint(), rtol=0, atol=1e-12)
    # the same without a cluster (dask.delayed on threads)
    local = mosaic.compute_footprints(inputs)
    for a, b in zip(records, local, strict=True):
        np.testing.assert_array_equal(a.footprint, b.footprint)


@pytest.mark.parametrize("options", [{}, {"rotation": 0.0, "pscale": 1e-5}, {"align_edges": True}])
def test_build_mosaic_wcs_matches_alignment(client, inputs, exposures, options):
    result = mosaic.build_mosaic_wcs(inputs, client=client, **options)
    expected, fps = _expected(exposures, **options)
    _same_wcs(result.wcs, expected)
    if not options:  # and stcal 1.20.0 itself
        _same_wcs(result.wcs, stcal_util.wcs_from_sregions(fps, *exposures[0]))


def test_write_mosaic_wcs_atomic(client, inputs, exposures, tmp_path):
    result = mosaic.build_mosaic_wcs(inputs, client=client, align_edges=True)
    out = tmp_path / "mosaic_wcs.asdf"
    assert mosaic.write_mosaic_wcs(result, out) == out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic_wcs.asdf"]  # no partial left
    with asdf.open(out) as af:
        t = af.tree
        assert t["shape"] == list(result.wcs.array_shape)
        np.testing.assert_allclose(
            t["bounding_box"], result.wcs.bounding_box.bounding_box(order="F")
        )
        assert t["inputs"] == inputs
        assert np.asarray(t["input_footprints"]).shape == (len(inputs), 4, 2)
        assert t["s_region"].startswith("POLYGON ICRS  ")
        np.testing.assert_allclose(t["crpix"], result.wcs.forward_transform.crpix.value)
        w = t["wcs"]
        np.testing.assert_allclose(w(5.0, 6.0), result.wcs(5.0, 6.0), rtol=0, atol=1e-12)
        assert w.pixel_shape == result.wcs.pixel_shape
    with pytest.raises(UserInputError, match="already exists"):
        mosaic.write_mosaic_wcs(result, out)
    mosaic.write_mosaic_wcs(result.wcs, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mosaic_wcs.asdf"]
    # every input pixel centre maps inside the mosaic (align_edges: nothing lost)
    ny, nx = result.wcs.array_shape
    for e in exposures:
        pm = al.calc_pixmap(e.wcs, mosaic.read_mosaic_wcs(out))
        assert pm[..., 0].min() > -0.5 and pm[..., 0].max() < nx - 0.5
        assert pm[..., 1].min() > -0.5 and pm[..., 1].max() < ny - 0.5


def _parse(argv):
    parser = argparse.ArgumentParser(prog="stcal-dask")
    sub = parser.add_subparsers(dest="command", required=True)
    mosaic_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_cli_run(client, inputs, exposures, tmp_path, capsys):
    out = tmp_path / "cli_wcs.asdf"
    args = _parse(
        [
            "mosaic-wcs",
            *inputs,
            "--output",
            str(out),
            "--pscale",
            "0.05",
            "--rotation",
            "0",
            "--scheduler",
            client.scheduler.address,
        ]
    )
    assert args.func is mosaic_cli.run
    assert mosaic_cli.run(args) == 0
    assert "5 exposures ->" in capsys.readouterr().out
    w = mosaic.read_mosaic_wcs(out)
    expected, _ = _expected(exposures, pscale=0.05 / 3600, rotation=0.0)
    _same_wcs(w, expected)
    # --overwrite, --crval, --shape
    args = _parse(
        [
            "mosaic-wcs",
            *inputs,
            "-o",
            str(out),
            "--overwrite",
            "--crval",
            "53.16",
            "-27.79",
            "--shape",
            "50",
            "60",
            "--scheduler",
            client.scheduler.address,
        ]
    )
    assert mosaic_cli.run(args) == 0
    w = mosaic.read_mosaic_wcs(out)
    assert w.array_shape == (50, 60)
    np.testing.assert_allclose(w.forward_transform.crval.value, (53.16, -27.79))


def test_cli_errors(client, inputs, exposures, tmp_path):
    sched = ["--scheduler", client.scheduler.address]
    out = str(tmp_path / "x.asdf")
    Path(out).write_text("occupied")
    cases = [
        (["mosaic-wcs", *inputs, "-o", out, *sched], "already exists"),
        (["mosaic-wcs", str(tmp_path / "missing.fits"), "-o", out + "2", *sched], "does not exist"),
        (["mosaic-wcs", *inputs, "-o", out + "3", "--pscale", "-1", *sched], "pscale"),
        (["mosaic-wcs", *inputs, "-o", out + "4", "--pscale-ratio", "100", *sched], "too small"),
    ]
    no_wcs = _zarr_rate(tmp_path / "nowcs.zarr", exposures[0], 9, with_wcs=False)
    cases.append((["mosaic-wcs", inputs[0], no_wcs, "-o", out + "5", *sched], "no 'wcs_asdf'"))
    no_info = _zarr_rate(tmp_path / "noinfo.zarr", exposures[0], 9, with_info=False)
    cases.append((["mosaic-wcs", no_info, inputs[1], "-o", out + "6", *sched], "no wcsinfo"))
    bad_info = dict(exposures[0].wcsinfo, vparity=0)
    bad = tmp_path / "badinfo.asdf"
    asdf.AsdfFile({"wcs": exposures[0].wcs, "wcsinfo": bad_info}).write_to(bad)
    cases.append((["mosaic-wcs", str(bad), "-o", out + "7", *sched], "vparity"))
    from stcal_dask.sim.wcs import simple_imaging_wcs

    fk5 = tmp_path / "fk5.asdf"
    asdf.AsdfFile({"wcs": simple_imaging_wcs((53.16, -27.79), (10, 10), (1e-5, 1e-5))}).write_to(
        fk5
    )
    cases.append((["mosaic-wcs", inputs[0], str(fk5), "-o", out + "8", *sched], "frame FK5"))
    for argv, match in cases:
        with pytest.raises(UserInputError, match=match) as exc:
            mosaic_cli.run(_parse(argv))
        assert "\n" not in str(exc.value)
    assert Path(out).read_text() == "occupied"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial outputs


def test_recipe_script(client, tmp_path, capsys):
    """workflows/mosaic/run_mosaic.py end to end (truth rates, zarr) on the module's cluster."""
    import importlib.util

    script = Path(__file__).parents[1] / "workflows" / "mosaic" / "run_mosaic.py"
    spec = importlib.util.spec_from_file_location("run_mosaic", script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    argv = [
        "--n-exposures",
        "3",
        "--ny",
        "32",
        "--nx",
        "40",
        "--rates",
        "truth",
        "--outdir",
        str(tmp_path),
        "--scheduler",
        client.scheduler.address,
    ]
    assert recipe.main(argv) == 0
    assert "mosaic WCS:" in capsys.readouterr().out
    stores = sorted(str(p) for p in tmp_path.glob("exp*_rate.zarr"))
    assert len(stores) == 3
    w = mosaic.read_mosaic_wcs(tmp_path / "mosaic_wcs.asdf")
    exps = [mosaic.read_exposure_wcs(s) for s in stores]
    assert all(e.shape == (32, 40) for e in exps)
    expected = al.wcs_from_sregions([e.wcs.footprint() for e in exps], exps[0].wcs, exps[0].wcsinfo)
    _same_wcs(w, expected)


def test_attach_wcs_keeps_consolidated_metadata_current(tmp_path, recwarn):
    """Our stores carry consolidated metadata (xarray.open_zarr reads it first and warns without
    it); attaching a WCS afterwards re-consolidates, so open_zarr sees the new attributes."""
    import xarray as xr

    exp = imaging_wcs(53.16, -27.79, 120.0, shape=SHAPE)
    path = _zarr_rate(tmp_path / "x_rate.zarr", exp, 1, with_wcs=False)
    assert mosaic.WCS_ATTR not in xr.open_zarr(path).attrs
    mosaic.attach_wcs(path, exp.wcs, exp.wcsinfo)
    attrs = xr.open_zarr(path).attrs
    assert mosaic.WCS_ATTR in attrs and mosaic.WCSINFO_ATTR in attrs
    assert not [w for w in recwarn.list if "onsolidated" in str(w.message)]
