"""Data-driven criteria (taylor, activation, apoz, wanda): a planted dead unit ranks last and a planted dominant
unit first, on a classifier (taylor: cross-entropy against its own predictions) and on a model that is not one
(taylor: the Fisher-style score); scores that cannot rank are refused; every data-driven cut passes the
independent exactness check."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimnet.api import graph, shrink
from slimnet.errors import SlimnetError
from slimnet.rank.criteria import CRITERIA, score
from slimnet.rank.data_criteria import NEEDS
from slimnet.repair import calibrate
from slimnet.settings import DATA_CRITERIA

from .helpers import check

DEAD, STRONG = 2, 5


class Net(nn.Module):
    """conv1 (8 channels, the group under test) -> ReLU -> conv2 -> pool; a classifier head unless ``head=False``
    (then the feature map is the output)."""

    def __init__(self, head: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(x.mean((2, 3))) if self.fc is not None else x


def planted(head: bool = True) -> nn.Module:
    """Unit DEAD of conv1 never fires (zero weights and bias); unit STRONG fires four times as hard as any, and
    almost always."""
    torch.manual_seed(1)
    m = Net(head)
    with torch.no_grad():
        m.conv1.weight[DEAD].zero_()
        m.conv1.bias[DEAD] = 0.0
        m.conv1.weight[STRONG].mul_(4.0)
        m.conv1.bias[STRONG] = 3.0  # and is almost always on (APoZ near 0)
    return m.eval()


def conv1_scores(model: nn.Module, criterion: str) -> tuple[np.ndarray, str]:
    x = torch.randn(1, 3, 12, 12)
    data = torch.randn(64, 3, 12, 12)
    analysis = graph(model, x)
    group = next(g for g in analysis.groups if ("conv1.weight", 0) in g.members)
    calibration = calibrate.prepare(model, x, data, criterion)
    stats = calibrate.statistics(model, analysis, criterion, calibration)
    params = {n for n, _ in model.named_parameters()}
    return score(group, model.state_dict(), params, criterion, stats=stats)


@pytest.mark.parametrize("head", [True, False], ids=["classifier", "feature-map"])
@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_planted_dead_unit_last_and_dominant_unit_first(criterion, head):
    scores, used = conv1_scores(planted(head), criterion)
    assert used == criterion
    order = np.argsort(-scores, kind="stable")
    assert order[0] == STRONG, scores
    assert order[-1] == DEAD, scores
    assert scores[DEAD] < 0.25 * np.median(scores)


def test_taylor_default_loss_depends_on_the_output():
    model = planted(True)
    analysis = graph(model, torch.randn(1, 3, 12, 12))
    data = calibrate.prepare(model, torch.randn(1, 3, 12, 12), torch.randn(16, 3, 12, 12), "taylor")
    assert calibrate.statistics(model, analysis, "taylor", data).taylor_mode == "first-order"
    features = planted(False)
    assert calibrate.statistics(features, graph(features, data.batches[0][:1]), "taylor", data).taylor_mode == "fisher"


def test_data_criteria_are_registered_and_need_data():
    assert set(DATA_CRITERIA) <= set(CRITERIA)
    assert set(NEEDS) == set(DATA_CRITERIA)
    with pytest.raises(SlimnetError, match="criterion wanda needs calibration data"):
        shrink(planted(), torch.randn(1, 3, 12, 12), criterion="wanda", measure=False)


def test_zero_loss_is_refused_with_the_group_named():
    """The distance to the original's own output is zero before any cut, and so is its gradient."""
    model = planted()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        target = model(torch.randn(32, 3, 12, 12))

    def distance(out: torch.Tensor, _batch: torch.Tensor) -> torch.Tensor:
        return (out - out.detach()).pow(2).sum() + 0.0 * target.sum()

    with pytest.raises(SlimnetError, match=r"criterion taylor scores every unit zero \(the loss has no gradient"):
        shrink(model, x, criterion="taylor", data=torch.randn(32, 3, 12, 12), loss=distance, measure=False)


def test_non_finite_data_is_refused():
    data = torch.randn(32, 3, 12, 12)
    data[3, 0, 4, 4] = float("nan")
    with pytest.raises(SlimnetError, match="non-finite scores"):
        shrink(planted(), torch.randn(1, 3, 12, 12), criterion="activation", data=data, measure=False)


@pytest.mark.parametrize("criterion", sorted(DATA_CRITERIA))
def test_data_driven_cuts_pass_the_independent_exactness_check(criterion):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=4),
        nn.GELU(),
        nn.Conv2d(16, 24, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 5),
    ).eval()
    data = torch.randn(48, 3, 10, 10)
    res = check(model, torch.randn(1, 3, 10, 10), ratio=0.5, criterion=criterion, data=data)
    assert res.report["pruned_groups"] >= 2
    assert {d["criterion"] for d in res.report["group_details"] if d["units"] > d["kept"]} == {criterion}
    with torch.no_grad():  # the report's agreement is the pruned model's against the original, batch by batch
        same = sum(int((model(b).argmax(1) == res.model(b).argmax(1)).sum()) for b in data.split(32))
    assert res.report["fidelity"] == {"cut": same / 48}
    assert res.report["fidelity_metric"] == "top1-agreement"


def test_heads_are_ranked_per_head_from_their_slices():
    """A Hugging Face BERT: the heads group's members are q/k/v rows and output-projection columns; a head
    whose value rows are zero contributes nothing and goes first under every data criterion."""
    tf = pytest.importorskip("transformers")
    tf.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = tf.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48, vocab_size=40, num_hidden_layers=1)
    model = tf.BertModel(cfg).eval()
    attn = model.encoder.layer[0].attention
    with torch.no_grad():
        for lin in (attn.self.query, attn.self.key, attn.self.value):
            lin.weight[8:16].zero_()
            lin.bias[8:16].zero_()
        attn.output.dense.weight[:, 8:16].zero_()
    ids = torch.randint(1, 40, (24, 9))
    x = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for criterion in sorted(DATA_CRITERIA):
        res = shrink(model, x, ratio=0.25, head_ratio=0.25, criterion=criterion, data=data, measure=False)
        heads = next(d for d in res.decisions if d.group.kind == "heads")
        assert heads.keep == [0, 2, 3], (criterion, heads.keep)


class TwoBranches(nn.Module):
    """Branch b reaches the output only through a zero weight: no gradient reaches its units."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)
        self.fc_a, self.fc_b = nn.Linear(8, 4), nn.Linear(8, 4)
        with torch.no_grad():
            self.fc_b.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv_a(x)).mean((2, 3))
        b = torch.relu(self.conv_b(x)).mean((2, 3))
        return self.fc_a(a) + self.fc_b(b)


def test_a_group_without_evidence_falls_back_to_l1_and_says_so():
    torch.manual_seed(0)
    res = shrink(TwoBranches().eval(), torch.randn(1, 3, 8, 8), criterion="taylor", data=torch.randn(32, 3, 8, 8),
                 round_to=1, measure=False)  # fmt: skip
    used = {d["group"]: d["criterion"] for d in res.report["group_details"] if d["reason"] is None}
    assert used == {"conv_a": "taylor", "conv_b": "l1"}
