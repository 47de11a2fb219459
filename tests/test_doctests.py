"""Every example in segtool's docstrings runs as written (doctest), from an empty temporary folder.

One test per module that holds ``>>>`` examples. Every module must import: the suite runs with all extras
installed (README), so an import error is a failure, not a skip. The count check makes sure no example is
left uncollected (an example outside a docstring doctest can find would otherwise pass unseen).
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segtool"
PROMPT = re.compile(r"^\s*>>> ", re.MULTILINE)


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if PROMPT.search(path.read_text(encoding="utf-8")):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found():
    assert len(MODULES) >= 60
    assert "segtool.labels" in MODULES and "segtool.pipeline.blend" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    # Examples that write files write them here; caches and the home folder point here too.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    environ = dict(os.environ)
    module = importlib.import_module(name)
    source = Path(module.__file__).read_text(encoding="utf-8")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"
    assert result.attempted == len(PROMPT.findall(source)), f"{name}: some >>> lines are not run as examples"
    assert dict(os.environ) == environ, f"{name}: an example left the environment changed"
