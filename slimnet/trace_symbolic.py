"""The symbolic tracer that both of slimnet's tracing paths build on, and the attention switch they share.

It sits in a module of its own so that the two paths can share it without an import cycle: :mod:`slimnet.trace`
(the entry points: plain tracing, tracing piece by piece, tracing errors) falls back on
:mod:`slimnet.trace_values` (tracing with example values), and both subclass or use :class:`SymbolicTracer`.

Which module classes are leaves is *passed in* (``is_leaf``, a predicate on classes): the tracer knows nothing
of the channel rules, so :mod:`slimnet.groups` imports the tracer and never the other way round.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from torch import fx, nn
from torch._C._profiler import symbolize_tracebacks
from torch.utils._traceback import CapturedTraceback

from .sizes import entries, traced_sizes

_RAW_TRACEBACK = "slimnet_traceback"
#: Module class -> whether calls to it stay one graph node (a leaf) instead of being traced through.
LeafPolicy = Callable[[type], bool]


class SymbolicTracer(fx.Tracer):
    """A symbolic tracer that records stack traces, so that reasons can name the user's source line.

    Module classes for which ``is_leaf`` says so are leaves (besides torch.nn's own, fx's default), and size
    attributes listed in :data:`slimnet.sizes.SIZES` are traced as expressions of tensor shapes, so that a
    reshape by ``self.num_heads`` or a split by ``self.split_size`` follows pruning instead of freezing it."""

    def __init__(self, is_leaf: LeafPolicy | None = None) -> None:
        super().__init__()
        # fx formats a stack trace for every node (reading source files: a tenth of an analysis); the raw
        # traceback is kept instead, and a reason reads its one user frame (:func:`user_line`)
        self.record_stack_traces = False
        self.is_leaf = is_leaf

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
