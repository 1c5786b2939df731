"""Sensitivity-driven allocation: per-group ratios that meet a MAC (or parameter) target with the least loss.

Numbers in, numbers out, like :mod:`slimnet.allocate`: it reads a ``slimnet.sensitivity/1`` result (each
group's
loss and MACs when cut alone at a few ratios), the groups' rankings and the cost model, never a module.

Each group's loss is interpolated linearly between its measured ratios (0 at ratio 0, made non-decreasing: a
deeper cut of the same group is never counted as better), and so is the share of the model's MACs its cut saves.
Starting from the whole model, the allocation repeatedly takes the cheapest move: raising one group to a deeper
ratio (on a grid of :data:`STEP`, up to the largest one measured: nothing is extrapolated) at the least loss per
unit of MACs saved, until the combined plan, priced by the cost model (which counts the interactions between
groups that a sum of single-group savings misses), reaches the target; the last move is shortened to stop at the
first grid ratio that reaches it (the plan's MACs are then at most the target). Moves to *every* deeper ratio
are considered, not only the next one, so a group whose loss jumps once and then stays flat can be cut deeply in
one move; among free moves (losses measured as zero) the shortest goes first, which spreads them over the
groups. Losses are assumed to add up across groups, which is what a one-group-at-a-time sweep can offer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SlimnetError
from ..groups import Analysis, Group
from .counts import uniform_counts
from .targets import TOLERANCE, TargetResult, check_target

#: Ratios considered per group: multiples of this, plus every measured ratio.
STEP = 0.025


@dataclass
class SensitivityTarget(TargetResult):
    """A target reached by per-group ratios: the ratios go into the plan's ``target`` record."""

    ratios: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, object]:
        return {**super().report(), "ratios": self.ratios}


@dataclass
class Curve:
    """One group's loss and MAC saving (a fraction of the whole model's) as functions of its ratio."""

    ratios: np.ndarray
    loss: np.ndarray
    saving: np.ndarray

    def moves(self, ratio: float) -> list[tuple[float, float]]:
        """(loss per saving, ratio) of every deeper ratio than ``ratio`` that saves anything."""
        here_loss = float(np.interp(ratio, self.ratios, self.loss))
        here_saving = float(np.interp(ratio, self.ratios, self.saving))
        deeper = self.ratios > ratio + 1e-9
        gain = self.saving[deeper] - here_saving
        ok = gain > 1e-12
        per = (self.loss[deeper][ok] - here_loss) / gain[ok]
        return list(zip(per.tolist(), self.ratios[deeper][ok].tolist()))


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

    def price_of(ratios: dict[str, float]) -> tuple[float, dict[int, int]]:
        counts = uniform_counts(groups, 0.0, round_to, None, ratios)
        keep = np.ones(cost.n_units)
        for g in groups:
            keep[cost.offsets[g.id] + orders[g.id][counts[g.id] :]] = 0.0
        return price(keep) / full, counts

    deepest = {name: float(c.ratios[-1]) for name, c in table.items()}
    lowest = price_of(deepest)[0]
    if wanted < lowest - 1e-12:
        raise SlimnetError(
            f"--target-{kind} {wanted} cannot be reached with the measured ratios (up to {max(deepest.values())}): "
            f"the smallest is {lowest:.4f}; measure deeper ratios with slimnet sensitivity --ratios"
        )
    ratios = dict.fromkeys(table, 0.0)
    reached, counts = _greedy(table, ratios, price_of, wanted)
    gap = abs(reached - wanted)
    note = f"sensitivity-driven, within {TOLERANCE:.0%} of the target"
    if gap > TOLERANCE:
        note = f"sensitivity-driven, the closest that the measured ratios and --round-to {round_to} allow"
    if unknown:
        note += f"; {len(unknown)} groups not in the sensitivity file kept whole ({unknown[0]}, ...)"
    mean = float(np.mean([1.0 - counts[g.id] / len(g.units) for g in groups])) if groups else 0.0
    return SensitivityTarget(
        kind,
        wanted,
        reached,
        mean,
        counts,
        gap <= TOLERANCE,
        note,
        mode="sensitivity",
        ratios=dict(sorted(ratios.items())),
    )


def _greedy(table: dict[str, Curve], ratios: dict[str, float], price_of: Any, wanted: float) -> tuple:
    """Cheapest moves until the price is at most ``wanted`` (``ratios`` updated in place); the last move stops
    at the first grid ratio that gets there."""
    reached, counts = price_of(ratios)
    while reached > wanted:
        options = [(per, r, name) for name, c in table.items() for per, r in c.moves(ratios[name])]
        if not options:
            break
        _, target, name = min(options)
        grid = table[name].ratios
        for r in grid[(grid > ratios[name] + 1e-9) & (grid <= target + 1e-9)]:
            ratios[name] = float(r)
            reached, counts = price_of(ratios)
            if reached <= wanted:
                break
    return reached, counts
