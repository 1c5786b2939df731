"""Training-free repair: BN recalibration restores a model whose statistics were perturbed on purpose; bias
compensation makes the pruned model's mean output on the calibration data the original's (into the consumer's
bias, or into the BatchNorm right after a bias-free consumer); repairs run only on a verified cut."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimnet import api
from slimnet.errors import VerificationError
from slimnet.repair.fidelity import fidelity as agreement
from slimnet.repair.fidelity import reference
from slimnet.repair.steps import recalibrate_bn
from slimnet.verify.verifier import VerifyResult


def bn_net() -> nn.Module:
    """A small CNN whose classifier has no bias, so that its predictions depend on the input alone."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10, bias=False),
    )
    return model.eval()


def test_recalibration_restores_perturbed_statistics():
    data = list(torch.randn(128, 3, 8, 8).split(32))
    model = bn_net()
    recalibrate_bn(model, data)  # the "trained" statistics: those of the data
    trained = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    broken = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in broken.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(torch.randn(16, generator=gen) * m.running_var.sqrt())
                m.running_var.mul_(torch.rand(16, generator=gen) * 4 + 0.25)
    ref = reference(model, data)
    assert agreement(broken, ref) < 0.8
    assert recalibrate_bn(broken, data) == 2
    assert agreement(broken, ref) == 1.0
    for k, v in broken.state_dict().items():
        if "running_mean" in k or "running_var" in k:
            torch.testing.assert_close(v, trained[k], rtol=1e-5, atol=1e-6)
    assert not broken.training and all(m.momentum == 0.1 for m in broken.modules() if isinstance(m, nn.BatchNorm2d))


class Consumer(nn.Module):
    """conv1 -> ReLU (channels never centred: the removed ones have a large mean) -> conv2 (the consumer, with
    or without a bias; without one, a BatchNorm follows) -> global mean -> fc."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 8, 3, padding=1, bias=bias)
        self.bn = nn.Identity() if bias else nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.mark.parametrize("bias", [True, False], ids=["into-bias", "into-norm"])
def test_bias_compensation_matches_the_mean_output(bias):
    torch.manual_seed(0)
    model = Consumer(bias).eval()
    if not bias:
        with torch.no_grad():
            model.bn.running_mean.normal_()
            model.bn.running_var.uniform_(0.5, 2.0)
    data = torch.randn(96, 3, 10, 10)
    x = data[:1]
    plain = api.shrink(model, x, ratio=0.5, round_to=1, ignore=["fc"], data=data, measure=False)
    fixed = api.shrink(model, x, ratio=0.5, round_to=1, ignore=["fc"], data=data, compensate_bias=True, measure=False)
    fit = data[:64]  # 3 calibration batches of 32: the repair fits on the first 2, the last is held out
    with torch.no_grad():
        want = model(fit).mean(0)
        before = plain.model(fit).mean(0)
        after = fixed.model(fit).mean(0)
    assert (before - want).abs().max() > 0.05  # the cut did move the mean
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    done = fixed.report["repairs"]["compensate_bias"]
    assert done == (
        {"into_bias": ["conv2"], "into_norm": [], "skipped": []}
        if bias
        else {"into_bias": [], "into_norm": ["conv2 -> bn"], "skipped": []}
    )
    assert set(fixed.report["fidelity"]) == {"cut", "compensate_bias"}
    assert fixed.verification.passed  # the cut was verified before the repair changed weights


def test_repairs_never_run_on_a_cut_that_fails_verification(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "verify", lambda *_a, **_k: VerifyResult(1.0, 1e-6, False, "float64", ["x"], "diff"))
    monkeypatch.setattr(api.calibrate, "repair", lambda *_a, **_k: calls.append(1) or {})
    with pytest.raises(VerificationError):
        api.shrink(bn_net(), torch.randn(1, 3, 8, 8), data=torch.randn(16, 3, 8, 8), recalibrate_bn=True)
    assert calls == []


def test_shrink_reports_each_repair_step_after_the_cut():
    data = torch.randn(64, 3, 8, 8)
    model = bn_net()
    recalibrate_bn(model, list(data.split(16)))
    res = api.shrink(
        model, data[:1], ratio=0.5, criterion="activation", data=data, recalibrate_bn=True, compensate_bias=True
    )
    rep = res.report
    assert list(rep["fidelity"]) == ["cut", "compensate_bias", "recalibrate_bn"]
    assert rep["calibration"] == {"source": "python", "batches": 2, "samples": 64}
    assert rep["repairs"]["recalibrate_bn"] == {"norms": 2}
    assert rep["verified"] and rep["exact"]
    assert rep["fidelity_data"] == {"fit_batches": 1, "held_out_batches": 1, "held_out": True}
    ref = reference(model, list(data.split(32))[1:])  # fidelity is measured on the held-out batch
    assert agreement(res.model, ref) == rep["fidelity_final"]
