"""Layer rules (slimnet/groups/rules/layers.py): conv -> BN -> conv, depthwise and grouped convs, 1d/3d and
transposed convs, GroupNorm, InstanceNorm, PReLU, LayerNorm, embeddings and tied weights, and a module called
twice, each shrunk and re-checked by ``check``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimnet.api import shrink

from .helpers import check, kept, randomise, reasons


class ConvBNConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


def test_conv_bn_conv_keeps_the_strongest_filters_everywhere():
    m = randomise(ConvBNConv())
    with torch.no_grad():  # make filter norms decide: channels 1, 4, 5, 6 are strong
        scale = torch.tensor([0.1, 5, 0.1, 0.1, 5, 5, 5, 0.1])
        m.conv1.weight.mul_(scale[:, None, None, None] / m.conv1.weight.abs().mean((1, 2, 3), keepdim=True))
        m.conv1.bias.zero_()
        m.bn1.weight.fill_(1.0)
        m.bn1.bias.fill_(0.1)
        m.conv2.weight.fill_(0.1)
    res = check(m, torch.randn(1, 3, 16, 16), ratio=0.5, criterion="l1")
    want = [1, 4, 5, 6]
    for name in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert kept(res, name) == want, name
    assert kept(res, "conv2.weight", 1) == want
    assert "conv2.weight" not in res.plan["tensors"] or "0" not in res.plan["tensors"]["conv2.weight"]
    assert res.model.conv1.out_channels == 4 and res.model.bn1.num_features == 4 and res.model.conv2.in_channels == 4
    assert reasons(res)["conv2"] == "model output"


class DepthwiseGroup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pw = nn.Conv2d(3, 16, 1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.gc = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x):
        return self.head(self.bn(self.gc(self.dw(self.pw(x)))))


def test_depthwise_ties_in_and_out_and_group_conv_keeps_whole_groups():
    res = check(randomise(DepthwiseGroup()), torch.randn(1, 3, 8, 8))
    kpw = kept(res, "pw.weight")
    assert kept(res, "dw.weight", 0) == kpw
    # a group of gc: 4 input channels and 8 output channels go together, so 2 of 4 groups remain
    kgc = kept(res, "gc.weight", 0)
    assert len(kgc) == 16 and all(kgc[i] // 8 == kgc[i + 1] // 8 for i in range(0, 16, 8) for _ in [0])
    groups_kept = sorted({i // 8 for i in kgc})
    assert kpw == [4 * g + j for g in groups_kept for j in range(4)]
    assert res.model.dw.groups == 8 and res.model.gc.groups == 2 and res.model.gc.in_channels == 8


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.shared(F.relu(self.shared(self.a(x)))))


def test_module_called_twice_stays_consistent():
    res = check(randomise(Shared()), torch.randn(1, 3, 8, 8))
    ka = kept(res, "a.weight")
    assert kept(res, "shared.weight", 0) == ka and kept(res, "shared.weight", 1) == ka


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 16)
        self.back = nn.Linear(16, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight  # tied

    def forward(self, ids):
        h = self.emb(ids)
        return self.out(h + self.back(F.relu(self.mid(h))))


def test_tied_parameters_and_embedding():
    res = check(randomise(Tied()), torch.randint(0, 10, (1, 5)))
    assert kept(res, "mid.weight") == kept(res, "back.weight", 1) and len(kept(res, "mid.weight")) == 8
    assert kept(res, "emb.weight", 1) == kept(res, "out.weight", 1)
    assert res.model.out.weight is res.model.emb.weight


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(3, 8, 3)
        self.gn = nn.GroupNorm(4, 8)
        self.c3 = nn.Conv3d(1, 8, 3)
        self.inn = nn.InstanceNorm3d(8, affine=True)
        self.prelu = nn.PReLU(8)
        self.t = nn.ConvTranspose1d(8, 6, 2, stride=2)
        self.head = nn.Linear(6, 2)

    def forward(self, x, v):
        y = self.gn(self.c1(x))
        z = self.prelu(self.inn(self.c3(v))).mean((2, 3, 4))
        y = y * z[:, :, None]
        return self.head(self.t(y).mean(2))


def test_conv1d_3d_transpose_groupnorm_instancenorm_prelu():
    x, v = torch.randn(1, 3, 10), torch.randn(1, 1, 5, 5, 5)
    res = check(randomise(Norms()), (x, v))
    kc = kept(res, "c1.weight")
    assert kept(res, "gn.weight") == kc and kept(res, "c3.weight") == kc and kept(res, "prelu.weight") == kc
    assert all(kc[i] // 2 == kc[i + 1] // 2 for i in range(0, len(kc), 2))  # whole GroupNorm groups
    assert res.model.gn.num_groups == 2 and res.model.gn.num_channels == 4
    assert kept(res, "t.weight", 0) == kc and len(kept(res, "t.weight", 1)) == 3
    assert res.model.t.out_channels == 3 and res.model.inn.num_features == 4


class LN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 16)
        self.fc3 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.ln(self.fc1(x))
        return self.head(h + self.fc3(F.gelu(self.fc2(h))))


def test_layernorm_groups_need_the_flag_and_then_are_reported_not_exact():
    m = randomise(LN())
    res = check(m, torch.randn(2, 5, 4))
    assert "LayerNorm" in reasons(res)["fc1"] and "--prune-norm" in reasons(res)["fc1"]
    assert len(kept(res, "fc2.weight")) == 8 and res.report["exact"]
    res2 = shrink(m, torch.randn(2, 5, 4), ratio=0.5, round_to=1, prune_norm=True, measure=False)
    assert not res2.report["exact"] and res2.model.ln.normalized_shape == (4,)
    assert res2.report["max_abs_diff"] >= 0


class TwoImagesOneEncoder(nn.Module):
    """RAFT's way: both images through one encoder as a batch of 2, then compared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm, self.out = nn.GroupNorm(8, 8), nn.Conv2d(8, 4, 1)

    def forward(self, a, b):
        f = self.conv2(torch.relu(self.norm(self.conv1(torch.cat([a, b], dim=0)))))
        fa, fb = f.split(a.shape[0], dim=0)
        return self.out(fa - fb)


def test_images_stacked_in_the_batch_are_not_units_sharing_one_layer():
    """Rows that are the model's inputs (not heads folded into the batch, as MViT's pools have) leave the layers'
    channels their own: conv1 and conv2 are pruned as usual."""
    x = (torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8))
    res = check(randomise(TwoImagesOneEncoder()), x)
    assert len(kept(res, "conv1.weight")) == 4 and len(kept(res, "conv2.weight")) == 4
    assert res.model.norm.num_channels == 4 and res.model.out.in_channels == 4
