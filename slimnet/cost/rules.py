"""The entries of :data:`~slimnet.cost.terms.COSTS`: one per op family, each a function of a
:class:`~slimnet.cost.terms.CostCall` returning its terms, with fvcore's conventions (see :mod:`slimnet.cost`)."""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import nn

from .terms import CostCall, Term, cost, elements, kept, per_column, term

# ------------------------------------------------------------------------------------------------ entries
_PER_OUTPUT_FUNCS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.pow, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.maximum, torch.minimum, torch.where,
    torch.pow, torch.addcmul, torch.addcdiv, torch.lerp, torch.subtract, torch.multiply, torch.divide,
    torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.neg, torch.abs, torch.reciprocal, torch.erf,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.softmax, torch.log_softmax,
    F.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.elu, F.selu,
    F.celu, F.leaky_relu, F.mish, F.softplus, F.softmax, F.log_softmax, F.glu, F.threshold, F.prelu,
]  # fmt: skip
_PER_OUTPUT_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "pow_", "sqrt", "rsqrt", "exp", "exp_",
    "log", "neg", "neg_", "abs", "reciprocal", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "clamp", "clamp_", "clip", "softmax", "log_softmax", "maximum", "minimum", "where", "addcmul", "addcmul_",
    "lerp", "erf", "hardswish", "__add__", "__mul__", "__sub__", "__truediv__", "__radd__", "__rmul__",
    "__rsub__", "__rtruediv__", "subtract", "multiply", "divide", "square",
]  # fmt: skip
_PER_OUTPUT_MODULES = [
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU,
    nn.SELU, nn.CELU, nn.LeakyReLU, nn.Mish, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.GLU, nn.Threshold,
    nn.PReLU,
]  # fmt: skip


@cost(*_PER_OUTPUT_FUNCS, *_PER_OUTPUT_METHODS, *_PER_OUTPUT_MODULES)
def per_output(call: CostCall) -> list[Term]:
    """Elementwise arithmetic and activations: one per output element (nothing for arithmetic on sizes)."""
    if not isinstance(call.value, torch.Tensor) or not call.value.is_floating_point():
        return []
    return term(call, 1.0, elements(call.out, call.value))


