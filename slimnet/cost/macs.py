"""What a model costs in theory: parameters and MACs (fvcore), and the speedup arithmetic of ``slimnet bench``.

MACs. fvcore traces the model with the TorchScript tracer and counts each op with a *handle*; it calls one
multiply-add one "flop", so what it reports is what we call **MACs**, and ``flops = 2 * macs``. Its own
handles cover conv, linear, matmul, einsum, norms and a few resamplers; we add one table, :data:`EXTRA_HANDLES`,
for the ops that it leaves out but that a pruned network still pays for:

* elementwise arithmetic and activations (add, mul, relu, gelu, silu, hardswish, sigmoid, softmax, ...):
  one per output element, the convention fvcore already uses for batch norm and pooling;
* pooling: ``kernel area`` per output element (max/avg), one per input element (adaptive);
* ``scaled_dot_product_attention``: the MACs of ``q @ k^T`` and ``attn @ v``, plus the scaling and the softmax
  (one each per attention weight), as the explicit ``softmax(q @ k^T / sqrt(d)) @ v`` counts them;
* ``_native_multi_head_attention`` (``nn.MultiheadAttention``'s fused inference path): projections, both
  attention products, the scaling and the softmax;

so an attention costs the same whichever way it is computed (explicit ops, SDPA, the fused module path): a
pruned ``nn.MultiheadAttention`` (slimnet's ``SlimMultiheadAttention``, which runs SDPA) counts what the
original's fused path counted for its kept heads;
* reductions (mean, sum) and ``rms_norm``.

Shape-only ops (view, pad, cat, dropout in eval, comparisons, ...) are explicitly free (:data:`FREE_OPS`). Any op
with neither a handle nor a place in that list is reported under ``skipped_ops`` with its count, so a total is
never silently too small.

Milliseconds in practice are :mod:`slimnet.measure.latency`'s.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._tensors import PositionalCall, as_args, count_params, eval_mode, flat_tensors
from .._util import first_line
from .._version import __version__
from ..errors import SlimnetError

Handle = Callable[[list[Any], list[Any]], float]

MACS_NOTE = "fvcore counts one multiply-add as one flop: macs is that count and flops = 2 x macs"


# ----------------------------------------------------------------------------------------------- MAC handles
def _shape(value: Any) -> list[int] | None:
    """The static shape of a traced value, or None when it is not a tensor of known shape."""
    try:
        if value.isCompleteTensor():
            return list(value.type().sizes())
    except AttributeError:
        pass
    return None


def _numel(value: Any) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 0


def _ivalue(value: Any) -> Any:
    """A traced constant (int, list of ints...), looking through ``prim::ListConstruct``; None if not constant."""
    try:
        node = value.node()
        if node.kind() == "prim::ListConstruct":
            return [_ivalue(v) for v in node.inputs()]
        return value.toIValue()
    except (AttributeError, RuntimeError):
        return None


def per_output(inputs: list[Any], outputs: list[Any]) -> float:
    """One op per output element: elementwise arithmetic and activations."""
    return _numel(outputs[0]) if outputs else 0


def per_input(inputs: list[Any], outputs: list[Any]) -> float:
    """One op per input element: reductions and adaptive pooling (every input element is read once)."""
    return _numel(inputs[0]) if inputs else 0


def pool_window(inputs: list[Any], outputs: list[Any]) -> float:
    """Max/avg pooling: each output element looks at ``prod(kernel_size)`` inputs."""
    kernel = _ivalue(inputs[1]) if len(inputs) > 1 else None
    if isinstance(kernel, int):
        area = kernel ** max(1, len(_shape(outputs[0]) or [0, 0, 0]) - 2)
    elif isinstance(kernel, (list, tuple)) and kernel and all(isinstance(k, int) for k in kernel):
        area = math.prod(kernel)
    else:
        area = 1
    return _numel(outputs[0]) * area


def sdpa(inputs: list[Any], outputs: list[Any]) -> float:
    """scaled_dot_product_attention: ``q @ k^T`` ([.., L, E] x [.., E, S]) + ``attn @ v`` ([.., L, S] x [.., S, Ev])
    + the scaling and the softmax, one each per attention weight ([.., L, S]), as :func:`native_mha` counts them."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if not q or not k or not v:
        return 0
    batch = math.prod(q[:-2])
    length, embed, source, value_dim = q[-2], q[-1], k[-2], v[-1]
    return batch * length * source * (embed + value_dim + 2)


