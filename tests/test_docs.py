"""The README's Python blocks and every docstring example run as written."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import edgewise
from edgewise.rwkv.synthetic import random_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def _modules_with_examples() -> list[str]:
    names = ["edgewise"] + [m.name for m in pkgutil.walk_packages(edgewise.__path__, "edgewise.")]
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec.origin and spec.origin.endswith(".py") and ">>> " in Path(spec.origin).read_text():
            found.append(name)
    return found


def test_the_readme_has_python_examples():
    assert len(_readme_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_readme_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    random_checkpoint(tmp_path / "model.pth", layers=1, width=64, vocab=65536)  # what the RWKV block loads
    exec(compile(_readme_blocks()[index], f"README.md python block {index}", "exec"), {})


@pytest.mark.slow
@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    failures, attempted = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS,
                                          verbose=False, report=True)
    assert attempted > 0 and failures == 0
