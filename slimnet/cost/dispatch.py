"""How a node finds its entry: :func:`terms_of`, called by the atom interpreter for every node, looks the op up
in :data:`~slimnet.cost.terms.COSTS` and falls back on fvcore itself for ops that only fvcore can count
(``torch.einsum``, a library's fx-wrapped function, a leaf module from outside torch)."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from .._tensors import flat_tensors, replace_tensors
from .._util import lookup
from .terms import COSTS, CostCall, CostFn, Term, cost, elements, term


class _Call(nn.Module):
    """One call of a function (or of a module) with its tensor arguments as inputs, for fvcore."""

    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.fn, self.spec = fn, (args, kwargs)
        self.inner = fn if isinstance(fn, nn.Module) else None

    def forward(self, *tensors: torch.Tensor) -> Any:
        args, kwargs = replace_tensors(self.spec, tensors)
        return self.fn(*args, **kwargs)


@cost(torch.einsum)
def counted_by_fvcore(call: CostCall) -> list[Term]:
    """Ops without an entry of their own that fvcore can count (``torch.einsum``, a library's fx-wrapped function
    such as torchvision's ``shifted_window_attention``, a leaf module from outside torch): fvcore counts that one
    call, and the count follows the output's kept elements (exact when pruning only thins the output)."""
    from .macs import count_macs  # lazy: fvcore's import is slow and only these rare ops need it

    fn = call.module if call.module is not None else call.node.target
    tensors = flat_tensors((call.args, call.kwargs))
    if not tensors or not isinstance(call.value, torch.Tensor) or call.value.numel() == 0:
        return []
    try:
        total = count_macs(_Call(fn, call.args, call.kwargs), tuple(tensors))["macs"]
    except Exception:  # noqa: BLE001 - a call fvcore cannot trace is counted as free, as fvcore itself would
        return []
    return term(call, total / call.value.numel(), elements(call.out, call.value)) if total else []


def fallback(call: CostCall) -> CostFn | None:
    """The entry for an op with none: fvcore's count for wrapped functions and leaf modules of other libraries;
    nothing for torch's own ops (view, cat, getitem...: fvcore calls them free or skips them)."""
    target = call.module if call.module is not None else call.node.target
    home = getattr(type(target) if call.module is not None else target, "__module__", "") or ""
    if call.node.op == "call_method" or home.split(".")[0] in ("torch", "_operator", "builtins", "math"):
        return None
    return counted_by_fvcore


class NeedsExampleSize(Exception):
    """An op whose count only fvcore knows, met on the reduced-size path: fvcore must run it at the example's
    size, so the analysis goes back to that size."""


def terms_of(it: Any, n: fx.Node, value: Any, full: tuple[tuple, dict] | None = None) -> list[Term]:
    """The terms of node ``n`` as the atom interpreter ``it`` just ran it (its inputs' ids are still live); none
    for ops that cost nothing or that fvcore would not count. ``full``: the node's arguments at the example's
    size when ``it`` ran a reduced input (``value`` is then the full-size value: :mod:`slimnet.trace.reduced`)."""
    module = it.module_of(n) if n.op == "call_module" else None
    fn = lookup(COSTS, type(module)) if module is not None else COSTS.get(n.target)
    args, kwargs = full if full is not None else (it.value_of(n.args), it.value_of(n.kwargs))
    call = CostCall(
        node=n,
        module=module,
        value=value,
        args=args,
        kwargs=kwargs,
        ids=it.ids_of,
        out=it.ids_of(n),
        param=it.param_name,
        target_name=str(n.target) if module is not None else "",
    )
    fn = fn or fallback(call)
    if fn is None:
        return []
    if fn is counted_by_fvcore and full is not None:
        raise NeedsExampleSize(f"{n.name} is counted by fvcore")
    try:
        return fn(call)
    except (AttributeError, IndexError, TypeError, ValueError):  # an unusual call: counted as free, not fatal
        return []
