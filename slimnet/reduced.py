"""Working at a reduced spatial size: channel identities do not depend on height and width.

Which channels go together, and whether a cut is exact, are properties of the graph, not of the image size. So
for a model whose graph does not depend on the input's size (it traced symbolically: no Python branch on a
size), slimnet analyses and verifies on a small image instead of the user's example, and pays a few small
forward passes instead of several large ones:

* :func:`reduced_examples`: the example at 32 px (then 64 px) for one float image input ``[B, C, H, W]`` (or
  5-D), batch 1, channels as given; nothing for other inputs (token ids, several tensors);
* :func:`full_size_values`: every node's value at the example's size, from one pass in which the convolutions
  only compute their output shape (their arithmetic is nearly all of a CNN's cost). The cost model reads its
  shapes, so that MACs stay exact at the example's size; the pass also shows that the graph accepts the example;
* :func:`size_mismatch`: the check, node by node, that the small run is the large one seen through a smaller
  window: same structure and ranks, and wherever a dim's size differs, the node's channel ids do not vary along
  it. Anything else (a flatten of spatial positions into features, padding, a model that rejects the small
  size) sends the analysis back to the example's size;
* :func:`verify_inputs`: what the verifier runs instead of the example: the small example, and a batch-2 input
  half as large again (a different batch and size still catch forward code that hard-codes a size).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._tensors import flat_tensors, map_tensors

#: Sizes tried, smallest first; one is used only when smaller than the example's.
SIZES = (32, 64)
_CONV_FUNCS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def image_input(example: Any) -> torch.Tensor | None:
    """The example's one float image tensor (4-D or 5-D), if that is all it holds."""
    tensors = flat_tensors(example)
    if len(tensors) == 1 and tensors[0].is_floating_point() and tensors[0].dim() in (4, 5):
        return tensors[0]
    return None


def _resized(example: Any, batch: int, size: int, seed: int) -> Any:
    image = image_input(example)
    assert image is not None
    shape = (batch, image.shape[1]) + tuple(min(s, size) for s in image.shape[2:])
    gen = torch.Generator().manual_seed(seed)
    small = torch.randn(shape, generator=gen, dtype=image.dtype)
    return map_tensors(example, lambda _: small)


def reduced_examples(example: Any) -> list[Any]:
    """The example at each of :data:`SIZES` below its own size (batch 1, same channels), smallest first."""
    image = image_input(example)
    if image is None:
        return []
    out = []
    for size in SIZES:
        if image.shape[0] > 1 or any(s > size for s in image.shape[2:]):
            candidate = _resized(example, 1, size, seed=size)
            if tuple(image_input(candidate).shape) != tuple(image.shape):
                out.append(candidate)
    return out


def describe(example: Any) -> str:
    """``1x3x32x32`` for the reduced example's image."""
    image = image_input(example)
    return "x".join(str(s) for s in image.shape) if image is not None else ""


def verify_inputs(small: Any) -> list[tuple[str, Any]]:
    """The verifier's inputs on the reduced path: the small example, and batch 2 at 1.5 times its size."""
    image = image_input(small)
    assert image is not None
    shape = (2, image.shape[1]) + tuple(s + s // 2 for s in image.shape[2:])
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1234), dtype=image.dtype)
    bigger = map_tensors(small, lambda _: noise)
    return [(f"example at {describe(small)}", small), (f"batch 2, size {describe(bigger)}", bigger)]


# ------------------------------------------------------------------------------------------ the full-size pass
class _ShapePass(fx.Interpreter):
    """Runs the graph at the example's size with every convolution reduced to its output shape (zeros of that
    shape, found with meta tensors); every other op runs as usual. Records each node's value as meta tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n] = map_tensors(value, lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"))
        return value

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        m = self.fetch_attr(target)
        if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and m.padding_mode == "zeros" and not kwargs and args:
            return _conv_shape(args[0], m.weight, m.stride, m.padding, m.dilation, m.groups)
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in _CONV_FUNCS and len(args) >= 2 and not kwargs:
            stride, padding, dilation, groups = (list(args[3:]) + [1, 0, 1, 1][len(args) - 3 :])[:4]
            return _conv_shape(args[0], args[1], stride, padding, dilation, groups)
        return super().call_function(target, args, kwargs)


def _conv_shape(x: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any, dilation: Any, groups: int) -> Any:
    fn = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.dim()]
    meta = fn(x.to("meta"), w.to("meta"), None, stride, padding, dilation, groups)
    return torch.zeros(meta.shape, dtype=x.dtype)


def full_size_values(gm: fx.GraphModule, inputs: list[Any]) -> dict[fx.Node, Any]:
    """Every node's value at the example's size (tensors as meta tensors: shapes and dtypes only)."""
    shape_pass = _ShapePass(gm)
    with torch.no_grad():
        shape_pass.run(*inputs)
    return shape_pass.values


def size_mismatch(small: Any, full: Any, ids: Any) -> str | None:
    """Why a node's small value is not the full one seen through a smaller window (None: it is): the
    structure or a rank differs, or its ids vary along a dim whose size differs."""
    a, b = flat_tensors(small), flat_tensors(full)
    if len(a) != len(b):
        return "another number of tensors"
    id_list = flat_tensors(ids) if ids is not None else []
    for k, (x, y) in enumerate(zip(a, b)):
        if x.dim() != y.dim():
            return f"rank {x.dim()} instead of {y.dim()}"
        changed = [d for d in range(x.dim()) if x.shape[d] != y.shape[d] and x.shape[d] > 1]
        if not changed:
            continue
        t = id_list[k] if len(id_list) == len(a) else None
        if t is None or t.shape != x.shape:
            return "a value without channel ids changes size"
        for d in changed:
            if not bool((t == t.narrow(d, 0, 1)).all()):
                return f"channel ids vary along dim {d}, whose size differs"
    return None
