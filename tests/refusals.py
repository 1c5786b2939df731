"""The harness of the catalogue of bad inputs: every one must end in one clear line, a non-zero exit, and no
harm done.

For each case the CLI must exit non-zero (2 for a user error), print exactly one line on stderr naming the
problem, print no traceback, write no output (and leave no temporary file behind), and leave every input file
byte for byte as it was. Models are tiny conv nets given as FILE.py:FACTORY (input 1x3x32x32, the ``net``
fixture), so the whole catalogue runs in well under a minute. The cases live beside the module they are about:
test_load.py (model files, pickles, factories, inputs), test_plan.py (plan files), test_cli_shrink.py (flags,
recipes, outputs), test_cli_apply.py, test_cli_graph.py and test_interrupts.py (Ctrl-C).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

from slimnet.cli import app

from .helpers import cli_runner

SHAPE = "1,3,32,32"

runner = cli_runner()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> set[str]:
    """Every entry below ``folder`` (hidden temp files included; bytecode caches are not slimnet's doing)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


@dataclass
class Case:
    """A run of the CLI together with what must not change around it."""

    folder: Path
    inputs: list[Path]
    before: set[str]
    hashes: dict[Path, str]


def watch(folder: Path, *inputs: Path) -> Case:
    return Case(folder, list(inputs), listing(folder), {p: sha(p) for p in inputs if p.is_file()})


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def check_refused(case: Case, exit_code: int, stdout: str, stderr: str, *phrases: str, code: int = 2) -> str:
    """Non-zero exit, one line naming the problem, no traceback, nothing written, inputs untouched."""
    assert exit_code == code, f"exit {exit_code}, expected {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert "Traceback" not in stdout + stderr
    assert stdout.strip() == "", f"nothing belongs on stdout after an error, got: {stdout}"
    line = one_line(stderr)
    for phrase in phrases:
        assert phrase in line, f"{phrase!r} not in the error line: {line}"
    assert listing(case.folder) == case.before, f"files appeared or vanished: {listing(case.folder) ^ case.before}"
    for path, digest in case.hashes.items():
        assert path.is_file() and sha(path) == digest, f"{path} was modified"
    return line


def shrink(case: Case, *args: str, phrases: tuple[str, ...] = (), code: int = 2) -> str:
    """Run ``slimnet shrink ARGS`` in-process and check that it refuses cleanly."""
    return invoke(case, ["shrink", *args], phrases=phrases, code=code)


def invoke(case: Case, argv: list[str], phrases: tuple[str, ...] = (), code: int = 2) -> str:
    """Run ``slimnet ARGV`` in-process and check that it refuses cleanly."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a plain `slimnet` process shows; slimnet's own filters still apply
        r = runner.invoke(app, argv)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"uncaught {type(r.exception).__name__}: {r.exception}")
    # In a real process every warning is printed to stderr (two lines each): count them as stderr here.
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, None) for w in caught)
    return check_refused(case, r.exit_code, r.stdout, shown + r.stderr, *phrases, code=code)
