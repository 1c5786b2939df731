"""Reaching a MACs or parameter target, and the global ranking.

* Uniform (:func:`for_target`, ``mode="uniform"``): the one share that every group drops, found by bisection over
  the plans themselves: the cost model (:mod:`slimnet.cost`) prices a plan in milliseconds, and the units a group
  would drop are its lowest ranked, as the plan will drop them.
* Global (``mode="global"``): one ranking across groups. Scores are made comparable by dividing each group's by
  their mean (:mod:`.ranking`); for a MACs or parameter target a unit's key is then its importance per MAC (or
  parameter) it saves, the exact marginal cost from the cost model's derivative at the operating point (first the
  uniform plan of the same target, then the global plan itself), so that cheap units are not dropped for little
  gain. With ``--ratio`` every unit costs one unit of the budget and the key is the normalised score. Units whose
  key falls under a threshold are dropped, no group below its floor (``max_layer_ratio``, rounding), and the
  threshold is bisected to the target.

What was reached is reported beside what was wanted; rounding may keep a target out of the 1% tolerance, and the
note says so (and which ``--round-to`` would land closer).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import SlimnetError
from ..groups import Analysis, Group
from ..rank.ranking import Ranking
from ..settings import TARGET_KINDS as TARGET_KINDS  # re-exported
from ..settings import check_ratio, check_target
from .counts import floor_of, round_count, uniform_counts

__all__ = ["TOLERANCE", "TargetResult", "check_target", "for_target", "global_for_ratio"]

#: How close a target must land (a fraction of the whole model's count) before rounding is blamed.
TOLERANCE = 0.01
MODES = ("uniform", "global")


@dataclass
class TargetResult:
    """The allocation found for a target (or for ``--global --ratio``): counts, and what they reach."""

    kind: str
    wanted: float
    reached: float
    ratio: float  # the share of the prunable units dropped (uniform: the share every group drops)
    counts: dict[int, int]
    within: bool  # |reached - wanted| <= TOLERANCE (latency: its own tolerance)
    note: str
    mode: str = "uniform"
    details: dict[str, object] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "wanted": self.wanted,
            "reached": round(self.reached, 6),
            "ratio": round(self.ratio, 6),
            "within_tolerance": self.within,
            "note": self.note,
            "allocation": self.mode,
            **self.details,
        }


class Pricer:
    """Prices counts (group id -> units kept, the best ranked) as a fraction of the original's MACs, parameters
    or prunable units; groups outside ``groups`` keep what ``fixed`` says (all their units when absent)."""

    def __init__(
        self,
        analysis: Analysis,
        groups: Sequence[Group],
        orders: Mapping[int, np.ndarray],
        kind: str,
        fixed: Mapping[int, int] | None = None,
    ) -> None:
        self.cost, self.groups, self.orders, self.kind = analysis.cost, list(groups), orders, kind
        self.fixed = dict(fixed or {})
        if kind in ("macs", "params") and self.cost is None:
            raise SlimnetError("this model has no cost model (it was not analysed by slimnet.graph): give --ratio")
        self.price = self.cost.macs if kind == "macs" else self.cost.params if kind == "params" else None
        self.full = float(self.price()) if self.price else float(sum(len(g.units) for g in self.groups))
        self.base = np.ones(self.cost.n_units) if self.cost is not None else None
        if self.base is not None:
            for gid, k in self.fixed.items():
                self.base[self.cost.offsets[gid] + orders[gid][k:]] = 0.0

    def keep(self, counts: Mapping[int, int]) -> np.ndarray:
        keep = self.base.copy()
        for g in self.groups:
            keep[self.cost.offsets[g.id] + self.orders[g.id][counts[g.id] :]] = 0.0
        return keep

    def fraction(self, counts: Mapping[int, int]) -> float:
        if self.price is None:
            return sum(counts[g.id] for g in self.groups) / self.full if self.full else 1.0
        return self.price(self.keep(counts)) / self.full

    def dropped_share(self, counts: Mapping[int, int]) -> float:
        total = sum(len(g.units) for g in self.groups)
        return 1.0 - sum(counts[g.id] for g in self.groups) / total if total else 0.0


def for_target(
    analysis: Analysis,
    groups: Sequence[Group],
    orders: Mapping[int, np.ndarray],
    kind: str,
    wanted: float,
    round_to: int,
    head_ratio: float | None = None,
    *,
    mode: str = "uniform",
    ranking: Ranking | None = None,
    max_layer_ratio: float | None = None,
    fixed: Mapping[int, int] | None = None,
) -> TargetResult:
    """The counts of ``groups`` (the free prunable ones, ranked by ``orders``: unit positions, most important
    first) whose plan brings ``kind`` ("macs" or "params") closest to ``wanted`` x the original. ``fixed``: counts
    of prunable groups that are not free (``--ratios``). ``mode="global"`` ranks across groups (``ranking``'s
    normalised scores; no group loses more than ``max_layer_ratio``; heads groups drop ``head_ratio`` when it is
    given). A target below what the model can reach is refused, naming the smallest reachable value."""
    check_target(kind, wanted)
    if kind not in ("macs", "params"):
        raise SlimnetError(f"for_target reaches MACs or parameter targets, not {kind!r}")
    if head_ratio is not None:
        check_ratio(head_ratio, "--head-ratio")
    if mode not in MODES:
        raise SlimnetError(f"unknown allocation {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "global":
        ranking = ranking or Ranking(dict(orders))
        return _global_target(analysis, groups, ranking, kind, wanted, round_to, head_ratio, max_layer_ratio, fixed)
    pricer = Pricer(analysis, groups, orders, kind, fixed)

    def fraction(ratio: float) -> tuple[float, dict[int, int]]:
        counts = uniform_counts(groups, ratio, round_to, head_ratio)
        return pricer.fraction(counts), counts

    lowest, lowest_counts = fraction(1.0 - 1e-9)
    _check_reachable(analysis, kind, wanted, lowest, round_to)
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
    return TargetResult(kind, wanted, reached, ratio, counts, gap <= TOLERANCE, _note(gap, round_to))


def _note(gap: float, round_to: int, mode: str = "uniform") -> str:
    if gap <= TOLERANCE:
        return f"within {TOLERANCE:.0%} of the target"
    if round_to > 1:
        return f"the closest that --round-to {round_to} allows: round to less (e.g. --round-to 1) to land closer"
    how = "one share for every group" if mode == "uniform" else "one ranking (and --max-layer-ratio)"
    return f"the closest that whole units (attention heads, conv groups) and {how} allow"


def _check_reachable(analysis: Analysis, kind: str, wanted: float, lowest: float, round_to: int) -> None:
    if wanted < lowest - 1e-12:
        raise SlimnetError(
            f"--target-{kind} {wanted} cannot be reached: the smallest this model allows is {lowest:.4f} (every "
            f"prunable group keeps at least one unit, or one --round-to {round_to} step, or what --max-layer-ratio "
            f"leaves it, and {sum(1 for g in analysis.groups if g.reason)} groups are left whole); give at least that"
        )


# ------------------------------------------------------------------------------------------ global ranking
def _split_heads(
    groups: Sequence[Group], head_ratio: float | None, round_to: int, fixed: Mapping[int, int] | None
) -> tuple[list[Group], dict[int, int]]:
    """With ``head_ratio``, heads groups drop that share and leave the global ranking (they are fixed)."""
    fixed = dict(fixed or {})
    if head_ratio is None:
        return list(groups), fixed
    heads = [g for g in groups if g.kind == "heads"]
    fixed.update(uniform_counts(heads, head_ratio, round_to))
    return [g for g in groups if g.kind != "heads"], fixed


class Threshold:
    """Counts from one threshold over per-unit keys: a group keeps its best units whose key is above it (the
    keys along a group's order made non-increasing, so that a group always keeps a prefix of its ranking)."""

    def __init__(self, groups: Sequence[Group], ranking: Ranking, keys: Mapping[int, np.ndarray], round_to: int,
                 max_layer_ratio: float | None) -> None:  # fmt: skip
        self.groups, self.round_to = list(groups), round_to
        self.floors = {g.id: floor_of(g, round_to, max_layer_ratio) for g in self.groups}
        self.keys = {g.id: -np.minimum.accumulate(np.asarray(keys[g.id])[ranking.orders[g.id]]) for g in self.groups}
        every = np.concatenate([k for k in self.keys.values()]) if self.keys else np.zeros(0)
        self.cuts = np.unique(-every)  # ascending thresholds: dropping every key <= cuts[i]

    def counts(self, i: int) -> dict[int, int]:
        """Counts when every unit with key <= cuts[i] goes (i = -1: none goes)."""
        tau = -np.inf if i < 0 else self.cuts[i]
        out = {}
        for g in self.groups:
            raw = int(np.searchsorted(self.keys[g.id], -tau, side="left"))  # units with key > tau
            out[g.id] = round_count(g, raw, self.round_to, self.floors[g.id])
        return out

    def search(self, fraction: Callable[[dict[int, int]], float], wanted: float) -> tuple[float, float, dict]:
        """The counts whose fraction is closest to ``wanted`` (ties: the one at or under it)."""
        lo, hi = -1, len(self.cuts) - 1
        best: tuple[float, float, dict] = (np.inf, 1.0, self.counts(-1))
        for i in (lo, hi):
            c = self.counts(i)
            f = fraction(c)
            if abs(f - wanted) < best[0]:
                best = (abs(f - wanted), f, c)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            c = self.counts(mid)
            f = fraction(c)
            if abs(f - wanted) < best[0] or (abs(f - wanted) == best[0] and f <= wanted):
                best = (abs(f - wanted), f, c)
            if f > wanted:
                lo = mid
            else:
                hi = mid
        return best


def _global_target(
    analysis: Analysis,
    groups: Sequence[Group],
    ranking: Ranking,
    kind: str,
    wanted: float,
    round_to: int,
    head_ratio: float | None,
    max_layer_ratio: float | None,
    fixed: Mapping[int, int] | None,
) -> TargetResult:
    free, fixed = _split_heads(groups, head_ratio, round_to, fixed)
    pricer = Pricer(analysis, free, ranking.orders, kind, fixed)
    lowest = pricer.fraction({g.id: floor_of(g, round_to, max_layer_ratio) for g in free})
    _check_reachable(analysis, kind, wanted, lowest, round_to)
    # the operating point: the uniform plan of the same target, then the global plan itself
    point = for_target(analysis, free, ranking.orders, kind, max(wanted, lowest), round_to, fixed=fixed).counts
    best = None
    for _ in range(2):
        margin = analysis.cost.gradient(kind, pricer.keep(point))
        keys = {}
        for g in free:
            unit_cost = margin[analysis.cost.offsets[g.id] : analysis.cost.offsets[g.id] + len(g.units)]
            keys[g.id] = ranking.scores.get(g.id, np.ones(len(g.units))) / np.maximum(unit_cost, 1e-12)
        gap, reached, counts = Threshold(free, ranking, keys, round_to, max_layer_ratio).search(pricer.fraction, wanted)
        kept = ranking.kept_importance(counts)
        if best is None or (gap, -kept) < (best[0], -best[3]):
            best = (gap, reached, counts, kept)
        point = counts
    gap, reached, counts, _ = best
    counts = {**counts, **{gid: k for gid, k in fixed.items() if gid in {g.id for g in groups}}}
    ratio = pricer.dropped_share(counts) if free else 0.0
    note = _note(gap, round_to, "global")
    return TargetResult(kind, wanted, reached, ratio, counts, gap <= TOLERANCE, note, "global")


def global_for_ratio(
    groups: Sequence[Group],
    ranking: Ranking,
    ratio: float,
    round_to: int,
    head_ratio: float | None = None,
    max_layer_ratio: float | None = None,
) -> TargetResult:
    """``--global --ratio R``: drop the share R of all the groups' units, lowest normalised scores first, no group
    below its floor. ``reached`` is the share of units kept (1 - R wanted)."""
    check_ratio(ratio)
    free, fixed = _split_heads(groups, head_ratio, round_to, None)
    keys = {g.id: ranking.scores.get(g.id, np.ones(len(g.units))) for g in free}
    total = sum(len(g.units) for g in free)

    def fraction(counts: Mapping[int, int]) -> float:
        return sum(counts[g.id] for g in free) / total if total else 1.0

    gap, reached, counts = Threshold(free, ranking, keys, round_to, max_layer_ratio).search(fraction, 1.0 - ratio)
    counts = {**counts, **fixed}
    note = (
        f"{1.0 - reached:.4f} of the prunable units dropped ({ratio} asked"
        + ("" if gap <= TOLERANCE else "; rounding and --max-layer-ratio allow no closer")
        + ")"
    )
    return TargetResult("units", 1.0 - ratio, reached, 1.0 - reached, counts, gap <= TOLERANCE, note, "global")
