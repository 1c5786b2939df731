"""``slimnet shrink`` with targets, --global, --ratios and latency tables: the --json fields, the plan fields, recipe
keys, and bad values refused in one line with nothing written (see :mod:`tests.refusals`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from slimnet.cli import app
from slimnet.cli.recipe import RECIPE_KEYS
from slimnet.settings import check_allocation

from .helpers import NET
from .refusals import SHAPE, runner, shrink, watch

#: NET with two wide groups (conv1: 64, conv2: 32), so that targets and shares have room.
WIDE = (
    NET.replace("nn.Conv2d(3, 16, 3, padding=1)", "nn.Conv2d(3, 64, 3, padding=1)")
    .replace("nn.BatchNorm2d(16)", "nn.BatchNorm2d(64)")
    .replace("nn.Conv2d(16, 16, 3, padding=1)", "nn.Conv2d(64, 32, 3, padding=1)")
    .replace("nn.Linear(16, 10)", "nn.Linear(32, 10)")
)
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture
def wide(tmp_path: Path) -> str:
    f = tmp_path / "wide.py"
    f.write_text(WIDE)
    return f"{f}:make"


def run_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "slim.pt"
    r = runner.invoke(app, ["shrink", *args, "--input-shape", SHAPE, "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    rep["plan_data"] = json.loads(Path(rep["plan"]).read_text())
    return rep


def kept(rep: dict) -> dict[str, tuple[int, int]]:
    return {d["group"]: (d["units"], d["kept"]) for d in rep["group_details"]}


def test_target_macs_json_and_plan(tmp_path, wide):
    rep = run_json(tmp_path, wide, "--target-macs", "0.5", "--round-to", "1")
    t = rep["target"]
    assert t["kind"] == "macs" and t["wanted"] == 0.5 and abs(t["reached"] - 0.5) <= 0.01 and t["within_tolerance"]
    assert rep["macs"][1] / rep["macs"][0] == pytest.approx(t["reached"], abs=1e-6)
    plan = rep["plan_data"]
    assert plan["format"] == "slimnet.plan/1" and plan["target"] == t and plan["allocation"] == "uniform"
    assert rep["allocation"] == "uniform" and 0 < rep["importance_kept"]["share"] < 1


def test_global_target_params_keeps_within_the_max_layer_ratio(tmp_path, wide):
    rep = run_json(tmp_path, wide, "--target-params", "0.6", "--global", "--max-layer-ratio", "0.5", "--round-to", "1")
    t = rep["target"]
    assert t["allocation"] == "global" and abs(t["reached"] - 0.6) <= 0.01
    assert rep["params"][1] / rep["params"][0] == pytest.approx(t["reached"], abs=1e-6)
    assert all(k >= n / 2 for n, k in kept(rep).values())
    assert rep["plan_data"]["max_layer_ratio"] == 0.5


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_ratios_file_applies_exactly_its_shares(tmp_path, wide, suffix):
    f = tmp_path / f"ratios{suffix}"
    data = {"conv1": 0.25}
    f.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    rep = run_json(tmp_path, wide, "--ratios", str(f), "--round-to", "1")
    assert kept(rep)["conv1"] == (64, 48) and kept(rep)["conv2"] == (32, 32)  # not named: whole
    rep = run_json(tmp_path, wide, "--ratios", str(f), "--ratio", "0.5", "--round-to", "1")
    assert kept(rep)["conv1"] == (64, 48) and kept(rep)["conv2"] == (32, 16)  # --ratio for the rest


def test_recipe_keys_for_allocation(tmp_path, wide):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("target_macs: 0.6\nglobal: true\nmax_layer_ratio: 0.6\nround_to: 1\nratios: {conv2: 0.5}\n")
    rep = run_json(tmp_path, wide, "--recipe", str(recipe))
    assert rep["target"]["allocation"] == "global" and rep["target"]["wanted"] == 0.6
    assert kept(rep)["conv2"] == (32, 16) and kept(rep)["conv1"][1] >= 64 * 0.4
    rep = run_json(tmp_path, wide, "--recipe", str(recipe), "--ratio", "0.25")  # a --ratio flag replaces the target
    assert "target" not in rep and rep["global"]["allocation"] == "global"


def test_shipped_recipes_use_known_keys_and_valid_settings():
    for path in sorted(RECIPES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert set(data) <= set(RECIPE_KEYS), path.name
        targets = {k: data.get(f"target_{k}") for k in ("macs", "params", "latency")}
        check_allocation(targets=targets, max_layer_ratio=data.get("max_layer_ratio", 0.8), backend=data.get("backend"))
    latency = yaml.safe_load((RECIPES / "mobilenet_v2-cpu-latency.yaml").read_text())
    assert latency["backend"] == "ort-cpu" and "target_latency" in latency


def reachable_latency(tmp_path: Path, wide: str) -> str:
    """A target three quarters of the way from the measured table's floor to the whole model: a fixed fraction
    can lie below the floor of a table measured on a busy machine (0.7 did in CI)."""
    r = runner.invoke(app, ["shrink", wide, "--target-latency", "0.01", "--input-shape", SHAPE,
                            "-o", str(tmp_path / "never.pt")])  # fmt: skip
    found = re.search(r"allows is ([0-9.]+) of the original", r.output)
    assert r.exit_code == 2 and found, r.output
    floor = float(found.group(1))
    return f"{floor + 0.75 * (1.0 - floor):.4f}"


def test_target_latency_json_and_cache(tmp_path, wide):
    wanted = reachable_latency(tmp_path, wide)  # the table is measured (and cached) here
    first = run_json(tmp_path, wide, "--target-latency", wanted)
    t = first["target"]
    assert t["kind"] == "latency" and t["backend"] == "ort-cpu" and t["threads"] == 1 and t["batch_size"] == 1
    assert {"predicted_ms", "measured_ms", "measured_original_ms", "predicted_fraction", "rounds", "table"} <= set(t)
    second = run_json(tmp_path, wide, "--target-latency", wanted)
    assert second["target"]["table"]["cached"] and second["target"]["table"]["path"] == t["table"]["path"]
    third = run_json(tmp_path, wide, "--target-latency", wanted, "--no-cache")
    assert not third["target"]["table"]["cached"]


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--target-macs", "1.5"], ("--target-macs 1.5 is out of range",)),
        (["--target-params", "0"], ("--target-params 0.0 is out of range",)),
        (["--target-macs", "0.5", "--target-params", "0.5"], ("give one target",)),
        (["--target-macs", "0.5", "--ratio", "0.3"], ("--ratio and --target-macs",)),
        (["--global", "--max-layer-ratio", "1"], ("--max-layer-ratio 1.0 is out of range",)),
        (["--target-latency", "fast"], ("--target-latency 'fast'",)),
        (["--target-latency", "0.5", "--backend", "tpu"], ("unknown --backend tpu",)),
        (["--target-latency", "0.5", "--threads", "0"], ("threads=0 (--threads)",)),
        (["--target-macs", "0.001"], ("cannot be reached: the smallest this model allows is",)),
        (["--ratios", "missing.yaml"], ("--ratios missing.yaml does not exist",)),
    ],
)
def test_bad_allocation_values(tmp_path, out_dir, net, args, phrases):
    case = watch(tmp_path, net)
    shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, *args, phrases=phrases)


@pytest.mark.parametrize(
    ("content", "phrases"),
    [
        ("conv1x: 0.5\n", ("'conv1x' names no group; the closest group is 'conv1'",)),
        ("fc: 0.5\n", ("group 'fc' cannot be pruned (model output)",)),
        ("conv1: 1.5\n", ("conv1", "out of range")),
        ("conv1: [0.5]\n", ("must be a share to drop",)),
        ("- conv1\n", ("must be a mapping",)),
        ("conv1: [\n", ("not valid YAML",)),
    ],
)
def test_bad_ratios_files(tmp_path, out_dir, net, content, phrases):
    f = tmp_path / "ratios.yaml"
    f.write_text(content)
    case = watch(tmp_path, net, f)
    shrink(
        case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, "--ratios", str(f), phrases=phrases
    )


def test_bad_recipe_allocation_value(tmp_path, out_dir, net):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("global: maybe\n")
    case = watch(tmp_path, net, recipe)
    shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, "--recipe", str(recipe),
           phrases=("global must be a bool",))  # fmt: skip
