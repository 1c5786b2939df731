"""Rules for ops that mix positions (slimnet/groups/rules/mixing.py): pooling and interpolation keep channels
apart while mixing positions; padding and dropout pass channels through."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .helpers import check, kept, randomise


class PassThrough(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 2, 3)

    def forward(self, x):
        y = F.max_pool2d(F.gelu(self.a(x)), 2)
        y = F.interpolate(y, scale_factor=2, mode="bilinear")
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = F.pad(y, (1, 1, 1, 1))
        y = F.dropout(y, 0.1, training=self.training)
        return self.b(y.contiguous())


def test_pooling_interpolate_pad_dropout_pass_channels_through():
    res = check(randomise(PassThrough()), torch.randn(1, 3, 12, 12))
    assert kept(res, "b.weight", 1) == kept(res, "a.weight") and len(kept(res, "a.weight")) == 4
