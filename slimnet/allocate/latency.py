"""Widths chosen by what runs fast: a latency budget met with the most importance kept.

The table (:class:`LatencyTable`, measured by :mod:`slimnet.measure.lut` on this machine and backend) says, for every
prunable group and a handful of its widths, how much latency the model saves when that group alone is cut to that
width: a staircase, since kernels work in blocks of channels. Predicting a plan where many groups are cut at once
needs one correction: a conv between two cut groups does not save both savings (halving its inputs and its
outputs saves 3/4 of its work, not 1/2 + 1/2). The cost model knows exactly how the MACs of every op depend on
every group, so each group's saving is scaled by its Shapley share of the MACs saved,
``rho_g = (1 + S_g(P) / S_g(whole)) / 2``, where ``S_g(P)`` is the MACs that cutting g saves when the other groups
are as in plan P and ``S_g(whole)`` when they are whole; for ops bilinear in two groups the corrected sum is exact.

The solver is a multiple-choice knapsack by dynamic programming (:func:`knapsack`): one width per group, the
least importance lost (normalised scores of the dropped units, :mod:`.ranking`) for a predicted saving of at least
``original - budget``. Exact on the table's grid (savings in 2000 steps of the budget, rounded down, so that the
prediction of the answer never exceeds the budget); a greedy by value per millisecond would not be, because
staircases make savings non-concave in width. The correction depends on the answer, so the knapsack is solved
again with the corrections of its last answer until the answer repeats (a few rounds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import SlimnetError
from ..groups import Analysis, Group
from ..rank.ranking import Ranking
from .counts import floor_of, step_of
from .targets import TargetResult

#: Widths timed per group (the whole width included).
WIDTHS_PER_GROUP = 6
#: A latency target lands when the measured latency is within this share of the wanted one.
LATENCY_TOLERANCE = 0.10
BINS = 2000


@dataclass
class GroupTiming:
    """One group's staircase: latency saved (ms) when it alone keeps ``widths[i]`` units (``widths[0]``: all)."""

    units: int
    widths: list[int]
    saved_ms: list[float]
    base_ms: float = 0.0  # time of what the group touches, whole (the part of the model that was timed)

    def saved(self, width: int) -> float:
        """Saving at ``width``, interpolated linearly between timed widths (never negative)."""
        order = np.argsort(self.widths)
        xs, ys = np.asarray(self.widths)[order], np.asarray(self.saved_ms)[order]
        return max(0.0, float(np.interp(width, xs, ys)))


@dataclass
class LatencyTable:
    """Per-group latency staircases of one model on one machine, backend, thread count and input shape."""

    backend: str
    threads: int
    batch_size: int
    input_shape: str
    model_ms: float  # the whole model's median latency
    groups: dict[str, GroupTiming]
    method: str = ""
    machine: str = ""
    seconds: float = 0.0  # how long measuring took
    key: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LatencyTable:
        fields = dict(data)
        fields["groups"] = {name: GroupTiming(**g) for name, g in data["groups"].items()}
        return cls(**fields)


def widths_to_time(
    group: Group, round_to: int, max_layer_ratio: float | None, count: int = WIDTHS_PER_GROUP
) -> list[int]:
    """The widths a table times for ``group``, widest first: the whole width, the floor, and evenly spaced widths
    between, on multiples of the rounding step (of a coarser power-of-two multiple of it where the group is wide
    enough, so that the grid sits on the kernels' blocks)."""
    n, step = len(group.units), step_of(group, round_to)
    lowest = floor_of(group, round_to, max_layer_ratio)
    align = step
    while align * 2 * 2 * (count - 1) <= n - lowest and align < 64:
        align *= 2
    points = {n, lowest}
    for f in np.linspace(0.0, 1.0, count)[1:-1]:
        w = lowest + f * (n - lowest)
        w = int(round(w / align)) * align
        if lowest < w < n:
            points.add(w)
    return sorted(points, reverse=True)


