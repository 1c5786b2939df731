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
    "argv,code",
    [
        (["--help"], 0),
        (["shrink", "--help"], 0),
        (["bench", "--help"], 0),
        (["shrink", "net.py:make", "-o", "o.pt", "--ratio", "1.5"], 2),
        (["shrink", "net.py:make", "-o", "o.pt", "--criterion", "l3"], 2),
        (["bench", "a.pt", "--runs", "0"], 2),
        (["bench", "a.pt", "--backend", "tpu"], 2),
    ],
    ids=["help", "shrink-help", "bench-help", "ratio", "criterion", "runs", "backend"],
)
def test_start_up_without_torch(tmp_path: Path, argv: list[str], code: int) -> None:
    """--help, and settings that are wrong whatever the model, are answered before torch is imported."""
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        timeout=120,
    )
    assert r.stdout.strip().splitlines()[-1] == f"exit {code} False", r.stdout + r.stderr
