"""``slimnet shrink``: the --json contract and the files written, recipes, and the catalogue's bad flags and outputs
(one line, nothing written: see :mod:`tests.refusals`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet.cli import app

from .helpers import NET
from .refusals import SHAPE, runner, sha, shrink, watch

#: The --json contract below counts the channels kept in two groups of different widths: NET with conv2 (and so
#: fc's input) 32 wide instead of 16, so that conv1's group keeps 8 and conv2's keeps 16.
WIDE_NET = NET.replace("nn.Conv2d(16, 16, 3, padding=1)", "nn.Conv2d(16, 32, 3, padding=1)").replace(
    "nn.Linear(16, 10)", "nn.Linear(32, 10)"
)


# --------------------------------------------------------------------------------------------- what it writes


def test_shrink_json_contract_and_files(tmp_path):
    (tmp_path / "wide.py").write_text(WIDE_NET)
    spec = f"{tmp_path / 'wide.py'}:make"
    out = tmp_path / "slim.pt"
    r = runner.invoke(
        app,
        ["shrink", spec, "--ratio", "0.5", "--input-shape", "1,3,16,16", "--round-to", "4", "-o", str(out), "--json"],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    for key in ("params", "macs", "groups", "pruned_groups", "skipped", "max_abs_diff", "output", "plan"):
        assert key in rep
    assert rep["params"][1] < rep["params"][0] and rep["macs"][1] < rep["macs"][0]
    assert rep["groups"] == 3 and rep["pruned_groups"] == 2
    assert rep["skipped"] == [{"group": "fc", "reason": "model output"}]
    assert rep["max_abs_diff"] <= rep["tolerance"]
    plan = json.loads(Path(rep["plan"]).read_text())
    assert Path(rep["plan"]) == tmp_path / "slim.plan.json"
    assert plan["format"] == "slimnet.plan/1" and plan["criterion"] == "l1" and plan["ratio"] == 0.5
    assert len(plan["tensors"]["conv1.weight"]["0"]) == 8 and len(plan["tensors"]["conv2.weight"]["0"]) == 16
    assert plan["tensors"]["fc.weight"] == {"1": plan["tensors"]["conv2.weight"]["0"]}
    model = torch.load(out, weights_only=False)
    assert model.conv1.out_channels == 8 and model.fc.in_features == 16
    assert model(torch.randn(2, 3, 20, 20)).shape == (2, 10)


def test_shrink_pickled_builtin_without_trust_and_input_untouched(tmp_path):
    import torchvision

    src = tmp_path / "m.pt"
    torch.save(torchvision.models.mobilenet_v3_small(), src)
    before = sha(src)
    out = tmp_path / "m-slim.pt"
    r = runner.invoke(app, ["shrink", str(src), "--input-shape", "1,3,64,64", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert sha(src) == before
    assert json.loads(r.stdout)["params"][1] < json.loads(r.stdout)["params"][0]


# ------------------------------------------------------------------------------------------ flags and recipes


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
        phrases=("round_to=0 (--round-to)",),
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


def test_recipe_sets_defaults_and_flags_win(tmp_path, net):
    spec = f"{net}:make"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("ratio: 0.75\ncriterion: l2\nround_to: 1\n")
    out = tmp_path / "o.pt"
    r = runner.invoke(
        app,
        [
            "shrink",
            spec,
            "--recipe",
            str(recipe),
            "--criterion",
            "fpgm",
            "--input-shape",
            "1,3,8,8",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["ratio"] == 0.75 and rep["criterion"] == "fpgm" and rep["round_to"] == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("ratoi: 0.5\n")
    r = runner.invoke(app, ["shrink", spec, "--recipe", str(bad), "-o", str(tmp_path / "x.pt")])
    assert r.exit_code == 2 and "unknown keys" in r.output and not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------------------------------------------- outputs


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