def knapsack(options: Sequence[Sequence[tuple[float, float]]], need: float, bins: int = BINS) -> list[int] | None:
    """One option per row, ``(saving, cost)``, with savings summing to at least ``need`` at the least total cost;
    the chosen option per row, or None when even the largest savings fall short. Savings are counted in
    ``need / bins`` steps, rounded down (the answer's true saving is at least ``need``)."""
    if need <= 0:
        return [int(np.argmin([c for _, c in row])) for row in options]
    unit = need / bins
    dp = np.full(bins + 1, np.inf)
    dp[0] = 0.0
    picks: list[tuple[np.ndarray, np.ndarray]] = []
    for row in options:
        best, choice, came = np.full(bins + 1, np.inf), np.zeros(bins + 1, np.int64), np.zeros(bins + 1, np.int64)
        for j, (saving, cost) in enumerate(row):
            w = int(np.floor(max(saving, 0.0) / unit + 1e-9))
            shifted, source = np.full(bins + 1, np.inf), np.arange(bins + 1) - w
            if w < bins:
                shifted[w:bins] = dp[: bins - w] + cost
            tail = max(0, bins - w)  # every state from here reaches the cap
            at = tail + int(np.argmin(dp[tail:]))
            shifted[bins], source[bins] = dp[at] + cost, at
            better = shifted < best
            best[better], choice[better], came[better] = shifted[better], j, source[better]
        picks.append((choice, came))
        dp = best
    if not np.isfinite(dp[bins]):
        return None
    chosen, state = [], bins
    for choice, came in reversed(picks):
        chosen.append(int(choice[state]))
        state = int(came[state])
    return chosen[::-1]


class LatencyModel:
    """Predicted latency of counts (group id -> units kept): the original's, less each group's saving at its
    width, each scaled by its Shapley share of the MACs saved (see the module docstring)."""

    def __init__(self, analysis: Analysis, groups: Sequence[Group], ranking: Ranking, table: LatencyTable) -> None:
        missing = [g.name for g in groups if g.name not in table.groups or table.groups[g.name].units != len(g.units)]
        if missing:
            raise SlimnetError(f"the latency table has no timings for group {missing[0]!r}: measure it again")
        self.analysis, self.groups, self.ranking, self.table = analysis, list(groups), ranking, table
        self.cost = analysis.cost

    def keep(self, counts: Mapping[int, int]) -> np.ndarray:
        keep = np.ones(self.cost.n_units)
        for g in self.groups:
            keep[self.cost.offsets[g.id] + self.ranking.orders[g.id][counts[g.id] :]] = 0.0
        return keep

    def shares(self, counts: Mapping[int, int]) -> dict[int, float]:
        """rho_g for every group cut by ``counts`` (1 without a cost model)."""
        if self.cost is None:
            return {g.id: 1.0 for g in self.groups}
        keep = self.keep(counts)
        full, now = self.cost.macs(), self.cost.macs(keep)
        out = {}
        for g in self.groups:
            if counts[g.id] >= len(g.units):
                out[g.id] = 1.0
                continue
            span = slice(self.cost.offsets[g.id], self.cost.offsets[g.id] + len(g.units))
            alone, whole_g = np.ones(self.cost.n_units), keep.copy()
            alone[span], whole_g[span] = keep[span], 1.0
            saved_alone = full - self.cost.macs(alone)
            out[g.id] = 0.5 * (1.0 + (self.cost.macs(whole_g) - now) / saved_alone) if saved_alone > 0 else 1.0
        return out

    def predict(self, counts: Mapping[int, int], shares: Mapping[int, float] | None = None) -> float:
        shares = shares if shares is not None else self.shares(counts)
        saved = sum(self.table.groups[g.name].saved(counts[g.id]) * shares[g.id] for g in self.groups)
        return self.table.model_ms - saved


