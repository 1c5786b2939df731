"""The symbolic tracer that both of slimnet's tracing paths build on, and the attention switch they share.

It sits in a module of its own so that the two paths can share it without an import cycle: :mod:`slimnet.trace.tracer`
(the entry points: plain tracing, tracing piece by piece, tracing errors) falls back on
:mod:`slimnet.trace.values` (tracing with example values), and both subclass or use :class:`SymbolicTracer`.

Which module classes are leaves is *passed in* (``is_leaf``, a predicate on classes): the tracer knows nothing
of the channel rules, so :mod:`slimnet.groups` imports the tracer and never the other way round.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch.fx._symbolic_trace as fx_symbolic
from torch import fx, nn
from torch._C._profiler import symbolize_tracebacks
from torch.utils import _pytree as pytree
from torch.utils._traceback import CapturedTraceback

from ..cut.sizes import entries, traced_sizes

_RAW_TRACEBACK = "slimnet_traceback"
#: Module class -> whether calls to it stay one graph node (a leaf) instead of being traced through.
LeafPolicy = Callable[[type], bool]
#: Function registered with ``torch.fx.wrap`` -> whether calls to it stay one graph node.
FunctionPolicy = Callable[[Callable[..., Any]], bool]

_MISSING = object()


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` leaves with the ``__dict__`` it came with: attributes a forward stored while
    it was traced or run (RAFT keeps its correlation pyramid on itself) are removed or put back, and the
    lists, dicts and sets it held (``_modules``, ``_parameters``, hooks, a cache) get their old contents
    back. A tracer's proxies left on a module would otherwise be deep-copied with it by the surgeon, and the
    user's model would come back changed."""
    saved = []
    for m in model.modules():
        attrs = dict(m.__dict__)
        contents, empty = {}, []
        for k, v in attrs.items():
            if isinstance(v, (list, dict, set)):
                if v:
                    contents[k] = _contents(v)
                else:  # most of a module's containers (its hook dicts) are empty: nothing to copy or compare
                    empty.append(k)
        saved.append((m, attrs, contents, empty))
    try:
        yield
    finally:
        for m, attrs, contents, empty in saved:
            _restore(m.__dict__, attrs, contents)
            for k in empty:
                attrs[k].clear()


def _contents(v: Any) -> Any:
    return dict(v) if isinstance(v, dict) else (list(v) if isinstance(v, list) else set(v))


def _restore(d: dict[str, Any], attrs: dict[str, Any], contents: dict[str, Any]) -> None:
    if d.keys() != attrs.keys():
        for k in [k for k in d if k not in attrs]:
            del d[k]
    for k, v in attrs.items():
        if d.get(k, _MISSING) is not v:
            d[k] = v
    for k, old in contents.items():
        v = d[k]
        if isinstance(v, dict):
            if v.keys() != old.keys() or any(v[i] is not old[i] for i in old):
                v.clear()
                v.update(old)
        elif isinstance(v, list):
            if len(v) != len(old) or any(a is not b for a, b in zip(v, old)):
                v[:] = old
        else:  # a set: compared by identity it would call the elements' __eq__ (a proxy's records a node)
            v.clear()
            v.update(old)


