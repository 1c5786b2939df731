"""The documentation cannot rot: the API reference builds from the docstrings (``mkdocs build --strict``), and
every public function's docstring names each of its parameters, what it returns and what it raises."""

from __future__ import annotations

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import slimnet

ROOT = Path(__file__).resolve().parent.parent
API = ("shrink", "apply", "graph", "export", "bench")


@pytest.mark.parametrize("name", API)
def test_api_docstrings_are_complete(name: str) -> None:
    fn = getattr(slimnet, name)
    doc = inspect.getdoc(fn) or ""
    for section in ("Args:", "Returns:", "Raises:"):
        assert section in doc, f"slimnet.{name}: no {section} section"
    args = doc.split("Args:", 1)[1].split("Returns:", 1)[0]
    documented = set(re.findall(r"^    (\w+):", args, flags=re.M))
    params = set(inspect.signature(fn).parameters)
    assert documented == params, f"slimnet.{name}: undocumented {params - documented}, unknown {documented - params}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason="mkdocs and mkdocstrings-python are in the dev extra: pip install -e '.[dev]'",
)
def test_docs_site_builds_strict(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in API:
        assert f"slimnet.{name}" in page
    assert "params_before" in page and "Raises" in page
