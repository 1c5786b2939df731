"""The full-size shape pass (:mod:`slimnet.trace.reduced`) gives every node the shape a real run gives it, and the
verifier's larger input is the smallest size that keeps every dim above 1."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimnet.groups.registry import has_rule, is_leaf_class
from slimnet.trace.reduced import collapses, conv_shape, full_size_values, larger_inputs
from slimnet.trace.tracer import placeholder_args, trace

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def test_conv_shape_agrees_with_the_meta_kernel() -> None:
    """On random convolutions (1-3 spatial dims, groups, strides, padding, dilation, batched or not), the formula
    gives the meta kernel's shape, or None where the convolution is invalid; it answers for most of them."""
    rng = random.Random(0)
    answered = 0
    for _ in range(2000):
        sp, g = rng.choice([1, 2, 3]), rng.choice([1, 2, 4])
        cin, cout = g * rng.randint(1, 3), g * rng.randint(1, 3)
        k, s, p, d = ([rng.randint(lo, hi) for _ in range(sp)] for lo, hi in ((1, 5), (1, 3), (0, 3), (1, 3)))
        size = tuple(rng.randint(1, 12) for _ in range(sp))
        x = torch.zeros(((2,) if rng.random() < 0.7 else ()) + (cin + rng.choice([0, 0, 0, 1]),) + size)
        w = torch.zeros((cout, cin // g, *k))
        try:
            want = tuple(_CONVS[sp](x.to("meta"), w.to("meta"), None, s, p, d, g).shape)
        except RuntimeError:
            want = None
        got = conv_shape(x, w, tuple(s), tuple(p), tuple(d), g)
        if got is not None:
            answered += 1
            assert got == want, (x.shape, w.shape, s, p, d, g)
    assert answered > 1000


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v3_small"])
def test_full_size_pass_gives_every_node_its_real_shape(name: str) -> None:
    """Convolutions, linears, residual adds, gates, concatenations and pools are reduced to their shapes, yet
    every node's recorded shape is the one a real forward pass gives it."""
    model = torchvision.models.get_model(name).eval()
    x = torch.randn(1, 3, 96, 96)
    gm = trace(model, x, is_leaf=is_leaf_class, keep_wrapped=has_rule, with_values=False)
    values = full_size_values(gm, placeholder_args(gm, x))
    ShapeProp(gm).propagate(x)
    checked = 0
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if node.op == "output" or not hasattr(meta, "shape"):
            continue
        assert tuple(values[node].shape) == tuple(meta.shape), node.name
        checked += 1
    assert checked > 20


def test_an_invalid_residual_add_is_still_refused() -> None:
    """Reducing an add to its shape must not accept what the real add rejects."""

    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            y += self.b(x)
            return y

    gm = fx.symbolic_trace(Bad())
    with pytest.raises(RuntimeError):
        full_size_values(gm, [torch.randn(1, 3, 16, 16)])


def test_larger_input_is_the_smallest_that_keeps_every_dim_above_one() -> None:
    """resnet18 at 32 px ends at 1x1; 33 px already ends at 2x2 (and so does every size the ladder tries after
    it); densenet121 needs 64 px, so 33, 40 and 48 are passed over."""
    for name, want in (("resnet18", 33), ("densenet121", 64)):
        model = torchvision.models.get_model(name).eval()
        example, small = torch.randn(1, 3, 224, 224), torch.randn(1, 3, 32, 32)
        gm = trace(model, example, is_leaf=is_leaf_class, keep_wrapped=has_rule, with_values=False)
        full = full_size_values(gm, placeholder_args(gm, example))
        sizes = []
        for candidate in larger_inputs(small, example):
            assert candidate.shape[0] == 2
            collapsed = collapses(full_size_values(gm, placeholder_args(gm, candidate)), full)
            sizes.append((candidate.shape[-1], collapsed))
        assert sizes[0][0] == 33
        assert min(s for s, c in sizes if not c) == want, sizes
