"""The analysis at a reduced spatial size (:mod:`slimnet.trace.reduced`): the same groups for a few percent of the work.

:func:`analyse_reduced` traces symbolically (a graph that holds for any input size), runs it once at the
example's size with the convolutions reduced to their shapes (the cost model's shapes), then interprets it on
the small input with :class:`ReducedInterpreter`, which checks node by node that the small run is the large one
seen through a smaller window and prices every node at the example's size (there too, convolutions and linear
layers only give zeros of their output's shape: the channel rules read ids and shapes, not values). Whenever
that is not so (the model rejects the small input, a dim that changes size carries channel ids, an op only
fvcore can count), it gives up and the caller analyses at the example's size, as before.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from .. import cost
from ..cost.dispatch import NeedsExampleSize
from ..stages import Stages
from ..trace.reduced import (
    RAN_EXAMPLE,
    collapses,
    full_size_values,
    larger_inputs,
    reduced_examples,
    size_mismatch,
    verify_inputs,
)
from ..trace.tracer import placeholder_args, trace
from .assemble import assemble_roots, shapes_of, tensor_aliases
from .interpreter import AtomInterpreter
from .model import Analysis
from .registry import has_rule, is_leaf_class


class SizeDependent(Exception):
    """The small run is not the large one seen through a smaller window."""


class ReducedInterpreter(AtomInterpreter):
    """An :class:`AtomInterpreter` run on a reduced input, given every node's value at the example's size
    (``full``): it refuses a node whose small value is not the full one seen through a smaller window, and
    prices every node with its full-size value and arguments."""

    def __init__(self, gm: fx.GraphModule, aliases: dict[str, str], full: dict[fx.Node, Any]) -> None:
        super().__init__(gm, aliases, shaped=True)
        self._full = full

    def costs_of(self, n: fx.Node, value: Any) -> list[cost.Term]:
        full = self._full.get(n)
        why = size_mismatch(value, full, self.ids_of(n))
        if why is not None:
            raise SizeDependent(f"node {n.name}: {why}")
        args = fx.node.map_arg(n.args, self._full.get)
        kwargs = fx.node.map_arg(n.kwargs, self._full.get)
        return cost.terms_of(self, n, full, full=(args, kwargs))


def analyse_reduced(
    model: nn.Module, example: Any, stages: Stages
) -> tuple[Analysis | None, fx.GraphModule | None, str]:
    """The analysis on a reduced input, or None; the symbolic graph when there is one (for the caller's
    analysis at the example's size); and why the reduced path was not taken ("" when it was)."""
    smalls = reduced_examples(example)
    if not smalls:
        return None, None, "the input is not one image tensor larger than the reduced sizes"
    with stages("trace"):
        try:
            gm = trace(model, example, is_leaf=is_leaf_class, keep_wrapped=has_rule, with_values=False)
        except Exception:  # noqa: BLE001 - the caller traces again with example values, and reports errors
            return None, None, "the model does not trace symbolically"
        try:
            full = full_size_values(gm, placeholder_args(gm, example))
        except Exception:  # noqa: BLE001 - the caller runs the model on the example and says what is wrong
            return None, gm, "the graph does not run on the example with its convolutions as shapes"
        gm.meta[RAN_EXAMPLE] = True
    why = ""
    with stages("groups"):
        graph_alias, _ = tensor_aliases(gm)
        alias, alias_groups = tensor_aliases(model)
        for small in smalls:
            try:
                evidence = ReducedInterpreter(gm, graph_alias, full).collect(*placeholder_args(gm, small))
            except (SizeDependent, NeedsExampleSize) as exc:
                why = str(exc).splitlines()[0]
                continue
            except Exception as exc:  # noqa: BLE001 - the model rejects the small input: try a larger one
                why = f"the model rejects the reduced input ({type(exc).__name__})"
                continue
            groups, roots = assemble_roots(evidence, shapes_of(gm))
            macs = cost.resolve_part(evidence.costs, groups, roots, graph_alias)
            analysis = Analysis(groups=groups, aliases=alias_groups, shapes=shapes_of(model), reduced=small)
            analysis.cost = cost.build(model, groups, alias, macs)
            larger = _open_input(gm, small, example, full)
            if larger is not None:
                analysis.checks = verify_inputs(small, larger)
            else:
                analysis.reduced_note = "no reduced input keeps every dimension above 1: verified at the example"
            return analysis, gm, ""
    return None, gm, why


def _open_input(gm: fx.GraphModule, small: Any, example: Any, full: dict[fx.Node, Any]) -> Any:
    """The verifier's larger input: the first of :func:`slimnet.trace.reduced.larger_inputs` in which no dimension
    shrinks to 1 (one shape pass each), or None."""
    for candidate in larger_inputs(small, example):
        try:
            values = full_size_values(gm, placeholder_args(gm, candidate))
        except Exception:  # noqa: BLE001 - the model rejects this size: try the next
            continue
        if not collapses(values, full):
            return candidate
    return None
