"""Deciding: which units of each group stay (ranked by a criterion, counted by the allocation), or why a group is
left whole. The decisions are what :func:`slimnet.plan.build_plan` turns into the plain plan; this module reads
the model's tensors (through :mod:`slimnet.rank`) and names (``--ignore``), never cuts it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import SlimnetError
from ..groups import Analysis, Group
from ..rank.criteria import score
from ..rank.ranking import Ranking
from ..rank.statistics import Statistics
from ..settings import DEFAULT_MAX_LAYER_RATIO, DEFAULT_ROUND_TO, check_settings
from . import allocate, resolve_ratios
from .latency import LatencyTable
from .targets import TargetResult


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
    check: bool = True,
) -> tuple[list[Decision], TargetResult | None]:
    """Rank every prunable group's units and choose which ones stay. Groups of whole attention heads drop
    ``head_ratio`` of their heads when it is given, else ``ratio`` like every other group; ``ratios`` (group name
    or glob -> share) fixes the share of the groups it names. With a ``target`` (``("macs", 0.5)``: half the MACs;
    ``("params", F)``; ``("latency", F)`` with a ``table``) or ``use_global`` the counts come from
    :func:`slimnet.allocate.allocate`, whose result (what was reached) is returned beside the decisions.
    ``ranking``: the ranking of this model's groups by this criterion, when the caller has it already;
    ``stats``: what the data-driven criteria read (:mod:`slimnet.rank.statistics`); ``sensitivity``: a
    :mod:`slimnet.sensitivity.analysis` result, whose loss curves allocate a MACs or parameters target
    (:mod:`slimnet.allocate.sensitivity`). ``check=False`` where the settings are a checked
    :class:`slimnet.settings.ShrinkSettings` already (the planner's case)."""
    if check:
        check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    decisions = left_whole(analysis, model, ignore, prune_norm)
    prunable = [d.group for d in decisions if d.reason is None]
    left = {d.group.name: d.reason for d in decisions if d.reason is not None}
    pinned = resolve_ratios(ratios, analysis.groups, left) if ratios else {}
    ranking = ranking if ranking is not None else rank(prunable, model, criterion, seed, stats)
    if target is not None and target[0] == "latency":
        if table is None:
            raise SlimnetError("a latency target needs a latency table (slimnet.measure.lut.table_for)")
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