@cost(
    torch.mean, torch.sum, "mean", "sum",
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
def per_input(call: CostCall) -> list[Term]:
    """Reductions and adaptive pooling: one per input element."""
    src = call.node.args[0] if call.node.args else None
    value = call.args[0] if call.args else None
    return term(call, 1.0, elements(call.ids(src), value))


def _window(call: CostCall) -> int:
    if call.module is not None:
        k = call.module.kernel_size
    else:
        k = call.arg(1, "kernel_size")
    spatial = max(1, call.value.dim() - 2) if isinstance(call.value, torch.Tensor) else 2
    if isinstance(k, int):
        return k**spatial
    return math.prod(k) if k else 1


@cost(
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.max_pool1d,
    torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip
def pool_window(call: CostCall) -> list[Term]:
    """Max/avg pooling: the window's area per output element."""
    value = call.value[0] if isinstance(call.value, tuple) else call.value
    out = call.out[0] if isinstance(call.out, tuple) else call.out
    return term(call, float(_window(call)), elements(out, value))


@cost(F.interpolate, F.upsample, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def upsample(call: CostCall) -> list[Term]:
    """fvcore: nearest 1, bilinear 4 per output element (2-D only; other modes and dims are not counted)."""
    if call.module is not None:
        mode = "bilinear" if isinstance(call.module, nn.UpsamplingBilinear2d) else getattr(call.module, "mode", "")
    else:
        mode = call.arg(4, "mode", "nearest")
    if not isinstance(call.value, torch.Tensor) or call.value.dim() != 4:
        return []
    scale = {"nearest": 1.0, "bilinear": 4.0}.get(mode)
    return term(call, scale, elements(call.out, call.value)) if scale else []


def _conv(call: CostCall, x: torch.Tensor, w: torch.Tensor, name: str | None, transposed: bool) -> list[Term]:
    out = call.out
    if not transposed and isinstance(out, torch.Tensor) and out.dim() > 2 and _channels_shared(out):
        # one weight serving several units row by row (MViT's pools run every head through one depthwise conv,
        # the heads folded into the batch dim): every kept output element reads a whole kernel
        return term(call, math.prod(w.shape[1:]), elements(out, call.value))
    spatial = x.shape[2:] if transposed else call.value.shape[2:]
    scale = x.shape[0] * math.prod(spatial) * math.prod(w.shape[2:])
    return term(call, scale, kept(name, 0, w.shape[0]), kept(name, 1, w.shape[1]))


def _channels_shared(out: torch.Tensor) -> bool:
    """Whether a conv's output channels hold several atoms each (its channel rule found the weight shared by
    several units, :func:`slimnet.groups.rules.layers.shared_by_units`); a plain conv's channel is one atom."""
    flat = out.transpose(0, 1).reshape(out.shape[1], -1)
    return bool(((flat.amin(1) != flat.amax(1)) & (flat.amin(1) >= 0)).any())


@cost(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_module(call: CostCall) -> list[Term]:
    """Convolution: batch x output positions (input positions when transposed) x every weight element."""
    m = call.module
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    return _conv(call, call.args[0], m.weight, f"{call.target_name}.weight", transposed)


@cost(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_function(call: CostCall) -> list[Term]:
    w = call.arg(1, "weight")
    name = call.param(call.node_arg(1, "weight"))
    return _conv(call, call.args[0], w, name, "transpose" in call.node.target.__name__)


def _linear(call: CostCall, x: torch.Tensor, name: str | None, out_features: int, in_features: int,
            out_dim: int) -> list[Term]:  # fmt: skip
    rows = x.numel() // max(1, x.shape[-1])
    return term(call, rows, kept(name, out_dim, out_features), kept(name, 1 - out_dim, in_features))


@cost(nn.Linear, "transformers.models.falcon.modeling_falcon.FalconLinear")
def linear_module(call: CostCall) -> list[Term]:
    """Linear: rows x in x out (the bias is not counted)."""
    w = call.module.weight
    return _linear(call, call.args[0], f"{call.target_name}.weight", w.shape[0], w.shape[1], 0)


@cost("transformers.pytorch_utils.Conv1D")
def hf_conv1d(call: CostCall) -> list[Term]:
    """Hugging Face's Conv1D keeps its weight as [in, out]."""
    w = call.module.weight
    return _linear(call, call.args[0], f"{call.target_name}.weight", w.shape[1], w.shape[0], 1)


@cost(F.linear)
def linear_function(call: CostCall) -> list[Term]:
    w = call.arg(1, "weight")
    return _linear(call, call.args[0], call.param(call.node_arg(1, "weight")), w.shape[0], w.shape[1], 0)


@cost(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul(call: CostCall) -> list[Term]:
    """fvcore: every element of the first operand times the second's last dim (batch x n x k x m)."""
    a, b = call.args[0], call.args[1]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or b.dim() < 2:
        return []
    ids_a, ids_b = call.ids(call.node.args[0]), call.ids(call.node.args[1])
    return term(call, 1.0, elements(ids_a, a), per_column(ids_b, b.shape[-1]))


@cost(F.scaled_dot_product_attention)
def sdpa(call: CostCall) -> list[Term]:
    """``q @ k^T`` and ``attn @ v``: every element of q and of the output times the source length; the scaling
    and the softmax: 2 per attention weight, i.e. per row of q times the source length (heads are whole, so
    q's kept elements over its head size are its kept rows)."""
    q, k = call.arg(0, "query"), call.arg(1, "key")
    source = k.shape[-2]
    ids_q = call.ids(call.node_arg(0, "query"))
    return (
        term(call, source, elements(ids_q, q))
        + term(call, source, elements(call.out, call.value))
        + term(call, 2 * source / q.shape[-1], elements(ids_q, q))
    )


def _norm(call: CostCall, x: torch.Tensor, affine: bool, per_element: tuple[float, float]) -> list[Term]:
    src = call.node.args[0] if call.node.args else call.node.kwargs.get("input")
    return term(call, per_element[0] if affine else per_element[1], elements(call.ids(src), x))


@cost(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def batchnorm_module(call: CostCall) -> list[Term]:
    """Batch norm in eval: 2 per element with affine parameters, 1 without."""
    return _norm(call, call.args[0], call.module.weight is not None, (2.0, 1.0))


@cost(F.batch_norm)
def batchnorm_function(call: CostCall) -> list[Term]:
    return _norm(call, call.args[0], call.arg(3, "weight") is not None, (2.0, 1.0))


@cost(nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def norm_module(call: CostCall) -> list[Term]:
    """Layer, group and instance norm: 5 per element with affine parameters, 4 without."""
    return _norm(call, call.args[0], getattr(call.module, "weight", None) is not None, (5.0, 4.0))


@cost(F.layer_norm, F.group_norm, F.instance_norm)
def norm_function(call: CostCall) -> list[Term]:
    index = {F.layer_norm: 2, F.group_norm: 2, F.instance_norm: 3}[call.node.target]
    return _norm(call, call.args[0], call.arg(index, "weight") is not None, (5.0, 4.0))


@cost(*([nn.RMSNorm, F.rms_norm] if hasattr(nn, "RMSNorm") else []))
def rms_norm(call: CostCall) -> list[Term]:
    """RMSNorm: 4 per element with a weight, 3 without (slimnet's handle for aten::rms_norm)."""
    weight = call.module.weight if call.module is not None else call.arg(2, "weight")
    return _norm(call, call.args[0], weight is not None, (4.0, 3.0))


@cost(nn.MultiheadAttention)
def multihead_attention(call: CostCall) -> list[Term]:
    """``nn.MultiheadAttention``'s fused path (as :func:`slimnet.cost.macs.native_mha` counts it): the q/k/v
    projections, both attention products, the scaling and the softmax, and the output projection."""
    m = call.module
    q, k = call.arg(0, "query"), call.arg(1, "key")
    if not m.batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    batch, length, source = math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
    w = f"{call.target_name}.in_proj_weight"
    rows, cols = m.in_proj_weight.shape
    inner = kept(w, 0, rows)  # 3 x the kept inner width
    out_w = f"{call.target_name}.out_proj.weight"
    o_rows, o_cols = m.out_proj.weight.shape
    return (
        term(call, batch * (length + 2 * source) / 3, inner, kept(w, 1, cols))
        + term(call, batch * length, kept(out_w, 0, o_rows), kept(out_w, 1, o_cols))
        + term(call, 2 * batch * length * source / 3, inner)
        + term(call, 2 * batch * length * source / (3 * m.head_dim), inner)
    )


def _free(_call: CostCall) -> list[Term]:
    """Ops that compute nothing in eval mode (fvcore sees no op at all)."""
    return []


try:  # torchvision wraps it as an fx leaf function; in eval mode it returns its input
    from torchvision.ops import stochastic_depth

    cost(stochastic_depth)(_free)
except ImportError:  # pragma: no cover - torchvision is a dependency, but the cost model does not need it
    pass
