"""A graph traced with example values is analysed with its layers reduced to their output's shapes, each node
checked against the value it had when traced; where a shape depends on values the layers run for real, and
either way the groups are the ones a full run gives."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from slimnet.api import graph, shrink

assemble = importlib.import_module("slimnet.groups.assemble")


class Unpacks(nn.Module):
    """Branches on a size (so it traces only with example values), then two MLP blocks with a residual."""

    def __init__(self, data_dependent: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.head = nn.Linear(6, 16), nn.Linear(16, 6), nn.Linear(6, 12), nn.Linear(12, 3)
        self.data_dependent = data_dependent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(torch.relu(self.fc1(x)))
        h = x + y
        if x.shape[1] > 1:  # symbolic tracing refuses a branch on a traced size
            h = h * 2.0
        if self.data_dependent:  # rows kept by their values: the shape depends on what fc2 computed
            h = h[y.sum(-1) != 0]
        return self.head(torch.relu(self.fc3(h))).reshape(-1, 3)


def describe(model: nn.Module, x: torch.Tensor, force_full: bool, monkeypatch: pytest.MonkeyPatch) -> list:
    runs: list[bool] = []
    real = assemble._analyse_graph

    def spy(gm, inputs, *a, shaped=False, **k):  # noqa: ANN001, ANN202 - a test double
        runs.append(shaped)
        return real(gm, inputs, *a, shaped=shaped and not force_full, **k)

    monkeypatch.setattr(assemble, "_analyse_graph", spy)
    analysis = graph(model, x)
    monkeypatch.undo()
    return [g.describe() for g in analysis.groups], runs, analysis.cost.macs()


@pytest.mark.parametrize("data_dependent", [False, True])
def test_shaped_analysis_gives_the_full_runs_groups(data_dependent: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model, x = Unpacks(data_dependent).eval(), torch.randn(2, 5, 6)
    fast, runs, macs = describe(model, x, False, monkeypatch)
    full, _, full_macs = describe(model, x, True, monkeypatch)
    assert fast == full and macs == full_macs
    assert sum(g["prunable"] for g in fast) >= 2
    # shapes that depend on values diverge from the traced ones: the layers then run for real
    assert runs == ([True, False] if data_dependent else [True])
    res = shrink(model, x, ratio=0.5, round_to=1, measure=False)
    assert res.verification.passed and res.model.fc1.out_features == 8
