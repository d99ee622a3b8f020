"""Every step-parameter dataclass documents each field in its metadata, and the command line's
help shows exactly that text."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

from stcal_dask.cli import build_parser, field_help, main

PACKAGE = Path(__file__).resolve().parents[1] / "stcal_dask"


def _params_classes():
    """(module, class name) of every dataclass named ``*Params`` in the package's source."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Params"):
                rel = path.relative_to(PACKAGE.parent).with_suffix("")
                parts = [p for p in rel.parts if p != "__init__"]
                found.append((".".join(parts), node.name))
    return found


PARAMS = _params_classes()


def test_the_step_parameter_classes_are_found():
    names = {name for _, name in PARAMS}
    assert {"JumpParams", "RampFitParams", "ResampleParams"} <= names


@pytest.mark.parametrize(("module", "name"), PARAMS, ids=[n for _, n in PARAMS])
def test_every_field_has_one_line_help_metadata(module, name):
    cls = getattr(importlib.import_module(module), name)
    assert dataclasses.is_dataclass(cls), f"{module}.{name} is not a dataclass"
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help")
        assert isinstance(text, str) and text.strip(), f"{name}.{f.name} has no help metadata"
        assert "\n" not in text.strip(), f"{name}.{f.name}: help must be one line"
        assert field_help(f) == " ".join(text.split())


def test_step_option_help_comes_from_the_metadata(capsys):
    from stcal_dask.kernels.jump import JumpParams
    from stcal_dask.kernels.ramp_fit import RampFitParams

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    helps = {o: a.help for a in sub._actions for o in a.option_strings}
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    shown = capsys.readouterr().out
    for prefix, cls in (("jump", JumpParams), ("rampfit", RampFitParams)):
        for f in dataclasses.fields(cls):
            option = f"--{prefix}.{f.name}"
            assert helps[option].startswith(field_help(f)), option
            assert option in shown


def test_help_is_left_out_only_when_not_asked_for():
    sub = next(a for a in build_parser(help_texts=False)._actions if a.dest == "command")
    helps = [a.help for a in sub.choices["run"]._actions if a.dest.startswith("jump__")]
    assert helps and all(h.startswith("[default:") for h in helps)
