"""The first hour of a new user: progress on stderr (never in --json), default output names, a model pickled
from the user's own project loading through the ``slimnet`` console script, help that does not mislead, prose
that logs keep on one line, and files written with the permissions a plain open() gives."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from slimnet._util import save_atomic, write_atomic
from slimnet.cli import app
from slimnet.cli.common import default_output
from slimnet.cli.progress import StageProgress

from .helpers import NET
from .refusals import SHAPE, runner

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("load", "trace", "groups", "rank", "cut", "verify", "measure", "write")


def _shrink(*args: str):
    return runner.invoke(app, ["shrink", *args, "--input-shape", SHAPE, "--round-to", "4"])


# ------------------------------------------------------------------------------------------ progress
def test_progress_goes_to_stderr_and_json_stays_clean(tmp_path: Path, net: Path) -> None:
    r = _shrink(f"{net}:make", "-o", str(tmp_path / "a.pt"), "--json", "--progress")
    assert r.exit_code == 0, r.stderr
    report = json.loads(r.stdout)  # stdout is exactly one JSON object
    lines = r.stderr.strip().splitlines()
    shown = [ln.split()[1] for ln in lines]
    assert shown == list(STAGES), r.stderr
    for ln in lines:
        assert ln.startswith("slimnet: ") and ln.endswith(" s") and float(ln.split()[-2]) >= 0
    assert list(report["timings"]) == list(STAGES)  # load and write are timed too


def test_progress_is_off_in_pipes_by_default_and_with_quiet(tmp_path: Path, net: Path) -> None:
    """A non-terminal stderr (CI, a pipe) gets no progress unless asked: errors stay one line there."""
    for extra in ([], ["--quiet"]):
        r = _shrink(f"{net}:make", "-o", str(tmp_path / "a.pt"), *extra)
        assert r.exit_code == 0 and r.stderr == "", r.stderr


def test_progress_on_a_terminal_sums_a_stage_timed_in_pieces() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with StageProgress(None, console) as p:  # None: on, because this console is a terminal
        for stage, seconds in (("trace", 0.5), ("trace", 1.0), ("groups", 2.0)):
            p(stage, None)
            p(stage, seconds)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())  # the terminal's control codes aside
    assert re.findall(r"slimnet: (\w+) +([\d.]+) s", text) == [("trace", "1.5"), ("groups", "2.0")], text
    quiet = io.StringIO()
    with StageProgress(False, Console(file=quiet, force_terminal=True)) as p:
        p("trace", None)
        p("trace", 1.0)
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------ default outputs
def test_shrink_writes_beside_the_input_by_default(tmp_path: Path) -> None:
    (tmp_path / "mynet.py").write_text(NET)
    r = _shrink(f"{tmp_path / 'mynet.py'}:make")
    assert r.exit_code == 0, r.stderr
    out, plan = tmp_path / "mynet-slim.pt", tmp_path / "mynet-slim.plan.json"
    assert out.is_file() and plan.is_file()
    assert r.stdout.strip().splitlines()[-1] == f"wrote {out} and {plan}"
    r = runner.invoke(app, ["export", str(out), "--input-shape", SHAPE, "--trust-pickle"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "mynet-slim.onnx").is_file()
    assert r.stdout.strip().splitlines()[-1] == f"wrote {tmp_path / 'mynet-slim.onnx'}"


@pytest.mark.parametrize(
    "model,suffix,expected",
    [
        ("model.pt", "-slim.pt", "model-slim.pt"),
        ("runs/exp1/model.pth", "-slim.pt", "runs/exp1/model-slim.pt"),
        ("torchvision:resnet50", "-slim.pt", "resnet50-slim.pt"),
        ("timm:vit_tiny_patch16_224.augreg_in21k", "-slim.pt", "vit_tiny_patch16_224.augreg_in21k-slim.pt"),
        ("nets/mynet.py:make", "-slim.pt", "nets/mynet-slim.pt"),
        ("hf:models/bert/", "-slim", "models/bert-slim"),
        ("model-slim.pt", ".onnx", "model-slim.onnx"),
    ],
)
def test_default_output_names(model: str, suffix: str, expected: str) -> None:
    assert default_output(model, suffix) == str(Path(expected))


# ------------------------------------------------------------------------------------------ the current folder
def _console_script() -> list[str]:
    """The installed ``slimnet`` entry point; where it is missing (not installed in this environment), the same
    few lines pip writes for it, run as a file, so that ``sys.path[0]`` is the script's folder, not the current
    one: the code path the bug lived on."""
    script = Path(sys.executable).parent / "slimnet"
    if not script.is_file():
        found = shutil.which("slimnet")
        script = Path(found) if found else script
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-c", "import sys; from slimnet.cli import app; sys.argv[0] = 'slimnet'; sys.exit(app())"]


def _project(tmp_path: Path) -> Path:
    """A user's project folder: the model's class in its own module, the model saved whole from there."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "usernet_cwd.py").write_text(NET)
    save = "import torch, usernet_cwd; torch.save(usernet_cwd.make(), 'model.pt')"
    subprocess.run([sys.executable, "-c", save], cwd=project, check=True, timeout=120)
    return project


