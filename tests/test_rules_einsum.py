"""The einsum rule (slimnet/groups/rules/einsum.py): MViT's relative-position term prunes whole heads and leaves
the table shared by all heads alone; attention written as einsum groups exactly as with matmul; a form the rule
does not follow is refused with a reason."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimnet

from .helpers import check, kept, randomise, reasons
from .test_cost import _agrees
from .test_rules_attention import FixedHeadSizeAttention, MatmulAttention


class RelPosAttention(nn.Module):
    """MViT's layout: 4 heads of 4 channels over a 2x3 grid of tokens; the logits get a relative-position term
    ``einsum("byhwc,hkc->byhwk", q, Rh)`` whose table (one row per offset, one column per head channel) is
    shared by every head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.qkv = nn.Linear(16, 48)
        self.rel_pos_h = nn.Parameter(torch.randn(3, 4))
        self.proj = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def offsets(self) -> torch.Tensor:
        return torch.arange(2)[:, None] - torch.arange(2)[None, :] + 1  # computed in forward, as MViT does

    def forward(self, x):
        h = self.inp(x)
        b, n, _ = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, -1, 4).permute(2, 0, 3, 1, 4)
        att = q @ k.transpose(-2, -1)
        rh = self.rel_pos_h[self.offsets()]  # [q_h, k_h, head size]
        _, heads, _, dim = q.shape  # sizes read from the tensor, as MViT does: not fixed in forward
        rel = torch.einsum("byhwc,hkc->byhwk", q.reshape(b, heads, 2, 3, dim), rh)
        att = att + rel[..., None].expand(b, heads, 2, 3, 2, 3).reshape(b, heads, n, n)
        y = (torch.softmax(att * 0.5, dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.out(h + self.proj(y))


def test_relative_position_einsum_prunes_whole_heads():
    res = check(randomise(RelPosAttention()), torch.randn(2, 6, 6))
    group = next(g for g in res.analysis.groups if g.name == "qkv")
    assert group.kind == "heads" and len(group.units) == 4
    rows = kept(res, "qkv.weight")
    heads = sorted({r // 4 for r in rows if r < 16})
    assert len(heads) == 2
    assert rows == [blk * 16 + h * 4 + j for blk in range(3) for h in heads for j in range(4)]
    assert kept(res, "proj.weight", 1) == [h * 4 + j for h in heads for j in range(4)]
    assert "rel_pos_h" not in res.plan["tensors"]  # shared by all heads: untouched
    assert not any("einsum" in r for r in reasons(res).values())


class EinsumMatmulAttention(MatmulAttention):
    """MatmulAttention with both products written as einsum."""

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = self.qkv(h).reshape(b, t, 3, 2, -1).permute(2, 0, 3, 1, 4)
        att = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) * 0.25, dim=-1)
        y = torch.einsum("bhnm,bhmd->bhnd", att, v).transpose(1, 2).reshape(b, t, -1)
        return self.out(h + self.proj(y))


class EinsumFixedHeadSizeAttention(FixedHeadSizeAttention):
    """FixedHeadSizeAttention with both products written as einsum."""

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = (m(h).view(b, t, -1, 4).transpose(1, 2) for m in (self.q, self.k, self.v))
        att = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) * 0.5, dim=-1)
        return self.out(h + self.proj(torch.einsum("bhnm,bhmd->bnhd", att, v).reshape(b, t, -1)))


def _groups(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    return sorted((g.name, g.kind, len(g.units), sorted(g.members)) for g in slimnet.graph(model, x).groups)


@pytest.mark.parametrize(
    ("plain", "written"),
    [(MatmulAttention, EinsumMatmulAttention), (FixedHeadSizeAttention, EinsumFixedHeadSizeAttention)],
)
def test_einsum_written_as_matmul_groups_as_matmul(plain, written):
    x = torch.randn(2, 5, 6)
    original = randomise(plain())
    model = written().eval()
    model.load_state_dict(original.state_dict())
    assert _groups(model, x) == _groups(original, x)
    reference = check(original, x, criterion="l2")
    res = check(model, x, criterion="l2")
    assert res.plan["tensors"] == reference.plan["tensors"]  # same weights, same groups: the same cut


class Refused(nn.Module):
    """An einsum with an ellipsis: the rule does not follow it, so what it reads stays whole, with a reason."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mix = nn.Parameter(torch.randn(8, 8))
        self.mid = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.einsum("...c,dc->...d", self.inp(x), self.mix) + torch.relu(self.mid(x)))


def test_an_einsum_it_cannot_follow_is_refused():
    res = check(randomise(Refused()), torch.randn(2, 6))
    assert "no channel rule for einsum of this form" in reasons(res)["inp"]
    assert "inp.weight" not in res.plan["tensors"]


class RelPosOffsetsBuffer(RelPosAttention):
    """The offsets as a buffer: fvcore counts arithmetic on tensors made in forward, the cost model does not."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dist", super().offsets())

    def offsets(self) -> torch.Tensor:
        return self.dist


@pytest.mark.parametrize("cls", [RelPosOffsetsBuffer, EinsumFixedHeadSizeAttention])
def test_einsum_macs_equal_fvcore_before_and_after_the_cut(cls):
    _agrees(randomise(cls()), torch.randn(2, 6, 6), round_to=1)


class HalfFixedAttention(FixedHeadSizeAttention):
    """Only q has a literal head size; k follows q's head count read from the tensor, so k's channels are not yet
    one unit per head when the einsum pairs them with q's whole heads: they join the head they face."""

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q = self.q(h).view(b, t, -1, 4).transpose(1, 2)
        k, v = (m(h).view(b, t, q.shape[1], -1).transpose(1, 2) for m in (self.k, self.v))
        att = torch.softmax(torch.einsum("bhnd,bhmd->bhnm", q, k) * 0.5, dim=-1)
        return self.out(h + self.proj(torch.einsum("bhnm,bhmd->bnhd", att, v).reshape(b, t, -1)))


def test_channels_facing_one_whole_head_join_it():
    res = check(randomise(HalfFixedAttention()), torch.randn(2, 5, 6))
    group = next(g for g in res.analysis.groups if g.name == "q")
    assert group.kind == "heads" and len(group.units) == 4 and ("k.weight", 0) in group.members
    rows = kept(res, "q.weight")
    assert rows == [h * 4 + j for h in sorted({r // 4 for r in rows}) for j in range(4)] and len(rows) == 8
    assert kept(res, "k.weight") == rows


class EinsumLinear(nn.Module):
    """A weight applied with einsum (``bnc,dc->bnd``): the contracted channels pair with the weight's columns."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.w = nn.Parameter(torch.randn(5, 8))
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.einsum("bnc,dc->bnd", torch.relu(self.inp(x)), self.w))


def test_an_einsum_weight_loses_the_columns_of_the_channels_cut():
    res = check(randomise(EinsumLinear()), torch.randn(2, 4, 6))
    rows = kept(res, "inp.weight")
    assert len(rows) == 4 and kept(res, "w", 1) == rows and kept(res, "w", 0) is None
