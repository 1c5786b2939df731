"""Tracing one call of a module with example values beside the proxies (the idea of Hugging Face's old HFTracer).

Plain symbolic tracing (:func:`slimnet.trace.tracer.trace`) stops at code that unpacks shapes (``b, t, _ = x.shape``) or
branches on sizes (``if seq_len > 1``), as Hugging Face models do. Here every proxy carries the value it has on
the example, so ``len()``, ``int()``, indexing and ``bool()`` on *sizes* work; branching on a tensor's *values*
is still refused. :func:`trace_call` is the entry point; :func:`slimnet.trace.tracer.trace` falls back on it and
:func:`slimnet.trace.tracer.trace_pieces` traces each piece with it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import keyword
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from .._tensors import OPAQUE, flat_tensors, in_eval, replace_tensors, shape_signature
from .symbolic import FunctionPolicy, LeafPolicy, SymbolicTracer, WritableProxy, eager_attention, untouched

_UNKNOWN = object()
_CONCRETE_ATTRS = frozenset({"dtype", "device", "ndim", "is_cuda", "layout", "is_sparse", "is_quantized"})


class _ValueProxy(WritableProxy):
    """A proxy that knows its example value, so ``len()``, ``int()`` and indexing with it work on sizes."""

    def _value(self) -> Any:
        return self.tracer.values.get(self.node, _UNKNOWN)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        v = self._value()
        if isinstance(v, (tuple, list, torch.Size)):
            return len(v)
        return super().__len__()

    def __index__(self) -> int:
        v = self._value()
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        raise fx.proxy.TraceError("a traced tensor value was used as an index")

    def __int__(self) -> int:
        return self.__index__()

    def __getattr__(self, k: str) -> Any:
        if k in _CONCRETE_ATTRS:  # dtypes and devices are not data: the example's are the model's
            v = self._value()
            if isinstance(v, torch.Tensor):
                return getattr(v, k)
        attr = super().__getattr__(k)
        return _ValueAttribute(self, k) if type(attr) is fx.proxy.Attribute else attr


class _ValueAttribute(fx.proxy.Attribute, _ValueProxy):
    pass


#: Node (and ``gm.meta``) key: the :func:`slimnet._tensors.shape_signature` of the node's value while it was
#: traced with example values. The analysis then runs the graph with layers reduced to their output's shape
#: and checks every node against it (:class:`slimnet.groups.interpreter.AtomInterpreter`), instead of running
#: the model's arithmetic a second time.
TRACED = "slimnet_traced_shape"


class _ValueTracer(SymbolicTracer):
    """Symbolic tracing with each proxy's example value computed beside it (the idea of Hugging Face's old
    HFTracer). Only sizes, dtypes and flags are read back (unpacking ``x.shape``, ``if seq_len > 1``):
    branching on a tensor's *values* is still refused. Branches on sizes specialise to the example's sizes,
    which is safe here because the graph is only read for channel structure; the verifier runs the real
    models on the example and on a second input of another batch size."""

    def __init__(
        self, inputs: dict[str, Any], is_leaf: LeafPolicy | None = None, keep_wrapped: FunctionPolicy | None = None
    ) -> None:
        super().__init__(is_leaf, keep_wrapped)
        self.values: dict[fx.Node, Any] = {}
        self._inputs = inputs
        self.proxy_buffer_attributes = True  # buffers sliced by traced sizes (BERT's token_type_ids) need proxies
        self._computing = 0  # > 0 while an example value is computed: modules and attributes run for real

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def _concrete(self, a: Any) -> Any:
        def one(x: Any) -> Any:
            if isinstance(x, fx.Proxy):
                v = self.values.get(x.node, _UNKNOWN)
                if v is _UNKNOWN:
                    raise LookupError
                return v
            return x

        return fx.node.map_aggregate(a, one)

    def create_proxy(
        self,
        kind: str,
        target: Any,
        args: tuple,
        kwargs: dict,
        name: str | None = None,
        type_expr: Any = None,
        proxy_factory_fn: Any = None,
    ) -> fx.Proxy:
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind == "output" or not isinstance(p, fx.Proxy):
            return p
        self._computing += 1
        try:
            with torch.no_grad():
                if kind == "placeholder":
                    value = self._inputs.get(target, _UNKNOWN)
                elif kind == "get_attr":
                    value = _fetch(self.root, target)
                else:
                    a, kw = self._concrete(args), self._concrete(kwargs)
                    if kind == "call_function":
                        value = target(*a, **kw)
                    elif kind == "call_method":
                        value = getattr(a[0], target)(*a[1:], **kw)
                    else:
                        value = self.root.get_submodule(target)(*a, **kw)
        except Exception:  # noqa: BLE001 - an unknown value only means len()/bool() on it stays refused
            value = _UNKNOWN
        finally:
            self._computing -= 1
        self.values[p.node] = value
        return p

    def to_bool(self, obj: fx.Proxy) -> bool:
        v = self.values.get(obj.node, _UNKNOWN)
        if v is not _UNKNOWN and not isinstance(v, torch.Tensor):
            return bool(v)
        return super().to_bool(obj)

    def iter(self, obj: fx.Proxy) -> Iterator:
        v = self.values.get(obj.node, _UNKNOWN)
        if isinstance(v, (tuple, list, torch.Size)):
            return iter([obj[i] for i in range(len(v))])
        return super().iter(obj)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)


_FACTORIES = ("ones", "zeros", "full", "empty", "arange", "tensor", "rand", "randn")


@contextlib.contextmanager
def _traced_factories(tracer: _ValueTracer) -> Iterator[None]:
    """``torch.ones(batch, seq_len)`` with traced sizes (BART's default mask, DeBERTa's
    ``torch.tensor(q.size(-1))``) becomes a graph node instead of a TypeError: torch's factories take no
    proxies, so while tracing they are wrapped to record themselves when a size is traced."""
    saved = {name: getattr(torch, name) for name in _FACTORIES}

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            traced = any(isinstance(x, fx.Proxy) for x in pytree.tree_leaves((args, kwargs)))
            if traced and not tracer._computing:
                return tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)

        return call

    try:
        for name, fn in saved.items():
            setattr(torch, name, wrap(fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch, name, fn)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _leaf_names(args: tuple, kwargs: dict) -> list[str]:
    """Identifiers for the tensors :func:`flat_tensors` finds, in its order: keyword names, ``arg0``..., suffixed
    with positions inside nested containers."""
    names: list[str] = []
    for prefix, value in [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items()):
        base = re.sub(r"\W", "_", str(prefix))
        if not base.isidentifier() or keyword.iskeyword(base):
            base = f"input_{base}"
        n = len(flat_tensors(value))
        names += [base] if isinstance(value, torch.Tensor) else [f"{base}_{j}" for j in range(n)]
    out: list[str] = []
    for nm in names:  # unique
        while nm in out:
            nm += "_"
        out.append(nm)
    return out


class _Call(nn.Module):
    """A root whose forward takes the call's tensors one by one and calls the module as the model did
    (decorated forwards with ``*args, **kwargs`` signatures then trace like any other)."""

    def __init__(self, m: nn.Module, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.m = m
        self._spec = (args, kwargs)

    def call(self, *leaves: Any) -> Any:
        args, kwargs = replace_tensors(self._spec, leaves)
        return self.m(*args, **kwargs)


def trace_call(
    module: nn.Module,
    args: tuple,
    kwargs: dict,
    is_leaf: LeafPolicy | None = None,
    keep_wrapped: FunctionPolicy | None = None,
) -> fx.GraphModule:
    """Trace one call of ``module`` with example values beside the proxies. The graph's inputs are the call's
    tensors, in order; they are kept in ``gm.meta["inputs"]`` for the analysis. ``is_leaf`` says which module
    classes stay leaves, ``keep_wrapped`` which fx-wrapped functions stay calls (see
    :class:`slimnet.trace.symbolic.SymbolicTracer`)."""
    kwargs = dict(kwargs)
    params = inspect.signature(module.forward).parameters
    if "use_cache" in params or "use_cache" in kwargs:
        kwargs["use_cache"] = False  # a key/value cache is an inference-time extra, not part of the function
    if kwargs.get("past_key_values") is not None:
        kwargs["past_key_values"] = None
    leaves = flat_tensors((args, kwargs))
    names = _leaf_names(args, kwargs)  # the call's own argument names: reasons then say "model input attention_mask"
    ns: dict[str, Any] = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.call({', '.join(names)})\n", ns)  # noqa: S102
    root = type("_Call", (_Call,), {"forward": ns["forward"]})(module, args, kwargs)  # fx reads the class's forward
    tracer = _ValueTracer(dict(zip(names, leaves)), is_leaf, keep_wrapped)
    was_training = module.training
    in_eval(module)
    try:
        with eager_attention(module), _traced_factories(tracer), untouched(module):
            graph = tracer.trace(root)
    finally:
        if was_training:  # else every module is in eval mode already (in_eval)
            module.train()
    leaves = list(leaves)
    last_input = [n for n in graph.nodes if n.op == "placeholder"][-1:] or None
    for node in list(graph.nodes):
        if node.op not in ("get_attr", "call_module"):
            continue
        if str(node.target).startswith("m."):  # the wrapper's prefix goes: names are the module's own
            node.target = str(node.target)[2:]
        elif node.op == "get_attr":  # a tensor constant the tracer put on the wrapper: one more graph input
            value = _fetch(tracer.root, str(node.target))
            where = graph.inserting_after(last_input[0]) if last_input else graph.inserting_before(node)
            with where:
                ph = graph.placeholder(f"constant_{len(leaves)}")
            node.replace_all_uses_with(ph)
            graph.erase_node(node)
            last_input = [ph]
            leaves.append(value)
    for node in graph.nodes:  # what a pass with layers reduced to their shapes must see again (see TRACED)
        value = tracer.values.get(node, _UNKNOWN)
        if value is not _UNKNOWN and node.op not in ("placeholder", "output"):
            signature = shape_signature(value)
            if signature != OPAQUE:
                node.meta[TRACED] = signature
    gm = fx.GraphModule(module, graph, type(module).__name__)
    gm.meta["inputs"] = leaves
    gm.meta[TRACED] = True
    return gm
