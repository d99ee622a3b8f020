"""The command line's structure: one module per command, all registered the same way, and a
parser that loads no dask, xarray, astropy or numba."""

from __future__ import annotations

import argparse
import subprocess
import sys

from stcal_dask.cli import build_parser
from stcal_dask.cli.commands import COMMANDS


def test_every_command_module_registers_one_command_running_its_own_run():
    names = []
    for module in COMMANDS:
        parser = argparse.ArgumentParser(prog="stcal-dask")
        sub = parser.add_subparsers(dest="command")
        p = module.add_parser(sub)
        (name,) = sub.choices
        names.append(name)
        assert p.get_default("func") is module.run, module.__name__
        assert module.__name__.rsplit(".", 1)[1] == name.replace("-", "_")
        assert "examples:" in p.epilog and "stcal-dask: error:" in p.epilog
    top = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(top.choices) == names


def test_building_the_parser_loads_no_scientific_library():
    """Only numpy (the parameter dataclasses' validation) is loaded to build the parser."""
    code = ("import sys; from stcal_dask.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('dask', 'distributed', 'xarray', 'astropy', "
            "'zarr', 'gwcs', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_python_dash_m_runs_the_command():
    out = subprocess.run([sys.executable, "-m", "stcal_dask.cli", "--version"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("stcal-dask ")
    bad = subprocess.run([sys.executable, "-m", "stcal_dask.cli", "nonsense"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("stcal-dask: error: ") and bad.stderr.count("\n") == 1
