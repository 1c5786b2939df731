"""Cheap ONNX variants of one model: export once, then cut the weights in the file, and time only what changed.

* :func:`export_template`: the TorchScript exporter with ``keep_initializers_as_inputs`` and no constant folding,
  so that every weight stays an initializer named as in the ``state_dict`` (no batch-norm folding, no
  de-duplication of equal tensors) and a plan's kept indices apply to the file directly.
* :func:`sliced`: the template with a plan's tensors cut (a grouped conv's ``group`` follows its weight) and
  the weights no longer graph inputs, so that onnxruntime folds and fuses them as it does for an exported pruned
  model. Milliseconds, where exporting each variant takes seconds.
* :func:`touched` and :func:`subgraph`: the nodes whose inputs or outputs change shape when one group is cut,
  cut out as a graph of their own: its inputs and outputs keep their shapes, so that the whole and the cut
  subgraph differ exactly by what cutting the group changes, and a group is timed in a fraction of the model's
  time with far less noise than a difference of two whole-model timings.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._tensors import PositionalCall, as_args, batch_input
from ..._util import first_line
from ...errors import SlimnetError

Shapes = dict[str, tuple[int, tuple[int, ...]]]  # value name -> (onnx elem type, dims)


@dataclass
class Template:
    """The exported model (weights are initializers and graph inputs), the input it is timed on, and its
    skeleton: the graph without weight data, whose shapes onnx infers in milliseconds for any cut."""

    proto: Any  # onnx.ModelProto
    feed: dict[str, np.ndarray]
    prefix: str = "model."  # the exporter names weights after the wrapper's attribute

    def __post_init__(self) -> None:
        import onnx

        self.dims = {i.name: tuple(i.dims) for i in self.proto.graph.initializer}
        self.skeleton = onnx.ModelProto()
        self.skeleton.CopyFrom(self.proto)
        del self.skeleton.graph.initializer[:]

    def names(self, tensors: Mapping[str, Mapping[str, list[int]]]) -> dict[str, Mapping[str, list[int]]]:
        """A plan's tensors by the file's weight names (tensors the file does not hold are passed over: a tied
        alias, or a buffer the graph never reads; a graph they should have changed fails to run)."""
        return {self.prefix + n: d for n, d in tensors.items() if self.prefix + n in self.dims}


def export_template(model: nn.Module, example: Any, batch_size: int | None = 1) -> Template:
    """Export ``model`` at a fixed input shape (``example`` at ``batch_size``) for variants and timing."""
    import onnx

    inputs = batch_input(example, batch_size)
    args, keys = as_args(inputs)
    names = list(keys) if keys else [f"input_{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                PositionalCall(model, keys).eval(),
                args,
                buffer,
                dynamo=False,
                opset_version=17,
                input_names=names,
                do_constant_folding=False,
                keep_initializers_as_inputs=True,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises anything
        raise SlimnetError(f"ONNX export for timing failed: {type(exc).__name__}: {first_line(exc)}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    wanted = {i.name for i in proto.graph.input}
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, args) if n in wanted}
    return Template(proto, feed)


def sliced(proto: Any, cut: Mapping[str, Mapping[str, list[int]]]) -> Any:
    """A copy of ``proto`` with the initializers named in ``cut`` (file names -> dim -> kept indices) cut, a grouped
    conv's ``group`` following its weight, and no initializer left as a graph input (so that onnxruntime folds
    and fuses weights as it does in an exported pruned model)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    before = {i.name: tuple(i.dims) for i in graph.initializer}
    for init in graph.initializer:
        if init.name in cut:
            array = numpy_helper.to_array(init)
            for dim, keep in cut[init.name].items():
                array = np.take(array, keep, axis=int(dim))
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), init.name))
    inputs = [i for i in graph.input if i.name not in before]
    del graph.input[:]
    graph.input.extend(inputs)
    _regroup(graph, cut, before)
    del graph.value_info[:]
    return out


def _regroup(graph: Any, cut: Mapping[str, Mapping[str, list[int]]], before: Mapping[str, tuple]) -> None:
    """A grouped conv whose weight lost output channels lost whole groups: its ``group`` shrinks alike."""
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in cut:
            old = before[node.input[1]][0]
            new = len(cut[node.input[1]].get("0", range(old)))
            for attr in node.attribute:
                if attr.name == "group" and attr.i > 1:
                    attr.i = attr.i * new // old


def shapes(template: Template, cut: Mapping[str, Mapping[str, list[int]]] | None = None) -> Shapes:
    """Every value's element type and shape when the weights in ``cut`` (file names) are cut, by onnx shape
    inference on the skeleton."""
    import onnx

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(template.skeleton)
    cut = cut or {}
    for vi in skeleton.graph.input:
        if vi.name in cut:
            for dim, keep in cut[vi.name].items():
                vi.type.tensor_type.shape.dim[int(dim)].dim_value = len(keep)
    _regroup(skeleton.graph, cut, template.dims)
    for out in skeleton.graph.output:
        out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
    found: Shapes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            found[vi.name] = (t.elem_type, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim))
    return found


def touched(proto: Any, whole: Shapes, cut: Shapes) -> list[int]:
    """Indices of the nodes with an input or output whose shape differs between ``whole`` and ``cut``."""
    out = []
    for i, node in enumerate(proto.graph.node):
        names = [n for n in list(node.input) + list(node.output) if n]
        if any(whole.get(n) != cut.get(n) for n in names):
            out.append(i)
    return out


def subgraph(proto: Any, nodes: Iterable[int], value_shapes: Shapes) -> Any:
    """The graph of ``nodes`` (with the constants they read): inputs are the values they read from other nodes,
    outputs the values others (or the model's outputs) read from them."""
    import onnx
    from onnx import helper

    graph = proto.graph
    chosen = set(nodes)
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output}
    for i in list(chosen):  # constants read by the chosen nodes come along
        for name in graph.node[i].input:
            j = producer.get(name)
            if j is not None and graph.node[j].op_type == "Constant":
                chosen.add(j)
    order = sorted(chosen)
    made = {o for i in order for o in graph.node[i].output}
    weights = {init.name: init for init in graph.initializer}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(graph.node):
        for name in n.input:
            readers.setdefault(name, set()).add(i)
    finals = {o.name for o in graph.output}
    inputs, inits, seen = [], [], set()
    for i in order:
        for name in graph.node[i].input:
            if not name or name in made or name in seen:
                continue
            seen.add(name)
            if name in weights:
                inits.append(weights[name])
            else:
                elem, dims = value_shapes[name]
                inputs.append(helper.make_tensor_value_info(name, elem, list(dims)))
    outputs = [
        helper.make_tensor_value_info(name, *value_shapes.get(name, (1, ())))
        for name in sorted(made)
        if name in finals or readers.get(name, set()) - chosen
    ]
    sub = helper.make_graph([graph.node[i] for i in order], "group", inputs, outputs, initializer=inits)
    model = helper.make_model(sub, opset_imports=list(proto.opset_import))
    model.ir_version = proto.ir_version
    onnx.checker.check_model(model)
    return model


def random_feed(proto: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a subgraph: normal noise of each input's shape (zeros for integer inputs)."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    feed = {}
    for vi in proto.graph.input:
        t = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        dims = [max(1, d.dim_value) for d in t.shape.dim]
        feed[vi.name] = (
            rng.standard_normal(dims).astype(dtype) if np.issubdtype(dtype, np.floating) else np.zeros(dims, dtype)
        )
    return feed
