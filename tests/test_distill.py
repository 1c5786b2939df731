"""Distillation: a heavily pruned classifier regains agreement with its original on held-out batches within a
few hundred steps (KL on logits), a feature model its outputs (MSE), a sigmoid classifier with BCE; the loss is
chosen by output kind; the best student (step 0 included) is returned, so training that hurts hands back the
start; the teacher runs once per batch; the command line writes the tuned model; DDP under torchrun."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from slimnet.api import shrink
from slimnet.errors import SlimnetError
from slimnet.load.data import as_calibration
from slimnet.repair.distill import distill, distill_loss
from slimnet.repair.distill_loss import make_loss, output_kind

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


def test_distillation_raises_held_out_agreement_of_a_pruned_classifier():
    teacher, data = mlp(), torch.randn(2048, 16)
    calibration = as_calibration(data, data[:1], calib_batches=64)  # 48 batches to train on, 16 held out
    cut = shrink(teacher, data[:1], ratio=0.5, round_to=1, data=data)
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    result = distill(cut.model, teacher, calibration, steps=300, lr=3e-3, progress=False)
    assert result.metric == "top1-agreement" and result.loss == "kl" and result.held_out["batches"] == 4
    assert result.after > result.before + 0.3  # on held-out batches the student never trained on
    assert result.history[0]["step"] == 0 and result.history[0]["value"] == result.before
    best = max(result.history, key=lambda h: (h["value"], -h["held_out_loss"] if h["step"] else -1e9))
    assert result.after == best["value"] and result.best_step == best["step"]
    # the teacher ran once per held-out batch and once per training batch, never once per step
    assert len(calls) == result.held_out["batches"] + min(result.steps_run, 48)
    assert all(p.grad is None for p in teacher.parameters())
    fresh = mlp()
    for (k, a), (_, b) in zip(teacher.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), f"the teacher's {k} changed"


def test_distillation_never_returns_a_student_worse_than_its_start():
    teacher, data = mlp(), torch.randn(512, 16)
    cut = shrink(teacher, data[:1], ratio=0.25, round_to=1, data=data)
    start = {k: v.clone() for k, v in cut.model.state_dict().items()}

    def away(student, target, _batch):  # a loss that pushes the student away from the teacher
        return -((student - target) ** 2).mean()

    result = distill(cut.model, teacher, data, steps=40, lr=1e-2, loss=away, progress=False, log_every=5)
    assert min(h["value"] for h in result.history[1:]) < result.before  # training did make it worse
    assert result.best_step == 0 and result.after == result.before and result.report()["kept_start"]
    assert result.stopped_early and result.steps_run == 30  # six evaluations without improvement
    for k, v in cut.model.state_dict().items():
        assert torch.equal(v, start[k]), f"{k} is not the starting student's"


def test_feature_outputs_are_matched_with_mse():
    teacher = mlp(32)
    data = torch.randn(256, 4, 16)  # tokens x features: a [N, 4, 32] output is not class scores
    cut = shrink(teacher, data[:1], ratio=0.75, round_to=1, data=data)
    assert cut.report["fidelity_metric"] == "relative-error"
    result = distill(cut.model, teacher, data, steps=200, lr=3e-3, progress=False)
    assert result.loss == "mse" and result.after < 0.7 * result.before  # held out: 0.98 -> 0.61 here


def test_loss_is_chosen_by_output_kind():
    logits = torch.randn(8, 5) * 3
    assert output_kind(logits)[0] == "kl" and output_kind({"logits": logits})[0] == "kl"
    assert output_kind(torch.softmax(logits, 1)) == ("kl", "softmax probabilities")
    assert output_kind(torch.sigmoid(logits)) == ("bce", "sigmoid (multi-label) probabilities")
    assert output_kind(torch.sigmoid(torch.randn(8, 1))) == ("bce", "sigmoid probabilities")
    assert output_kind(torch.randn(8, 1))[0] == "mse" and output_kind(torch.randn(8, 4, 7))[0] == "mse"
    p, q = torch.tensor([[0.9], [0.2]]), torch.tensor([[0.6], [0.5]])
    want = -(p * q.log() + (1 - p) * (1 - q).log()).mean()
    assert float(make_loss("bce", 2.0)(q, p, None)) == pytest.approx(float(want), rel=1e-5)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    kl = torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1), reduction="batchmean") * 4
    assert float(make_loss("kl", 2.0)(s, t, None)) == pytest.approx(float(kl), rel=1e-5)
    # a sigmoid binary classifier is distilled with BCE, and gets closer to its teacher on held-out data
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid()).eval()
    with torch.no_grad():
        teacher[2].weight.mul_(8.0)
    data = torch.randn(1024, 16)
    cut = shrink(teacher, data[:1], ratio=0.5, round_to=1, data=data)
    result = distill(cut.model, teacher, as_calibration(data, data[:1], calib_batches=32), steps=200,
                     progress=False)  # fmt: skip
    assert result.loss == "bce" and result.loss_why == "sigmoid probabilities" and result.after < result.before


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
    with pytest.raises(SlimnetError, match="--loss huber: give one of auto, kl, bce, mse"):
        distill(mlp(), mlp(), torch.randn(8, 16), loss="huber")


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
    assert report["history"][0]["step"] == 0 and report["loss"] == "kl" and report["lr"] == 3e-3
    assert report["after"] == next(h["value"] for h in report["history"] if h["step"] == report["best_step"])
    tuned = torch.load(tmp_path / "t.pt", weights_only=False)
    assert isinstance(tuned, nn.Sequential)
    # no --input-shape: the data's first row is the example; the text says the loss, held-out fidelity, the ETA
    # --progress: CliRunner's stderr is no terminal, where the bar is off by default
    res = runner.invoke(app, ["distill", "p.pt", "--teacher", "mlp.py:make", "-o", "v.pt", "--steps", "40",
                              "--data", "data.pt", "--trust-pickle", "--progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "loss kl (class scores (softmax logits)), lr 0.001 with warm-up 2 steps + cosine" in res.stdout
    assert "top1-agreement on 2 held-out batches:" in res.stdout and "ETA" in res.stderr
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
