"""Sensitivity analysis: each point is the real cut of one group, measured against the original; a fragile group
shows as fragile; the allocation it drives beats a uniform cut at the same MACs; two torchrun processes write
the same bytes as one; the plot and the table name the worst groups."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet.api import shrink
from slimnet.errors import SlimnetError
from slimnet.repair.fidelity import fidelity, reference
from slimnet.sensitivity import report as sensitivity_report
from slimnet.sensitivity.analysis import parse_ratios, sensitivity

from .helpers import NET, cli_runner, run_group


class Fragile(nn.Module):
    """``wide`` (32 channels, 24 of them dead: zero weights) and ``narrow`` (8 channels, all needed) feed the
    classifier side by side: cutting ``narrow`` hurts, cutting ``wide`` down to its 8 live channels does not."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wide = nn.Conv2d(3, 32, 3, padding=1)
        self.narrow = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(40, 10, bias=False)
        with torch.no_grad():
            self.wide.weight[8:].zero_()
            self.wide.bias[8:].zero_()
            self.fc.weight.mul_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.wide(x)).mean((2, 3))
        b = torch.relu(self.narrow(x)).mean((2, 3))
        return self.fc(torch.cat([a, b], 1))


def test_points_are_real_single_group_cuts():
    model, data = Fragile().eval(), torch.randn(64, 3, 8, 8)
    sens = sensitivity(model, data[:1], data, ratios=[0.25, 0.75], round_to=1)
    by = {row["group"]: row for row in sens["groups"]}
    assert set(by) == {"wide", "narrow"} and sens["metric"] == "top1-agreement" and sens["baseline"] == 1.0
    assert [p["kept"] for p in by["wide"]["points"]] == [24, 8]
    assert [p["loss"] for p in by["wide"]["points"]] == [0.0, 0.0]  # only dead channels go
    assert by["narrow"]["points"][-1]["loss"] > 0.3
    ref = reference(model, list(data.split(32)))
    for name, row in by.items():
        for p in row["points"]:
            cut = shrink(model, data[:1], ratio=0.0, ratios={name: p["ratio"]}, round_to=1, measure=True)
            assert fidelity(cut.model, ref) == p["value"]
            assert cut.report["macs"][1] == p["macs"]
    assert sensitivity_report.worst(sens, 1)[0]["group"] == "narrow"


def test_sensitivity_driven_allocation_beats_uniform_at_the_same_macs():
    model, data = Fragile().eval(), torch.randn(64, 3, 8, 8)
    sens = sensitivity(model, data[:1], data, ratios=[0.25, 0.5, 0.75], round_to=1)
    uniform = shrink(model, data[:1], target_macs=0.5, round_to=1, data=data)
    chosen = shrink(model, data[:1], target_macs=0.5, round_to=1, data=data, sensitivity=sens)
    assert abs(chosen.report["target"]["reached"] - uniform.report["target"]["reached"]) < 0.05
    assert chosen.report["target"]["ratios"]["narrow"] < chosen.report["target"]["ratios"]["wide"]
    assert chosen.report["fidelity"]["cut"] == 1.0 > uniform.report["fidelity"]["cut"]
    assert chosen.plan["target"]["allocation"] == "sensitivity"


def test_a_target_needs_measured_ratios_deep_enough():
    model, data = Fragile().eval(), torch.randn(32, 3, 8, 8)
    sens = sensitivity(model, data[:1], data, ratios=[0.1], round_to=1)
    with pytest.raises(SlimnetError, match=r"cannot be reached with the measured ratios \(up to 0.1\)"):
        shrink(model, data[:1], target_macs=0.3, round_to=1, sensitivity=sens)
    with pytest.raises(SlimnetError, match="allocates towards a target"):
        shrink(model, data[:1], round_to=1, sensitivity=sens)


