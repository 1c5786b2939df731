"""What a new user met in the first hour (issue 25): install hints that lost their extra to rich's markup,
``sensitivity --plot`` failing after the work, progress and ``--quiet`` that differed by command, outputs replaced
without a word, lines cut at 80 columns in logs, a word ("ratio") with three meanings, and an export that did not
say its input size, could not leave height and width free, and printed 41 KB as "0.0 MB"."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from slimnet.cli import app
from slimnet.cli.common import human_bytes

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
    (tmp_path / "hfmodel" / "model.safetensors").write_bytes(b"")
    return tmp_path


def _net(command: str) -> list[str]:
    return [command, "net.py:make", "--input-shape", SHAPE]


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


def test_brackets_in_names_are_text_not_markup(here: Path) -> None:
    """A folder named ``exp[best]``: the table title, the table cells and the prose show it whole."""
    (here / "exp[best]").mkdir()
    (here / "exp[best]" / "net.py").write_text(NET)
    r = runner.invoke(app, ["shrink", "exp[best]/net.py:make", "--input-shape", SHAPE])
    assert r.exit_code == 0, r.output
    assert "slimnet shrink: exp[best]/net.py:make" in r.stdout.splitlines()
    assert r.stdout.strip().splitlines()[-1] == "wrote exp[best]/net-slim.pt and exp[best]/net-slim.plan.json"
    bench = ["bench", "exp[best]/net.py:make", "--input-shape", SHAPE, "--backend", "torch-cpu", "--runs", "2"]
    r = runner.invoke(app, [*bench, "--warmup", "0", "--budget", "0"])
    assert r.exit_code == 0, r.output
    assert any(ln.startswith("│ exp[best]/net.py:make ") for ln in r.stdout.splitlines()), r.stdout  # a table cell


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


@pytest.mark.usefixtures("here")
def test_sensitivity_and_distill_progress_follows_shrinks_rule() -> None:
    """Not a terminal (CliRunner): no progress unless --progress; --quiet: none. As shrink's stages."""
    sens = ["sensitivity", "net.py:make", "--input-shape", SHAPE, "--data", "data.pt", "--ratios", "0.5"]
    sens += ["--batch-size", "8"]
    for i, (extra, shown) in enumerate((([], False), (["--quiet"], False), (["--progress"], True))):
        r = runner.invoke(app, [*sens, "-o", f"s{i}.json", *extra])
        assert r.exit_code == 0, r.output
        lines = r.stderr.strip().splitlines()
        assert lines == (["sensitivity: 1/2 groups (conv1)", "sensitivity: 2/2 groups (conv2)"] if shown else [])
    assert _shrink("-o", "p.pt").exit_code == 0
    dist = ["distill", "p.pt", "--teacher", "net.py:make", "--data", "data.pt", "--trust-pickle"]
    dist += ["--steps", "4", "--batch-size", "8", "--calib-batches", "2", "--input-shape", SHAPE]
    for i, (extra, shown) in enumerate((([], False), (["--quiet"], False), (["--progress"], True))):
        r = runner.invoke(app, [*dist, "-o", f"t{i}.pt", *extra])
        assert r.exit_code == 0, r.output
        bar = [ln for ln in r.stderr.splitlines() if ln.startswith("distill [")]
        assert bool(bar) == shown and (not shown or "4/4" in bar[-1]), r.stderr
        if not shown:
            assert r.stderr == ""


# ------------------------------------------------------------------------------------------ 5. replacing outputs
def test_rerunning_shrink_replaces_and_says_so(here: Path) -> None:
    """The quick start run twice: the second run works, and says in one stderr line what it replaced."""
    assert _shrink("--ratio", "0.5").exit_code == 0
    first = (here / "net-slim.pt").read_bytes()
    r = _shrink("--ratio", "0.25")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "note: replaced the existing net-slim.pt and net-slim.plan.json"
    assert (here / "net-slim.pt").read_bytes() != first  # really replaced (another ratio, other shapes)
    assert json.loads((here / "net-slim.plan.json").read_text())["ratio"] == 0.25
    r = _shrink("--ratio", "0.25", "--quiet", "--json")
    assert r.exit_code == 0 and r.stderr == ""  # --quiet: no note; the JSON lists what was replaced
    report = json.loads(r.stdout)
    assert report["replaced"] == ["net-slim.pt", "net-slim.plan.json"] and report["stale"] == []


