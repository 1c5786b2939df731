"""Importance criteria: one score per unit of a group, computed from tensors only (never from modules).

How a unit's score combines the members of its group: for every member that is a *parameter* (weights and
biases; buffers such as BN running statistics are not evidence of importance), the criterion gives each unit
a raw score from that member's slices. Each member's scores are divided by their sum over the group's units,
so that a 3x3x512 conv and a 64-entry bias weigh alike, and the normalised scores are summed over members.
The units with the lowest totals are dropped first.

* ``l1`` / ``l2``: the L1 / L2 norm of the unit's slices (He et al., Li et al.).
* ``fpgm``: the summed L2 distance of the unit's slice to every other unit's slice in the same member;
  near the geometric median means replaceable, so small goes first (He et al., CVPR 2019). Groups of more
  than 256 units sum over 256 evenly spaced anchor units instead of all (see FPGM_ANCHORS).
* ``random``: uniform scores from a generator seeded with ``seed`` and the group's id (reproducible).
* ``bn-scale``: |gamma| of the group's batch/group norm scales (Liu et al., network slimming); a group with
  no norm scale falls back to ``l1`` and says so.

The criteria that need calibration data (``taylor``, ``activation``, ``apoz``, ``wanda``) read statistics
collected beforehand (:mod:`slimnet.rank.statistics`) and are scored in :mod:`slimnet.rank.data_criteria`, with the same
per-member normalisation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from ..errors import SlimnetError
from ..groups import Group
from ..settings import CRITERIA as CRITERIA  # re-exported: the names live with the other settings
from ..settings import DATA_CRITERIA, check_criterion
from .data_criteria import data_score
from .statistics import Statistics

#: FPGM sums distances to every other unit; past this many units it sums over this many evenly spaced anchor
#: units instead (quadratic cost: AlexNet's 4096-unit FC group would otherwise take ~150 GFLOP to rank).
FPGM_ANCHORS = 256


def _slices(t: torch.Tensor, dim: int, group: Group, member: tuple[str, int]) -> torch.Tensor | list[torch.Tensor]:
    """Each unit's slices of one member, flattened: one ``[units, numel]`` matrix from one index_select when
    the units own equally many indices (nearly always), else one vector per unit."""
    flat, starts = group.member_index(member)
    sizes = np.diff(starts)
    t = t.detach()
    if len(sizes) and (sizes == sizes[0]).all():
        rows = t.index_select(dim, torch.from_numpy(flat)).movedim(dim, 0).reshape(len(sizes), -1)
        return rows.float()
    return [t.index_select(dim, torch.from_numpy(flat[a:b])).movedim(dim, 0).reshape(-1).float()
            for a, b in zip(starts[:-1], starts[1:])]  # fmt: skip


def _normalise(x: np.ndarray) -> np.ndarray:
    s = float(np.abs(x).sum())
    return x / s if s > 0 else np.zeros_like(x)


def _norms(t: torch.Tensor, dim: int, group: Group, member: tuple[str, int], p: int,
           cache: dict | None = None) -> np.ndarray:  # fmt: skip
    """The Lp norm of each unit's slices of one member: per-index sums of ``|x|^p`` over the tensor's other dims,
    summed over each unit's indices. A weight is read once for both of its channel dims: its ``|x|^p`` summed
    over the other dims into an [out, in] matrix, kept in ``cache`` for the group that asks for the other dim."""
    powered = _index_powers(t, dim, p, cache if cache is not None else {})
    flat, starts = group.member_index(member)
    sums = np.add.reduceat(powered[flat], starts[:-1]) if len(flat) else np.zeros(len(starts) - 1)
    sums[np.diff(starts) == 0] = 0.0
    return sums ** (1.0 / p)


def _index_powers(t: torch.Tensor, dim: int, p: int, cache: dict) -> np.ndarray:
    """Per index along ``dim``: the sum of ``|x|^p`` over the tensor's other dims, in float64. A weight's
    ``|x|^p``, summed over its kernel dims into an [out, in] matrix, is written into one scratch buffer reused
    for every weight (fresh memory for each was most of the cost: its page faults), and summed at once along
    each dim that a group will ask for (``cache["wanted"]``: (id of tensor, dim) pairs; without it, the dim
    asked); the sums are kept in ``cache`` for the group that asks for the other dim."""
    key = (id(t), p)
    t = t.detach()
    if t.dim() < 2 or dim > 1:
        other = [d for d in range(t.dim()) if d != dim]
        per_index = torch.linalg.vector_norm(t.float(), ord=p, dim=other) if other else t.float().abs()
        return per_index.double().numpy() ** p
    known = cache.get(key)
    if known is None or dim not in known[1]:
        wanted = cache.get("wanted")
        dims = [d for d in (0, 1) if d == dim or (wanted is not None and (key[0], d) in wanted)]
        pair = _pair_powers(t, p, cache).numpy()
        sums = {d: pair.sum(1 - d, dtype=np.float64) for d in dims}
        known = (t, {**(known[1] if known else {}), **sums})  # t kept: its id stays unique while the cache lives
        cache[key] = known
    return known[1][dim]


def _pair_powers(t: torch.Tensor, p: int, cache: dict) -> torch.Tensor:
    """``|x|^p`` of a weight summed over its kernel dims: an [out, in] matrix in the cache's scratch buffer
    (valid until the next call)."""
    rest = [d for d in range(2, t.dim()) if t.shape[d] != 1]
    flat = t.float().reshape(t.shape[0], t.shape[1], -1) if rest else t.float().reshape(t.shape[0], t.shape[1])
    n = t.shape[0] * t.shape[1]
    scratch = cache.get("scratch")
    if scratch is None or scratch.numel() < n:
        scratch = cache["scratch"] = torch.empty(n, dtype=torch.float32)
    out = scratch[:n].view(t.shape[0], t.shape[1])
    # |x|^p directly where each [out, in] entry is one element (linear layers, 1x1 convs: most of a
    # ResNet's weights): the same values as the norm's, without its square root
    if rest:
        torch.linalg.vector_norm(flat, ord=p, dim=2, out=out)
        return out.pow_(p) if p != 1 else out
    if p == 2:
        return torch.square(flat, out=out)
    torch.abs(flat, out=out)
    return out.pow_(p) if p != 1 else out


def _fpgm(vectors: torch.Tensor | list[torch.Tensor]) -> np.ndarray:
    if not isinstance(vectors, torch.Tensor):
        return np.array([float(torch.linalg.vector_norm(v)) for v in vectors])
    m = vectors
    anchors = m if len(m) <= FPGM_ANCHORS else m[torch.linspace(0, len(m) - 1, FPGM_ANCHORS).long()]
    sq, sa = (m * m).sum(1), (anchors * anchors).sum(1)
    d2 = (sq[:, None] + sa[None, :] - 2.0 * (m @ anchors.T)).clamp_min(0.0)
    return d2.sqrt().sum(1).double().numpy()


def score(
    group: Group,
    tensors: Mapping[str, torch.Tensor],
    params: set[str],
    criterion: str,
    seed: int = 0,
    stats: Statistics | None = None,
    cache: dict | None = None,
) -> tuple[np.ndarray, str]:
    """Scores per unit (higher = more important) and the criterion actually used. ``cache``: a dict shared by
    the calls for one model's groups (each weight is then read once for both of its channel dims)."""
    check_criterion(criterion)
    if criterion in DATA_CRITERIA:
        if stats is None:
            raise SlimnetError(f"criterion {criterion} looks at the data: give calibration data (--data)")
        found = data_score(group, tensors, params, criterion, stats)
        if found is not None:
            return found
        criterion = "l1"  # no member of this group was seen by a hook: fall back, and say so
    n = len(group.units)
    if criterion == "random":
        rng = np.random.default_rng([seed, group.id])
        return rng.random(n), criterion
    members = [m for m in group.members if m[0] in params]
    if criterion == "bn-scale":
        scales = [m for m in members if group.roles.get(m) == "norm_scale"]
        if scales:
            total = np.zeros(n)
            for name, dim in scales:
                total += _normalise(_norms(tensors[name], dim, group, (name, dim), 1, cache))
            return total, criterion
        criterion = "l1"
    total = np.zeros(n)
    for name, dim in members:
        if criterion in ("l1", "l2"):
            raw = _norms(tensors[name], dim, group, (name, dim), 1 if criterion == "l1" else 2, cache)
        else:
            raw = _fpgm(_slices(tensors[name], dim, group, (name, dim)))
        total += _normalise(raw)
    return total, criterion
