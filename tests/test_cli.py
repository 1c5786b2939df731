"""The app as a whole: the version, ``python -m slimnet``, and a light start-up (no torch for --help or for a
flag that is wrong on its face)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from slimnet.cli import app

from .refusals import runner

ROOT = Path(__file__).resolve().parent.parent

#: Runs ``slimnet ARGV`` in a fresh interpreter and prints its exit code and whether torch was imported.
_PROBE = textwrap.dedent(
    """
    import runpy
    import sys

    sys.argv = ["slimnet"] + sys.argv[1:]
    try:
        runpy.run_module("slimnet", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    print("exit", code, "torch" in sys.modules)
    """
)


def test_version_and_module_entry():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("slimnet ")


@pytest.mark.parametrize(
    "argv,code,phrase",
    [
        (["--help"], 0, ""),
        (["shrink", "--help"], 0, ""),
        (["bench", "--help"], 0, ""),
        (["shrink", "net.py:make", "-o", "o.pt", "--ratio", "1.5"], 2, "ratio=1.5 (--ratio) is out of range"),
        (["shrink", "net.py:make", "-o", "o.pt", "--criterion", "l3"], 2, "unknown criterion 'l3'"),
        (["shrink", "net.py:make", "-o", "net.py"], 2, "is the input"),
        (["shrink", "model.pt", "-o", "model.pt"], 2, "is the input"),
        (["shrink", "missing.pt"], 2, "missing.pt does not exist"),
        (["shrink", "missing.py:make"], 2, "missing.py does not exist"),
        (["shrink", "net.py:make", "-o", "nowhere/o.pt"], 2, "does not exist: create it first"),
        (["shrink", "model.onnx"], 2, "is an ONNX file"),
        (["shrink", "hf:nofolder"], 2, "no such directory"),
        (["apply", "net.py:make", "none.json"], 2, "plan none.json does not exist"),
        (["apply", "net.py:make", "plan.json", "-o", "plan.json"], 2, "is the input"),
        (["graph", "missing.pt"], 2, "does not exist"),
        (["export", "model.pt", "-o", "model.pt"], 2, "is the input"),
        (["export", "model.onnx"], 2, "is an ONNX file"),
        (["export", "net.py:make", "--opset", "3"], 2, "--opset 3"),
        (["bench", "a.pt", "--runs", "0"], 2, "runs=0 (--runs)"),
        (["bench", "a.pt", "--backend", "tpu"], 2, "unknown backend tpu"),
        (["bench", "missing.pt"], 2, "missing.pt does not exist"),
        (["bench", "model.pt", "--budget", "-1"], 2, "--budget"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else None,
)
def test_start_up_without_torch(tmp_path: Path, argv: list[str], code: int, phrase: str) -> None:
    """--help, and mistakes that need no model (settings, files that are not there, outputs over inputs, an ONNX
    file where a torch model is needed), are answered before torch is imported: in well under a second."""
    (tmp_path / "net.py").write_text("")
    for name in ("model.pt", "model.onnx", "plan.json"):
        (tmp_path / name).write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert r.stdout.strip().splitlines()[-1] == f"exit {code} False", r.stdout + r.stderr
    if code:
        assert len(r.stderr.strip().splitlines()) == 1 and phrase in r.stderr, r.stderr
