"""Working at a reduced spatial size: channel identities do not depend on height and width.

Which channels go together, and whether a cut is exact, are properties of the graph, not of the image size. So
for a model whose graph does not depend on the input's size (it traced symbolically: no Python branch on a
size), slimnet analyses and verifies on a small image instead of the user's example, and pays a few small
forward passes instead of several large ones:

* :func:`reduced_examples`: the example at 32 px (then 64, then 128) for one float image input ``[B, C, H, W]``
  (or 5-D), batch 1, channels as given; nothing for other inputs (token ids, several tensors);
* :func:`full_size_values`: every node's value at the example's size, from one pass in which convolutions,
  linear layers and matrix products only compute their output shape (their arithmetic is nearly all of the
  cost), and norms and activations are not run at all. The cost model reads its shapes, so that MACs stay exact
  at the example's size; the pass also shows that the graph accepts the example;
* :func:`size_mismatch`: the check, node by node, that the small run is the large one seen through a smaller
  window: same structure and ranks, and wherever a dim's size differs, the node's channel ids do not vary along
  it. Anything else (a flatten of spatial positions into features, padding, a model that rejects the small
  size) sends the analysis back to the example's size;
* :func:`verify_inputs`: what the verifier runs instead of the example: the small example, and a batch-2 input
  of the smallest larger size (a different batch and size still catch forward code that hard-codes a size) at
  which no dimension shrinks to 1 (:func:`collapses`: a norm over one position would make the check blind).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .._tensors import flat_tensors, map_tensors

#: ``gm.meta`` key: the symbolic graph ran on the example with its layers as shapes (so no op's output shape
#: depends on values): the analysis at the example's size may skip the layers' arithmetic too.
RAN_EXAMPLE = "slimnet_ran_example"


#: Sizes tried, smallest first; one is used only when smaller than the example's.
SIZES = (32, 64, 128)
_CONV = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
#: Modules whose output has their input's shape: the full-size pass does not run them.
_SAME_SHAPE = (
    nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Identity,
)  # fmt: skip
#: Ops whose output shape depends on tensor values: a graph holding one is analysed at the example's size.
_DATA_DEPENDENT = {
    torch.nonzero, torch.masked_select, torch.unique, torch.argwhere, torch.unique_consecutive, "nonzero",
    "masked_select", "unique", "argwhere", "unique_consecutive",
}  # fmt: skip
#: Functions whose arithmetic the full-size pass skips (their output shape comes from meta tensors).
_SHAPED = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.matmul, torch.bmm}


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


def larger_inputs(small: Any, example: Any) -> list[Any]:
    """Batch-2 inputs one pixel larger than the small size, then 1.25, 1.5, 2, 4... times it (capped at the
    example's), smallest first: candidates for the verifier's second input. Any other size catches a size
    hard-coded at the small one; the smallest that keeps every dim above 1 costs least (resnet50: 33 px, a
    third less arithmetic than 40)."""
    image, full = image_input(small), image_input(example)
    assert image is not None and full is not None
    out, seen = [], set()
    for num, den in ((1, 1), (5, 4), (3, 2), (2, 1), (4, 1), (8, 1), (16, 1)):
        spatial = tuple(min(f, max(s + 1, s * num // den)) for s, f in zip(image.shape[2:], full.shape[2:]))
        if spatial in seen:
            continue
        seen.add(spatial)
        noise = torch.randn((2, image.shape[1]) + spatial, generator=torch.Generator().manual_seed(1234),
                            dtype=image.dtype)  # fmt: skip
        out.append(map_tensors(small, lambda _, n=noise: n))
    return out


def verify_inputs(small: Any, larger: Any) -> list[tuple[str, Any]]:
    """The verifier's inputs on the reduced path: the small example, and a larger batch-2 input in which no
    dimension that is larger than 1 at the example's size shrinks to 1 (:func:`collapses`)."""
    return [(f"example at {describe(small)}", small), (f"batch 2, size {describe(larger)}", larger)]


def collapses(values: dict[fx.Node, Any], full: dict[fx.Node, Any]) -> bool:
    """Whether some node's dim is 1 in ``values`` but larger at the example's size. A size-1 dim can make a
    check blind (a norm or softmax over one position outputs a constant), so the verifier needs one input
    without any."""
    for n, value in values.items():
        for x, y in zip(flat_tensors(value), flat_tensors(full.get(n))):
            if x.dim() == y.dim() and any(a == 1 < b for a, b in zip(x.shape, y.shape)):
                return True
    return False


# ------------------------------------------------------------------------------------------ the full-size pass
#: Elementwise functions of two tensors that the full-size pass reduces to their output's shape (an in-place
#: one only where the result keeps its first operand's shape, as the real op requires).
_BROADCAST = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


class _ShapePass(fx.Interpreter):
    """Runs the graph at the example's size with every convolution, linear layer, residual add, gate product and
    concatenation reduced to its output's shape (uninitialised memory of that shape: no arithmetic, no page
    touched), norms and activations not run at all (their output has their input's shape); every other op runs
    as usual. Values are never read (an op whose output's shape depends on them is refused), only shapes.
    Records each node's value as meta tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.values: dict[fx.Node, Any] = {}

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        m = self.fetch_attr(target)
        out = shaped_layer(m, args, kwargs, torch.empty)
        if out is not None:
            return out
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            if isinstance(m, _SAME_SHAPE):
                return torch.empty_like(args[0])
            if type(m) is nn.AdaptiveAvgPool2d and args[0].dim() in (3, 4) and min(args[0].shape[-3:]) > 0:
                size = (m.output_size,) * 2 if isinstance(m.output_size, int) else tuple(m.output_size)
                shape = tuple(s if s is not None else d for s, d in zip(size, args[0].shape[-2:]))
                return args[0].new_empty(tuple(args[0].shape[:-2]) + shape)
        return super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        if n.target in _DATA_DEPENDENT or (n.target is operator.getitem and _bool_index(self.env, n)):
            raise ValueError(f"{n.name}: its output's shape depends on values, which this pass does not compute")
        value = super().run_node(n)
        self.values[n] = map_tensors(value, lambda t: torch.empty(t.shape, dtype=t.dtype, device="meta"))
        return value

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if target in _SHAPED and not kwargs and all(isinstance(a, torch.Tensor) for a in args[:2]):
            return _shaped(target, *args)
        out = _broadcast(target, args, kwargs) if target in _BROADCAST or target in _IN_PLACE else None
        if out is None and target is torch.cat:
            out = _concatenated(args, kwargs)
        return out if out is not None else super().call_function(target, args, kwargs)


def _broadcast(target: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Uninitialised memory shaped like ``target(a, b)``'s output for two floating tensors of one dtype (None
    for anything else: the real op runs and raises what it raises)."""
    if kwargs or len(args) != 2 or not all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args):
        return None
    a, b = args
    if a.dtype != b.dtype:
        return None
    try:
        shape = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return None
    if target in _IN_PLACE and shape != a.shape:
        return None
    return a.new_empty(shape)


