"""One model of each torchvision CNN family shrinks at ratio 0.5 and passes the verifier.

Inputs are small (64-96 px) to keep CI fast; the verifier also runs a batch-2 input 32 px larger. The whole
zoo at 224 px with every criterion is ``tools/coverage.py`` (results in docs/coverage.md)."""

from __future__ import annotations

import pytest
import torch

from slimnet._tensors import count_params
from slimnet.api import shrink
from slimnet.load.loader import load_model
from slimnet.verify import verifier as verify

FAMILIES = {
    "resnet18": ("l1", 64),
    "resnext50_32x4d": ("fpgm", 64),
    "wide_resnet50_2": ("l2", 64),
    "vgg11_bn": ("bn-scale", 64),
    "alexnet": ("random", 64),
    "squeezenet1_1": ("l1", 64),
    "densenet121": ("l2", 64),
    "googlenet": ("fpgm", 64),
    "inception_v3": ("l1", 96),
    "mobilenet_v2": ("fpgm", 64),
    "mobilenet_v3_small": ("bn-scale", 64),
    "mnasnet0_5": ("random", 64),
    "efficientnet_b0": ("l1", 64),
    "efficientnet_v2_s": ("l2", 64),
    "regnet_x_400mf": ("fpgm", 64),
    "regnet_y_400mf": ("l1", 64),
    "shufflenet_v2_x0_5": ("l2", 64),
    "convnext_tiny": ("l1", 64),
}


def perturb(model: torch.nn.Module) -> torch.nn.Module:
    """torchvision initialises norm scales to 1, shifts and biases to 0 and running stats to 0/1: a cut that
    keeps the wrong indices of those tensors would compute the same numbers. Seeded noise makes it show."""
    state = model.state_dict()
    vectors = [n for n, t in state.items() if t.is_floating_point() and t.dim() <= 1 or n.endswith("layer_scale")]
    return verify.randomise(model, vectors)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_shrinks_and_verifies(name):
    criterion, size = FAMILIES[name]
    model = perturb(load_model(f"torchvision:{name}").model)
    x = torch.randn(1, 3, size, size)
    res = shrink(model, x, ratio=0.5, criterion=criterion, measure=False)
    assert res.verification.passed, res.verification.error
    assert res.report["max_abs_diff"] <= res.report["tolerance"]
    assert res.report["pruned_groups"] > 0
    assert count_params(res.model) < 0.8 * count_params(model)
    with torch.no_grad():
        out = res.model(torch.randn(3, 3, size + 16, size + 16))
    assert out.shape == (3, 1000)
    # every pruned conv is physically smaller and states its sizes right
    for mod in res.model.modules():
        if isinstance(mod, torch.nn.Conv2d):
            assert mod.weight.shape[0] == mod.out_channels
            assert mod.weight.shape[1] * mod.groups == mod.in_channels
