"""What a new user met in the first hour (issue 25): install hints that lost their extra to rich's markup,
``sensitivity --plot`` failing after the work, progress and ``--quiet`` that differed by command, outputs replaced
without a word, lines cut at 80 columns in logs, a word ("ratio") with three meanings, and an export that did not
say its input size, could not leave height and width free, and printed 41 KB as "0.0 MB"."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from slimnet.cli import app

from .helpers import NET
from .refusals import SHAPE, listing, runner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder as the current one: the tiny net, a tensor file of calibration data, a folder of images."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    torch.save(torch.randn(16, 3, 32, 32), tmp_path / "data.pt")
    (tmp_path / "images").mkdir()
    (tmp_path / "hfmodel").mkdir()
    (tmp_path / "hfmodel" / "config.json").write_text('{"model_type": "bert"}')
    return tmp_path


def _shrink(*args: str):
    return runner.invoke(app, ["shrink", "net.py:make", "--input-shape", SHAPE, "--round-to", "4", *args])


# ------------------------------------------------------------------------------------------ 1. install hints
@pytest.mark.parametrize(
    ("module", "args", "extra"),
    [
        ("timm", ["shrink", "timm:resnet18", "-o", "r.pt"], "timm"),
        ("PIL", ["shrink", "net.py:make", "--input-shape", SHAPE, "--criterion", "taylor", "--data", "images"], "data"),
        ("transformers", ["shrink", "hf:hfmodel", "-o", "h.pt"], "transformers"),
        ("matplotlib", ["sensitivity", "net.py:make", "--data", "data.pt", "-o", "s.json", "--plot", "s.png"], "plot"),
    ],
    ids=["timm", "data", "transformers", "plot"],
)
def test_install_hints_keep_the_extra(here: Path, monkeypatch: pytest.MonkeyPatch, module: str, args, extra) -> None:
    """The package is made missing (None in sys.modules: its import raises ImportError); the hint is printed as
    it is, ``slimnet[EXTRA]`` included, where rich's markup used to eat ``[EXTRA]`` as a style tag."""
    monkeypatch.setitem(sys.modules, module, None)
    before = listing(here)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), r.stderr
    assert f"pip install 'slimnet[{extra}]'" in line, line
    assert listing(here) == before  # nothing written


# ------------------------------------------------------------------------------------------ 7. no wrapping in logs
def test_a_long_path_stays_on_one_line_outside_a_terminal(here: Path) -> None:
    """CliRunner's streams are not terminals: every line is printed whole however long (rich assumed 80 columns
    and cut the file names; a table's title was wrapped to the table's width)."""
    deep = here / ("a-folder-with-a-long-name-" * 4).rstrip("-") / "and-another-one-below-it-too"
    deep.mkdir(parents=True)
    (deep / "my_network_definition_file.py").write_text(NET)
    spec = f"{deep / 'my_network_definition_file.py'}:make"
    out = deep / "the-pruned-model-with-a-long-name.pt"
    r = runner.invoke(
        app, ["shrink", spec, "-o", str(out), "--input-shape", SHAPE, "--target-macs", "0.5", "--round-to", "4"]
    )
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(str(out)) > 120
    assert f"wrote {out} and {out.with_suffix('.plan.json')}" in lines, r.stdout
    assert f"slimnet shrink: {spec}" in lines, r.stdout  # the table's title, whole
    assert any(ln.startswith("target (uniform): ") and ln.endswith(")") for ln in lines), r.stdout


# ------------------------------------------------------------------------------------------ 3. --plot checked first
def test_sensitivity_plot_without_matplotlib_refuses_before_the_sweep(here: Path, monkeypatch) -> None:
    """The check runs before the model loads: no progress line of the sweep, no sens.json left behind."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = ["sensitivity", "net.py:make", "--input-shape", SHAPE, "--data", "data.pt", "-o", "s.json"]
    r = runner.invoke(app, [*args, "--plot", "s.png", "--progress"])
    assert r.exit_code == 2 and r.stderr.strip() == "error: --plot needs matplotlib: pip install 'slimnet[plot]'"
    assert not (here / "s.json").exists() and not (here / "s.png").exists()


# ------------------------------------------------------------------------------------------ 4. progress, --quiet
@pytest.mark.parametrize("command", ["shrink", "apply", "graph", "export", "bench", "sensitivity", "distill"])
def test_every_long_command_takes_progress_and_quiet(command: str) -> None:
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--progress" in r.stdout and "--quiet" in r.stdout, r.stdout


def test_sensitivity_and_distill_progress_follows_shrinks_rule(here: Path) -> None:
    """Not a terminal (CliRunner): no progress unless --progress; --quiet: none. As shrink's stages."""
    sens = ["sensitivity", "net.py:make", "--input-shape", SHAPE, "--data", "data.pt", "-o", "s.json"]
    sens += ["--ratios", "0.5", "--batch-size", "8"]
    for extra, shown in (([], False), (["--quiet"], False), (["--progress"], True)):
        r = runner.invoke(app, [*sens, *extra])
        assert r.exit_code == 0, r.output
        lines = r.stderr.strip().splitlines()
        assert lines == (["sensitivity: 1/2 groups (conv1)", "sensitivity: 2/2 groups (conv2)"] if shown else [])
    assert _shrink("-o", "p.pt").exit_code == 0
    dist = ["distill", "p.pt", "--teacher", "net.py:make", "--data", "data.pt", "-o", "t.pt", "--trust-pickle"]
    dist += ["--steps", "4", "--batch-size", "8", "--calib-batches", "2", "--input-shape", SHAPE]
    for extra, shown in (([], False), (["--quiet"], False), (["--progress"], True)):
        r = runner.invoke(app, [*dist, *extra])
        assert r.exit_code == 0, r.output
        bar = [ln for ln in r.stderr.splitlines() if ln.startswith("distill [")]
        assert bool(bar) == shown and (not shown or "4/4" in bar[-1]), r.stderr
        if not shown:
            assert "distill [" not in r.stderr
