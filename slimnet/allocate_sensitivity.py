"""Sensitivity-driven allocation: per-group ratios that meet a MAC (or parameter) target with the least loss.

Numbers in, numbers out, like :mod:`slimnet.allocate`: it reads a ``slimnet.sensitivity/1`` result (each group's
loss and MACs when cut alone at a few ratios), the groups' rankings and the cost model, never a module.

Each group's loss is interpolated linearly between its measured ratios (0 at ratio 0, made non-decreasing: a
deeper cut of the same group is never counted as better), and so is the share of the model's MACs its cut
saves. For a price ``lam``, each group takes the ratio (on a grid of :data:`STEP`, up to the largest one
measured: nothing is extrapolated) that minimises ``loss - lam * saving``, the Lagrangian relaxation of "least
total loss for this saving"; ``lam`` is found by bisection so that the combined plan, priced by the cost model
(which counts the interactions between groups that a sum of single-group savings misses), lands closest to
the target. Losses are assumed to add up across groups, which is what a one-group-at-a-time sweep can offer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .allocate import TOLERANCE, TargetResult, check_target, uniform_counts
from .errors import SlimnetError
from .groups import Analysis, Group

#: Ratios considered per group: multiples of this, plus every measured ratio.
STEP = 0.025
#: Weight of the convex tie-breaking term (see :meth:`Curve.best`), relative to the largest measured loss.
SPREAD = 1e-3


@dataclass
class SensitivityTarget(TargetResult):
    """A target reached by per-group ratios: the ratios go into the plan's ``target`` record."""

    ratios: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        return {**super().report(), "allocation": "sensitivity", "ratios": self.ratios}


@dataclass
class Curve:
    """One group's loss and MAC saving (a fraction of the whole model's) as functions of its ratio."""

    ratios: np.ndarray
    loss: np.ndarray
    saving: np.ndarray

    def best(self, lam: float, spread: float) -> float:
        """The ratio minimising ``loss + spread * saving**2 - lam * saving``: the small convex term shares a
        saving out among groups whose measured losses are equal (often all zero at small ratios), where the
        bare Lagrangian would jump from none of them to all of them at once."""
        objective = self.loss + spread * self.saving**2 - lam * self.saving
        return float(self.ratios[int(np.argmin(objective + 1e-12 * self.ratios))])


def curves(sens: Mapping[str, Any]) -> dict[str, Curve]:
    """Each measured group's curve on the ratio grid."""
    full = sens.get("macs")
    out = {}
    for row in sens["groups"]:
        points = sorted(row["points"], key=lambda p: p["ratio"])
        xs = np.array([0.0] + [p["ratio"] for p in points])
        ys = np.maximum.accumulate(np.array([0.0] + [float(p["loss"]) for p in points]))
        if full:
            saved = np.array([0.0] + [(full - p["macs"]) / full for p in points])
        else:  # no cost model when the sweep ran: the share of units cut stands in for the saving
            saved = np.array([0.0] + [1.0 - p["kept"] / row["units"] for p in points])
        grid = np.union1d(np.round(np.arange(0.0, xs[-1] + 1e-9, STEP), 6), xs)
        out[row["group"]] = Curve(grid, np.interp(grid, xs, ys), np.interp(grid, xs, np.maximum.accumulate(saved)))
    return out


def from_sensitivity(
    analysis: Analysis,
    groups: Sequence[Group],
    orders: Mapping[int, np.ndarray],
    sens: Mapping[str, Any],
    kind: str,
    wanted: float,
    round_to: int,
) -> SensitivityTarget:
    """Per-group ratios for ``groups`` (the prunable ones, ranked by ``orders``) bringing ``kind`` closest to
    ``wanted`` x the original with the least summed loss (module docstring)."""
    check_target(kind, wanted)
    cost = analysis.cost
    if cost is None:
        raise SlimnetError("this model has no cost model (it was not analysed by slimnet.graph): give --ratio")
    table = curves(sens)
    unknown = [g.name for g in groups if g.name not in table]
    price = cost.macs if kind == "macs" else cost.params
    full = float(price())

    spread = SPREAD * max([float(c.loss.max()) for c in table.values()] + [1e-6])

    def allocation(lam: float) -> tuple[float, dict[str, float], dict[int, int]]:
        ratios = {name: c.best(lam, spread) for name, c in table.items()}
        counts = uniform_counts(groups, 0.0, round_to, None, ratios)
        keep = np.ones(cost.n_units)
        for g in groups:
            keep[cost.offsets[g.id] + orders[g.id][counts[g.id] :]] = 0.0
        return price(keep) / full, ratios, counts

    lowest = allocation(1e9)
    if wanted < lowest[0] - 1e-12:
        top = max(float(c.ratios[-1]) for c in table.values())
        raise SlimnetError(
            f"--target-{kind} {wanted} cannot be reached with the measured ratios (up to {top}): the smallest is "
            f"{lowest[0]:.4f}; measure deeper ratios with slimnet sensitivity --ratios"
        )
    best = _bisect(allocation, wanted)
    reached, ratios, counts = best
    gap = abs(reached - wanted)
    note = (
        f"sensitivity-driven, within {TOLERANCE:.0%} of the target"
        if gap <= TOLERANCE
        else (f"sensitivity-driven, the closest that the measured ratios and --round-to {round_to} allow")
    )
    if unknown:
        note += f"; {len(unknown)} groups not in the sensitivity file kept whole ({unknown[0]}, ...)"
    mean = float(np.mean([1.0 - counts[g.id] / len(g.units) for g in groups])) if groups else 0.0
    return SensitivityTarget(kind, wanted, reached, mean, counts, gap <= TOLERANCE, note, dict(sorted(ratios.items())))


def _bisect(allocation: Any, wanted: float) -> tuple[float, dict[str, float], dict[int, int]]:
    """The allocation whose price lands closest to ``wanted`` (ties: the one below), over log-spaced ``lam``."""
    lo, hi = -12.0, 9.0  # log10 of lam: fraction(10**lo) >= wanted >= fraction(10**hi)
    first = allocation(10**lo)
    best = first
    if first[0] <= wanted:
        return first
    for _ in range(60):
        mid = (lo + hi) / 2
        found = allocation(10**mid)
        gap, best_gap = abs(found[0] - wanted), abs(best[0] - wanted)
        if gap < best_gap or (gap == best_gap and found[0] <= wanted):
            best = found
        if found[0] > wanted:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6:
            break
    return best
