"""Parameters and MACs of an ONNX file, read from its graph: what ``slimnet bench`` reports for a ``.onnx`` model
that has no torch twin beside it.

The conventions follow :mod:`slimnet.cost.macs` (fvcore's, one multiply-add = one MAC): a conv costs
``output elements x input channels per group x kernel area``, a Gemm or MatMul ``output elements x the summed
dimension``; elementwise ops, activations and norms one per output element; pooling the window area per output
element, global pooling and reductions one per input element; shape and data-movement ops nothing. Shapes come
from onnx's shape inference with the graph inputs fixed to the timed input's shapes. Ops of neither kind are
returned under ``skipped_ops`` with their count, never silently.

The count can differ a little from fvcore's count of the torch model it was exported from, because exporters
fuse (a batch norm folded into the conv before it costs nothing here); a torch twin given to the same ``bench``
(``pruned.pt`` beside ``pruned.onnx``) is counted by fvcore instead, which keeps both sides of a comparison on
one convention. Parameters are the elements of the floating-point initializers (folded norms included in the
conv they were folded into).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SlimnetError

NOTE = (
    "counted from the ONNX graph (fvcore's conventions; ops the exporter fused, such as batch norms folded into "
    "convs, cost nothing here): give the torch twin (x.pt beside x.onnx) for fvcore's count"
)

_PER_OUTPUT = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp", "Log", "Neg", "Abs", "Where", "Max", "Min",
    "Relu", "LeakyRelu", "PRelu", "Clip", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Elu",
    "Selu", "Celu", "Mish", "Softplus", "Softmax", "LogSoftmax", "BatchNormalization", "InstanceNormalization",
    "LayerNormalization", "GroupNormalization", "SimplifiedLayerNormalization", "Sum", "Mean",
}  # fmt: skip
_PER_INPUT = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceL2"}
_FREE = {
    "Reshape", "Flatten", "Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "Squeeze",
    "Unsqueeze", "Shape", "Size", "Constant", "ConstantOfShape", "Identity", "Cast", "Expand", "Tile", "Pad",
    "Range", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Dropout",
    "DepthToSpace", "SpaceToDepth", "Trilu", "ScatterND", "ScatterElements", "NonZero", "CumSum", "ArgMax",
}  # fmt: skip


def count_onnx(path: str | Path, input_shapes: Sequence[Sequence[int]]) -> dict[str, Any]:
    """``{"macs", "flops", "params", "by_op": {op: macs}, "skipped_ops": {op: count}, "note"}`` of the ONNX
    file at ``path`` run on inputs of ``input_shapes`` (in the graph's input order)."""
    import onnx  # lazy: only bench of .onnx files needs it here
    from onnx import shape_inference

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - not an ONNX protobuf: the user's file
        raise SlimnetError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    for value, shape in zip(inputs, input_shapes):
        dims = value.type.tensor_type.shape.dim
        for d, size in zip(dims, shape):
            d.Clear()
            d.dim_value = int(size)
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(inferred.graph)
    weights = {i.name: list(i.dims) for i in graph.initializer}
    shapes.update(weights)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    params = sum(math.prod(i.dims) for i in graph.initializer if i.data_type in floats)
    by_op: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for node in graph.node:
        macs = _node_macs(node, shapes)
        if macs is None:
            skipped[node.op_type] += 1
        elif macs:
            by_op[node.op_type] += macs
    total = int(sum(by_op.values()))
    return {
        "macs": total,
        "flops": 2 * total,
        "params": int(params),
        "by_op": dict(by_op),
        "skipped_ops": dict(skipped),
        "note": NOTE,
    }


def _shapes(graph: Any) -> dict[str, list[int] | None]:
    """Static shapes of every value shape inference could fix (None where a dimension stays symbolic)."""
    out: dict[str, list[int] | None] = {}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        tt = v.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out[v.name] = None if any(d is None for d in dims) else dims
    return out


def _numel(shapes: Mapping[str, list[int] | None], name: str) -> int | None:
    shape = shapes.get(name)
    return None if shape is None else math.prod(shape)


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx  # lazy: only bench of .onnx files needs it here

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(node: Any, shapes: Mapping[str, list[int] | None]) -> int | None:
    """The MACs of one node; None when its kind is unknown or its shapes could not be inferred."""
    op = node.op_type
    if op in _FREE:
        return 0
    out = _numel(shapes, node.output[0]) if node.output else None
    if op in ("Conv", "ConvTranspose"):
        w = shapes.get(node.input[1])
        if w is None:
            return None
        # Conv weights are [out, in/groups, k...]: each output element costs in/groups x kernel MACs;
        # ConvTranspose weights are [in, out/groups, k...]: each input element costs out/groups x kernel
        if op == "Conv":
            return None if out is None else out * math.prod(w[1:])
        n_in = _numel(shapes, node.input[0])
        return None if n_in is None else n_in * math.prod(w[1:])
    if op in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        if a is None or out is None:
            return None
        k = a[0] if op == "Gemm" and _attr(node, "transA", 0) else a[-1]
        return out * k
    if op in _PER_OUTPUT:
        return out
    if op in _PER_INPUT:
        return _numel(shapes, node.input[0])
    if op in ("MaxPool", "AveragePool"):
        kernel = _attr(node, "kernel_shape", None)
        return None if out is None or not kernel else out * math.prod(kernel)
    return None
