"""Data-movement rules (slimnet/groups/rules/movement.py): concat offsets, splits and chunks, flatten into a
Linear, pixel and channel shuffles, and a hard-coded view, each shrunk and re-checked by ``check``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import check, kept, randomise, reasons


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 1)
        self.c = nn.Conv2d(24, 8, 1)
        self.d = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        p, q = torch.split(self.c(y), 4, dim=1)  # split by a literal size: cannot follow pruning
        return self.d(torch.cat([q, p], 1))


def test_concat_offsets_and_literal_split():
    res = check(randomise(Concat()), torch.randn(1, 3, 8, 8))
    ka, kb = kept(res, "a.weight"), kept(res, "b.weight")
    assert len(ka) == 4 and len(kb) == 8
    assert kept(res, "c.weight", 1) == ka + [8 + i for i in kb]
    assert "c.weight" not in res.plan["tensors"] or "0" not in res.plan["tensors"]["c.weight"]
    assert "split" in reasons(res)["c"]


class Chunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, dim=1)
        return self.b(p * q)


def test_chunk_ties_position_j_of_each_piece():
    res = check(randomise(Chunk()), torch.randn(1, 3, 8, 8))
    ka = kept(res, "a.weight")
    half = [i for i in ka if i < 8]
    assert ka == half + [i + 8 for i in half]
    assert kept(res, "b.weight", 1) == half


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(8 * 4, 16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(torch.flatten(self.pool(x if False else self.conv(x)), 1)))))


def test_flatten_into_linear_keeps_each_channels_block():
    res = check(randomise(FlattenLinear()), torch.randn(1, 3, 8, 8))
    kc = kept(res, "conv.weight")
    assert kept(res, "fc1.weight", 1) == [4 * c + j for c in kc for j in range(4)]
    assert res.model.fc1.in_features == 16 and res.model.fc1.out_features == 8
    assert kept(res, "fc2.weight", 1) == kept(res, "fc1.weight", 0)


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.ps = nn.PixelShuffle(2)
        self.b = nn.Conv2d(4, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.ps(self.a(x))  # 16 -> 4 channels, each from a block of 4
        z = self.b(y)
        bsz, c, h, w = z.shape
        z = z.view(bsz, 2, c // 2, h, w).transpose(1, 2).reshape(bsz, -1, h, w)  # channel shuffle
        return self.c(z)


def test_pixel_shuffle_blocks_and_channel_shuffle_indices():
    res = check(randomise(Shuffle()), torch.randn(1, 3, 4, 4), round_to=1)
    ka = kept(res, "a.weight")
    assert len(ka) == 8 and all(ka[i] // 4 == ka[i + 3] // 4 for i in range(0, 8, 4))  # whole blocks of 4
    assert kept(res, "b.weight", 1) == sorted({i // 4 for i in ka})
    kb = kept(res, "b.weight")
    half = [i for i in kb if i < 4]
    assert kb == half + [i + 4 for i in half]  # the shuffle's groups lose the same positions
    assert kept(res, "c.weight", 1) == [2 * j + g for j in half for g in range(2)]


class HardCoded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 128))


def test_hard_coded_view_leaves_the_group_with_a_reason():
    res = check(randomise(HardCoded()), torch.randn(1, 3, 4, 4))
    assert "size fixed in forward" in reasons(res)["conv"]
    assert res.plan["tensors"] == {}


class Written(nn.Module):
    """In-place writes into a tensor: ``x[..., 1:, :] += q[..., 1:, :]`` (MViT's residual pooling) couples x's and
    q's channels; ``y[:, :2] = 0`` zeroes fixed channels, so y's channels cannot move."""

    def __init__(self) -> None:
        super().__init__()
        self.x = nn.Linear(6, 8)
        self.q = nn.Linear(6, 8)
        self.y = nn.Linear(6, 8)
        self.out = nn.Linear(16, 3)

    def forward(self, t):
        x, q, y = self.x(t), self.q(t), self.y(t)
        x[:, 1:, :] += q[:, 1:, :]
        y[:, :, :2] = 0
        return self.out(torch.cat([x, y], -1))


def test_setitem_writes_atoms_into_its_target():
    res = check(randomise(Written()), torch.randn(2, 5, 6))
    assert kept(res, "x.weight") == kept(res, "q.weight") and len(kept(res, "x.weight")) == 4
    assert "indexed with fixed positions" in reasons(res)["y"] and kept(res, "y.weight") is None
