"""Trace a model into a torch.fx graph, with an error that points at the user's code when tracing fails.

Symbolic tracing is the only tracer whose graph keeps ``nn.Module`` calls and Python-level ops (``view``,
``cat``, ``getitem``) as the user wrote them, which is what the channel rules in :mod:`slimnet.groups` read.
When it fails on data-dependent control flow we stop with the line of ``forward`` that stopped it: a graph
from another tracer (torch.export's ATen graph) would need a second rule set, and a guessed graph is worse
than a clear refusal.
"""

from __future__ import annotations

import inspect
import traceback
from typing import Any

import torch
from torch import fx, nn

from .errors import SlimnetError


class _Tracer(fx.Tracer):
    """A symbolic tracer that records stack traces, so that reasons can name the user's source line."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True


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


def trace(model: nn.Module, example: Any = None) -> fx.GraphModule:
    """Symbolically trace ``model`` (in eval mode, so train-only branches such as stochastic depth vanish)."""
    was_training = model.training
    model.eval()
    tracer = _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=concrete_args(model, example))
    except Exception as exc:  # noqa: BLE001 - every tracing failure becomes one readable line
        where = _user_frame(exc)
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        at = f" at {where}" if where else ""
        raise SlimnetError(
            f"cannot trace {type(model).__name__}{at} ({msg[:200]}): torch.fx needs forward() without "
            "data-dependent control flow; rewrite that line (e.g. torch.where instead of if/else on tensor "
            "values) or wrap it in a submodule and --ignore it"
        ) from None
    finally:
        model.train(was_training)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    return gm


def call(model: nn.Module, example: Any) -> Any:
    """Call a model the way the example input says: a tensor, a tuple of positional args, or a dict of kwargs."""
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, (tuple, list)):
        return model(*example)
    return model(example)


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


def map_tensors(value: Any, fn: Any) -> Any:
    """Apply ``fn`` to every tensor in a nested tuple/list/dict structure."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested structure, in a fixed order."""
    out: list[torch.Tensor] = []
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (tuple, list)):
        for v in value:
            out.extend(flat_tensors(v))
    elif isinstance(value, dict):
        for k in value:
            out.extend(flat_tensors(value[k]))
    elif hasattr(value, "to_tuple"):  # Hugging Face ModelOutput
        out.extend(flat_tensors(value.to_tuple()))
    return out
