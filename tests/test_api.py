"""The Python API beyond what the CLI uses: ``shrink`` with an analysis it is given, ``bench`` of modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimnet import api, planner
from slimnet.errors import SlimnetError

from .helpers import randomise


def conv_net(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 8, 3, padding=1)
    ).eval()


def test_shrink_reuses_a_given_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = randomise(conv_net(16)), torch.randn(1, 3, 8, 8)
    analysis = api.graph(model, x)
    fresh = api.shrink(model, x, ratio=0.5, criterion="fpgm", round_to=1, measure=False)

    def no_second_look(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the model was run or traced again")

    monkeypatch.setattr(planner, "analyse", no_second_look)
    monkeypatch.setattr(planner, "check_runs", no_second_look)
    for criterion in ("fpgm", "l2"):
        reused = api.shrink(model, x, ratio=0.5, criterion=criterion, round_to=1, measure=False, analysis=analysis)
        assert reused.analysis is analysis and reused.verification.passed
    assert api.shrink(model, x, ratio=0.5, criterion="fpgm", round_to=1, measure=False, analysis=analysis).plan == (
        fresh.plan
    )
    with pytest.raises(SlimnetError, match=r"ratio=1.5 \(--ratio\) is out of range"):
        api.shrink(model, x, ratio=1.5, analysis=analysis)


def test_bench_takes_modules_and_labelled_pairs() -> None:
    x = torch.randn(1, 3, 8, 8)
    big, small = conv_net(16), conv_net(4)
    rep = api.bench([big, ("small", small)], x, backends=["torch-cpu"], runs=2, warmup=0, threads=1)
    assert [m["path"] for m in rep["models"]] == ["Sequential", "small"] and rep["baseline"] == "Sequential"
    assert rep["backends"] == ["torch-cpu"] and rep["runs"] == 2 and rep["threads"] == 1
    assert rep["speedup"]["theoretical"] == rep["models"][0]["macs"] / rep["models"][1]["macs"] > 1
    assert set(rep["models"][1]["latency_ms"]["torch-cpu"]) == {"p50", "p90", "min"}
    with pytest.raises(SlimnetError, match="give the example input"):
        api.bench([big])
    with pytest.raises(SlimnetError, match=r"runs=0 \(--runs\) must be at least 1"):
        api.bench([big], x, runs=0)
    with pytest.raises(SlimnetError, match=r"unknown backend tpu \(--backend\)"):
        api.bench([big], x, backends=["tpu"])


class Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.fc2 = nn.Embedding(20, 8), nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.emb(ids))))


def test_the_model_runs_separately_only_when_its_analysis_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The analysis runs the model (or its graph) on the example anyway, so it is not run first; when the
    analysis fails, that run says whether the example is what the model rejects."""
    model, ids = randomise(Tokens()), torch.randint(0, 20, (1, 5))
    runs: list[int] = []
    real = planner.check_runs
    monkeypatch.setattr(planner, "check_runs", lambda *a: runs.append(1) or real(*a))
    analysis = api.graph(model, ids)
    assert runs == [] and [g.n_units for g in analysis.groups if g.prunable] == [8, 16]
    with pytest.raises(SlimnetError, match=r"rejects the example input 1x5x3: RuntimeError: Expected tensor"):
        api.graph(model, torch.randint(0, 20, (1, 5, 3)).float())
    assert runs == [1]