def test_an_onnx_file_of_a_replaced_model_is_called_stale(here: Path) -> None:
    assert _shrink().exit_code == 0
    r = runner.invoke(app, ["export", "net-slim.pt", "--input-shape", SHAPE, "--trust-pickle"])
    assert r.exit_code == 0 and (here / "net-slim.onnx").is_file(), r.output
    old = (here / "net-slim.onnx").stat().st_mtime - 10
    os.utime(here / "net-slim.onnx", (old, old))  # an earlier run's file, whatever the clock's resolution
    r = _shrink("--ratio", "0.25", "--quiet", "--json")
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == (
        "warning: net-slim.onnx was exported from an earlier net-slim.pt and is now stale: run "
        "`slimnet export net-slim.pt` to refresh it"
    )  # a warning: printed even with --quiet
    assert json.loads(r.stdout)["stale"] == ["net-slim.onnx"]
    r = _shrink("--onnx", "net-slim.onnx", "--json")  # written again by this run: fresh, nothing stale
    assert r.exit_code == 0 and json.loads(r.stdout)["stale"] == [], r.output
    assert r.stderr.strip() == "note: replaced the existing net-slim.pt, net-slim.plan.json and net-slim.onnx"
    r = runner.invoke(app, ["export", "net-slim.pt", "--input-shape", SHAPE, "--trust-pickle"])
    assert r.exit_code == 0 and r.stderr.strip() == "note: replaced the existing net-slim.onnx", r.output


@pytest.mark.parametrize(
    "args",
    [
        [*_net("shrink"), "--criterion", "taylor", "--data", "data.pt", "-o", "data.pt"],
        [*_net("shrink"), "--recipe", "r.yaml", "--onnx", "r.yaml"],
        [*_net("shrink"), "--ratios", "r.yaml", "-o", "r.yaml"],
        [*_net("shrink"), "-o", "x.pt", "--onnx", "x.plan.json"],
        [*_net("sensitivity"), "--data", "data.pt", "-o", "s.json", "--plot", "data.pt"],
        ["distill", "net.py", "--teacher", "net.py:make", "--data", "data.pt", "-o", "data.pt"],
    ],
    ids=["shrink-data", "shrink-recipe", "shrink-ratios", "onnx-over-plan", "sensitivity-plot", "distill-data"],
)
def test_an_input_is_never_an_output(here: Path, args: list[str]) -> None:
    (here / "r.yaml").write_text("ratio: 0.5\n")
    before, data = listing(here), (here / "data.pt").read_bytes()
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and r.stderr.startswith("error: output "), r.output
    assert "is the input" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert listing(here) == before and (here / "data.pt").read_bytes() == data


