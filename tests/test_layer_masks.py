"""Layers masked through their activations (:mod:`slimnet.verify.layer_masks`) give the reference that masked copies of
their weights give; a weight read outside its layer makes the reference fall back to the copies; and the
float32 verifier, which uses them, still catches wrong cuts."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet.api import shrink
from slimnet.cut.surgeon import apply_plan
from slimnet.verify.bound import Bound, cast_state, tensors_of
from slimnet.verify.layer_masks import layer_masks
from slimnet.verify.verifier import _reference, verify

from .helpers import randomise
from .randnet import RandomNet
from .test_shrink import ZeroHead

F32 = torch.float32


def copied(model: nn.Module, plan: dict) -> Bound:
    """The reference as before: every planned tensor a masked copy, no layer masked through activations."""
    return Bound(model, cast_state(tensors_of(model), F32, plan["tensors"]), F32)


def random_plan(model: nn.Module, rng: random.Random, disagree: bool = False) -> dict:
    """Random kept indices along dims 0 and 1 of every conv and linear weight and dim 0 of their biases (the
    bias's own random indices when ``disagree``)."""
    tensors: dict = {}
    for path, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            dims = {}
            for d in (0, 1):
                if rng.random() < 0.7:
                    size = m.weight.shape[d]
                    dims[str(d)] = sorted(rng.sample(range(size), rng.randint(1, size)))
            if dims:
                tensors[f"{path}.weight"] = dims
            if m.bias is not None and "0" in dims:
                n = m.bias.shape[0]
                tensors[f"{path}.bias"] = (
                    {"0": sorted(rng.sample(range(n), rng.randint(1, n)))} if disagree else {"0": dims["0"]}
                )
    return {"tensors": tensors}


@pytest.mark.parametrize("seed", range(12))
def test_activation_masks_equal_masked_copies_on_random_nets(seed: int) -> None:
    """On random nets (1-3D convs, depthwise and grouped convs, linears, a module used twice) and random plans
    (including biases that disagree with their weights), the reference's outputs equal the masked copies'."""
    torch.manual_seed(seed)
    net = randomise(RandomNet(seed), seed)
    rng = random.Random(seed)
    x = net.example(batch=2)
    for disagree in (False, True):
        plan = random_plan(net, rng, disagree)
        fast = _reference(net, plan, F32)
        assert fast.layers, "no layer was masked through its activations: the test would prove nothing"
        want, got = copied(net, plan)(x), fast(x)
        assert fast.layers  # no fallback was needed
        for a, b in zip(want, got):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * (1 + float(a.abs().max())))


def test_masks_follow_groups_and_unbatched_inputs() -> None:
    """A grouped convolution's input mask is the weight's, repeated per group; an unbatched input is masked
    along its own channel dim."""
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, groups=2, padding=1).eval()
    plan = {"tensors": {"weight": {"0": [1, 3], "1": [0, 2]}, "bias": {"0": [1, 3]}}}
    masks = layer_masks(conv, tensors_of(conv), plan["tensors"], F32)
    assert masks[""].inp.tolist() == [1, 0, 1, 1, 0, 1]
    for x in (torch.randn(2, 6, 5, 5), torch.randn(6, 5, 5)):
        want, got = copied(conv, plan)(x)[0], _reference(conv, plan, F32)(x)[0]
        assert torch.allclose(want, got, atol=1e-6) and want.abs().max() > 0


class ReadsItsWeight(nn.Module):
    """A parent that computes with its child's weight itself, as nn.MultiheadAttention does with out_proj."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.relu(self.a(x)), self.b.weight, self.b.bias)


def test_a_weight_read_outside_its_layer_falls_back_to_the_masked_copy() -> None:
    torch.manual_seed(0)
    m = ReadsItsWeight().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    plan = {"tensors": {"a.weight": {"0": [0, 2, 3]}, "a.bias": {"0": [0, 2, 3]}, "b.weight": {"1": [0, 2, 3]}}}
    ref = _reference(m, plan, F32)
    assert set(ref.layers) == {"a", "b"}
    x = torch.randn(3, 5)
    got = ref(x)[0]
    assert not ref.layers  # fell back: every planned weight is now a masked copy
    assert torch.equal(got, copied(m, plan)(x)[0])
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the model untouched
    assert type(m.b.weight) is nn.Parameter and "forward" not in vars(m.b)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    plan = {"tensors": {"out_proj.weight": {"1": [0, 1, 2, 3]}}}
    q = torch.randn(1, 3, 8)
    want = copied(mha, plan)((q, q, q))
    assert all(torch.equal(a, b) for a, b in zip(want, _reference(mha, plan, F32)((q, q, q))))


def test_tied_and_other_dtype_weights_are_copied() -> None:
    """A weight known under two names, or not in the reference's dtype, is never masked through activations."""
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    m[1].weight = m[0].weight
    plan = {"0.weight": {"0": [0, 1]}, "1.weight": {"0": [0, 1]}}
    assert layer_masks(m, tensors_of(m), plan, F32) == {}
    n = nn.Sequential(nn.Linear(4, 4))
    assert layer_masks(n, tensors_of(n), {"0.weight": {"0": [1]}}, torch.float64) == {}
    assert set(layer_masks(n, tensors_of(n), {"0.weight": {"0": [1]}}, F32)) == {"0"}


def test_float32_verifier_still_catches_wrong_cuts() -> None:
    """The checks of tests/test_shrink.py in float32, where the layers are masked through their activations: a
    wrong index, a producer cut without its consumer, and a cut hidden by constant tensors."""
    from .test_rules_layers import ConvBNConv

    m, x = randomise(ConvBNConv()), torch.randn(1, 3, 8, 8)
    res = shrink(m, x, ratio=0.5, round_to=1, measure=False)
    assert verify(m, res.model, res.plan, x, precision=F32).passed
    assert _reference(m, res.plan, F32).layers
    bad = copy.deepcopy(res.plan)
    bad["tensors"]["bn1.weight"]["0"] = sorted(set(range(8)) - set(bad["tensors"]["bn1.weight"]["0"]))
    result = verify(m, apply_plan(copy.deepcopy(m), bad), bad, x, precision=F32)
    assert not result.passed and "differ" in result.error
    swapped = copy.deepcopy(res.model)
    with torch.no_grad():
        swapped.conv2.weight[:, [0, 1]] = swapped.conv2.weight[:, [1, 0]].clone()
    assert not verify(m, swapped, res.plan, x, precision=F32).passed
    half = {"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1, 2, 3]}}}
    assert not verify(m, apply_plan(copy.deepcopy(m), half), half, x, precision=F32).passed

    torch.manual_seed(0)
    zero, x = ZeroHead().eval(), torch.randn(1, 3, 8, 8)
    res = shrink(zero, x, ratio=0.5, round_to=1, measure=False)
    bad_model = copy.deepcopy(res.model)
    with torch.no_grad():
        bad_model.conv2.weight[:, [0, 1]] = bad_model.conv2.weight[:, [1, 0]].clone()
    result = verify(zero, bad_model, res.plan, x, precision=F32)
    assert not result.passed and "constant-initialised" in result.error
    assert verify(zero, res.model, res.plan, x, precision=F32).passed
