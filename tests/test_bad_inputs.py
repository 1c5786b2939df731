"""The catalogue of bad inputs: every one must end in one clear line, a non-zero exit, and no harm done.

For each case the CLI must exit non-zero (2 for a user error), print exactly one line on stderr naming the
problem, print no traceback, write no output (and leave no temporary file behind), and leave every input file
byte for byte as it was. Models are tiny conv nets given as FILE.py:FACTORY (input 1x3x32x32), so the whole
catalogue runs in well under a minute; the Ctrl-C cases run ``python -m slimnet`` in a subprocess.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet.cli import app

from .helpers import NET, UNTRACEABLE, cli_runner

SHAPE = "1,3,32,32"
ROOT = Path(__file__).resolve().parent.parent

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


@pytest.fixture
def net(tmp_path: Path) -> Path:
    f = tmp_path / "tinynet.py"
    f.write_text(NET)
    return f


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def seq_file(tmp_path: Path) -> Path:
    """A whole module saved with torch.save whose classes are all torch's own (loads without --trust-pickle)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))
    p = tmp_path / "seq.pt"
    torch.save(model, p)
    return p


# ------------------------------------------------------------------------------------------ model files


def test_missing_model_file(tmp_path: Path, out_dir: Path) -> None:
    case = watch(tmp_path)
    shrink(
        case,
        str(tmp_path / "nope.pt"),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("nope.pt", "does not exist"),
    )


def test_missing_factory_file(tmp_path: Path, out_dir: Path) -> None:
    case = watch(tmp_path)
    shrink(
        case,
        f"{tmp_path / 'nope.py'}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("nope.py", "does not exist"),
    )


def test_empty_file(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "empty.pt"
    f.write_bytes(b"")
    case = watch(tmp_path, f)
    shrink(case, str(f), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, phrases=("empty.pt", "is empty"))


def test_truncated_torch_file(tmp_path: Path, out_dir: Path, seq_file: Path) -> None:
    data = seq_file.read_bytes()
    f = tmp_path / "half.pt"
    f.write_bytes(data[: len(data) // 2])
    case = watch(tmp_path, f)
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("half.pt", "not a readable torch file", "truncated"),
    )


def test_text_file(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "notes.pt"
    f.write_text("these are my notes, not a model\n")
    case = watch(tmp_path, f)
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("notes.pt", "not a readable torch file"),
    )


@pytest.mark.parametrize("head", [b"", b"\x80\x02", b"\x89PNG\r\n\x1a\n"], ids=["random", "pickle-header", "png"])
def test_garbage_bytes_are_called_corrupt_not_untrusted(tmp_path: Path, out_dir: Path, head: bytes) -> None:
    f = tmp_path / "garbage.pt"
    f.write_bytes(head + random.Random(0).randbytes(1024))
    case = watch(tmp_path, f)
    line = shrink(case, str(f), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, phrases=("garbage.pt",))
    assert "--trust-pickle" not in line, f"corrupt bytes must not be answered with 'trust the file': {line}"
    assert "not a readable torch file" in line


def test_state_dict_instead_of_module(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "sd.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict(), f)
    case = watch(tmp_path, f)
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("holds a state_dict", "FILE.py:FACTORY", "--weights"),
    )


@pytest.mark.parametrize("obj,kind", [([1, 2, 3], "list"), ({"a": 1, "b": 2}, "dict"), (torch.ones(3), "Tensor")])
def test_pickle_of_something_else(tmp_path: Path, out_dir: Path, obj: object, kind: str) -> None:
    f = tmp_path / "thing.pt"
    torch.save(obj, f)
    case = watch(tmp_path, f)
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=(f"holds a {kind}", "not a torch.nn.Module"),
    )


def test_torchscript_archive(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, and still what people have files of
        torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())), f)
    case = watch(tmp_path, f)
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("TorchScript archive", "torch.save(model)"),
    )


