"""Scores made comparable across groups.

A criterion (:mod:`slimnet.rank.criteria`) scores a group's units member by member: each parameter tensor the group
lives in gives its units scores that sum to 1 over the group, and a unit's score is the sum over the tensors. So
every tensor carries the same total importance, 1, shared among the units that own slices of it, and a unit's
score is *the share of the model's tensors it removes*: comparable across groups as it stands. A unit of a
24-channel residual stream of MobileNetV2 that lives in eight tensors scores about 8/24; a unit of a 960-wide
expansion that lives in seven, about 7/960. ResNet-50's inner and stream groups come out even (about 4/64 and
16/256 in its first stage).

The alternative, dividing each group's scores by their mean (DepGraph's "mean" normaliser), makes every unit of
every group average 1 whatever its width; a global ranking then strips narrow groups first, which are the
residual streams and the cheapest units per MAC. Measured on mobilenet_v2 at half the MACs it kept every
expansion whole and cut every stream to its floor, and the latency-targeted plans it gave ran *slower* than
uniform ones with the same MACs (depthwise convolutions, kept whole, cost time but few MACs). Tensor shares are
therefore what the global and latency allocations rank by, and "importance kept" (the sum of kept units' scores
over the sum of all, :meth:`Ranking.kept_importance`) is what every allocation is compared by.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


def normalised(raw: np.ndarray) -> np.ndarray:
    """The criterion's scores as they are (tensor shares), negatives clipped to 0; a group whose scores are all
    zero or not finite gets equal scores of 1 / n (one tensor's worth, shared evenly)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.size and (not np.all(np.isfinite(raw)) or float(np.clip(raw, 0.0, None).sum()) <= 0):
        return np.full_like(raw, 1.0 / raw.size)
    return np.clip(raw, 0.0, None)


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