def for_latency(
    analysis: Analysis,
    groups: Sequence[Group],
    ranking: Ranking,
    table: LatencyTable,
    wanted_ms: float,
    round_to: int,
    max_layer_ratio: float | None,
    fixed: Mapping[int, int] | None = None,
) -> TargetResult:
    """The widths of ``groups`` that keep the most importance with a predicted latency within ``wanted_ms``;
    ``fixed`` counts (``--ratios``) are cut as given and count against the budget."""
    fixed = dict(fixed or {})
    everyone = list(groups) + [g for g in analysis.groups if g.id in fixed and g not in groups]
    model = LatencyModel(analysis, everyone, ranking, table)
    free = list(groups)
    grid = {g.id: _options(g, table, round_to, max_layer_ratio) for g in free}
    lowest = {**{g.id: grid[g.id][-1] for g in free}, **fixed}
    floor_ms = model.predict(lowest)
    if wanted_ms < floor_ms:
        raise SlimnetError(
            f"--target-latency {wanted_ms / table.model_ms:.4f} ({wanted_ms:.3g} ms) cannot be reached: the smallest "
            f"predicted latency this model allows is {floor_ms / table.model_ms:.4f} of the original "
            f"({floor_ms:.3g} ms of {table.model_ms:.3g} ms) with every group at its floor (--max-layer-ratio, "
            "--round-to); give at least that"
        )
    predicted, counts = _solve(model, free, everyone, grid, fixed, ranking, table, wanted_ms)
    if counts is None:
        predicted, counts = floor_ms, lowest
    total = sum(len(g.units) for g in free)
    ratio = 1.0 - sum(counts[g.id] for g in free) / total if total else 0.0
    details = {"predicted_ms": round(predicted, 4), "original_ms": round(table.model_ms, 4)}
    details["wanted_ms"] = round(wanted_ms, 4)
    return TargetResult(
        "latency",
        wanted_ms / table.model_ms,
        predicted / table.model_ms,
        ratio,
        counts,
        abs(predicted - wanted_ms) <= LATENCY_TOLERANCE * wanted_ms,
        "predicted from the latency table",
        "latency",
        details,
    )


def _solve(model: LatencyModel, free: Sequence[Group], everyone: Sequence[Group], grid: Mapping[int, list[int]],
           fixed: Mapping[int, int], ranking: Ranking, table: LatencyTable,
           wanted_ms: float) -> tuple[float, dict[int, int] | None]:  # fmt: skip
    """Knapsack with the corrections of the last answer, until the answer repeats; the best answer that fits
    the budget (most importance kept), else the one predicted fastest."""
    counts = {**{g.id: len(g.units) for g in free}, **fixed}
    seen, best = set(), None
    for _ in range(8):
        shares = model.shares(counts)
        need = (
            table.model_ms
            - wanted_ms
            - sum(table.groups[g.name].saved(k) * shares[g.id] for g in everyone if (k := fixed.get(g.id)) is not None)
        )
        chosen = knapsack([_row(g, grid[g.id], table, shares[g.id], ranking) for g in free], need)
        if chosen is None:
            break
        counts = {**{g.id: grid[g.id][j] for g, j in zip(free, chosen)}, **fixed}
        predicted, kept = model.predict(counts), ranking.kept_importance(counts)
        fits = predicted <= wanted_ms * (1 + 1e-6)
        if best is None or (fits, kept if fits else -predicted) > (best[0], best[1] if best[0] else -best[2]):
            best = (fits, kept, predicted, counts)
        key = tuple(sorted(counts.items()))
        if key in seen:
            break
        seen.add(key)
    return (best[2], best[3]) if best else (0.0, None)


def _options(group: Group, table: LatencyTable, round_to: int, max_layer_ratio: float | None) -> list[int]:
    """The timed widths the solver may choose for ``group`` (widest first), within its floor and rounding."""
    lowest, step, n = floor_of(group, round_to, max_layer_ratio), step_of(group, round_to), len(group.units)
    timed = table.groups[group.name].widths
    ok = sorted({w for w in timed if lowest <= w <= n and (w == n or w % step == 0 or n <= step)} | {n}, reverse=True)
    return ok if ok[-1] <= lowest or lowest in timed else ok + [lowest]


def _row(
    group: Group, widths: list[int], table: LatencyTable, share: float, ranking: Ranking
) -> list[tuple[float, float]]:
    prefix = ranking.prefix(group.id)
    timing = table.groups[group.name]
    return [(timing.saved(w) * share, float(prefix[-1] - prefix[w])) for w in widths]
