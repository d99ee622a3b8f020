"""The README's examples run as they stand, in order, in an empty folder.

Every ``stcal-dask`` command of the README's ```bash blocks is run in one fresh folder, in the
order the README gives them, and then its ```python blocks. Only the sizes shrink (in the test,
never in the README): the full-frame ``--shape`` becomes a small one and ``demo`` gets a small
``--size``. The installation commands (``python3 -m venv ...``, ``pip install``) are what this
test environment already is, and ``pytest`` / ``bash .ci/run`` are this suite itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

SMALL = [
    (re.compile(r"--shape \S+"), "--shape 1x6x64x64"),
    (re.compile(r"^stcal-dask demo\b"), "stcal-dask demo --size 64"),
]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands(text: str) -> list[str]:
    """The ``stcal-dask`` commands of the README's bash blocks, continuation lines joined,
    comments dropped, ``&&`` chains split, in order."""
    commands = []
    for block in _blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in (p.strip() for p in line.split("&&")):
                if part.startswith("stcal-dask"):
                    commands.append(" ".join(part.split()))
    return commands


def test_readme_has_examples():
    text = README.read_text()
    commands = readme_commands(text)
    assert any(c.startswith("stcal-dask run ") for c in commands)
    assert any(c.startswith("stcal-dask simulate ") for c in commands)
    # the chain from ramps with a gwcs to a mosaic
    assert any(c.startswith("stcal-dask simulate ") and "--pointing" in c for c in commands)
    assert any(c.startswith("stcal-dask mosaic-wcs ") for c in commands)
    assert any(c.startswith("stcal-dask mosaic ") for c in commands)
    assert _blocks(text, "python")


@pytest.mark.cluster
def test_readme_examples_run_verbatim_in_order(tmp_path):
    text = README.read_text()
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    for command in readme_commands(text):
        for pattern, small in SMALL:
            command = pattern.sub(small, command)
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        assert proc.stderr.strip() == "", f"{command}: {proc.stderr}"
    for block in _blocks(text, "python"):
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{block}\n{proc.stderr}"
