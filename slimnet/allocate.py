"""Allocation: how many units each group keeps. Numbers in, numbers out: it reads the groups, the ranking of
their units and the cost model (:mod:`slimnet.cost`), never a module, and the plan is made from its answer.

* :func:`uniform_counts`: every prunable group loses the same share (``--ratio``; attention heads
  ``--head-ratio``; a group named in ``ratios`` its own share), rounded as :func:`slimnet.plan.keep_count` says.
* :func:`for_target`: the uniform share that brings the model's MACs or parameters closest to a fraction of the
  original's (``--target-macs 0.5``). The cost model prices any plan in microseconds, so the share is found by
  bisection over the plans themselves (the units each group would drop are the lowest ranked, as the plan will
  drop them), and what it reached is reported beside what was wanted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import SlimnetError
from .groups import Analysis, Group
from .settings import check_ratio

#: How close a target must land (a fraction of the whole model's count) before rounding is blamed.
TOLERANCE = 0.01
TARGET_KINDS = ("macs", "params")


def keep_count(n: int, ratio: float, round_to: int, unit_channels: int = 1) -> int:
    """How many of ``n`` units a group keeps (see :mod:`slimnet.plan` for the rounding rule)."""
    target = n * (1.0 - ratio)
    step = max(1, round_to // math.gcd(round_to, unit_channels)) if round_to > 1 else 1
    if n <= step:
        return max(1, min(n, int(math.floor(target + 0.5))))
    k = int(math.floor(target / step + 0.5)) * step
    return max(step, min(n, k))


def unit_channels(group: Group) -> int:
    """Channels per unit in the group's first member (a grouped conv's group, a head's width...)."""
    first = group.members[0]
    return max(1, len(group.units[0].members[first]))


def uniform_counts(
    groups: Sequence[Group],
    ratio: float,
    round_to: int,
    head_ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
) -> dict[int, int]:
    """Units kept per group id: ``ratio`` of every group dropped (``head_ratio`` for heads groups, a group's own
    entry in ``ratios`` for the groups it names)."""
    counts = {}
    for g in groups:
        r = head_ratio if (head_ratio is not None and g.kind == "heads") else ratio
        r = ratios.get(g.name, r) if ratios else r
        counts[g.id] = keep_count(len(g.units), r, round_to, unit_channels(g))
    return counts


@dataclass
class TargetResult:
    """The uniform share found for a target, the counts it gives, and what they reach."""

    kind: str
    wanted: float
    reached: float
    ratio: float
    counts: dict[int, int]
    within: bool  # |reached - wanted| <= TOLERANCE
    note: str

    def report(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "wanted": self.wanted,
            "reached": round(self.reached, 6),
            "ratio": round(self.ratio, 6),
            "within_tolerance": self.within,
            "note": self.note,
        }


def check_target(kind: str, wanted: float) -> None:
    if kind not in TARGET_KINDS:
        raise SlimnetError(f"unknown target {kind!r}: choose one of {', '.join(TARGET_KINDS)}")
    if not (0.0 < wanted < 1.0) or math.isnan(wanted):
        raise SlimnetError(
            f"--target-{kind} {wanted} is out of range: give the fraction of the original's {kind} to keep, "
            "0 < F < 1 (e.g. 0.5)"
        )


def for_target(
    analysis: Analysis,
    groups: Sequence[Group],
    orders: Mapping[int, np.ndarray],
    kind: str,
    wanted: float,
    round_to: int,
    head_ratio: float | None = None,
) -> TargetResult:
    """The uniform share of ``groups`` (the prunable ones, ranked by ``orders``: unit positions, most important
    first) whose plan brings ``kind`` closest to ``wanted`` x the original. A target below what the model can
    reach (every group keeps at least one unit, or one rounding step) is refused, naming the smallest reachable
    value."""
    check_target(kind, wanted)
    if head_ratio is not None:
        check_ratio(head_ratio, "--head-ratio")
    cost = analysis.cost
    if cost is None:
        raise SlimnetError("this model has no cost model (it was not analysed by slimnet.graph): give --ratio")
    price = cost.macs if kind == "macs" else cost.params
    full = float(price())

    def fraction(ratio: float) -> tuple[float, dict[int, int]]:
        counts = uniform_counts(groups, ratio, round_to, head_ratio)
        keep = np.ones(cost.n_units)
        for g in groups:
            start = cost.offsets[g.id]
            keep[start + orders[g.id][counts[g.id] :]] = 0.0
        return price(keep) / full, counts

    lowest, lowest_counts = fraction(1.0 - 1e-9)
    if wanted < lowest - 1e-12:
        raise SlimnetError(
            f"--target-{kind} {wanted} cannot be reached: the smallest this model allows is {lowest:.4f} (every "
            f"prunable group keeps at least one unit, or one --round-to {round_to} step, and "
            f"{sum(1 for g in analysis.groups if g.reason)} groups are left whole); give at least that"
        )
    lo, hi = 0.0, 1.0 - 1e-9  # fraction(lo) >= wanted >= fraction(hi)
    best = (abs(1.0 - wanted), 0.0, 1.0, uniform_counts(groups, 0.0, round_to, head_ratio))
    if abs(lowest - wanted) < best[0]:
        best = (abs(lowest - wanted), hi, lowest, lowest_counts)
    for _ in range(40):
        mid = (lo + hi) / 2
        reached, counts = fraction(mid)
        if abs(reached - wanted) < best[0] or (abs(reached - wanted) == best[0] and reached <= wanted):
            best = (abs(reached - wanted), mid, reached, counts)
        if reached > wanted:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-7:
            break
    gap, ratio, reached, counts = best
    within = gap <= TOLERANCE
    note = (
        f"within {TOLERANCE:.0%} of the target"
        if within
        else f"the closest that --round-to {round_to} allows: round to less (e.g. --round-to 1) to land closer"
    )
    return TargetResult(kind, wanted, reached, ratio, counts, within, note)