# ------------------------------------------------------------------------------------- pickles that run code


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))


def _evil_torch(path: Path, marker: Path) -> None:
    torch.save(_Evil(marker), path)


def _evil_raw(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Evil(marker), protocol=2))


@pytest.mark.parametrize("write", [_evil_torch, _evil_raw], ids=["torch.save", "pickle.dumps"])
def test_code_running_pickle_is_not_run(tmp_path: Path, out_dir: Path, write: object) -> None:
    marker = tmp_path / "MARKER"
    f = tmp_path / "evil.pt"
    write(f, marker)  # type: ignore[operator]
    case = watch(tmp_path, f)
    shrink(case, str(f), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, phrases=("evil.pt", "--trust-pickle"))
    assert not marker.exists(), "the pickle's code ran without --trust-pickle"


def test_code_running_pickle_protocol4_one_line(tmp_path: Path, out_dir: Path) -> None:
    marker = tmp_path / "MARKER"
    f = tmp_path / "evil.pkl"
    f.write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    case = watch(tmp_path, f)
    shrink(case, str(f), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, phrases=("--trust-pickle",))
    assert not marker.exists()


def test_evil_pickle_payload_is_real(tmp_path: Path, out_dir: Path) -> None:
    """The control for the test above: with --trust-pickle the same file does run its code (and is then refused
    as not a model), so an absent marker there means 'not run', not 'payload broken'."""
    marker = tmp_path / "MARKER"
    f = tmp_path / "evil.pt"
    _evil_torch(f, marker)
    case = watch(tmp_path, f)
    case.before.add("MARKER")
    shrink(
        case,
        str(f),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--trust-pickle",
        phrases=("not a torch.nn.Module",),
    )
    assert marker.exists()


@pytest.mark.parametrize("flag", ["--input", "--weights"])
def test_code_running_pickle_as_input_or_weights(tmp_path: Path, out_dir: Path, net: Path, flag: str) -> None:
    """--input and --weights are always read with the weights-only unpickler, even with --trust-pickle."""
    marker = tmp_path / "MARKER"
    f = tmp_path / "evil.pt"
    _evil_torch(f, marker)
    case = watch(tmp_path, f, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        flag,
        str(f),
        "--trust-pickle",
        phrases=("evil.pt",),
    )
    assert not marker.exists()


def test_recipe_with_python_tags_is_not_run(tmp_path: Path, out_dir: Path, net: Path) -> None:
    marker = tmp_path / "MARKER"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"ratio: !!python/object/apply:os.system ['touch {marker}']\n")
    case = watch(tmp_path, recipe, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--recipe",
        str(recipe),
        phrases=("recipe.yaml", "not valid YAML"),
    )
    assert not marker.exists()


# --------------------------------------------------------------------------------------- whole-module pickles