def native_mha(inputs: list[Any], outputs: list[Any]) -> float:
    """``nn.MultiheadAttention``'s fused fast path (eval, no grad): the q/k/v in-projections, ``q @ k^T`` and
    ``attn @ v`` over all heads, the softmax (one per attention weight) and the out-projection.

    Inputs: query [.., L, E], key [.., S, E], value, embed_dim, num_heads, qkv_weight [3E, E], qkv_bias,
    proj_weight [E, E], ...; without this handle a ViT's attention would count as zero MACs.
    """
    q, k, w_qkv, w_out = (_shape(inputs[i]) for i in (0, 1, 5, 7))
    if not q or not k or not w_qkv or not w_out:
        return 0
    batch, length, source, embed_in = math.prod(q[:-2]), q[-2], k[-2], q[-1]
    inner = w_qkv[0] // 3
    heads = _ivalue(inputs[4])
    projections = batch * (length + 2 * source) * inner * embed_in + batch * length * w_out[0] * w_out[1]
    attention = 2 * batch * length * source * inner
    # the softmax, and the 1/sqrt(head size) scaling, counted once per attention weight as the explicit path
    # (and slimnet's SlimMultiheadAttention, which replaces the module once heads are pruned) computes it
    weights = batch * (heads if isinstance(heads, int) else 1) * length * source
    return projections + attention + 2 * weights


def rms_norm(inputs: list[Any], outputs: list[Any]) -> float:
    """RMSNorm: square, mean, scale (about 3 per element; 4 with a weight), as fvcore counts its other norms."""
    has_weight = len(inputs) > 2 and _shape(inputs[2]) is not None
    return _numel(inputs[0]) * (4 if has_weight else 3)


_ELEMENTWISE = (
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "neg",
    "abs",
    "reciprocal",
    "where",
    "addcmul",
    "addcdiv",
    "lerp",
    "maximum",
    "minimum",
)
_ACTIVATIONS = (
    "relu",
    "relu6",
    "hardtanh",
    "clamp",
    "clamp_min",
    "clamp_max",
    "gelu",
    "silu",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "mish",
    "softplus",
    "prelu",
    "erf",
    "softmax",
    "log_softmax",
    "glu",
    "threshold",
)


def _with_inplace(names: Sequence[str], handle: Handle) -> dict[str, Handle]:
    return {f"aten::{n}{suffix}": handle for n in names for suffix in ("", "_")}


#: op name -> handle, for what fvcore does not count by itself (see the module docstring for the conventions).
EXTRA_HANDLES: dict[str, Handle] = {
    **_with_inplace(_ELEMENTWISE, per_output),
    **_with_inplace(_ACTIVATIONS, per_output),
    **{f"aten::{p}_pool{d}d": pool_window for p in ("max", "avg") for d in (1, 2, 3)},
    **{f"aten::adaptive_{p}_pool{d}d": per_input for p in ("max", "avg") for d in (1, 2, 3)},
    "aten::mean": per_input,
    "aten::sum": per_input,
    "aten::scaled_dot_product_attention": sdpa,
    "aten::_native_multi_head_attention": native_mha,
    "aten::rms_norm": rms_norm,
}
#: Ops that move or select data (or are no-ops in eval mode): deliberately zero, not "skipped".
FREE_OPS = (
    "aten::unflatten",
    "aten::pad",
    "aten::fill_",
    "aten::dropout_",
    "aten::feature_dropout",
    "aten::alpha_dropout",
    "aten::ne",
    "aten::lt",
    "aten::le",
    "aten::logical_not",
    "aten::expand_as",
    "aten::repeat",
    "aten::flip",
    "aten::channel_shuffle",
    "aten::pixel_shuffle",
    "aten::pixel_unshuffle",
    "aten::clone",
    "aten::masked_fill_",
    "aten::ones_like",
    "aten::new_ones",
    "aten::movedim",
    "aten::tile",
    "aten::view_as",
    "aten::tensor_split",
    "aten::linspace",
    "aten::meshgrid",
    "prim::device",
    "aten::embedding",
)  # a table lookup: no multiply-adds


