"""When the verifier rejects a cut (slimnet/verify/culprits.py), the groups to blame are left whole, the model is
planned and verified again, and the report names them: a wrong rule costs those groups, not the whole model, and never
lets a wrong cut through. The wrong rules here are injected on purpose."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet.errors import VerificationError
from slimnet.groups import RULES
from slimnet.groups.rules import elementwise, movement
from slimnet.verify.culprits import BUG

from .helpers import check, kept, randomise, reasons


def no_literal_dims(_sizes: tuple) -> list[int]:
    """A wrong stand-in for movement.literal_dims: it forgets that a size written in forward is fixed."""
    return []


class Flattened(nn.Module):
    """conv2's channels reach the classifier through ``view(b, 16 * 4 * 4)``: a size fixed in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 2)
        return self.fc(y.view(y.shape[0], 16 * 4 * 4))


class Flipped(nn.Module):
    """conv1's channels reach conv2 in reverse order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x)).flip(1)
        return self.conv3(torch.relu(self.conv2(y)))


def test_a_cut_that_breaks_a_reshape_is_left_whole_and_the_model_still_shrinks(monkeypatch):
    monkeypatch.setattr(movement, "literal_dims", no_literal_dims)  # 16 * 4 * 4 is no longer fixed
    res = check(randomise(Flattened()), torch.randn(1, 3, 8, 8))
    assert res.verification.passed
    assert [d["group"] for d in res.report["left_whole_after_verify"]] == ["conv2"]
    why = res.report["left_whole_after_verify"][0]["reason"]
    assert why.startswith(BUG) and "is invalid for input of size" in why
    assert reasons(res)["conv2"] == why and kept(res, "conv2.weight") is None
    assert kept(res, "conv1.weight") == kept(res, "conv2.weight", 1) and len(kept(res, "conv1.weight")) == 4


def test_a_cut_with_wrong_values_is_left_whole_and_the_model_still_shrinks(monkeypatch):
    monkeypatch.setitem(RULES, "flip", elementwise.passthrough)  # wrong: keeps the channel order
    res = check(randomise(Flipped()), torch.randn(1, 3, 8, 8))
    assert [d["group"] for d in res.report["left_whole_after_verify"]] == ["conv1"]
    assert "outputs differ by" in res.report["left_whole_after_verify"][0]["reason"]
    assert kept(res, "conv1.weight") is None and len(kept(res, "conv2.weight")) == 4


def test_without_the_wrong_rule_nothing_is_left_whole_after_verification():
    res = check(randomise(Flipped()), torch.randn(1, 3, 8, 8))
    assert res.report["left_whole_after_verify"] == []
    assert kept(res, "conv2.weight", 1) == [7 - i for i in reversed(kept(res, "conv1.weight"))]


def test_when_no_group_can_be_blamed_the_model_is_refused(monkeypatch):
    monkeypatch.setattr(movement, "literal_dims", no_literal_dims)
    monkeypatch.setattr("slimnet.api.find_culprits", lambda *_: [])
    with pytest.raises(VerificationError, match="verification failed: pruned model fails"):
        check(randomise(Flattened()), torch.randn(1, 3, 8, 8))
