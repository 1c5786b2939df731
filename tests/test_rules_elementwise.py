"""Elementwise rules (slimnet/groups/rules/elementwise.py) on small hand-written nets: residual adds couple
both branches, a broadcast SE scale couples its channels while a spatial gate couples none, and a size used as a
value keeps its channels. Each net is shrunk and re-checked by ``check`` (independently of slimnet's verifier)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import check, kept, randomise, reasons


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.stem(x)
        y = self.a(s) + s
        z = self.b(y) - y
        return self.head(z)


def test_residual_add_and_sub_couple_all_members():
    res = check(randomise(Residual()), torch.randn(1, 3, 8, 8), criterion="l2")
    idx = kept(res, "stem.weight")
    assert len(idx) == 4
    assert kept(res, "a.weight", 0) == idx and kept(res, "b.weight", 0) == idx
    assert kept(res, "a.weight", 1) == idx and kept(res, "b.weight", 1) == idx and kept(res, "head.weight", 1) == idx
    assert res.report["groups"] == 2


class SE(nn.Module):
    """Squeeze-excitation (x * scale[B,C,1,1]) and a spatial gate (x * gate[B,1,H,W])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.gate = nn.Conv2d(8, 1, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.conv(x)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        x = x * s
        x = x * torch.sigmoid(self.gate(x))
        return self.head(x)


def test_se_scale_couples_channels_and_spatial_gate_couples_nothing():
    res = check(randomise(SE()), torch.randn(1, 3, 8, 8))
    idx = kept(res, "conv.weight")
    assert len(idx) == 4
    assert kept(res, "fc2.weight", 0) == idx and kept(res, "fc2.bias", 0) == idx
    assert kept(res, "fc1.weight", 1) == idx and kept(res, "gate.weight", 1) == idx
    assert len(kept(res, "fc1.weight", 0)) == 2  # the squeeze group is its own
    assert res.model.gate.out_channels == 1
    assert "gate" in reasons(res)  # one channel: nothing to choose


class SizeAsValue(nn.Module):
    """Channel counts read from a tensor and used as numbers (a 1/sqrt(d) scale, DeBERTa's
    ``torch.tensor(q.size(-1))``): pruning those channels would change the numbers. Sizes used as sizes
    (a view) are fine."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 4)
        self.c, self.d = nn.Linear(6, 16), nn.Linear(16, 4)
        self.e, self.f = nn.Linear(6, 16), nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        y = self.b(h / math.sqrt(h.size(-1)))
        g = self.c(x)
        y = y + self.d(g * torch.tensor(g.shape[-1], dtype=g.dtype).rsqrt())
        e = self.e(x)
        return y + self.f(e.reshape(*e.shape[:-1], -1).view(e.size(0), -1))


def test_a_size_used_as_a_value_keeps_its_channels():
    res = check(randomise(SizeAsValue()), torch.randn(3, 6))
    why = reasons(res)
    assert "used as a value" in why["a"] and "used as a value" in why["c"]
    assert kept(res, "a.weight") is None and kept(res, "c.weight") is None
    assert kept(res, "e.weight") == kept(res, "f.weight", 1) and len(kept(res, "e.weight")) == 8
