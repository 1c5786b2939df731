"""Pruning schedules: how much of the way to the target each cut of a gradual prune goes.

A schedule of ``steps`` cuts places cut ``k`` (1-based) at training step ``start + (k - 1) * every`` and gives it
a *level*: the fraction of the target quantity removed after that cut (the channel ratio for ``ratio=``; the
fraction of the original's MACs or parameters removed for ``target_macs=`` / ``target_params=``, so that
``target_macs=0.5`` is level 0.5). The last cut always reaches the final level; the schedules differ in how fast
they get there:

* ``agp``, the automated gradual pruner of Zhu and Gupta (2017), used by TensorFlow's model_pruning and
  Distiller: ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3`` with ``n = steps`` and ``dt = every``. Its
  origin ``t0`` lies one interval before the first cut (``t0 = start - every``), so that the first cut already
  removes something and the ``n``-th reaches ``s_f``: large cuts early, while the network still has redundancy
  to spare, and ever smaller ones as it approaches the target.
* ``exponential``, NNCF's: the kept fraction decays geometrically, ``1 - s_k = (1 - s_i) ((1 - s_f) /
  (1 - s_i))^(k / n)``, i.e. NNCF's ``P = 1 - a exp(-k e)`` fitted through ``(0, s_i)`` and ``(n, s_f)``: every cut
  removes the same share of what is left.
* ``linear``: ``s_k = s_i + (s_f - s_i) k / n``.
* ``one-shot``: a single cut at ``start`` to the final level (``steps`` and ``every`` are ignored).

``initial`` (``s_i``) is the level the schedule starts from, 0 by default: slimnet prunes a dense network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..allocate import check_target
from ..errors import SlimnetError
from ..settings import check_ratio

SCHEDULES = ("agp", "exponential", "linear", "one-shot")


def agp(t: float, t0: float, n: int, dt: float, final: float, initial: float = 0.0) -> float:
    """Zhu and Gupta's cubic, literally: the level at step ``t`` of a schedule that starts at ``t0`` with
    ``initial`` and reaches ``final`` after ``n`` intervals of ``dt`` steps (clamped outside that span)."""
    progress = min(1.0, max(0.0, (t - t0) / (n * dt)))
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclass(frozen=True)
class Schedule:
    """When the cuts happen and how far each goes (see the module docstring)."""

    kind: str = "agp"
    steps: int = 5
    start: int = 0
    every: int = 100
    initial: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise SlimnetError(f"unknown schedule {self.kind!r}: choose one of {', '.join(SCHEDULES)}")
        if self.kind == "one-shot":
            object.__setattr__(self, "steps", 1)
        if self.steps < 1:
            raise SlimnetError(f"schedule steps={self.steps}: give the number of cuts, at least 1")
        if self.every < 1:
            raise SlimnetError(f"schedule every={self.every}: give the training steps between cuts, at least 1")
        if self.start < 0:
            raise SlimnetError(f"schedule start={self.start}: give the training step of the first cut, 0 or more")
        if not (0.0 <= self.initial < 1.0) or math.isnan(self.initial):
            raise SlimnetError(f"schedule initial={self.initial}: give a level 0 <= s_i < 1")

    @property
    def cut_steps(self) -> list[int]:
        """The training step of each cut."""
        return [self.start + k * self.every for k in range(self.steps)]

    @property
    def end(self) -> int:
        """The step of the last cut."""
        return self.cut_steps[-1]

    def level(self, k: int, final: float) -> float:
        """The level after cut ``k`` (1-based) of a schedule that ends at ``final``; cut 0 is the start."""
        if not 0 <= k <= self.steps:
            raise SlimnetError(f"cut {k} is outside this schedule of {self.steps} cuts")
        if k == 0 or final <= self.initial:
            return self.initial if k == 0 else max(final, self.initial)
        n, s_i = self.steps, self.initial
        if self.kind == "agp":
            t = self.start + (k - 1) * self.every
            return agp(t, self.start - self.every, n, self.every, final, s_i)
        if self.kind == "exponential":
            return 1.0 - (1.0 - s_i) * ((1.0 - final) / (1.0 - s_i)) ** (k / n)
        if self.kind == "linear":
            return s_i + (final - s_i) * k / n
        return final  # one-shot

    def levels(self, final: float) -> list[float]:
        """The level after each cut."""
        return [self.level(k, final) for k in range(1, self.steps + 1)]

    def due(self, step: int, done: int) -> int:
        """How many cuts should have happened by training step ``step`` (at least ``done``)."""
        return max(done, sum(1 for s in self.cut_steps if s <= step))

    def describe(self) -> dict[str, Any]:
        return asdict(self)


def goal(ratio: float | None, target_macs: float | None, target_params: float | None) -> tuple[str, float]:
    """Which quantity the schedule drives, and its final level (the fraction of it removed)."""
    given = [(k, v) for k, v in (("ratio", ratio), ("macs", target_macs), ("params", target_params)) if v is not None]
    if len(given) != 1:
        raise SlimnetError("give one of ratio=, target_macs= or target_params= (the end point of the schedule)")
    kind, value = given[0]
    if kind == "ratio":
        check_ratio(value, "ratio")
        return kind, float(value)
    check_target(kind, value)
    return kind, 1.0 - float(value)
