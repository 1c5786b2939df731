"""Allocation: how many units each group keeps. Numbers in, numbers out: it reads the groups, the ranking of
their units, the cost model (:mod:`slimnet.cost`) and, for latency targets, a table of measured latencies
(:class:`LatencyTable`, built by :mod:`slimnet.measure.lut`); never a module. The plan is made from its answer.

* :mod:`.counts`: the rounding rule (:func:`keep_count`), each group's floor, the uniform share
  (:func:`uniform_counts`) and ``--ratios`` files resolved to groups (:func:`resolve_ratios`).
* :mod:`.ranking`: scores made comparable across groups (:class:`Ranking`; importance kept).
* :mod:`.targets`: MACs and parameter targets, uniform or global (:func:`for_target`), and ``--global --ratio``
  (:func:`global_for_ratio`).
* :mod:`.latency`: latency targets: the table, the prediction and the knapsack (:func:`for_latency`).
* :mod:`.sensitivity`: MACs and parameter targets from measured per-group loss curves (``slimnet sensitivity``):
  per-group ratios with the least summed loss (:func:`from_sensitivity`).
* :func:`allocate`: all of it behind one call, as :func:`slimnet.allocate.decide.choose` uses it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import SlimnetError
from ..groups import Analysis, Group
from ..rank.ranking import Ranking, normalised
from .counts import (
    floor_of,
    keep_count,
    resolve_ratios,
    round_count,
    round_to_of,
    step_of,
    uniform_counts,
    unit_channels,
)
from .latency import LATENCY_TOLERANCE, GroupTiming, LatencyModel, LatencyTable, for_latency, knapsack, widths_to_time
from .sensitivity import SensitivityTarget, from_sensitivity
from .targets import TARGET_KINDS, TOLERANCE, TargetResult, check_target, for_target, global_for_ratio

__all__ = [
    "LATENCY_TOLERANCE",
    "TARGET_KINDS",
    "TOLERANCE",
    "GroupTiming",
    "LatencyModel",
    "LatencyTable",
    "Ranking",
    "SensitivityTarget",
    "TargetResult",
    "allocate",
    "check_target",
    "floor_of",
    "for_latency",
    "for_target",
    "from_sensitivity",
    "global_for_ratio",
    "keep_count",
    "knapsack",
    "normalised",
    "resolve_ratios",
    "round_count",
    "round_to_of",
    "step_of",
    "uniform_counts",
    "unit_channels",
    "widths_to_time",
]


def allocate(
    analysis: Analysis,
    groups: Sequence[Group],
    ranking: Ranking,
    *,
    ratio: float,
    round_to: int,
    head_ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    target: tuple[str, float] | None = None,
    use_global: bool = False,
    max_layer_ratio: float | None = None,
    table: LatencyTable | None = None,
    sensitivity: Mapping[str, object] | None = None,
) -> tuple[dict[int, int], TargetResult | None]:
    """Units kept per prunable group (``groups``), and what a target or global ranking reached.

    ``ratios`` (group name -> share, see :func:`resolve_ratios`) pins the groups it names; the others share
    ``ratio`` uniformly, or by one global ranking (``use_global``), or reach ``target``: ``("macs", 0.5)``,
    ``("params", 0.5)`` or ``("latency", ms)`` (milliseconds: a fraction is turned into milliseconds with the
    table's original latency by the caller). ``max_layer_ratio`` bounds what the global and latency allocations
    take from one group. ``sensitivity`` (a ``slimnet.sensitivity/1`` result) with a MACs or parameters target:
    per-group ratios from its loss curves."""
    if sensitivity is not None:
        if target is None or target[0] == "latency":
            raise SlimnetError("a sensitivity file allocates towards a target: give --target-macs or --target-params")
        result = from_sensitivity(analysis, groups, ranking.orders, sensitivity, target[0], target[1], round_to)
        return result.counts, result
    pinned = {g.id: keep_count(len(g.units), ratios[g.name], round_to_of(g, round_to), unit_channels(g)) for g in groups
              if ratios and g.name in ratios}  # fmt: skip
    if target is None and not use_global:
        free = [g for g in groups if g.id not in pinned]
        return {**uniform_counts(free, ratio, round_to, head_ratio), **pinned}, None
    if head_ratio is not None:  # heads drop their own share; the rest is allocated
        heads = [g for g in groups if g.kind == "heads" and g.id not in pinned]
        pinned.update(uniform_counts(heads, head_ratio, round_to))
    free = [g for g in groups if g.id not in pinned]
    if target is None:
        result = global_for_ratio(free, ranking, ratio, round_to, None, max_layer_ratio)
    elif target[0] == "latency":
        if table is None:
            raise SlimnetError("a latency target needs a latency table (slimnet.measure.lut.table_for)")
        result = for_latency(analysis, free, ranking, table, target[1], round_to, max_layer_ratio, pinned)
    else:
        result = for_target(
            analysis,
            free,
            ranking.orders,
            target[0],
            target[1],
            round_to,
            mode="global" if use_global else "uniform",
            ranking=ranking,
            max_layer_ratio=max_layer_ratio if use_global else None,
            fixed=pinned,
        )
    result.counts = {**result.counts, **pinned}
    return result.counts, result