def _concatenated(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """Uninitialised memory shaped like ``torch.cat(tensors, dim)`` of same-rank, same-dtype, non-empty
    tensors that agree off ``dim`` (None otherwise: the real op decides)."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if set(kwargs) - {"tensors", "dim"} or not isinstance(dim, int) or not isinstance(tensors, (list, tuple)):
        return None
    if not tensors or not all(isinstance(t, torch.Tensor) and t.numel() for t in tensors):
        return None
    first = tensors[0]
    if not -first.dim() <= dim < first.dim():
        return None
    dim %= first.dim()
    rest = [tuple(first.shape[:dim]), tuple(first.shape[dim + 1 :])]
    if any(t.dtype != first.dtype or t.dim() != first.dim() for t in tensors):
        return None
    if any([tuple(t.shape[:dim]), tuple(t.shape[dim + 1 :])] != rest for t in tensors):
        return None
    return first.new_empty(rest[0] + (sum(t.shape[dim] for t in tensors),) + rest[1])


def _bool_index(env: dict[fx.Node, Any], n: fx.Node) -> bool:
    index = fx.node.map_arg(n.args[1], lambda a: env.get(a)) if len(n.args) > 1 else None
    return any(t.dtype == torch.bool for t in flat_tensors(index))


def shaped_layer(m: nn.Module, args: tuple, kwargs: dict, make: Any = torch.zeros) -> Any:
    """Zeros (or what ``make(shape, dtype=)`` gives: the full-size pass, which never reads values, takes
    uninitialised memory) shaped like the output of ``m`` (a plain convolution or linear layer called on one
    tensor, an attention that returns no weights), or None for any other call: what a pass that needs shapes,
    not values, runs instead of the layer's arithmetic."""
    if type(m) is nn.MultiheadAttention:
        return _shaped_attention(m, args, kwargs)
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0]
    if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and m.padding_mode == "zeros":
        shape = conv_shape(x, m.weight, m.stride, m.padding, m.dilation, m.groups)
        if shape is not None:
            return make(shape, dtype=x.dtype)
        return _shaped(_CONV[m.weight.dim()], x, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
    if type(m) is nn.Linear:
        if x.dim() >= 1 and x.shape[-1] == m.in_features and x.dtype == m.weight.dtype:
            return make(tuple(x.shape[:-1]) + (m.out_features,), dtype=x.dtype)
        return _shaped(F.linear, x, m.weight)
    return None


def conv_shape(x: torch.Tensor, weight: torch.Tensor, stride: tuple, padding: Any, dilation: tuple,
               groups: int) -> tuple[int, ...] | None:  # fmt: skip
    """The output shape of a convolution of ``x`` by ``weight`` (batched or not) with numeric padding, from
    torch's formula: the meta kernel's answer at a hundredth of its cost (its dispatch is most of a shape
    pass). None when this does not say (string padding, a dtype or channel mismatch, an empty or
    non-positive size): the caller asks the meta kernel, which raises what the real convolution would."""
    spatial = weight.dim() - 2
    if isinstance(padding, str) or x.dtype != weight.dtype or x.dim() not in (spatial + 1, spatial + 2):
        return None
    lead = tuple(x.shape[: x.dim() - spatial - 1])
    channels, sizes = x.shape[x.dim() - spatial - 1], x.shape[x.dim() - spatial :]
    if channels != weight.shape[1] * groups or weight.shape[0] % groups or 0 in lead:
        return None
    out = []
    for size, k, s, p, d in zip(sizes, weight.shape[2:], stride, padding, dilation):
        n = (size + 2 * p - d * (k - 1) - 1) // s + 1
        if n <= 0:
            return None
        out.append(n)
    return lead + (weight.shape[0],) + tuple(out)


def _shaped_attention(m: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[torch.Tensor, None] | None:
    """``(zeros shaped like the attention output, None)`` for a call that asks for no weights (ViT's
    ``attn(x, x, x, need_weights=False)``): the output has the query's shape, with ``embed_dim`` features."""
    need_weights = kwargs.get("need_weights", args[4] if len(args) > 4 else True)
    query = args[0] if args else kwargs.get("query")
    if need_weights is not False or not isinstance(query, torch.Tensor):
        return None
    return torch.zeros(tuple(query.shape[:-1]) + (m.embed_dim,), dtype=query.dtype), None


def _shaped(fn: Any, *args: Any) -> torch.Tensor:
    """Zeros shaped like ``fn``'s output, found on meta tensors (no arithmetic)."""
    meta = fn(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args))
    return torch.zeros(meta.shape, dtype=args[0].dtype)


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
        if x.numel() == 0 and y.numel() > 0:
            return "empty at the reduced size"
        changed = [d for d in range(x.dim()) if x.shape[d] != y.shape[d] and x.shape[d] > 1]
        if not changed:
            continue
        t = id_list[k] if len(id_list) == len(a) else None
        if t is None or t.shape != x.shape:
            return "a value without channel ids changes size"
        corner = t
        for d in changed:
            corner = corner.narrow(d, 0, 1)
        if not bool((t == corner).all()):  # equal to its first slice along every dim that changed size
            return f"channel ids vary along dim {changed}, whose size differs"
    return None
