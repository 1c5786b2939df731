"""Trace a model into a torch.fx graph, with an error that points at the user's code when tracing fails.

Symbolic tracing is the only tracer whose graph keeps ``nn.Module`` calls and Python-level ops (``view``,
``cat``, ``getitem``) as the user wrote them, which is what the channel rules in :mod:`slimnet.groups` read.
When it fails on data-dependent control flow we stop with the line of ``forward`` that stopped it: a graph
from another tracer (torch.export's ATen graph) would need a second rule set, and a guessed graph is worse
than a clear refusal.

Three modules, one layer each (no cycle): :mod:`slimnet.trace.symbolic` holds the symbolic tracer both paths
build on; :mod:`slimnet.trace.values` traces one call with example values beside the proxies; this module holds
the entry points (:func:`trace`, :func:`trace_pieces`, :func:`placeholder_args`) and the tracing errors.
Which module classes stay leaves is passed in (``is_leaf``): this module imports nothing of the channel rules.
"""

from __future__ import annotations

import traceback
from typing import Any

import torch
from torch import fx, nn

from .._tensors import call, call_args, filled_if_empty, in_eval, only_empty
from .._util import first_line
from ..errors import SlimnetError
from .symbolic import FunctionPolicy, LeafPolicy, SymbolicTracer, concrete_args, eager_attention, untouched
from .values import trace_call


def _user_frame(exc: BaseException) -> str:
    """The innermost frame of the traceback that is not torch's own code: where the model did something odd."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        f = frame.filename.replace("\\", "/")
        if "/torch/" in f or "/slimnet/" in f:
            continue
        return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    return ""


def _trace_error(model: nn.Module, exc: BaseException) -> SlimnetError:
    where = _user_frame(exc)
    msg = first_line(exc)
    at = f" at {where}" if where else ""
    return SlimnetError(
        f"cannot trace {type(model).__name__}{at} ({msg[:200]}): torch.fx needs forward() without "
        "data-dependent control flow; rewrite that line (e.g. torch.where instead of if/else on tensor "
        "values) or wrap it in a submodule and --ignore it"
    )


def trace(
    model: nn.Module,
    example: Any = None,
    is_leaf: LeafPolicy | None = None,
    keep_wrapped: FunctionPolicy | None = None,
    with_values: bool = True,
) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode, so train-only branches such as stochastic depth vanish).

    Plain symbolic tracing first (the graph every rule was written against); when it fails, once more with
    example values beside the proxies (:func:`slimnet.trace.values.trace_call`), which gets through code that
    unpacks shapes or branches on sizes, as Hugging Face models do. If both fail, the first error is raised.
    Module classes for which ``is_leaf`` is true stay single nodes (the analysis passes
    :func:`slimnet.groups.registry.is_leaf_class`: classes with a channel rule); functions registered with
    ``torch.fx.wrap`` are traced through unless ``keep_wrapped`` keeps them (the analysis passes
    :func:`~slimnet.groups.registry.has_rule`). A helper that only traces with example values (MViT's
    ``_unsqueeze`` branches on ``x.dim()``) makes the whole model be traced that way when an example is given.
    ``with_values=False``: symbolic tracing only (a graph that holds for inputs of any size:
    :mod:`slimnet.trace.reduced`).
    """
    was_training = model.training
    in_eval(model)
    tracer = SymbolicTracer(is_leaf, keep_wrapped)
    try:
        with eager_attention(model), untouched(model):  # constants the tracer puts on the root: read before
            graph = tracer.trace(model, concrete_args=concrete_args(model, example))
            gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes one readable line
        first = _trace_error(model, exc)
        if example is None or not with_values:
            raise first from None
        try:
            return trace_call(model, *call_args(example), is_leaf, keep_wrapped)
        except Exception:  # noqa: BLE001 - the plain tracer's error names the user's line best
            raise first from None
    finally:
        if was_training:  # else every module is in eval mode already (in_eval)
            model.train()
    if keep_wrapped is None or example is None or not _opaque_calls(gm, keep_wrapped):
        return gm
    try:
        with_values = trace_call(model, *call_args(example), is_leaf, keep_wrapped)
    except Exception:  # noqa: BLE001 - the plain graph, with its opaque calls, is still right
        return gm
    return with_values if len(_opaque_calls(with_values, keep_wrapped)) < len(_opaque_calls(gm, keep_wrapped)) else gm


def _opaque_calls(gm: fx.GraphModule, keep_wrapped: FunctionPolicy) -> list[fx.Node]:
    """Calls of fx-wrapped functions that stayed calls although ``keep_wrapped`` would trace them through."""
    return [n for n in gm.graph.nodes if n.meta.get("is_wrapped") and not keep_wrapped(n.target)]


def trace_pieces(
    model: nn.Module, example: Any, is_leaf: LeafPolicy | None = None, keep_wrapped: FunctionPolicy | None = None
) -> list[tuple[str, fx.GraphModule]]:
    """When the whole model cannot be traced, trace the largest submodules that can, each on the inputs it
    got when the model ran on the example. Their inputs and outputs are then fixed (never pruned), which is
    what keeps the pieces independent; a transformer's layers trace this way when its top-level forward
    (mask building, output capturing) does not. A piece that only got empty batches is traced on a filled one
    (:func:`_trace_piece`). ``is_leaf`` and ``keep_wrapped`` as for :func:`trace`."""
    calls: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name, mod in model.named_modules():

        def pre(_m: nn.Module, a: tuple, kw: dict, name: str = name) -> None:
            calls.setdefault(name, (a, dict(kw)))

        hooks.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad(), untouched(model):
            call(model.eval(), example)
    finally:
        for h in hooks:
            h.remove()
    pieces: list[tuple[str, fx.GraphModule]] = []

    def visit(name: str, mod: nn.Module) -> None:
        if name and name in calls and any(True for _ in mod.parameters()):
            gm = _trace_piece(mod, *calls[name], is_leaf, keep_wrapped)
            if gm is not None:
                pieces.append((name, gm))
                return
        for child, sub in mod.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", model)
    return pieces


def _trace_piece(mod: nn.Module, args: tuple, kwargs: dict, is_leaf: LeafPolicy | None,
                 keep_wrapped: FunctionPolicy | None) -> fx.GraphModule | None:  # fmt: skip
    """One piece traced on the inputs it got, or None when it does not trace. A piece that only got empty
    batches (a detector's mask head when the example found no boxes) is traced on a filled batch instead
    (:func:`slimnet._tensors.filled_if_empty`), since no channel can be followed through an empty tensor; where
    that cannot be done, it is traced as it was called and ``gm.meta["empty_inputs"]`` says so, which leaves
    its groups whole."""
    empty = only_empty((args, kwargs))
    filled = filled_if_empty((args, kwargs)) if empty else None
    if filled is not None:
        try:
            return trace_call(mod, *filled, is_leaf, keep_wrapped)
        except Exception:  # noqa: BLE001 - the piece rejects the filled batch: traced as it was called
            pass
    try:
        gm = trace_call(mod, args, kwargs, is_leaf, keep_wrapped)
    except Exception:  # noqa: BLE001 - the caller tries its children instead
        return None
    gm.meta["empty_inputs"] = empty
    return gm


def placeholder_args(gm: fx.GraphModule, example: Any) -> list[Any]:
    """Order the example input as the graph's placeholders expect it."""
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(example, dict) or len(names) > 1 and not isinstance(example, tuple):
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
    if isinstance(example, tuple):
        return list(example)
    return [example]
