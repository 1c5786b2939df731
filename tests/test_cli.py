"""The CLI end to end on small models: files written, --json contract, plans re-applied bit for bit."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import torch
from typer.testing import CliRunner

from slimnet.cli import app

runner = CliRunner()

NET = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(32)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def make():
        torch.manual_seed(0)
        return Net()
    """
)


def _net(tmp_path: Path) -> str:
    f = tmp_path / "net.py"
    f.write_text(NET)
    return f"{f}:make"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_shrink_json_contract_and_files(tmp_path):
    spec = _net(tmp_path)
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


def test_apply_reproduces_bit_for_bit_and_plans_are_deterministic(tmp_path):
    spec = _net(tmp_path)
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    args = ["--ratio", "0.3", "--criterion", "random", "--seed", "7", "--input-shape", "1,3,8,8"]
    assert runner.invoke(app, ["shrink", spec, *args, "-o", str(a)]).exit_code == 0
    assert runner.invoke(app, ["shrink", spec, *args, "-o", str(b)]).exit_code == 0
    assert (tmp_path / "a.plan.json").read_bytes() == (tmp_path / "b.plan.json").read_bytes()
    r = runner.invoke(
        app, ["apply", spec, str(tmp_path / "a.plan.json"), "-o", str(c), "--input-shape", "1,3,8,8", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verified"] is True
    sa = torch.load(a, weights_only=False).state_dict()
    sc = torch.load(c, weights_only=False).state_dict()
    assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)


def test_builtin_model_and_graph(tmp_path):
    r = runner.invoke(app, ["graph", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)
    assert len(g["groups"]) == 13 and g["prunable"] == 12
    fc = next(x for x in g["groups"] if x["name"] == "fc")
    assert fc["reason"] == "model output" and fc["units"] == 1000
    r = runner.invoke(app, ["graph", "torchvision:resnet18", "--input-shape", "1,3,32,32"])
    assert r.exit_code == 0 and "13 groups, 12 prunable" in r.stdout


def test_shrink_pickled_builtin_without_trust_and_input_untouched(tmp_path):
    import torchvision

    src = tmp_path / "m.pt"
    torch.save(torchvision.models.mobilenet_v3_small(), src)
    before = _sha(src)
    out = tmp_path / "m-slim.pt"
    r = runner.invoke(app, ["shrink", str(src), "--input-shape", "1,3,64,64", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert _sha(src) == before
    assert json.loads(r.stdout)["params"][1] < json.loads(r.stdout)["params"][0]


def test_version_and_module_entry():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("slimnet ")


def test_recipe_sets_defaults_and_flags_win(tmp_path):
    spec = _net(tmp_path)
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