def test_bad_settings():
    with pytest.raises(SlimnetError, match="is not a list of numbers"):
        parse_ratios("0.1,x")
    with pytest.raises(SlimnetError, match=r"--ratios entry 1.5 is out of range"):
        parse_ratios("0.1,1.5")
    with pytest.raises(SlimnetError, match="sensitivity needs calibration data"):
        sensitivity(Fragile(), torch.randn(1, 3, 8, 8), None)


def test_plot_and_table(tmp_path):
    pytest.importorskip("matplotlib")
    model, data = Fragile().eval(), torch.randn(32, 3, 8, 8)
    sens = sensitivity(model, data[:1], data, ratios=[0.5], round_to=1)
    sensitivity_report.plot(sens, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert sensitivity_report.header(sens) == ["group", "kind", "units", "top1-agreement @ 0.5"]
    assert [r[:3] for r in sensitivity_report.rows(sens)] == [["wide", "channels", "32"], ["narrow", "channels", "8"]]


def test_two_torchrun_processes_write_the_same_json_as_one(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    torch.save(torch.randn(48, 3, 32, 32), tmp_path / "data.pt")
    args = ["sensitivity", "net.py:make", "--input-shape", "1,3,32,32", "--data", "data.pt", "--round-to", "1"]
    args += ["--ratios", "0.25,0.5", "--batch-size", "16"]
    one = run_group([sys.executable, "-m", "slimnet", *args, "-o", "one.json"], tmp_path)
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = run_group([*torchrun, "-m", "slimnet", *args, "-o", "two.json"], tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert (tmp_path / "one.json").read_bytes() == (tmp_path / "two.json").read_bytes()
    result = json.loads((tmp_path / "one.json").read_text())
    assert [row["group"] for row in result["groups"]] == ["conv1", "conv2"]
    assert all(p["loss"] >= 0 for row in result["groups"] for p in row["points"])


def test_cli_writes_json_plot_and_refuses_missing_data(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    torch.save(torch.randn(16, 3, 32, 32), tmp_path / "data.pt")
    from slimnet.cli import app

    base = ["sensitivity", "net.py:make", "--input-shape", "1,3,32,32", "-o", "s.json", "--ratios", "0.5"]
    res = cli_runner().invoke(app, [*base, "--data", "data.pt", "--plot", "s.png", "--json", "--recalibrate-bn"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["output"] == "s.json" and report["format"] == "slimnet.sensitivity/1"
    assert report["repairs"] == ["recalibrate_bn"]
    assert Path("s.png").is_file() and json.loads(Path("s.json").read_text())["groups"] == report["groups"]
    bad = cli_runner().invoke(app, [*base, "--data", "missing.pt"])
    assert bad.exit_code == 2 and "--data missing.pt does not exist" in bad.stderr


class ConvBn(nn.Module):
    """Conv -> BN -> ReLU twice, then a classifier: cuts shift the second BN's input statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def test_repaired_sweep_measures_the_repaired_cut():
    torch.manual_seed(0)
    model, data = ConvBn(), torch.randn(64, 3, 8, 8)
    model.train()(data)  # non-trivial running statistics
    model.eval()
    plain = sensitivity(model, data[:1], data, ratios=[0.5], round_to=1)
    one = [data]  # one batch: shrink then fits and judges its repairs on it, as the sweep does (nothing held out)
    fixed = sensitivity(model, data[:1], one, ratios=[0.5], round_to=1, recalibrate_bn=True, compensate_bias=True)
    assert plain["repairs"] == [] and fixed["repairs"] == ["compensate_bias", "recalibrate_bn"]
    for row in fixed["groups"]:
        cut = shrink(
            model,
            data[:1],
            ratio=0.0,
            ratios={row["group"]: 0.5},
            round_to=1,
            data=one,
            recalibrate_bn=True,
            compensate_bias=True,
        )
        assert row["points"][0]["value"] == cut.report["fidelity"]["recalibrate_bn"]
    assert [r["points"][0]["value"] for r in fixed["groups"]] != [r["points"][0]["value"] for r in plain["groups"]]
