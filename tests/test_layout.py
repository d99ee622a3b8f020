"""The package's layers: every import points down (or sideways within a subpackage), and no
private name crosses a module boundary.

The layers, lowest first (the README's layout table draws the same):

0. ``stcal_dask`` itself: ``errors``, ``dqflags``, ``optional_imports`` (no dask, no numpy);
1. ``kernels`` — numpy/numba on one tile or plane;
2. ``engine`` — dask graphs, worker tasks, clusters;
3. ``io`` — zarr stores, JWST FITS, atomic outputs;
4. ``mosaic`` — alignment, mosaic WCS, resampling;
5. ``sim`` — synthetic exposures and WCSs;
6. ``cli`` — the ``stcal-dask`` command.

Every import is read from the source (function-level imports included), so a lazy import cannot
hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stcal_dask"

LAYERS = {
    "": 0, "errors": 0, "dqflags": 0, "optional_imports": 0,
    "kernels": 1, "engine": 2, "io": 3, "mosaic": 4, "sim": 5, "cli": 6,
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    """The layer of a ``stcal_dask`` module name (``stcal_dask.engine.tasks`` -> 2)."""
    parts = module.split(".")
    assert parts[0] == "stcal_dask", module
    key = parts[1] if len(parts) > 1 else ""
    if key not in LAYERS:
        raise AssertionError(f"{module}: not in any layer; add its subpackage to LAYERS")
    return LAYERS[key]


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def imports_of(path: Path, package_dir: Path = PACKAGE):
    """(line, imported module, imported names) of every stcal_dask import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path, package_dir)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "stcal_dask":
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([mod] if mod else []))
            if mod.split(".")[0] != "stcal_dask":
                continue
            names = [a.name for a in node.names]
            yield node.lineno, mod, names


def violations(package: Path = PACKAGE) -> list[str]:
    """Every upward import, private name or private module used across a module boundary."""
    found = []
    for path in sorted(package.rglob("*.py")):
        me = _module_name(path, package)
        mine = layer_of(me)
        where = f"{path.relative_to(package.parent)}"
        for line, mod, names in imports_of(path, package):
            targets = [mod]
            # ``from stcal_dask.engine import dataflow`` imports a module: judge the module
            for n in names:
                sub = package.parent / Path(*f"{mod}.{n}".split("."))
                if sub.with_suffix(".py").exists() or (sub / "__init__.py").exists():
                    targets.append(f"{mod}.{n}")
            for t in targets:
                if layer_of(t) > mine:
                    found.append(f"{where}:{line}: {me} (layer {mine}) imports {t} "
                                 f"(layer {layer_of(t)})")
                private = [p for p in t.split(".")[1:] if p.startswith("_")
                           and not p.startswith("__")]
                if private and _subpackage(t) != _subpackage(me):
                    found.append(f"{where}:{line}: private module {t} imported from {me}")
            if mod != me:
                for n in names:
                    sibling = f"{mod}.{n}" in targets and _subpackage(mod) == _subpackage(me)
                    if n.startswith("_") and not n.startswith("__") and not sibling:
                        found.append(f"{where}:{line}: private name {n} imported from {mod}")
    return found


def test_imports_point_down_and_names_are_public():
    assert violations() == []


def test_every_subpackage_has_a_layer():
    for sub in PACKAGE.iterdir():
        if sub.is_dir() and (sub / "__init__.py").exists():
            assert sub.name in LAYERS, sub
        elif sub.suffix == ".py" and sub.stem != "__init__":
            assert sub.stem in LAYERS, sub


@pytest.mark.parametrize("source, expected", [
    ("from stcal_dask.cli import main\n", "imports stcal_dask.cli (layer 6)"),
    ("def f():\n    from stcal_dask.engine import dataflow\n",
     "imports stcal_dask.engine (layer 2)"),
    ("from stcal_dask.kernels.jump import _hidden\n", "private name _hidden"),
    ("import stcal_dask.engine._secret\n", "private module stcal_dask.engine._secret"),
])
def test_a_violation_is_caught(tmp_path, source, expected):
    """The checker itself fails on each kind of violation (written into a fake kernel module)."""
    root = tmp_path / "stcal_dask"
    (root / "kernels").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "kernels" / "__init__.py").write_text("")
    (root / "kernels" / "fake.py").write_text(source)
    found = violations(root)
    assert any(expected in v for v in found), found


def test_kernels_and_tasks_stay_lean():
    """Kernels import no dask/xarray/logging; worker tasks import no xarray/astropy/zarr."""
    for path in (PACKAGE / "kernels").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                for n in names:
                    assert n.split(".")[0] not in {"dask", "xarray", "zarr", "logging",
                                                   "astropy", "distributed"}, (path, n)
