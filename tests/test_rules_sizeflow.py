"""Sizes read from one tensor and used to reshape another (slimnet/groups/sizeflow.py): attention with spatial
reduction and cross-attention reshape q, k and v by the width of the block's input, so those dims are tied
(or, for a size taken whole, coupled position by position) before any cut is planned, never left for the
verifier to catch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimnet.api import graph

from .helpers import check, kept, randomise, reasons


class SpatialReductionAttention(nn.Module):
    """PVT/SegFormer-style: q from the tokens, k and v from a strided conv of them; heads sized by ``C`` read
    from the tokens (``C // heads``), the output reshaped by ``(B, N, C)``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 3, padding=1)
        self.q = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, 2, stride=2)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, 24)
        self.fc2 = nn.Linear(24, dim)
        self.head = nn.Linear(dim, 5)
        self.heads = heads

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed(img)
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)  # [B, N, C]
        N = t.shape[1]
        q = self.q(t).reshape(B, N, self.heads, C // self.heads).permute(0, 2, 1, 3)
        r = self.sr(x).flatten(2).transpose(1, 2)
        kv = self.kv(r).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        att = (q @ k.transpose(-2, -1) * 0.3).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, N, C)
        t = t + self.proj(y)
        t = t + self.fc2(F.gelu(self.fc1(t)))
        return self.head(t.mean(1))


class CrossAttention(nn.Module):
    """Queries from one token stream, keys and values from another of another width; every head reshape reads
    ``C`` from the query stream."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(5, 12)
        self.q = nn.Linear(16, 16)
        self.k = nn.Linear(12, 16)
        self.v = nn.Linear(12, 16)
        self.proj = nn.Linear(16, 16)
        self.ctx_fc = nn.Linear(12, 20)
        self.out = nn.Linear(16 + 20, 3)
        self.heads = 2

    def forward(self, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        x, c = self.a(x), torch.relu(self.b(ctx))
        B, N, C = x.shape
        M = c.shape[1]
        q = self.q(x).reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
        k = self.k(c).reshape(B, M, self.heads, C // self.heads).transpose(1, 2)
        v = self.v(c).reshape(B, M, self.heads, C // self.heads).transpose(1, 2)
        att = (q @ k.transpose(-2, -1) * 0.25).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, N, C)
        h = x + self.proj(y)
        return self.out(torch.cat([h.mean(1), self.ctx_fc(c).mean(1)], -1))


class Gate(nn.Module):
    """SE-style: the gate is reshaped by ``c`` read from ``x`` itself (taken whole): the gate's channels and
    ``x``'s are coupled position by position, and stay prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 16)
        self.conv2 = nn.Conv2d(16, 4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(img))
        b, c, _, _ = x.shape
        s = self.fc2(torch.relu(self.fc1(x.mean((2, 3))))).sigmoid().view(b, c, 1, 1)
        return self.conv2(x * s)


def test_spatial_reduction_attention_ties_the_heads_to_the_token_width():
    m = randomise(SpatialReductionAttention())
    # with the token width kept (--ignore), cutting q and kv alone would break their reshapes by C // heads
    res = check(m, torch.randn(1, 3, 8, 8), ignore=["embed"])
    assert res.report["left_whole_after_verify"] == [] and kept(res, "q.weight") is None
    res = check(m, torch.randn(1, 3, 8, 8))
    why = reasons(res)
    assert res.report["left_whole_after_verify"] == []
    # q's and kv's inner widths (one group, paired by q @ k) are sized by the token width C: left whole, and so
    # is C itself (the embedding's channels), which the reshape read
    assert "size read from another tensor (embed dim 1)" in why["embed"]
    assert "all channels go together" in why["q"]
    assert kept(res, "q.weight") is None and kept(res, "kv.weight") is None and kept(res, "embed.weight") is None
    assert len(kept(res, "fc1.weight")) == 12 and len(kept(res, "sr.weight")) == 8  # these are still pruned


def test_cross_attention_ties_keys_and_values_to_the_query_stream():
    m = randomise(CrossAttention())
    res = check(m, (torch.randn(2, 4, 6), torch.randn(2, 3, 5)), ignore=["a"])
    assert res.report["left_whole_after_verify"] == [] and kept(res, "k.weight") is None
    res = check(m, (torch.randn(2, 4, 6), torch.randn(2, 3, 5)))
    why = reasons(res)
    assert res.report["left_whole_after_verify"] == []
    assert kept(res, "k.weight") is None and kept(res, "v.weight") is None and kept(res, "q.weight") is None
    assert any("size read from another tensor" in r for r in why.values()), why
    assert len(kept(res, "ctx_fc.weight")) == 10 and len(kept(res, "b.weight")) == 6  # the context stream is pruned


def test_a_size_taken_whole_from_another_tensor_couples_its_channels():
    m = randomise(Gate())
    analysis = graph(m, torch.randn(1, 3, 8, 8))
    conv = next(g for g in analysis.groups if g.name == "conv")
    assert conv.prunable and ("fc2.weight", 0) in conv.members  # the gate's rows go with conv's channels
    res = check(m, torch.randn(1, 3, 8, 8))
    assert kept(res, "fc2.weight") == kept(res, "conv.weight") and len(kept(res, "conv.weight")) == 8


class ScaledByItsWidth(nn.Module):
    """Reads a weight's shape twice: as a width to reshape by (a size attribute traced from the weight, as
    slimnet.cut.sizes does for BERT), and as a value (a 1/width scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.b(torch.relu(self.a(x))).reshape(x.shape[0], self.b.weight.shape[0])
        return self.out(torch.relu(self.c(h)) / self.c.weight.shape[0])


def test_a_weight_read_for_its_shape_gets_no_atom_per_element_unless_used_as_a_value():
    """A weight's shape makes none of its per-element ids (BERT-base's analysis took a minute for them), whether
    it reshapes or is used as a value; used as a value it ties the width it gives: the layer's own channels
    (a per-element tie once bound that dim to classes of its own, and the next cut failed verification)."""
    from slimnet.groups import AtomInterpreter, tensor_aliases

    model, x = randomise(ScaledByItsWidth()), torch.randn(2, 6)
    gm = torch.fx.symbolic_trace(model)
    evidence = AtomInterpreter(gm, tensor_aliases(gm)[0]).collect(x)
    assert evidence.param_ranges == {} and len(evidence.parents) < 60  # 64 elements per weight: none has its own
    res = check(model, x)
    assert "used as a value" in reasons(res)["c"]
    assert len(kept(res, "a.weight")) == 4 and len(kept(res, "b.weight")) == 4
    assert res.model.b.out_features == 4 and res.model.c.out_features == 8
