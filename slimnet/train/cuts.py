"""The plans of a gradual prune: one analysis of the original model, many cuts.

The groups of a model do not change when it is pruned; only which of their units survive. So the original's
analysis is computed once and every later state is described by the units each group keeps, as positions in
the original (``kept``: group id -> ascending unit positions). From that:

* :func:`cumulative_plan`: the ``slimnet.plan/1`` of the whole prune so far, relative to the original model
  (what a checkpoint stores and ``slimnet apply`` re-applies to a fresh instance);
* :func:`narrowed`: the analysis of the current, already cut model: each group holds its surviving units only,
  their indices renumbered into the current tensors (the current tensors are the original's sliced by the
  cumulative plan), shapes the current shapes; criteria rank it like any analysis;
* :func:`incremental_plan`: the plan of one more cut, relative to the current model, from the units kept before
  and after it (a subset); the verifier checks it against the current model and the surgeon applies it there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..allocate.decide import Decision
from ..groups import Analysis, Group, Unit
from ..plan import build_plan

Kept = Mapping[int, Sequence[int]]  # group id -> unit positions kept, in the original's numbering


def decisions(groups: Sequence[Group], kept: Kept, reasons: Mapping[int, str | None]) -> list[Decision]:
    """One decision per group: its kept units, or its reason for being left whole."""
    out = []
    for g in groups:
        reason = reasons.get(g.id)
        keep = list(range(len(g.units))) if reason else sorted(int(i) for i in kept[g.id])
        out.append(Decision(group=g, keep=keep, reason=reason))
    return out


def cumulative_plan(analysis: Analysis, kept: Kept, reasons: Mapping[int, str | None], **fields: Any) -> dict[str, Any]:
    """The plan, relative to the original, that keeps ``kept``; ``fields`` are :func:`build_plan`'s."""
    return build_plan(analysis, decisions(analysis.groups, kept, reasons), **fields)


def current_shapes(analysis: Analysis, plan: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of every analysed tensor after ``plan`` (canonical names)."""
    shapes = {}
    for name, shape in analysis.shapes.items():
        dims = plan["tensors"].get(name, {})
        shapes[name] = tuple(len(dims[str(d)]) if str(d) in dims else s for d, s in enumerate(shape))
    return shapes


def narrowed(analysis: Analysis, kept: Kept, plan: dict[str, Any]) -> Analysis:
    """The analysis of the model cut by ``plan`` (which keeps ``kept``): surviving units, current indices."""
    renumber: dict[tuple[str, int], np.ndarray] = {}

    def current(member: tuple[str, int], idx: list[int]) -> list[int]:
        if member not in renumber:
            name, dim = member
            table = np.full(analysis.shapes[name][dim], -1, dtype=np.int64)
            kept_idx = plan["tensors"].get(name, {}).get(str(dim))
            order = np.asarray(kept_idx, dtype=np.int64) if kept_idx is not None else np.arange(len(table))
            table[order] = np.arange(len(order))
            renumber[member] = table
        new = renumber[member][np.asarray(idx, dtype=np.int64)]
        if (new < 0).any():
            raise AssertionError(f"a kept unit of {member} lost an index: the plan and the kept units disagree")
        return new.tolist()

    groups = []
    for g in analysis.groups:
        units = [
            Unit({m: current(m, idx) for m, idx in g.units[i].members.items()}, root=g.units[i].root)
            for i in kept[g.id]
        ]
        groups.append(Group(g.id, g.name, units, g.members, g.reason, g.normalised, dict(g.roles), g.kind))
    return Analysis(groups, analysis.aliases, current_shapes(analysis, plan), list(analysis.notes))


def incremental_plan(
    current: Analysis, before: Kept, after: Kept, reasons: Mapping[int, str | None], **fields: Any
) -> dict[str, Any]:
    """The plan, relative to the current model (``current`` = :func:`narrowed` of ``before``), that keeps
    ``after`` (a subset of ``before`` per group)."""
    kept_now = {}
    for g in current.groups:
        survivors = {int(u): i for i, u in enumerate(before[g.id])}
        missing = [u for u in after[g.id] if int(u) not in survivors]
        if missing:
            raise AssertionError(f"group {g.name}: a cut cannot bring back unit {missing[0]}")
        kept_now[g.id] = sorted(survivors[int(u)] for u in after[g.id])
    return build_plan(current, decisions(current.groups, kept_now, reasons), **fields)
