"""Distillation: a heavily pruned classifier regains agreement with its original within a few hundred steps
(KL on logits), a feature model its outputs (MSE); the command line writes the tuned model; DDP under torchrun."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from slimnet.api import shrink
from slimnet.errors import SlimnetError
from slimnet.repair.distill import distill, distill_loss

from .helpers import cli_runner, run_group


def mlp(classes: int = 10) -> nn.Module:
    """A random MLP whose class scores depend on the input and are as peaked as a trained model's (no output
    bias, last weights scaled up: at default init the softmax at T=2 is nearly uniform)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, classes, bias=False)
    )
    with torch.no_grad():
        model[4].weight.mul_(20.0)
    return model.eval()


def test_distillation_raises_agreement_of_a_pruned_classifier():
    teacher, data = mlp(), torch.randn(512, 16)
    cut = shrink(teacher, data[:1], ratio=0.5, round_to=1, data=data)
    before = cut.report["fidelity"]["cut"]  # on all 8 calibration batches; distill measures on the first 4
    assert before < 0.4
    result = distill(cut.model, teacher, data, steps=300, lr=3e-3, progress=False)
    assert result.metric == "top1-agreement" and result.before == pytest.approx(before, abs=0.1)
    assert result.after > 0.8 and result.after > result.before + 0.5
    assert [h["step"] for h in result.history][-1] == 300 and len(result.history) == 10
    assert all(p.grad is None for p in teacher.parameters())
    fresh = mlp()
    for (k, a), (_, b) in zip(teacher.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), f"the teacher's {k} changed"


def test_feature_outputs_are_matched_with_mse():
    teacher = mlp(32)
    data = torch.randn(256, 4, 16)  # tokens x features: a [N, 4, 32] output is not class scores
    cut = shrink(teacher, data[:1], ratio=0.75, round_to=1, data=data)
    assert cut.report["fidelity_metric"] == "relative-error"
    result = distill(cut.model, teacher, data, steps=200, lr=3e-3, progress=False)
    assert result.after < 0.6 * result.before


def test_loss_kinds_and_bad_settings():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    assert float(distill_loss(t, t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(s, t, 2.0)) > 0
    feats = torch.randn(4, 3, 7)  # not class scores: MSE
    assert float(distill_loss(feats + 1.0, feats, 2.0)) == pytest.approx(1.0)
    with pytest.raises(SlimnetError, match="--steps 0 must be at least 1"):
        distill(mlp(), mlp(), torch.randn(8, 16), steps=0)
    with pytest.raises(SlimnetError, match="--lr -1.0 must be positive"):
        distill(mlp(), mlp(), torch.randn(8, 16), lr=-1.0)


MLP_FILE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10, bias=False))
    with torch.no_grad():
        model[4].weight.mul_(20.0)
    return model
"""


def test_cli_shrink_then_distill(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlp.py").write_text(MLP_FILE)
    torch.save(torch.randn(256, 16), tmp_path / "data.pt")
    from slimnet.cli import app

    runner = cli_runner()
    common = ["--input-shape", "1,16", "--data", "data.pt", "--trust-pickle"]
    res = runner.invoke(app, ["shrink", "mlp.py:make", "-o", "p.pt", "--ratio", "0.75", "--round-to", "1", *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["distill", "p.pt", "--teacher", "mlp.py:make", "-o", "t.pt", "--steps", "150", "--lr", "3e-3", "--json",
              *common],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["output"] == "t.pt" and report["steps"] == 150 and report["after"] > report["before"]
    assert len(report["history"]) == 10 and report["history"][-1]["value"] == report["after"]
    tuned = torch.load(tmp_path / "t.pt", weights_only=False)
    assert isinstance(tuned, nn.Sequential)
    bad = runner.invoke(app, ["distill", "p.pt", "--teacher", "mlp.py:make", "-o", "u.pt", "--steps", "5", *common[:2]])
    assert bad.exit_code == 2 and "distill needs calibration data" in bad.stderr and not (tmp_path / "u.pt").exists()


@pytest.mark.slow
def test_ddp_under_torchrun_on_two_cpu_processes(tmp_path):
    (tmp_path / "mlp.py").write_text(MLP_FILE)
    torch.save(torch.randn(256, 16), tmp_path / "data.pt")
    common = ["--input-shape", "1,16", "--data", "data.pt", "--trust-pickle"]
    cut = run_group([sys.executable, "-m", "slimnet", "shrink", "mlp.py:make", "-o", "p.pt", "--ratio", "0.5",
                     "--round-to", "1", *common], tmp_path)  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    res = run_group([*torchrun, "-m", "slimnet", "distill", "p.pt", "--teacher", "mlp.py:make", "-o", "t.pt",
                     "--steps", "100", "--lr", "3e-3", "--device", "cpu", "--json", *common], tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["after"] > report["before"] + 0.2