# ------------------------------------------------------------------------------------------ 8. one meaning of "ratio"
@pytest.mark.usefixtures("here")
def test_ratio_means_the_share_dropped_and_nothing_else() -> None:
    """In the text, "ratio" is only ever the share of prunable channels dropped; the size factor is "x smaller",
    a target's number a kept share. The JSON keeps its keys and adds kept_share / times_smaller."""
    r = _shrink("--ratio", "0.5", "-o", "a.pt")
    assert r.exit_code == 0, r.output
    uses = re.findall(r"\bratio\b.*", r.stdout)
    assert uses == ["ratio 0.5 (share of the prunable channels dropped), round-to 4"], r.stdout
    header = next(ln for ln in r.stdout.splitlines() if "before" in ln)
    assert re.search(r"before\W+after\W+smaller", header) and "3.40x" in r.stdout, r.stdout  # 2.87M -> 844K MACs
    r = _shrink("--target-macs", "0.5", "--round-to", "1", "-o", "b.pt", "--json")
    report = json.loads(r.stdout)
    (pb, pa), (mb, ma) = report["params"], report["macs"]
    assert report["kept_share"] == {"params": round(pa / pb, 6), "macs": round(ma / mb, 6)}
    assert report["times_smaller"] == {"params": round(pb / pa, 6), "macs": round(mb / ma, 6)}
    assert 0 < report["ratio"] < 1 and report["target"]["wanted"] == 0.5  # the old keys, unchanged
    r = _shrink("--target-macs", "0.5", "--round-to", "1", "-o", "b.pt")
    target = next(ln for ln in r.stdout.splitlines() if ln.startswith("target "))
    assert target.startswith("target (uniform): kept share of MACs 0.5 wanted, "), target
    for command in ("shrink", "sensitivity"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "250"}).stdout
        # option names and recipe keys only; no "ratio" as a factor ("calibration" is another word)
        words = re.findall(r"[\w-]*ratio[\w-]*", text.replace("alibration", ""))
        assert set(words) <= {"ratio", "--ratio", "--ratios", "--head-ratio", "head_ratio", "--max-layer-ratio",
                              "max_layer_ratio", "ratios", "--ratios-from", "--hidden-ratio"}, words  # fmt: skip
        if command == "shrink":
            assert "Share of each prunable group's channels to drop" in text


# ------------------------------------------------------------------------------------------ 9. export
def _ort(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def test_export_states_its_input_and_frees_height_and_width_on_request(here: Path) -> None:
    r = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "250"})
    assert "default 1,3,224,224" in r.stdout and "--dynamic-hw" in r.stdout
    r = runner.invoke(app, ["export", "net.py:make", "--input-shape", SHAPE, "--dynamic-hw", "-o", "hw.onnx"])
    assert r.exit_code == 0, r.output
    size = (here / "hw.onnx").stat().st_size
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{size / 1e3:.3g} KB, opset 17, ") and "MB" not in first, first  # 4.7 KB, not 0.0 MB
    assert "traced at input 1x3x32x32 (batch, height and width free)" in first, first
    assert "onnxruntime matches torch at batch 1 and 3, and at 32x32 and 64x64" in first, first
    spec = importlib.util.spec_from_file_location("newcomer_net", here / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the same factory the CLI loaded: seeded, the same weights
    model = module.make().eval()
    x = torch.randn(2, 3, 48, 40)  # a size the export never saw, batch included
    with torch.no_grad():
        ref = model(x)
    got = _ort(here / "hw.onnx", x)
    assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())
    r = runner.invoke(app, ["export", "net.py:make", "--input-shape", SHAPE, "-o", "b.onnx", "--json"])
    info = json.loads(r.stdout)
    assert info["input_shapes"] == [[1, 3, 32, 32]] and not info["dynamic_hw"] and info["checked_sizes"] == ["32x32"]
    with pytest.raises(Exception, match="(?i)dimension|shape|index"):  # without --dynamic-hw the size is fixed
        _ort(here / "b.onnx", x)


def test_dynamic_hw_refuses_what_cannot_change_size(here: Path) -> None:
    """A model whose Linear reads a flattened map runs at one size only; a flat input has no height or width."""
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 30 * 30, 2)),
               here / "fixed.pt")  # fmt: skip
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 2)), here / "flat.pt")
    for args, says in (
        (["fixed.pt", "--input-shape", SHAPE], "--dynamic-hw: the model itself does not run at 64x64"),
        (["flat.pt", "--input-shape", "1,8"], "--dynamic-hw frees the height and width of an N x C x H x W input"),
    ):
        before = listing(here)
        r = runner.invoke(app, ["export", *args, "--dynamic-hw", "-o", "z.onnx"])
        assert r.exit_code == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.output
        assert listing(here) == before


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (512, 41_234, 4_690, 3_200_000, 102_400_000, 1_450_000_000)] == [
        "512 B", "41.2 KB", "4.69 KB", "3.2 MB", "102 MB", "1.45 GB"]  # fmt: skip
