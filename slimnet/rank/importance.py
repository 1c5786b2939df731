"""Scores for the cuts of a training loop (:class:`slimnet.train.pruner.Pruner`): one score per surviving unit of each
group of the current model, higher = more important, combined over a group's parameter members with the same
per-member normalisation as :mod:`slimnet.rank.criteria`.

* The magnitude criteria (``l1``, ``l2``, ``fpgm``, ``random``, ``bn-scale``) read the current weights at the
  cut: the weights are their evidence, and they already integrate the training since the last cut.
* ``taylor`` reads the training loop's own gradients: the first-order Taylor importance ``|w * dL/dw|`` of every
  element of every parameter member, summed over the optimizer steps of a window before each cut (by default
  every step since the previous cut) and divided by their number. One batch's gradient is noise; its average
  over many steps is the estimate that HALP (Shen et al., 2022) and Torch-Pruning's Taylor importance rank by.
  The sums restart after every cut (the widths changed) and travel in the pruner's checkpoint.

Criteria that need calibration data (``data=``: activations, APoZ, Wanda, Taylor on held-out batches) plug in as
one more :class:`Scorer`: ``observe`` collects and accumulates, ``scores`` ranks one group, ``reset`` restarts
after a cut. :func:`make_scorer` is where they are chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import SlimnetError
from ..groups import Group
from ..settings import CRITERIA
from .criteria import score

#: Criteria a :class:`slimnet.train.pruner.Pruner` accepts: the magnitude criteria and the loop's own Taylor.
LOOP_CRITERIA = (*CRITERIA, "taylor")


class Scorer(Protocol):
    """How a pruner ranks the surviving units of a group at a cut."""

    def observe(self, model: nn.Module) -> None: ...

    def scores(self, group: Group, tensors: Mapping[str, torch.Tensor], params: set[str]) -> np.ndarray: ...

    def reset(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Magnitude:
    """A criterion of :mod:`slimnet.rank.criteria`, on the current weights at the cut."""

    watches_gradients = False

    def __init__(self, criterion: str, seed: int = 0) -> None:
        self.criterion, self.seed = criterion, seed

    def observe(self, model: nn.Module) -> None:
        """Nothing to gather between cuts."""

    def scores(self, group: Group, tensors: Mapping[str, torch.Tensor], params: set[str]) -> np.ndarray:
        return score(group, tensors, params, self.criterion, self.seed)[0]

    def reset(self) -> None:
        """Nothing gathered."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


class GradientTaylor:
    """``|w * dL/dw|`` per element, averaged over the optimizer steps observed since the last cut."""

    watches_gradients = True

    def __init__(self, names: set[str]) -> None:
        self.names = names  # the parameter members of prunable groups
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def observe(self, model: nn.Module) -> None:
        """Add this step's importance (call it after ``backward`` and before ``zero_grad``)."""
        seen = False
        for name, p in model.named_parameters():
            if name not in self.names or p.grad is None:
                continue
            value = (p.detach() * p.grad.detach()).abs().float()
            acc = self.sums.get(name)
            self.sums[name] = value if acc is None or acc.shape != value.shape else acc + value
            seen = True
        self.count += int(seen)

    def scores(self, group: Group, tensors: Mapping[str, torch.Tensor], params: set[str]) -> np.ndarray:
        if not self.count:
            raise SlimnetError(
                "criterion taylor ranks by the training gradients and saw none since the last cut: pass "
                "optimizer= to pruner.step (its steps are watched) or call pruner.observe() after loss.backward()"
            )
        total = np.zeros(len(group.units))
        for name, dim in group.members:
            imp = self.sums.get(name)
            if name not in params or imp is None or tuple(imp.shape) != tuple(tensors[name].shape):
                continue
            per_index = imp.double().movedim(dim, 0).reshape(imp.shape[dim], -1).sum(1).cpu()
            raw = np.array([float(per_index[torch.as_tensor(u.members[(name, dim)])].sum()) for u in group.units])
            s = float(raw.sum())
            total += raw / s if s > 0 else raw
        return total / self.count

    def reset(self) -> None:
        self.sums, self.count = {}, 0

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sums": {k: v.clone() for k, v in self.sums.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state.get("count", 0))
        self.sums = {k: v.clone() for k, v in state.get("sums", {}).items()}


def make_scorer(criterion: str, members: set[str], seed: int = 0, data: Any = None) -> Magnitude | GradientTaylor:
    """The scorer of ``criterion`` (``members``: the parameter members of prunable groups)."""
    if criterion not in LOOP_CRITERIA:
        raise SlimnetError(f"unknown criterion {criterion!r}: choose one of {', '.join(LOOP_CRITERIA)}")
    if data is not None:
        raise SlimnetError(
            "data= (calibration-data criteria: activation, apoz, wanda, taylor on held-out batches) is not in this "
            "version of slimnet yet; in a training loop, criterion='taylor' ranks by the training gradients"
        )
    if criterion == "taylor":
        return GradientTaylor(members)
    return Magnitude(criterion, seed)
