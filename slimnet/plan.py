"""The plan: which indices of which state_dict tensors survive. Plain data, the boundary between choosing
(criteria, allocation) and cutting (the surgeon).

Format ``slimnet.plan/1``::

    {"format": "slimnet.plan/1", "model": "...", "criterion": "fpgm", "ratio": 0.5,
     "tensors": {"layer1.0.conv1.weight": {"0": [0, 3, 4, ...]}, ...}}

Keys are the original model's ``state_dict()`` names; only tensors whose shape changes are listed; each changed
dim (a string) maps to the ascending indices it keeps. Extra fields (``round_to``, ``seed``, ``version``,
``groups``) may be added; readers ignore what they do not know.

Rounding (``--round-to N``, default 8): a group of ``n`` units keeps ``round(n * (1 - ratio))`` units, rounded
to the nearest multiple of N (halves up), and never fewer than N. Groups of at most N units cannot be rounded
meaningfully; they keep ``round(n * (1 - ratio))`` units, at least one. A unit of several channels (a group of
a grouped conv, a PixelShuffle block) counts its channels: the multiple is taken over channels.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from . import __version__
from ._util import write_atomic
from .allocate import LatencyTable, Ranking, TargetResult, allocate, resolve_ratios
from .collect import Statistics
from .criteria import score
from .errors import SlimnetError
from .groups import Analysis, Group
from .settings import DEFAULT_MAX_LAYER_RATIO, DEFAULT_ROUND_TO, check_settings
from .settings import plan_path_for as plan_path_for  # re-exported: the plan file's place is part of the format

FORMAT = "slimnet.plan/1"


@dataclass
class Decision:
    """What happened to one group: kept units, or the reason it was left whole."""

    group: Group
    keep: list[int] = field(default_factory=list)  # unit positions kept (ascending)
    reason: str | None = None
    criterion: str = ""

    @property
    def pruned(self) -> bool:
        return self.reason is None and len(self.keep) < len(self.group.units)


def resolve_ignore(model: nn.Module, patterns: list[str]) -> set[str]:
    """Module names matched by the --ignore globs; a pattern that matches nothing is an error."""
    names = [n for n, _ in model.named_modules() if n]
    matched: set[str] = set()
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            sample = ", ".join(names[:6])
            raise SlimnetError(f"--ignore {pat!r} matches no module (module names look like: {sample}, ...)")
        matched.update(hits)
    return matched


def _module_of(tensor: str) -> str:
    return tensor.rsplit(".", 1)[0] if "." in tensor else ""


def decide(analysis: Analysis, model: nn.Module, **settings: Any) -> list[Decision]:
    """Rank every prunable group's units and choose which ones stay (:func:`choose` without what its target or
    global ranking reached)."""
    return choose(analysis, model, **settings)[0]


def choose(
    analysis: Analysis,
    model: nn.Module,
    *,
    ratio: float,
    criterion: str,
    round_to: int = DEFAULT_ROUND_TO,
    ignore: list[str] | None = None,
    seed: int = 0,
    prune_norm: bool = False,
    head_ratio: float | None = None,
    target: tuple[str, float] | None = None,
    use_global: bool = False,
    max_layer_ratio: float | None = DEFAULT_MAX_LAYER_RATIO,
    ratios: Mapping[str, float] | None = None,
    table: LatencyTable | None = None,
    ranking: Ranking | None = None,
    stats: Statistics | None = None,
    sensitivity: Mapping[str, Any] | None = None,
) -> tuple[list[Decision], TargetResult | None]:
    """Rank every prunable group's units and choose which ones stay. Groups of whole attention heads drop
    ``head_ratio`` of their heads when it is given, else ``ratio`` like every other group; ``ratios`` (group name
    or glob -> share) fixes the share of the groups it names. With a ``target`` (``("macs", 0.5)``: half the MACs;
    ``("params", F)``; ``("latency", F)`` with a ``table``) or ``use_global`` the counts come from
    :func:`slimnet.allocate.allocate`, whose result (what was reached) is returned beside the decisions.
    ``ranking``: the ranking of this model's groups by this criterion, when the caller has it already;
    ``stats``: what the data-driven criteria read (:mod:`slimnet.collect`); ``sensitivity``: a
    :mod:`slimnet.sensitivity` result, whose loss curves allocate a MACs or parameters target
    (:mod:`slimnet.allocate.sensitivity`)."""
    check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    decisions = left_whole(analysis, model, ignore, prune_norm)
    prunable = [d.group for d in decisions if d.reason is None]
    left = {d.group.name: d.reason for d in decisions if d.reason is not None}
    pinned = resolve_ratios(ratios, analysis.groups, left) if ratios else {}
    ranking = ranking if ranking is not None else rank(prunable, model, criterion, seed, stats)
    if target is not None and target[0] == "latency":
        if table is None:
            raise SlimnetError("a latency target needs a latency table (slimnet.lut.table_for)")
        target = ("latency", target[1] * table.model_ms)
    counts, result = allocate(
        analysis,
        prunable,
        ranking,
        ratio=ratio,
        round_to=round_to,
        head_ratio=head_ratio,
        ratios=pinned,
        target=target,
        use_global=use_global,
        max_layer_ratio=max_layer_ratio,
        table=table,
        sensitivity=sensitivity,
    )
    for d in decisions:
        if d.reason is None:
            d.keep = sorted(int(i) for i in ranking.orders[d.group.id][: counts[d.group.id]])
            d.criterion = ranking.used.get(d.group.id, criterion)
    return decisions, result


def left_whole(analysis: Analysis, model: nn.Module, ignore: list[str] | None, prune_norm: bool) -> list[Decision]:
    """One decision per group: those left whole say why (and keep every unit); the others are to be ranked."""
    ignored = resolve_ignore(model, ignore or [])
    decisions = []
    for g in analysis.groups:
        d = Decision(group=g)
        hit = sorted({_module_of(t) for t, _ in g.members if _module_of(t) in ignored})
        if g.reason is not None:
            d.reason = g.reason
        elif hit:
            d.reason = f"ignored by --ignore ({hit[0]})"
        elif g.normalised and not prune_norm:
            d.reason = f"{g.normalised}: pruning changes kept values (use --prune-norm to allow)"
        if d.reason is not None:
            d.keep = list(range(len(g.units)))
        decisions.append(d)
    return decisions


def rank(
    groups: list[Group], model: nn.Module, criterion: str, seed: int = 0, stats: Statistics | None = None
) -> Ranking:
    """Each group's unit positions, most important first (ties keep the earlier unit), with their scores
    normalised across groups and the criterion used per group (:class:`slimnet.allocate.Ranking`)."""
    tensors = model.state_dict()
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    raw, used = {}, {}
    # every weight dim a group will read: a weight's sums along both dims are then made in one visit
    cache: dict = {"wanted": {(id(tensors[n]), d) for g in groups for n, d in g.members if n in tensors}}
    for g in groups:
        raw[g.id], used[g.id] = score(g, tensors, params, criterion, seed, stats, cache=cache)
    return Ranking.from_scores(raw, used)


def build_plan(
    analysis: Analysis,
    decisions: list[Decision],
    *,
    model_name: str,
    criterion: str,
    ratio: float,
    round_to: int,
    seed: int,
    head_ratio: float | None = None,
) -> dict[str, Any]:
    """Turn decisions into the plain ``slimnet.plan/1`` data."""
    dropped: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for d in decisions:
        if not d.pruned:
            continue
        gone = np.ones(len(d.group.units), dtype=bool)
        gone[d.keep] = False
        for member in d.group.members:
            flat, starts = d.group.member_index(member)
            owner = np.repeat(np.arange(len(gone)), np.diff(starts))  # the unit of each index in ``flat``
            dropped[member].append(flat[gone[owner]])
    tensors: dict[str, dict[str, list[int]]] = {}
    for (name, dim), drop in sorted(dropped.items()):
        mask = np.ones(analysis.shapes[name][dim], dtype=bool)
        mask[np.concatenate(drop)] = False
        kept = np.flatnonzero(mask).tolist()
        for alias in analysis.aliases.get(name, [name]):
            tensors.setdefault(alias, {})[str(dim)] = kept
    extra = {"head_ratio": head_ratio} if head_ratio is not None else {}
    return {
        "format": FORMAT,
        "model": model_name,
        "criterion": criterion,
        "ratio": ratio,
        **extra,
        "round_to": round_to,
        "seed": seed,
        "version": __version__,
        "tensors": {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in sorted(tensors.items())},
    }


def dumps(plan: dict[str, Any]) -> str:
    """Deterministic text, one tensor per line: the same plan is always the same bytes, and diffs read well."""
    head = {k: v for k, v in plan.items() if k != "tensors"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f" {json.dumps(k)}: {json.dumps(v)},")
    lines.append(' "tensors": {')
    items = list(plan.get("tensors", {}).items())
    for i, (name, dims) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"  {json.dumps(name)}: {json.dumps(dims, separators=(', ', ': '))}{comma}")
    lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save(plan: dict[str, Any], path: str | os.PathLike[str]) -> None:
    write_atomic(Path(path), dumps(plan).encode())


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"plan {path} does not exist")
    try:
        plan = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimnetError(f"plan {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    validate(plan, str(path))
    return plan


def validate(plan: Any, where: str = "plan") -> None:
    """Check the structure of a plan (not yet whether it fits a model: the surgeon checks that)."""
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise SlimnetError(f"{where} is not a {FORMAT} plan (its 'format' field is missing or different)")
    tensors = plan.get("tensors")
    if not isinstance(tensors, dict):
        raise SlimnetError(f"{where} has no 'tensors' mapping")
    for name, dims in tensors.items():
        if not isinstance(dims, dict):
            raise SlimnetError(f"{where}: entry {name!r} must map dims to index lists")
        for dim, idx in dims.items():
            if not str(dim).isdigit() or not isinstance(idx, list) or not all(isinstance(i, int) for i in idx):
                raise SlimnetError(f"{where}: entry {name!r} dim {dim!r} must be a list of ints")
            if idx != sorted(set(idx)) or not idx:
                raise SlimnetError(f"{where}: entry {name!r} dim {dim} must list ascending, distinct indices")
