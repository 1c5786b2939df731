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
