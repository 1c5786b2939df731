"""Least-squares reconstruction: the refit consumer is the closed-form (ridge) least-squares solution computed
here from the calibration rows, it lowers the consumer's output error against the original, a bias-free
convolution puts its intercept into the following BatchNorm; a repair step that makes held-out fidelity worse is
taken back with a warning; the text output shows fidelity after every step."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet import api
from slimnet.errors import RepairWarning
from slimnet.repair import calibrate
from slimnet.repair.reconstruct import reconstruct
from slimnet.repair.steps import recalibrate_bn

from .helpers import cli_runner
from .test_repair import Consumer, bn_net


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 10)).eval()


def design(model: nn.Module, x: torch.Tensor, kept: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows [kept hidden units, 1] and the original's outputs, in float64."""
    with torch.no_grad():
        hidden = torch.relu(model[0](x))[:, kept].double()
        return torch.cat([hidden, torch.ones(len(x), 1, dtype=torch.float64)], 1), model(x).double()


@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_refit_linear_is_the_closed_form_least_squares_solution(ridge):
    model, data = mlp(), torch.randn(256, 12)
    cut = api.shrink(model, data[:1], ratio=0.5, round_to=1, measure=False)
    kept = cut.plan["tensors"]["2.weight"]["1"]
    batches = list(data.split(64))
    done = reconstruct(model, cut.model, cut.plan, cut.analysis, batches, ridge=ridge)
    assert done.refit == ["2"] and done.skipped == []
    xa, y = design(model, data, kept)
    if ridge == 0.0:
        want = torch.linalg.lstsq(xa, y).solution
    else:
        a = xa.t() @ xa
        d = len(kept)
        a[range(d), range(d)] += ridge * a.diagonal()[:d].mean()  # the intercept is not shrunk
        want = torch.linalg.solve(a, xa.t() @ y)
    got = torch.cat([cut.model[2].weight.t(), cut.model[2].bias[None]]).double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    before, after = done.error["2"]
    residual = (xa @ want - y).norm() / y.norm()
    assert after == pytest.approx(float(residual), rel=1e-4) and after < before


def bn_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.bn(model.conv2(torch.relu(model.conv1(x))))


def test_reconstruction_lowers_the_next_layers_output_error_and_folds_into_the_norm():
    torch.manual_seed(0)
    model = Consumer(bias=False).eval()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2.0)
    data = torch.randn(128, 3, 10, 10)
    common = dict(ratio=0.5, round_to=1, ignore=["fc"], data=data, measure=False)
    plain = api.shrink(model, data[:1], **common)
    fixed = api.shrink(model, data[:1], **common, reconstruct=True)
    comp = api.shrink(model, data[:1], **common, compensate_bias=True)
    fit = data[:96]  # 4 batches of 32: fit on 3, hold 1 out
    want = bn_output(model, fit)
    err = {k: float((bn_output(r.model, fit) - want).norm() / want.norm()) for k, r in
           (("cut", plain), ("reconstruct", fixed), ("compensate", comp))}  # fmt: skip
    assert err["reconstruct"] < 0.75 * err["cut"] and err["reconstruct"] < err["compensate"]
    rec = fixed.report["repairs"]["reconstruct"]
    assert rec["refit"] == ["conv2"] and rec["into_norm"] == ["conv2 -> bn"]
    # the closed form on unfolded patches, the intercept moved into the norm's running mean
    kept = plain.plan["tensors"]["conv2.weight"]["1"]
    with torch.no_grad():
        x = torch.relu(model.conv1(fit))[:, kept]
        rows = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, len(kept) * 9).double()
        y = model.conv2(torch.relu(model.conv1(fit))).movedim(1, -1).reshape(-1, 8).double()
    xa = torch.cat([rows, torch.ones(len(rows), 1, dtype=torch.float64)], 1)
    a = xa.t() @ xa
    d = rows.shape[1]
    a[range(d), range(d)] += 1e-3 * a.diagonal()[:d].mean()
    theta = torch.linalg.solve(a, xa.t() @ y)
    torch.testing.assert_close(fixed.model.conv2.weight.reshape(8, -1).t().double(), theta[:-1], rtol=1e-4, atol=1e-5)
    shift = model.bn.running_mean.double() - fixed.model.bn.running_mean.double()
    torch.testing.assert_close(shift, theta[-1], rtol=1e-4, atol=1e-5)
    assert fixed.verification.passed and "reconstruct" in fixed.report["weights_refit"]


def test_a_repair_step_that_hurts_is_reverted_with_a_warning(monkeypatch):
    data = torch.randn(128, 3, 8, 8)
    model = bn_net()
    recalibrate_bn(model, list(data.split(32)))  # statistics of the data: the predictions vary with the input
    plain = api.shrink(model, data[:1], ratio=0.25, data=data, measure=False)

    def scramble(pruned: nn.Module, _batches: object) -> int:
        with torch.no_grad():
            for p in pruned.parameters():
                p.normal_()
        return 2

    monkeypatch.setattr(calibrate, "recalibrate_bn", scramble)
    with pytest.warns(RepairWarning, match="recalibrate_bn made top1-agreement on held-out calibration data worse"):
        res = api.shrink(model, data[:1], ratio=0.25, data=data, measure=False, recalibrate_bn=True)
    rep = res.report
    assert rep["fidelity"]["recalibrate_bn"] < rep["fidelity"]["cut"] == rep["fidelity_final"]
    assert rep["repairs_reverted"] == ["recalibrate_bn"] and rep["weights_refit"] == []
    assert len(rep["repair_warnings"]) == 1
    for (k, a), (_, b) in zip(res.model.state_dict().items(), plain.model.state_dict().items()):
        assert torch.equal(a, b), f"{k} was not restored"


MODEL_FILE = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
"""


def test_cli_shows_fidelity_after_each_repair_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text(MODEL_FILE)
    torch.save(torch.randn(256, 16), tmp_path / "data.pt")
    from slimnet.cli import app

    args = ["shrink", "m.py:make", "--input-shape", "1,16", "--data", "data.pt", "--ratio", "0.5", "--round-to", "1",
            "--compensate-bias", "--reconstruct", "--trust-pickle"]  # fmt: skip
    res = cli_runner().invoke(app, [*args, "-o", "a.pt"])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.stdout.splitlines() if x.startswith("fidelity ("))
    assert "2 held-out calibration batches" in line and "cut " in line and "reconstruct " in line
    assert "compensate_bias " in line and "saved weights are not what `slimnet apply` rebuilds" in res.stdout
    res = cli_runner().invoke(app, [*args, "-o", "b.pt", "--json"])
    report = json.loads(res.stdout)
    assert list(report["fidelity"]) == ["cut", "compensate_bias", "reconstruct"]
    assert report["repairs"]["reconstruct"]["refit"] == ["2", "4"]
    assert report["fidelity_data"] == {"fit_batches": 6, "held_out_batches": 2, "held_out": True}