class WritableProxy(fx.Proxy):
    """A proxy that records ``x[idx] = v`` (and ``x[idx] += v``) as an ``operator.setitem`` node, as the
    interpreter later runs it on real tensors, instead of refusing the whole forward: torch.fx's own proxies do
    not support item assignment (MViT's residual pooling writes ``x[:, :, 1:, :] += q[:, :, 1:, :]``)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class SymbolicTracer(fx.Tracer):
    """A symbolic tracer that records stack traces, so that reasons can name the user's source line.

    Module classes for which ``is_leaf`` says so are leaves (besides torch.nn's own, fx's default), and size
    attributes listed in :data:`slimnet.cut.sizes.SIZES` are traced as expressions of tensor shapes, so that a
    reshape by ``self.num_heads`` or a split by ``self.split_size`` follows pruning instead of freezing it."""

    def __init__(self, is_leaf: LeafPolicy | None = None, keep_wrapped: FunctionPolicy | None = None) -> None:
        super().__init__()
        # fx formats a stack trace for every node (reading source files: a tenth of an analysis); the raw
        # traceback is kept instead, and a reason reads its one user frame (:func:`user_line`)
        self.record_stack_traces = False
        self.is_leaf = is_leaf
        self.keep_wrapped = keep_wrapped
        self._failed_inlines: list[list[fx.Node]] = []

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """fx's trace, except that functions registered with ``torch.fx.wrap`` are traced through (inlined)
        when ``keep_wrapped`` says so: torchvision wraps plain tensor helpers (MViT's ``_unsqueeze``, Swin's
        attention) to keep them out of its feature-extraction graphs, and as opaque calls they would hide the
        channels they move. A helper whose code does not trace (branches on a traced value) stays one call."""
        self._failed_inlines = []
        with _inlined_wrapped(self):
            graph = super().trace(root, concrete_args)
        for nodes in reversed(self._failed_inlines):  # what a failed attempt left behind, used by nothing
            for node in reversed(nodes):
                if not node.users and node.graph is graph and node.op != "placeholder":
                    graph.erase_node(node)
        return graph

    def wrapped_call(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """A call of an fx-wrapped function with traced arguments: traced through, or (when that fails) one
        ``call_function`` node as fx would have made."""
        before = len(self.graph.nodes)
        try:
            return fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the helper does not trace: it stays one call, as fx.wrap asked
            made = len(self.graph.nodes) - before
            self._failed_inlines.append(list(reversed([n for _, n in zip(range(made), reversed(self.graph.nodes))])))
        proxy = self.create_proxy("call_function", fn, args, kwargs)
        proxy.node.meta["is_wrapped"] = True
        return proxy

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return WritableProxy(node, self)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta[_RAW_TRACEBACK] = CapturedTraceback.extract()
        return node

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.is_leaf is not None and self.is_leaf(type(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
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


def user_line(node: fx.Node) -> str:
    """``file, line N, in name`` of the innermost frame outside torch and slimnet that made ``node`` (from the
    traceback kept while tracing, or fx's own stack trace), "" when there is none."""
    raw = node.meta.get(_RAW_TRACEBACK)
    if raw is not None:
        for frame in symbolize_tracebacks([raw.tb])[0]:  # innermost first
            f = frame["filename"].replace("\\", "/")
            if "/torch/" not in f and "/slimnet/" not in f:
                return f"{frame['filename']}, line {frame['line']}, in {frame['name']}"
        return ""
    st = node.stack_trace or node.meta.get("stack_trace") or ""
    lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip().startswith("File")]
    lines = [ln for ln in lines if "/torch/" not in ln and "/slimnet/" not in ln]
    return lines[-1].replace("File ", "").replace('"', "") if lines else ""


@contextlib.contextmanager
def _inlined_wrapped(tracer: SymbolicTracer) -> Iterator[None]:
    """While ``tracer`` traces, the fx-wrapped functions that its ``keep_wrapped`` does not keep are taken out of
    fx's table of functions to patch, and their module globals point at a wrapper that traces them through."""
    table = fx_symbolic._wrapped_fns_to_patch
    if tracer.keep_wrapped is None:
        yield
        return
    taken: dict[Any, dict[str, Any]] = {}
    patched: list[tuple[dict[str, Any], str, Any]] = []
    for key, frame in list(table.items()):
        fn = frame.get(key[1])
        if not callable(fn) or tracer.keep_wrapped(fn):
            continue
        taken[key] = table.pop(key)
        patched.append((frame, key[1], fn))
        frame[key[1]] = _through(tracer, fn)
    try:
        yield
    finally:
        for frame, name, fn in patched:
            frame[name] = fn
        table.update(taken)


def _through(tracer: SymbolicTracer, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        traced = any(isinstance(x, fx.Proxy) for x in pytree.tree_leaves((args, kwargs)))
        if not traced or getattr(tracer, "_computing", 0):
            return fn(*args, **kwargs)
        return tracer.wrapped_call(fn, args, kwargs)

    return call


def concrete_args(model: nn.Module, example: Any) -> dict[str, Any] | None:
    """forward() arguments the example does not give are traced as their defaults (``if mask is None``
    branches then specialise the way the model will be called)."""
    if example is None:
        return None
    params = list(inspect.signature(model.forward).parameters.values())
    params = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if isinstance(example, dict):
        given = set(example)
    elif isinstance(example, tuple):
        given = {p.name for p in params[: len(example)]}
    else:
        given = {params[0].name} if params else set()
    fixed = {p.name: p.default for p in params if p.name not in given and p.default is not inspect.Parameter.empty}
    return fixed or None


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
