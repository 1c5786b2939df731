"""Every channel rule on a small hand-written net: kept indices, shapes, and the pruned output against the
masked original (the ``check`` helper re-verifies independently of slimnet's own verifier)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet.api import graph, shrink
from slimnet.errors import SlimnetError
from slimnet.plan import keep_count
from slimnet.surgeon import apply_plan
from slimnet.verify import verify

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


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.fft.fft(self.a(x)).real  # no rule: must not be guessed
        return self.c(self.b(y))


def test_unknown_op_blocks_its_groups_with_a_reason():
    res = check(randomise(Unknown()), torch.randn(1, 3, 4, 4))
    assert "no channel rule" in reasons(res)["a"] and "fft" in reasons(res)["a"]
    assert len(kept(res, "b.weight")) == 4  # groups it does not touch are still pruned


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


def test_inputs_and_outputs_are_never_pruned():
    res = check(randomise(ConvBNConv()), torch.randn(1, 3, 8, 8))
    assert "1" not in res.plan["tensors"].get("conv1.weight", {})
    assert res.model.conv2.out_channels == 4 and res.model.conv1.in_channels == 3


def test_a_wrong_plan_is_caught_by_the_verifier():
    m = randomise(ConvBNConv())
    x = torch.randn(1, 3, 8, 8)
    res = shrink(m, x, ratio=0.5, round_to=1, measure=False)
    bad = copy.deepcopy(res.plan)
    bad["tensors"]["bn1.weight"]["0"] = sorted(set(range(8)) - set(bad["tensors"]["bn1.weight"]["0"]))
    pruned = apply_plan(copy.deepcopy(m), bad)
    result = verify(m, pruned, bad, x)
    assert not result.passed and "differ" in result.error
    # a plan that only drops a producer's channels, not its consumer's, breaks the shapes: caught too
    half = {"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1, 2, 3]}}}
    broken = apply_plan(copy.deepcopy(m), half)
    assert not verify(m, broken, half, x).passed


class ZeroHead(nn.Module):
    """Fresh BatchNorm and a zero-initialised classifier, as torchvision builds ViT: every output is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = self.conv2(F.relu(self.bn1(self.conv1(x))))
        return self.head(x.mean((2, 3)))


def test_constant_tensors_cannot_hide_a_wrong_cut():
    """A zero classifier makes the output zero whatever the pruned layers compute; the verifier re-checks with
    the constant tensors randomised in both models, and a corrupted pruned weight is then caught."""
    torch.manual_seed(0)
    m, x = ZeroHead().eval(), torch.randn(1, 3, 8, 8)
    res = shrink(m, x, ratio=0.5, round_to=1, measure=False)
    assert res.verification.passed and res.report["verify_randomised"] == 6  # bn1 x4, head weight and bias
    assert res.verification.randomised_tolerance > 1e-4  # the re-check saw non-zero outputs (float32 tolerance)
    assert res.report["max_abs_diff"] == 0.0 and res.report["verify_randomised_diff"] is not None
    bad = copy.deepcopy(res.model)
    with torch.no_grad():
        bad.conv2.weight[:, [0, 1]] = bad.conv2.weight[:, [1, 0]].clone()  # a surgeon that mixed up two inputs
    result = verify(m, bad, res.plan, x)
    assert not result.passed and "constant-initialised" in result.error and "differ" in result.error
    trained = randomise(ZeroHead())  # no constant tensors left: one check only
    assert verify(trained, copy.deepcopy(trained), {"tensors": {}}, x).randomised == 0


def test_plan_that_does_not_fit_is_refused():
    m = ConvBNConv()
    with pytest.raises(SlimnetError, match="no tensor"):
        apply_plan(m, {"format": "slimnet.plan/1", "tensors": {"nope.weight": {"0": [0]}}})
    with pytest.raises(SlimnetError, match="size 8"):
        apply_plan(m, {"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 9]}}})


@pytest.mark.parametrize(
    ("n", "ratio", "step", "want"),
    [
        (64, 0.5, 8, 32),
        (24, 0.5, 8, 16),
        (16, 0.5, 8, 8),
        (8, 0.5, 8, 4),
        (3, 0.5, 8, 2),
        (1, 0.9, 8, 1),
        (100, 0.0, 8, 100),
        (96, 0.3, 1, 67),
        (10, 0.99, 4, 4),
        (2, 0.99, 1, 1),
    ],
)
def test_round_to_rule(n, ratio, step, want):
    assert keep_count(n, ratio, step) == want


def test_graph_reports_groups_and_reasons():
    analysis = graph(randomise(Unknown()), torch.randn(1, 3, 4, 4))
    by_name = {g.name: g for g in analysis.groups}
    assert by_name["b"].prunable and by_name["b"].n_units == 8
    assert not by_name["a"].prunable and "fft" in by_name["a"].reason


def test_ignore_leaves_layers_untouched_and_unknown_pattern_is_an_error():
    m = randomise(Residual())
    res = check(m, torch.randn(1, 3, 8, 8), ignore=["a"])
    assert res.plan["tensors"] == {} and "ignored" in reasons(res)["stem"]
    with pytest.raises(SlimnetError, match="matches no module"):
        shrink(m, torch.randn(1, 3, 8, 8), ignore=["nothing*"], measure=False)


@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "random", "bn-scale"])
def test_every_criterion_is_exact_and_deterministic(criterion):
    m = randomise(DepthwiseGroup())
    x = torch.randn(1, 3, 8, 8)
    a = check(m, x, criterion=criterion, seed=3)
    b = shrink(m, x, ratio=0.5, round_to=1, criterion=criterion, seed=3, measure=False)
    assert a.plan == b.plan


def test_bn_scale_keeps_the_largest_gammas():
    m = randomise(ConvBNConv())
    with torch.no_grad():
        m.bn1.weight.copy_(torch.tensor([0.1, 2.0, 0.1, 3.0, 0.2, 4.0, 5.0, 0.1]))
    res = check(m, torch.randn(1, 3, 8, 8), criterion="bn-scale")
    assert kept(res, "bn1.weight") == [1, 3, 5, 6]


def test_fpgm_drops_the_filters_nearest_the_geometric_median():
    m = randomise(ConvBNConv())
    with torch.no_grad():
        base = torch.randn(3, 3, 3)
        for i in range(8):  # filters 0..3 are near copies of one filter: the replaceable ones
            m.conv1.weight[i] = base + (0.01 if i < 4 else 3.0) * torch.randn(3, 3, 3)
        m.conv1.bias.zero_()  # the other members carry no preference
        m.bn1.weight.fill_(1.0)
        m.bn1.bias.fill_(0.0)
        m.conv2.weight.fill_(0.1)
    res = check(m, torch.randn(1, 3, 8, 8), criterion="fpgm")
    assert kept(res, "conv1.weight") == [4, 5, 6, 7]


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


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x, scale=None):
        y = self.a(x)
        if scale is not None:
            y = y * scale
        return self.b(y)


def test_dict_and_tuple_inputs():
    m = randomise(TwoInputs())
    x = torch.randn(1, 3, 4, 4)
    res = check(m, {"x": x, "scale": torch.rand(1, 1, 4, 4)})
    assert len(kept(res, "a.weight")) == 4
    res = check(m, (x,))
    assert len(kept(res, "a.weight")) == 4
    with pytest.raises(SlimnetError, match="unexpected keyword argument .y."):
        shrink(m, {"y": x}, measure=False)
