"""Loading what the user names: model files, pickles that run code, whole-module pickles, factories, example
inputs and weights. Every bad one is refused in one line with nothing written (see :mod:`tests.refusals`)."""

from __future__ import annotations

import importlib
import os
import pickle
import random
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet.cli import app

from .helpers import NET, UNTRACEABLE
from .refusals import SHAPE, runner, sha, shrink, watch

# ------------------------------------------------------------------------------------------------ model files


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


# -------------------------------------------------------------------------------------- pickles that run code


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


# -------------------------------------------------------------------------------------------------- factories


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


# ----------------------------------------------------------------------------------------------------- inputs


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