# ----------------------------------------------------------------------------------------------- MAC counting
def count_macs(model: nn.Module, example_input: Any) -> dict[str, Any]:
    """MACs (fvcore's "flops": one multiply-add = 1), FLOPs = 2 x MACs, params, per-op and per-module totals.

    Returns ``{"macs", "flops", "params", "by_op": {op: macs}, "skipped_ops": {op: count}, "per_layer":
    {module: {"macs", "params"}}, "note"}``. ``per_layer`` holds every submodule, its MACs including its
    children's (a module's own ops, e.g. a residual add, are counted in it and not in any child).
    """
    try:
        args, keys = as_args(example_input)
        structure = None
    except SlimnetError:  # nested (a list of images): the tensors go in flat and are put back in their places
        if not flat_tensors(example_input):
            raise  # no tensor anywhere: not an example input at all
        args, keys, structure = tuple(flat_tensors(example_input)), None, example_input
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and trace warn about deprecated torch.jit APIs
        from fvcore.nn import FlopCountAnalysis

        wrapped = PositionalCall(model, keys, structure)
        analysis = FlopCountAnalysis(wrapped, args)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.set_op_handle(**EXTRA_HANDLES).set_op_handle(**dict.fromkeys(FREE_OPS))
        try:
            macs = int(analysis.total())
        except Exception as exc:  # noqa: BLE001 - the tracer under fvcore failed: say so in one line
            first = first_line(exc)
            raise SlimnetError(
                f"cannot count the MACs of {type(model).__name__}: the TorchScript trace that "
                f"fvcore uses failed ({type(exc).__name__}: {first})"
            ) from None
        by_module = analysis.by_module()
        skipped = dict(sorted(analysis.unsupported_ops("model").items()))
        by_op = dict(sorted(((k, int(v)) for k, v in analysis.by_operator("model").items()), key=lambda kv: -kv[1]))
    return {
        "macs": macs,
        "flops": 2 * macs,
        "params": count_params(model),
        "by_op": by_op,
        "skipped_ops": skipped,
        "per_layer": _per_layer(model, by_module),
        "note": MACS_NOTE,
    }


def _per_layer(model: nn.Module, by_module: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{submodule name: {"macs", "params"}} for every named submodule, in definition order."""
    out: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        out[name] = {"macs": int(by_module.get(f"model.{name}", 0)), "params": count_params(module)}
    return out


def own_macs(per_layer: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Each module's MACs minus its direct children's: the ops it runs itself (for leaves, all of them).
    Summed with the root's own ops, these partition the total, which is why ``--per-layer`` shows them."""
    children: dict[str, int] = Counter()
    for name, row in per_layer.items():
        parent = name.rpartition(".")[0]
        if parent in per_layer:
            children[parent] += row["macs"]
    return {name: row["macs"] - children.get(name, 0) for name, row in per_layer.items()}


# ----------------------------------------------------------------------------------------------- comparison
def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a and b else None


def compare(original: Mapping[str, Any], pruned: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Speedup of ``pruned`` over ``original`` (entries with ``macs`` and ``latency_ms`` {backend: {"p50"}}).

    ``speedup["theoretical"]`` is the MAC ratio original/pruned; ``speedup[backend]`` the p50 latency ratio;
    ``efficiency[backend]`` = real / theoretical: 1.0 means the backend turned every saved MAC into time.
    """
    theoretical = _ratio(original.get("macs"), pruned.get("macs"))
    speedup: dict[str, float | None] = {"theoretical": theoretical}
    efficiency: dict[str, float | None] = {}
    lat_o, lat_p = original.get("latency_ms") or {}, pruned.get("latency_ms") or {}
    for backend in lat_o:
        if backend not in lat_p:
            continue
        real = _ratio(lat_o[backend]["p50"], lat_p[backend]["p50"])
        speedup[backend] = real
        efficiency[backend] = real / theoretical if real is not None and theoretical else None
    return {"speedup": speedup, "efficiency": efficiency}


# ----------------------------------------------------------------------------------------------- device
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), or what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def device_info(threads: int | None = None) -> dict[str, Any]:
    """Where the numbers come from: CPU, thread count, GPU, and the versions that shape them."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnx": _version("onnx"),
        "fvcore": _version("fvcore"),
        "slimnet": __version__,
    }