def test_torchvision_module_pickle_loads_without_trust(tmp_path: Path, out_dir: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    f = tmp_path / "squeeze.pt"
    torch.save(torchvision.models.squeezenet1_1(weights=None, num_classes=10), f)
    digest = sha(f)
    out = out_dir / "slim.pt"
    r = runner.invoke(app, ["shrink", str(f), "-o", str(out), "--input-shape", SHAPE, "--json"])
    assert r.exit_code == 0, r.stderr
    assert out.is_file() and (out_dir / "slim.plan.json").is_file()
    assert sha(f) == digest
    assert {p.name for p in out_dir.iterdir()} == {"slim.pt", "slim.plan.json"}


@pytest.fixture
def user_pickle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module whose class lives in the user's own file, saved whole; importable only via PYTHONPATH."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "usernet_bad_inputs.py").write_text(NET)
    monkeypatch.syspath_prepend(str(src))
    sys.modules.pop("usernet_bad_inputs", None)
    mod = importlib.import_module("usernet_bad_inputs")
    f = tmp_path / "user.pt"
    torch.save(mod.make(), f)
    yield f
    sys.modules.pop("usernet_bad_inputs", None)


def test_user_class_pickle_needs_trust(tmp_path: Path, out_dir: Path, user_pickle: Path) -> None:
    case = watch(tmp_path, user_pickle)
    shrink(
        case,
        str(user_pickle),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("user.pt", "--trust-pickle"),
    )


def test_user_class_pickle_works_with_trust(out_dir: Path, user_pickle: Path) -> None:
    digest = sha(user_pickle)
    out = out_dir / "slim.pt"
    r = runner.invoke(
        app,
        [
            "shrink",
            str(user_pickle),
            "-o",
            str(out),
            "--input-shape",
            SHAPE,
            "--trust-pickle",
            "--round-to",
            "4",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert out.is_file() and sha(user_pickle) == digest


def test_user_class_pickle_not_importable(
    tmp_path: Path, out_dir: Path, user_pickle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trusted, but the class's module is not on the path: say so (PYTHONPATH / FILE.py:FACTORY)."""
    src = str(user_pickle.parent / "src")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != src])
    sys.modules.pop("usernet_bad_inputs", None)
    case = watch(tmp_path, user_pickle)
    shrink(
        case,
        str(user_pickle),
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--trust-pickle",
        phrases=("cannot be imported", "PYTHONPATH"),
    )


# ------------------------------------------------------------------------------------------- factories


def test_untraceable_forward_names_file_and_line(tmp_path: Path, out_dir: Path) -> None:
    f = tmp_path / "branchy.py"
    f.write_text(UNTRACEABLE)
    lineno = UNTRACEABLE.splitlines().index("        if x.sum() > 0:  # data-dependent control flow") + 1
    assert UNTRACEABLE != NET
    case = watch(tmp_path, f)
    shrink(
        case,
        f"{f}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("cannot trace", f"{f}:{lineno}", "x.sum() > 0"),
    )


@pytest.mark.parametrize(
    "body,phrases",
    [
        (NET + "\nraise RuntimeError('boom at import')\n", ("importing", "boom at import")),
        (NET + "\ndef make():\n    raise ValueError('no model today')\n", ("make()", "no model today")),
        (NET + "\ndef make():\n    return 42\n", ("returned a int", "not a torch.nn.Module")),
        (NET.replace("def make", "def other"), ("no callable 'make'",)),
        ("def make(:\n", ("importing", "SyntaxError")),
    ],
    ids=["import-raises", "factory-raises", "not-a-module", "no-factory", "syntax-error"],
)
def test_broken_factory_files(tmp_path: Path, out_dir: Path, body: str, phrases: tuple[str, ...]) -> None:
    f = tmp_path / "broken.py"
    f.write_text(body)
    case = watch(tmp_path, f)
    shrink(case, f"{f}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, phrases=("broken.py", *phrases))


def test_unknown_torchvision_model(tmp_path: Path, out_dir: Path) -> None:
    case = watch(tmp_path)
    shrink(case, "torchvision:resnet19", "-o", str(out_dir / "o.pt"), phrases=("no model 'resnet19'", "list_models"))


# ------------------------------------------------------------------------------------------------ inputs


def test_input_shape_the_model_rejects(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        "1,5,32,32",
        phrases=("rejects the example input 1x5x32x32", "--input-shape"),
    )


@pytest.mark.parametrize("shape", ["a,b", "1,3,-2,32", "1,,0", "1.5,3"])
def test_input_shape_that_does_not_parse(tmp_path: Path, out_dir: Path, net: Path, shape: str) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        shape,
        phrases=("--input-shape", "is not a shape"),
    )


def test_empty_input_shape(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        "",
        phrases=("--input-shape", "is not a shape"),
    )


def test_input_file_missing_or_not_tensors(tmp_path: Path, out_dir: Path, net: Path) -> None:
    bad = tmp_path / "x.pt"
    torch.save([1, 2], bad)
    case = watch(tmp_path, net, bad)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input",
        str(tmp_path / "none.pt"),
        phrases=("none.pt", "does not exist"),
    )
    shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input", str(bad), phrases=("x.pt", "not a tensor"))


def test_weights_that_do_not_fit(tmp_path: Path, out_dir: Path, net: Path) -> None:
    w = tmp_path / "w.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict(), w)
    case = watch(tmp_path, net, w)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--weights",
        str(w),
        phrases=("--weights", "does not fit the model"),
    )


# ------------------------------------------------------------------------------------------------- flags


@pytest.mark.parametrize("ratio", ["-0.1", "1.0", "1.5", "nan"])
def test_ratio_out_of_range(tmp_path: Path, out_dir: Path, net: Path, ratio: str) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        f"--ratio={ratio}",
        phrases=("--ratio", "out of range"),
    )


def test_unknown_criterion(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--criterion",
        "l3",
        phrases=("unknown criterion 'l3'", "fpgm"),
    )


def test_round_to_zero(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--round-to",
        "0",
        phrases=("--round-to 0",),
    )


def test_ignore_pattern_matching_nothing(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--ignore",
        "layer9.*",
        phrases=("--ignore 'layer9.*' matches no module", "conv1"),
    )


def test_recipe_with_unknown_key(tmp_path: Path, out_dir: Path, net: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ratio: 0.3\nratoi: 0.5\n")
    case = watch(tmp_path, net, recipe)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(out_dir / "o.pt"),
        "--input-shape",
        SHAPE,
        "--recipe",
        str(recipe),
        phrases=("unknown keys ['ratoi']",),
    )


# ------------------------------------------------------------------------------------------------ outputs


def test_output_in_missing_folder(tmp_path: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(
        case,
        f"{net}:make",
        "-o",
        str(tmp_path / "no" / "such" / "o.pt"),
        "--input-shape",
        SHAPE,
        phrases=("output folder", "does not exist"),
    )


def test_output_is_a_folder(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(case, f"{net}:make", "-o", str(out_dir), "--input-shape", SHAPE, phrases=("is a folder",))


@pytest.mark.parametrize("how", ["same", "relative", "symlink"])
def test_output_equal_to_input_pickle(
    tmp_path: Path, seq_file: Path, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    target = {"same": str(seq_file), "relative": f"./{seq_file.name}", "symlink": "link.pt"}[how]
    if how == "symlink":
        (tmp_path / "link.pt").symlink_to(seq_file)
    case = watch(tmp_path, seq_file)
    shrink(case, str(seq_file), "-o", target, "--input-shape", SHAPE, phrases=("is the input",))


def test_output_equal_to_factory_source(tmp_path: Path, net: Path) -> None:
    case = watch(tmp_path, net)
    shrink(case, f"{net}:make", "-o", str(net), "--input-shape", SHAPE, phrases=("is the input",))


def test_output_equal_to_weights(tmp_path: Path, net: Path) -> None:
    w = tmp_path / "w.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3)).state_dict(), w)
    case = watch(tmp_path, net, w)
    shrink(case, f"{net}:make", "-o", str(w), "--weights", str(w), "--input-shape", SHAPE, phrases=("is the input",))


def test_output_in_read_only_folder(tmp_path: Path, net: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a 0o500 folder is still writable, so there is nothing to refuse")
        case = watch(tmp_path, net)
        shrink(case, f"{net}:make", "-o", str(ro / "o.pt"), "--input-shape", SHAPE, phrases=("not writable",))
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------------------------------ apply and graph


@pytest.fixture
def good_plan(tmp_path: Path, net: Path) -> Path:
    """A real plan for the tiny net (shrunk once, outside the folder the apply tests watch)."""
    made = tmp_path / "made"
    made.mkdir()
    r = runner.invoke(
        app, ["shrink", f"{net}:make", "-o", str(made / "slim.pt"), "--input-shape", SHAPE, "--round-to", "4"]
    )
    assert r.exit_code == 0, r.stderr
    return made / "slim.plan.json"


@pytest.mark.parametrize(
    "text,phrases,code",
    [
        ("not json at all", ("is not valid JSON",), 2),
        ('{"format": "other/1", "tensors": {}}', ("is not a slimnet.plan/1 plan",), 2),
        (
            '{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1, 99]}}}',
            ("does not fit the model", "index 99"),
            2,
        ),
        ('{"format": "slimnet.plan/1", "tensors": {"nope.weight": {"0": [0]}}}', ("no tensor 'nope.weight'",), 2),
        ('{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [1, 0]}}}', ("ascending",), 2),
        # cuts conv1's weight but not its bias or bn1: refused by the verifier, nothing written
        ('{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1]}}}', ("verification failed",), 3),
    ],
    ids=["not-json", "other-format", "index-out-of-range", "unknown-tensor", "unsorted", "inconsistent"],
)
def test_apply_bad_plans(
    tmp_path: Path, out_dir: Path, net: Path, text: str, phrases: tuple[str, ...], code: int
) -> None:
    plan = tmp_path / "p.plan.json"
    plan.write_text(text)
    case = watch(tmp_path, net, plan)
    invoke(
        case,
        ["apply", f"{net}:make", str(plan), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=phrases,
        code=code,
    )


def test_apply_missing_plan_and_output_over_plan(tmp_path: Path, out_dir: Path, net: Path, good_plan: Path) -> None:
    case = watch(tmp_path, net, good_plan)
    invoke(
        case,
        ["apply", f"{net}:make", str(tmp_path / "none.json"), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=("none.json", "does not exist"),
    )
    invoke(
        case,
        ["apply", f"{net}:make", str(good_plan), "-o", str(good_plan), "--input-shape", SHAPE],
        phrases=("is the input",),
    )


def test_apply_plan_to_another_model(tmp_path: Path, out_dir: Path, good_plan: Path) -> None:
    other = tmp_path / "other.py"
    other.write_text(
        NET.replace("nn.Conv2d(3, 16, 3, padding=1)", "nn.Conv2d(3, 8, 3, padding=1)")
        .replace("nn.BatchNorm2d(16)", "nn.BatchNorm2d(8)")
        .replace("nn.Conv2d(16, 16", "nn.Conv2d(8, 16")
    )
    case = watch(tmp_path, other, good_plan)
    invoke(
        case,
        ["apply", f"{other}:make", str(good_plan), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=("does not fit the model",),
    )


@pytest.mark.parametrize("spec,phrases", [("nope.pt", ("does not exist",)), ("BRANCHY", ("cannot trace",))])
def test_graph_bad_models(tmp_path: Path, spec: str, phrases: tuple[str, ...]) -> None:
    f = tmp_path / "branchy.py"
    f.write_text(UNTRACEABLE)
    spec = f"{f}:make" if spec == "BRANCHY" else str(tmp_path / spec)
    case = watch(tmp_path, f)
    invoke(case, ["graph", spec, "--input-shape", SHAPE], phrases=phrases)


# --------------------------------------------------------------------------------------------- interrupts


def test_interrupt_while_saving_leaves_nothing(
    tmp_path: Path, out_dir: Path, net: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of writing the model: no half file, no temp file, and the plan written just
    before is taken back."""
    real_save = torch.save

    def save_then_interrupt(obj: object, f: object, *a: object, **kw: object) -> None:
        real_save(obj, f, *a, **kw)  # the temp file is complete on disk: the rename must still not happen
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    case = watch(tmp_path, net)
    line = shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, code=130)
    assert line.startswith("interrupted")


def test_interrupt_while_verifying(tmp_path: Path, out_dir: Path, net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimnet import api

    def interrupted(*a: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "verify", interrupted)
    case = watch(tmp_path, net)
    line = shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, code=130)
    assert line.startswith("interrupted")


SLOW_FACTORY = textwrap.dedent(
    """
    import os
    import pathlib

    import torch
    import torchvision


    def make():
        pathlib.Path(os.environ["SLIMNET_TEST_STARTED"]).touch()  # imports done: the pipeline starts now
        torch.manual_seed(0)
        return torchvision.models.resnet50(weights=None)
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"  # torch's deprecation chatter is not slimnet's output
    return env


def test_ctrl_c_during_shrink(tmp_path: Path, out_dir: Path, delay: float = 1.5) -> None:
    """Real SIGINT to ``python -m slimnet shrink`` (torchvision's resnet50 at 224 px, from a factory file so that
    the start is observable) ~1.5 s into building, tracing and analysing it: exit 130, one line 'interrupted',
    nothing written. (resnet50 rather than resnet18 so that a fast machine cannot finish before the signal.)

    The signal is timed from the moment the factory runs, not from process start: the first ~1.5 s of a fresh
    process are imports, where Ctrl-C is a separate (known) problem, see test_ctrl_c_while_torch_imports_numpy."""
    f = tmp_path / "slowfactory.py"
    f.write_text(SLOW_FACTORY)
    started = tmp_path / "started"
    case = watch(out_dir)
    env = _env()
    env["SLIMNET_TEST_STARTED"] = str(started)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimnet",
            "shrink",
            f"{f}:make",
            "--input-shape",
            "1,3,224,224",
            "-o",
            str(out_dir / "out.pt"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), f"the factory never ran: {proc.poll()}"
        time.sleep(delay)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    check_refused(case, proc.returncode, stdout, stderr, "interrupted", code=130)
    assert not (out_dir / "out.pt").exists() and not (out_dir / "out.plan.json").exists()


_HOOK = textwrap.dedent(
    """
    import runpy
    import sys


    class CtrlC:
        '''Raise KeyboardInterrupt when MODULE is first imported: Ctrl-C arriving exactly at that moment.'''

        def find_spec(self, name, path=None, target=None):
            if name == {module!r}:
                sys.meta_path.remove(self)
                raise KeyboardInterrupt
            return None


    sys.meta_path.insert(0, CtrlC())
    sys.argv = ["slimnet"] + {argv!r}
    runpy.run_module("slimnet", run_name="__main__")
    """
)


def _ctrl_c_at_import(tmp_path: Path, module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_HOOK.format(module=module, argv=argv))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=180
    )


@pytest.mark.xfail(
    strict=True,
    reason="cli.py imports torch lazily inside guarded(); torch._C swallows a "
    "KeyboardInterrupt raised while it imports numpy, so the run goes on, writes the output and "
    "exits 0 (with a real SIGINT ~1.0-1.5 s after start; other timings give 'internal error' exit 1 "
    "or a C++ abort)",
)
def test_ctrl_c_while_torch_imports_numpy(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(out_dir)
    r = _ctrl_c_at_import(
        tmp_path, "numpy", ["shrink", f"{net}:make", "--input-shape", SHAPE, "-o", str(out_dir / "out.pt")]
    )
    check_refused(case, r.returncode, r.stdout, r.stderr, "interrupted", code=130)


@pytest.mark.xfail(
    strict=True,
    reason="typer's own KeyboardInterrupt handler (Exit(130), no message) catches a "
    "Ctrl-C that arrives before slimnet's command body runs (typer imports pydantic lazily): "
    "exit 130 but nothing on stderr",
)
def test_ctrl_c_before_the_command_runs(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(out_dir)
    r = _ctrl_c_at_import(
        tmp_path, "typer._adapters", ["shrink", f"{net}:make", "--input-shape", SHAPE, "-o", str(out_dir / "out.pt")]
    )
    check_refused(case, r.returncode, r.stdout, r.stderr, "interrupted", code=130)