def test_console_script_loads_a_class_from_the_current_folder(tmp_path: Path) -> None:
    """The README's first command in a user's project, through the ``slimnet`` console script."""
    project = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLIMNET_TRUST_PICKLE")}
    env["PYTHONPATH"] = str(ROOT)  # slimnet itself, this checkout; not the project folder
    args = ["shrink", "model.pt", "--ratio", "0.5", "--criterion", "fpgm", "--input-shape", SHAPE, "--round-to", "4"]
    r = subprocess.run(
        [*_console_script(), *args, "--trust-pickle"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "model-slim.pt").is_file() and r.stdout.strip().endswith("model-slim.plan.json")


@pytest.mark.parametrize("command", ["apply", "export", "bench"])
def test_every_command_loads_a_class_from_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """The same loader serves every command: run in the project folder, with that folder not on sys.path (as
    under the console script), the class is found."""
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(project))])
    sys.modules.pop("usernet_cwd", None)
    plan = project / "p.plan.json"
    if command == "apply":
        r = runner.invoke(app, ["shrink", f"{project / 'usernet_cwd.py'}:make", "-o", "p.pt", "--input-shape", SHAPE])
        assert r.exit_code == 0, r.stderr
        sys.modules.pop("usernet_cwd", None)
        sys.path[:] = [p for p in sys.path if p != str(project)]  # FILE.py:FACTORY put its folder there
    args = {
        "apply": ["apply", "model.pt", str(plan)],
        "export": ["export", "model.pt"],
        "bench": ["bench", "model.pt", "--backend", "torch-cpu", "--runs", "2", "--warmup", "0", "--budget", "0"],
    }[command]
    r = runner.invoke(app, [*args, "--input-shape", SHAPE, "--trust-pickle"])
    sys.modules.pop("usernet_cwd", None)
    assert r.exit_code == 0, r.stderr
    assert str(project) not in sys.path  # put on the path only while the file loads


# ------------------------------------------------------------------------------------------ help
@pytest.mark.parametrize("command", [[], ["shrink"], ["apply"], ["graph"], ["export"], ["bench"]])
def test_help_shows_no_value_for_flags_and_no_braces(command: list[str]) -> None:
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    assert "<bool>" not in r.stdout and "{" not in r.stdout, r.stdout
    if command and command != ["apply"]:
        assert re.search(rf"Usage: \S+ {command[0]} \[OPTIONS\] MODEL", r.stdout), r.stdout
        assert "hf:FOLDER" in r.stdout


# ------------------------------------------------------------------------------------------ prose and tables
def test_prose_is_not_wrapped_in_logs_and_graph_says_what_it_counts(tmp_path: Path, net: Path) -> None:
    r = _shrink(f"{net}:make", "-o", str(tmp_path / "a.pt"))
    assert r.exit_code == 0, r.stderr
    took = [ln for ln in r.stdout.splitlines() if ln.startswith("took ")]
    assert len(took) == 1 and took[0].endswith("(seconds per stage)") and "verify" in took[0]
    line = r"verified \(exact\): max abs diff \S+ <= tolerance \S+ on (.+, )?example$"  # one line, naming the inputs
    assert any(re.match(line, ln) for ln in r.stdout.splitlines()), r.stdout
    r = runner.invoke(app, ["graph", f"{net}:make", "--input-shape", SHAPE])
    assert r.exit_code == 0 and "tensors dims" not in r.stdout and "member dims" in r.stdout


# ------------------------------------------------------------------------------------------ file modes
@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_a_plain_open_gives(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic = tmp_path / "atomic.bin"
        save_atomic(atomic, lambda tmp: tmp.write_bytes(b"x"))
        assert stat.S_IMODE(atomic.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
        os.chmod(atomic, 0o640)  # an existing file keeps its mode, as open(..., "w") keeps it
        write_atomic(atomic, b"y")
        assert stat.S_IMODE(atomic.stat().st_mode) == 0o640 and atomic.read_bytes() == b"y"
    finally:
        os.umask(old)


def test_cli_outputs_are_not_private(tmp_path: Path, net: Path) -> None:
    old = os.umask(0o022)
    try:
        r = _shrink(f"{net}:make", "-o", str(tmp_path / "a.pt"), "--onnx", str(tmp_path / "a.onnx"))
        assert r.exit_code == 0, r.stderr
        for name in ("a.pt", "a.plan.json", "a.onnx"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------ the Python API
def test_top_level_api_is_light_and_documented() -> None:
    probe = textwrap.dedent(
        """
        import sys
        import slimnet
        assert "torch" not in sys.modules, "import slimnet imported torch"
        from slimnet import api
        from slimnet.exporting import onnx as exporter
        from slimnet.measure import bench as benchmark
        assert slimnet.shrink is api.shrink and slimnet.apply is api.apply and slimnet.graph is api.graph
        assert slimnet.bench is benchmark.bench and slimnet.export is exporter.export_onnx
        for name in ("shrink", "apply", "graph", "bench", "export"):
            doc = getattr(slimnet, name).__doc__
            assert all(part in doc for part in ("Args:", "Returns:", "Raises:")), name
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr
