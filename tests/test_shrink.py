"""Shrinking small nets end to end, beyond any one rule family: an op with no rule blocks only its groups,
inputs and outputs are never pruned, the verifier catches wrong plans and cuts hidden by constant tensors,
plans that do not fit are refused, the round-to rule, ``graph`` and ``ignore``, every criterion, and dict and
tuple inputs."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet.allocate import keep_count
from slimnet.api import graph, shrink
from slimnet.cut.surgeon import apply_plan
from slimnet.errors import SlimnetError
from slimnet.verify.verifier import HOLDS_EXAMPLE, verify

from .helpers import check, kept, randomise, reasons
from .test_rules_elementwise import Residual
from .test_rules_layers import ConvBNConv, DepthwiseGroup


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


class FixedSize(nn.Module):
    """Takes only 8x8 images, as torchvision's ViT takes only its image size; ``batch_one``: only batch size 1."""

    def __init__(self, batch_one: bool = False) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.batch_one = batch_one

    def forward(self, x):
        torch._assert(x.shape[-1] == 8 and x.shape[-2] == 8, "wrong image size")
        if self.batch_one:
            torch._assert(x.shape[0] == 1, "batch size 1 only")
        return self.conv2(F.relu(self.conv1(x))).flatten(1)


def test_one_pass_checks_the_example_and_batch_2_when_larger_inputs_are_refused():
    """The batch-2 input's first sample is the example, so where the larger image is refused the example needs
    no pass of its own; a model that takes batch size 1 only is still checked on the example."""
    m, x = randomise(FixedSize()), torch.randn(1, 3, 8, 8)
    res = shrink(m, x, ratio=0.5, round_to=1, measure=False)
    assert res.verification.passed and res.verification.inputs == [HOLDS_EXAMPLE]
    batches: list[int] = []  # the verifier runs light copies, which share the model's hooks
    res.model.conv1.register_forward_hook(lambda _m, a, _out: batches.append(a[0].shape[0]))
    assert verify(m, res.model, res.plan, x).passed and batches == [2]  # one pass of the pruned model
    bad = copy.deepcopy(res.model)
    with torch.no_grad():
        bad.conv2.weight[:, [0, 1]] = bad.conv2.weight[:, [1, 0]].clone()
    result = verify(m, bad, res.plan, x)
    assert not result.passed and "differ" in result.error and result.inputs == [HOLDS_EXAMPLE]
    one = randomise(FixedSize(batch_one=True))
    res = shrink(one, x, ratio=0.5, round_to=1, measure=False)
    assert res.verification.passed and res.verification.inputs == ["example"]
    assert [len(kept(res, "conv1.weight")), res.model.conv1.out_channels] == [4, 4]


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
