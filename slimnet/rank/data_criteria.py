"""Data-driven criteria: one score per unit from calibration statistics (:mod:`slimnet.rank.statistics`), combined over
a group's members exactly like the magnitude criteria (:mod:`slimnet.rank.criteria`): each parameter member gives a
raw per-unit score, divided by its sum over the group's units, and the normalised scores are summed.

* ``taylor``: per-element importance ``|w * dL/dw|`` (or the Fisher-style squared term for models that are not
  classifiers; see :mod:`slimnet.rank.statistics`) summed over the unit's slices of every parameter member.
* ``activation``: mean ``|x|`` of the unit's channels, as Minitron ranks width: the consumer's input for an
  ``"in"`` member (what the next layer actually reads), the owning module's output for the others.
* ``apoz``: 1 - the average percentage of zeros (non-positive values) of the unit's channels *after* the
  activation, i.e. at the input of the consumers (Hu et al., 2016): a unit that is almost always off goes first.
  Only ``"in"`` members see post-activation values; a group without one falls back to ``activation``.
* ``wanda``: ``|W| * ||X_j||`` (the weight times the L2 norm of the input channel it multiplies, over all
  calibration values), summed over the unit's slices of every weight member: the structured variant that FLAP
  uses as its baseline. Biases and norm scales multiply no input, so they do not vote.

A member whose module was never called as a module (a weight used by a functional call) has no statistics and
does not vote; a group where no member has any, or whose scores are all zero (its units never reach the output
on this data), falls back to ``l1``, which the decision records. Statistics that are zero everywhere, or not
finite, are refused with one line: ranking on them would prune by position.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import SlimnetError
from ..groups import Group, Member
from .statistics import Statistics, owner

#: What each criterion of :data:`slimnet.settings.DATA_CRITERIA` reads: "activations" or "gradients".
NEEDS: dict[str, str] = {
    "taylor": "gradients",
    "activation": "activations",
    "apoz": "activations",
    "wanda": "activations",
}


def _unit_sums(values: torch.Tensor, dim: int, group: Group, member: Member) -> np.ndarray | None:
    """Each unit's sum of ``values`` over its indices along ``dim`` (None when the sizes do not match)."""
    if dim >= values.dim():
        return None
    size = values.shape[dim]
    per_index = values.double().movedim(dim, 0).reshape(size, -1).sum(1)
    idx = [u.members[member] for u in group.units]
    if max(max(i) for i in idx) >= size:
        return None
    return np.array([float(per_index[torch.as_tensor(i)].sum()) for i in idx])


def _channel_values(stats: Statistics, group: Group, member: Member, criterion: str) -> torch.Tensor | None:
    name, _ = member
    role = group.roles.get(member, "")
    if criterion == "apoz":
        s = stats.inputs.get(owner(name)) if role == "in" else None
        return None if s is None else s.active
    s = (stats.inputs if role == "in" else stats.outputs).get(owner(name))
    return None if s is None else s.mean_abs


def _raw(
    group: Group, member: Member, tensors: Mapping[str, torch.Tensor], stats: Statistics, criterion: str
) -> np.ndarray | None:
    """One member's raw per-unit scores, or None when it has no statistics."""
    name, dim = member
    if criterion == "taylor":
        imp = stats.importance.get(name)
        return None if imp is None else _unit_sums(imp, dim, group, member)
    if criterion == "wanda":
        scale = stats.input_scale.get(name)
        if scale is None:
            return None
        return _unit_sums(tensors[name].detach().abs().double() * scale.double(), dim, group, member)
    values = _channel_values(stats, group, member, criterion)
    if values is None or values.dim() != 1:
        return None
    return _unit_sums(values, 0, group, member)


def data_score(
    group: Group, tensors: Mapping[str, torch.Tensor], params: set[str], criterion: str, stats: Statistics
) -> tuple[np.ndarray, str] | None:
    """Scores per unit (higher = more important) and the criterion used, or None when no member of the group
    has statistics or all its scores are zero (the caller then falls back to ``l1``: ranking on zeros would
    prune by position). Non-finite scores are refused. Statistics that are zero for *every* group (a loss
    without gradient, such as the distance to the original's own output) are refused before any ranking
    (:func:`check_statistics`)."""
    members = [m for m in group.members if m[0] in params]
    total, used = _total(group, members, tensors, stats, criterion)
    if used is None and criterion == "apoz":
        total, used = _total(group, members, tensors, stats, "activation")
    if used is None:
        return None
    if not np.isfinite(total).all():
        raise SlimnetError(
            f"criterion {criterion} gave non-finite scores in group {group.name}: the calibration data or the "
            "loss holds inf/NaN"
        )
    if not (total != 0).any():
        return None  # the group does not reach the output on this data: ranked by l1, and the decision says so
    return total, used


def _total(
    group: Group, members: list[Member], tensors: Mapping[str, torch.Tensor], stats: Statistics, criterion: str
) -> tuple[np.ndarray, str | None]:
    total = np.zeros(len(group.units))
    voted = False
    for member in members:
        raw = _raw(group, member, tensors, stats, criterion)
        if raw is None:
            continue
        if not np.isfinite(raw).all():
            total = total + raw  # propagates, so that the caller refuses it with the group's name
            voted = True
            continue
        s = float(np.abs(raw).sum())
        total = total + (raw / s if s > 0 else raw)
        voted = True
    return total, (criterion if voted else None)


def check_statistics(stats: Statistics, criterion: str) -> None:
    """Refuse statistics that cannot rank anything: all zero (for taylor: a loss whose gradient is zero, such as
    the distance to the original's output before any cut) or holding inf/NaN."""
    if NEEDS[criterion] == "gradients":
        tensors = list(stats.importance.values())
        why = "the loss has no gradient with respect to any prunable parameter"
    else:
        tensors = [s.abs_sum for s in (*stats.inputs.values(), *stats.outputs.values())]
        why = "every hooked activation is zero on the calibration data"
    if not tensors:
        return
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise SlimnetError(
            f"criterion {criterion} gave non-finite scores: the calibration data or the loss holds inf/NaN"
        )
    if not any(bool((t != 0).any()) for t in tensors):
        raise SlimnetError(
            f"criterion {criterion} scores every unit zero ({why}); ranking would prune by position: use other "
            "data, another loss or another criterion"
        )
