"""The cost model (MACs and parameters of any plan, from the analysis' own pass) against fvcore and against the
parameters of the pruned model itself: it must agree exactly where the conventions are the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimnet._tensors import count_params
from slimnet.api import shrink
from slimnet.cost.macs import count_macs
from slimnet.load.loader import load_model

from .helpers import randomise


class Mixed(nn.Module):
    """Concat, depthwise conv, pooling, upsampling, attention and a classifier: every kind of term."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.bn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.pw = nn.Conv2d(24, 32, 1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.ln = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = nn.functional.relu(self.bn(y))
        y = self.pw(self.dw(y)) * 0.5
        y = nn.functional.max_pool2d(y, 2)
        y = nn.functional.interpolate(y, scale_factor=2.0, mode="nearest")
        t = y.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(self.ln(t).mean(1))


def _agrees(model: nn.Module, x: torch.Tensor, **kw: object) -> None:
    res = shrink(model, x, ratio=0.5, measure=False, **kw)
    cost = res.analysis.cost
    keep = cost.keep_vector([d.keep for d in res.decisions])
    assert cost.complete
    assert cost.macs() == count_macs(model, x)["macs"]
    assert cost.params() == count_params(model)
    assert cost.params(keep) == count_params(res.model)
    assert cost.macs(keep) == count_macs(res.model, x)["macs"]
    assert cost.macs(keep) < cost.macs()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "shufflenet_v2_x0_5"])
def test_macs_and_params_of_torchvision_models_equal_fvcore_before_and_after_the_cut(name):
    _agrees(load_model(f"torchvision:{name}").model, torch.randn(1, 3, 64, 64), round_to=1)


def test_every_kind_of_term_equals_fvcore_on_a_mixed_net():
    model = randomise(Mixed())
    _agrees(model, torch.randn(2, 3, 8, 8), round_to=1)


def test_attention_whose_heads_share_channel_positions_equals_fvcore_after_the_cut():
    # the two heads of a literal-2 reshape lose the same positions: a column of v holds one atom per head, and
    # those atoms are one unit, so attn @ v shrinks with it (it was counted as if nothing were cut)
    from .test_rules_attention import MatmulAttention

    _agrees(randomise(MatmulAttention()), torch.randn(2, 5, 6), round_to=1)


def test_a_keep_vector_counts_only_what_it_keeps():
    model = randomise(Mixed())
    res = shrink(model, torch.randn(1, 3, 8, 8), ratio=0.5, measure=False, round_to=1)
    cost = res.analysis.cost
    full = cost.keep_vector([range(len(g.units)) for g in res.analysis.groups])
    assert np.array_equal(full, np.ones(cost.n_units))
    assert cost.macs(full) == cost.macs()
    # dropping a unit of the conv group lowers the MACs by exactly what that channel costs
    g = next(g for g in res.analysis.groups if ("a.weight", 0) in g.members)
    kept = [list(range(len(h.units))) for h in res.analysis.groups]
    kept[g.id] = kept[g.id][1:]
    drop_one = cost.keep_vector(kept)
    assert cost.macs(drop_one) < cost.macs()
    members = g.units[0].members.items()
    dropped = sum(len(idx) * _slice_size(model, t, d) for (t, d), idx in members if t.endswith(("weight", "bias")))
    assert cost.params(drop_one) == cost.params() - dropped


def _slice_size(model: nn.Module, tensor: str, dim: int) -> int:
    """Elements in one index of ``tensor`` along ``dim`` (a parameter), 0 for buffers."""
    params = dict(model.named_parameters())
    if tensor not in params:
        return 0
    shape = list(params[tensor].shape)
    shape.pop(dim)
    return int(np.prod(shape)) if shape else 1
