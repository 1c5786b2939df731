"""Scores made comparable across groups.

A criterion (:mod:`slimnet.criteria`) scores the units of one group against each other: each member's scores are
normalised to sum 1 over the group's units, so a group of 64 units has scores near 1/64 and one of 2048 near
1/2048, and raw scores cannot be compared across groups. The allocation therefore divides each group's scores by
their mean (DepGraph's "mean" normalisation): every group's units average 1, a unit at 2.0 is twice as important
as the average unit of its own group, and "importance kept" (the sum of kept units' normalised scores) is what
every allocation (uniform, global, latency) is compared by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def normalised(raw: np.ndarray) -> np.ndarray:
    """Scores divided by their mean (all ones when they are all zero or not finite)."""
    raw = np.asarray(raw, dtype=np.float64)
    mean = float(raw.mean()) if raw.size else 0.0
    if not np.isfinite(mean) or mean <= 0:
        return np.ones_like(raw)
    return np.clip(raw, 0.0, None) / mean


@dataclass
class Ranking:
    """Each ranked group's unit positions, most important first, and their normalised scores (by position)."""

    orders: dict[int, np.ndarray]
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    used: dict[int, str] = field(default_factory=dict)  # the criterion each group was ranked by

    @classmethod
    def from_scores(cls, raw: Mapping[int, np.ndarray], used: Mapping[int, str] | None = None) -> Ranking:
        """Orders by descending score (ties keep the earlier unit) and normalised scores."""
        orders = {gid: np.argsort(-np.asarray(s), kind="stable") for gid, s in raw.items()}
        return cls(orders, {gid: normalised(s) for gid, s in raw.items()}, dict(used or {}))

    def sorted_scores(self, gid: int) -> np.ndarray:
        """Normalised scores in rank order (most important first)."""
        order = self.orders[gid]
        scores = self.scores.get(gid)
        return np.ones(len(order)) if scores is None else scores[order]

    def prefix(self, gid: int) -> np.ndarray:
        """``prefix[k]``: the importance kept when the group keeps its ``k`` best units (``k = 0 .. n``)."""
        return np.concatenate([[0.0], np.cumsum(self.sorted_scores(gid))])

    def kept_importance(self, counts: Mapping[int, int]) -> float:
        """Sum of the normalised scores of the units kept by ``counts`` (group id -> units kept)."""
        return float(sum(self.prefix(gid)[k] for gid, k in counts.items() if gid in self.orders))
