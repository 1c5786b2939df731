"""Trace a model into a torch.fx graph, with an error that points at the user's code when tracing fails.

Symbolic tracing is the only tracer whose graph keeps ``nn.Module`` calls and Python-level ops (``view``,
``cat``, ``getitem``) as the user wrote them, which is what the channel rules in :mod:`slimnet.groups` read.
When it fails on data-dependent control flow we stop with the line of ``forward`` that stopped it: a graph
from another tracer (torch.export's ATen graph) would need a second rule set, and a guessed graph is worse
than a clear refusal.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import keyword
import re
import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from ._tensors import call, flat_tensors, replace_tensors
from ._util import first_line, qualname
from .errors import SlimnetError


class _Tracer(fx.Tracer):
    """A symbolic tracer that records stack traces, so that reasons can name the user's source line.

    Module classes with a channel rule keyed by qualified name (Hugging Face's ``Conv1D``) are leaves, and
    size attributes listed in :data:`slimnet.sizes.SIZES` are traced as expressions of tensor shapes, so that
    a reshape by ``self.num_heads`` or a split by ``self.split_size`` follows pruning instead of freezing it."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        from .groups import RULES

        if qualname(type(m)) in RULES:
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        from .sizes import entries, traced_sizes

        if self._inline(m):
            # a module object used like a function (transformers' shared activation instances): nothing of it
            # is in the state_dict, so its forward is traced inline
            return forward(*args, **kwargs)
        if not entries(m) or self.is_leaf_module(m, self.path_of_module(m)):
            return super().call_module(m, forward, args, kwargs)
        path = self.path_of_module(m)
        with traced_sizes(m, lambda name: self.create_proxy("get_attr", f"{path}.{name}", (), {})):
            return super().call_module(m, forward, args, kwargs)

    def _inline(self, m: nn.Module) -> bool:
        """A module that is not a submodule of the traced root and holds no tensors of its own."""
        try:
            self.path_of_module(m)
        except NameError:
            return next(iter(m.parameters()), None) is None and next(iter(m.buffers()), None) is None
        return False


def _user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that is not torch's own code: where the model did something odd."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/" in f or "/slimnet/" in f:
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def concrete_args(model: nn.Module, example: Any) -> dict[str, Any] | None:
    """forward() arguments the example does not give are traced as their defaults (``if mask is None``
    branches then specialise the way the model will be called)."""
    if example is None:
        return None
    params = list(inspect.signature(model.forward).parameters.values())
    params = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if isinstance(example, dict):
        given = set(example)
    elif isinstance(example, (tuple, list)):
        given = {p.name for p in params[: len(example)]}
    else:
        given = {params[0].name} if params else set()
    fixed = {p.name: p.default for p in params if p.name not in given and p.default is not inspect.Parameter.empty}
    return fixed or None


def _trace_error(model: nn.Module, exc: BaseException) -> SlimnetError:
    where = _user_frame(exc)
    msg = first_line(exc)
    at = f" at {where}" if where else ""
    return SlimnetError(
        f"cannot trace {type(model).__name__}{at} ({msg[:200]}): torch.fx needs forward() without "
        "data-dependent control flow; rewrite that line (e.g. torch.where instead of if/else on tensor "
        "values) or wrap it in a submodule and --ignore it"
    )


def trace(model: nn.Module, example: Any = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode, so train-only branches such as stochastic depth vanish).

    Plain symbolic tracing first (the graph every rule was written against); when it fails, once more with
    example values beside the proxies (:func:`trace_call`), which gets through code that unpacks shapes or
    branches on sizes, as Hugging Face models do. If both fail, the first error is raised.
    """
    was_training = model.training
    model.eval()
    tracer = _Tracer()
    try:
        with eager_attention(model):
            graph = tracer.trace(model, concrete_args=concrete_args(model, example))
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes one readable line
        first = _trace_error(model, exc)
        if example is None:
            raise first from None
        args, kwargs = _as_call(example)
        try:
            return trace_call(model, args, kwargs)
        except Exception:  # noqa: BLE001 - the plain tracer's error names the user's line best
            raise first from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return gm


def _as_call(example: Any) -> tuple[tuple, dict]:
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    return (example,), {}


# ----------------------------------------------------------------------------------------------------------
# tracing with example values beside the proxies
# ----------------------------------------------------------------------------------------------------------
_UNKNOWN = object()
_CONCRETE_ATTRS = frozenset({"dtype", "device", "ndim", "is_cuda", "layout", "is_sparse", "is_quantized"})


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Hugging Face models pick their attention function from ``config._attn_implementation``; the eager one
    is plain matmul/softmax that the channel rules read (SDPA and flash kernels branch on shapes and hide the
    heads). It computes the same function, so the graph's channel structure holds for every implementation."""
    saved = []
    for m in model.modules():
        cfg = getattr(m, "config", None)
        impl = getattr(cfg, "_attn_implementation", None)
        if isinstance(impl, str) and impl != "eager" and all(c is not cfg for c, _ in saved):
            saved.append((cfg, impl))
    try:
        for cfg, _ in saved:
            try:
                cfg._attn_implementation = "eager"
            except Exception:  # noqa: BLE001 - a config that refuses keeps its own implementation
                pass
        yield
    finally:
        for cfg, impl in saved:
            with contextlib.suppress(Exception):
                cfg._attn_implementation = impl


class _ValueProxy(fx.Proxy):
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


class _ValueTracer(_Tracer):
    """Symbolic tracing with each proxy's example value computed beside it (the idea of Hugging Face's old
    HFTracer). Only sizes, dtypes and flags are read back (unpacking ``x.shape``, ``if seq_len > 1``):
    branching on a tensor's *values* is still refused. Branches on sizes specialise to the example's sizes,
    which is safe here because the graph is only read for channel structure; the verifier runs the real
    models on the example and on a second input of another batch size."""

    def __init__(self, inputs: dict[str, Any]) -> None:
        super().__init__()
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


def trace_call(module: nn.Module, args: tuple, kwargs: dict) -> fx.GraphModule:
    """Trace one call of ``module`` with example values beside the proxies. The graph's inputs are the call's
    tensors, in order; they are kept in ``gm.meta["inputs"]`` for the analysis."""
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
    tracer = _ValueTracer(dict(zip(names, leaves)))
    was_training = module.training
    module.eval()
    try:
        with eager_attention(module), _traced_factories(tracer):
            graph = tracer.trace(root)
    finally:
        module.train(was_training)
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
    gm = fx.GraphModule(module, graph, type(module).__name__)
    gm.meta["inputs"] = leaves
    return gm


def trace_pieces(model: nn.Module, example: Any) -> list[tuple[str, fx.GraphModule]]:
    """When the whole model cannot be traced, trace the largest submodules that can, each on the inputs it
    got when the model ran on the example. Their inputs and outputs are then fixed (never pruned), which is
    what keeps the pieces independent; a transformer's layers trace this way when its top-level forward
    (mask building, output capturing) does not."""
    calls: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name, mod in model.named_modules():

        def pre(_m: nn.Module, a: tuple, kw: dict, name: str = name) -> None:
            calls.setdefault(name, (a, dict(kw)))

        hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            call(model.eval(), example)
    finally:
        for h in hooks:
            h.remove()
    pieces: list[tuple[str, fx.GraphModule]] = []

    def visit(name: str, mod: nn.Module) -> None:
        if name and name in calls and any(True for _ in mod.parameters()):
            a, kw = calls[name]
            try:
                pieces.append((name, trace_call(mod, a, kw)))
                return
            except Exception:  # noqa: BLE001 - try its children instead
                pass
        for child, sub in mod.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return pieces


def placeholder_args(gm: fx.GraphModule, example: Any) -> list[Any]:
    """Order the example input as the graph's placeholders expect it."""
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(example, dict) or len(names) > 1 and not isinstance(example, (tuple, list)):
        example = example if isinstance(example, dict) else {names[0]: example}
        missing = [k for k in example if k not in names]
        if missing:
            raise SlimnetError(f"input keys {missing} are not arguments of forward(): it takes {names}")
        out = []
        for n in gm.graph.nodes:
            if n.op != "placeholder":
                continue
            if n.target in example:
                out.append(example[n.target])
            elif n.args:
                out.append(n.args[0])
            else:
                raise SlimnetError(f"input has no value for forward() argument {n.target!r}")
        return out
    if isinstance(example, (tuple, list)):
        return list(example)
    return [example]
