"""Attention rules (slimnet/groups/rules/attention.py): nn.MultiheadAttention and attention written with
matmul prune whole heads, q and k lose the same positions, v is carried through."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from .helpers import check, kept, randomise, reasons


class Attention(nn.Module):
    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.ln = nn.LayerNorm(16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.ln(self.inp(x))
        a, w = self.att(h, h, h)
        w = w.sum(-1, keepdim=True)  # [N, L, 1]
        h = h + a + (w if self.att.batch_first else w.transpose(0, 1))
        return self.out(h + self.fc2(torch.relu(self.fc1(h))))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_prunes_whole_heads(batch_first):
    res = check(randomise(Attention(batch_first)), torch.randn(2, 5, 6), criterion="l2")
    rows = kept(res, "att.in_proj_weight")
    heads = sorted({r // 4 for r in rows if r < 16})
    assert len(heads) == 2 and res.model.att.num_heads == 2 and res.model.att.head_dim == 4
    assert rows == [blk * 16 + h * 4 + j for blk in range(3) for h in heads for j in range(4)]
    assert kept(res, "att.out_proj.weight", 1) == [h * 4 + j for h in heads for j in range(4)]
    assert len(kept(res, "fc1.weight")) == 16
    assert "LayerNorm" in reasons(res)["inp"]


class MatmulAttention(nn.Module):
    """Attention written with matmul and a head size that follows the tensor (-1 in the reshape)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.qkv = nn.Linear(16, 48)
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, 2, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax((q @ k.transpose(-2, -1)) * 0.25, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, -1)
        return self.out(h + self.proj(y))


def test_matmul_pairs_q_with_k_and_carries_v():
    res = check(randomise(MatmulAttention()), torch.randn(2, 5, 6))
    rows = kept(res, "qkv.weight")
    q = [r for r in rows if r < 16]
    k = [r - 16 for r in rows if 16 <= r < 32]
    v = [r - 32 for r in rows if r >= 32]
    # the two heads (literal 2 in the reshape) lose the same positions; q and k lose the same ones
    assert q == k and all((j + 8 in q) == (j in q) for j in range(8))
    assert kept(res, "proj.weight", 1) == v and len(v) in (4, 8, 12)


class FixedHeadSizeAttention(nn.Module):
    """BERT's layout: separate q, k, v projections viewed as (b, t, -1, head size 4) with a literal head size,
    so that each head's channels are one unit before q @ k^T sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = (m(h).view(b, t, -1, 4).transpose(1, 2) for m in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1)
        return self.out(h + self.proj((att @ v).transpose(1, 2).reshape(b, t, -1)))


def test_a_fixed_head_size_makes_a_heads_group_of_whole_heads():
    res = check(randomise(FixedHeadSizeAttention()), torch.randn(2, 5, 6))
    group = next(g for g in res.analysis.groups if g.name == "q")
    assert group.kind == "heads" and len(group.units) == 4 and ("k.weight", 0) in group.members
    rows = kept(res, "q.weight")
    heads = sorted({r // 4 for r in rows})
    assert rows == [h * 4 + j for h in heads for j in range(4)] and len(heads) == 2
    assert kept(res, "k.weight") == rows and kept(res, "v.weight") == rows and kept(res, "proj.weight", 1) == rows


class TinyViT(nn.Module):
    """A ViT in miniature: patches, a position embedding of fixed length (so no smaller image is accepted), an
    attention asked for no weights, as torchvision's ViT calls it."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 16, stride=16)
        self.pos = nn.Parameter(torch.randn(1, 9, 16))
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        t = t + self.att(t, t, t, need_weights=False)[0]
        t = t + self.fc2(torch.relu(self.fc1(t)))
        return self.head(t.mean(1))


def test_an_analysis_without_layer_arithmetic_finds_what_the_full_one_finds(monkeypatch):
    """Where the smaller image is refused but the graph ran on the example with its layers as shapes, the
    analysis at the example's size skips the model's own run and the layers' arithmetic (zeros of their output
    shapes): the same groups and MACs as computing them, and the cut verifies."""
    from slimnet import planner
    from slimnet.groups import analyse

    model, x = randomise(TinyViT()).eval(), torch.randn(1, 3, 48, 48)
    computed = analyse(model, x)
    monkeypatch.setattr(planner, "check_runs", lambda *_: pytest.fail("the model ran again"))
    shaped = planner.graph(model, x)
    assert shaped.reduced is None and "rejects the reduced input" in shaped.reduced_note
    assert [g.describe() for g in shaped.groups] == [g.describe() for g in computed.groups]
    assert shaped.cost.macs() == computed.cost.macs() > 0
    res = check(model, x, criterion="l2")
    assert res.model.att.num_heads == 2 and len(kept(res, "fc1.weight")) == 16
