"""From a model to its groups: :func:`analyse` traces and interprets, :func:`assemble` turns the interpreter's
:class:`~slimnet.groups.model.Evidence` into :class:`~slimnet.groups.model.Group` objects in named steps.

Assembly reads only the evidence (never the interpreter), so it can be tested on evidence built by hand:

1. :func:`merge_shared_bindings`: one physical slice bound to several atoms (a module called twice, a merged
   channel) makes them one unit;
2. :func:`bind_free_parameters`: a parameter that got one atom per element is bound along the one dim whose
   slices are each one unit, or else left whole;
3. :func:`channel_units` and :func:`~slimnet.groups.slots.unit_slots`: classes holding a produced channel are
   the units, and each owns the slices bound to it (:mod:`slimnet.groups.slots`);
4. :func:`frozen_marks` and :func:`first_reason_by_root`: the first poison, normalisation and note of each
   class (parameters read by an op with no rule poison every atom bound to them);
5. :func:`bucket_groups`: units with the same member slices form a group.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx, nn

from .. import cost
from ..errors import SlimnetError
from ..stages import Stages
from ..trace.reduced import RAN_EXAMPLE
from ..trace.symbolic import untouched
from ..trace.tracer import placeholder_args, trace, trace_pieces
from ..trace.values import TRACED
from .atoms import UnionFind
from .interpreter import AtomInterpreter, ShapesDiverged
from .model import Analysis, Binding, Evidence, Group, Mark, UnitList
from .registry import has_rule, is_leaf_class
from .slots import ByMember, Shapes, Slots, member_indices, unit_member_sets, unit_positions, unit_slots
from .taps import taps_of

SINGLE = "a single unit: nothing to choose from"
#: Why a piece's groups stay whole when it only got empty batches and could not be run on a filled one.
EMPTY = (
    "piece {path} only saw empty inputs (no detections on the example?) and does not run on a filled batch: "
    "its channels cannot be analysed"
)


def tensor_aliases(model: nn.Module) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Tied parameters (one tensor under several state_dict names) map to one canonical name."""
    canon: dict[int, str] = {}
    alias: dict[str, str] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        first = canon.setdefault(key, name)
        alias[name] = first
        groups[first].append(name)
    return alias, dict(groups)


def analyse(model: nn.Module, example: Any, gm: fx.GraphModule | None = None, stages: Stages | None = None) -> Analysis:
    """Trace (unless given) and interpret the model on atom ids; return its coupled channel groups.

    A model that cannot be traced whole is analysed piece by piece (:func:`slimnet.trace.tracer.trace_pieces`):
    the pieces' inputs and outputs stay whole, and the reason the whole model did not trace is kept in
    ``Analysis.notes``. With no prunable piece the tracing error is raised as it was. ``stages`` times the
    ``trace`` and ``groups`` stages."""
    with untouched(model):  # nothing a forward stores on itself while traced or run stays behind
        return _analyse(model, example, gm, stages or Stages())


def _analyse(model: nn.Module, example: Any, gm: fx.GraphModule | None, stages: Stages) -> Analysis:
    pieces, why = None, ""
    with stages("trace"):
        if gm is None:
            try:
                gm = trace(model, example, is_leaf=is_leaf_class, keep_wrapped=has_rule)
            except SlimnetError as exc:
                pieces, why = trace_pieces(model, example, is_leaf=is_leaf_class, keep_wrapped=has_rule), exc
    with stages("groups"):
        if pieces is not None:
            analysis = _analyse_pieces(model, pieces, str(why))
            if not any(g.prunable for g in analysis.groups):
                raise why
            return analysis
        inputs = gm.meta.get("inputs") or placeholder_args(gm, example)
        try:  # a graph traced with example values runs with its layers as shapes, checked node by node
            groups, macs = _analyse_graph(gm, inputs, shaped=bool(gm.meta.get(RAN_EXAMPLE) or gm.meta.get(TRACED)))
        except ShapesDiverged:
            groups, macs = _analyse_graph(gm, inputs, shaped=bool(gm.meta.get(RAN_EXAMPLE)))
        alias, alias_groups = tensor_aliases(model)
        analysis = Analysis(groups=groups, aliases=alias_groups, shapes=shapes_of(model), taps=taps_of(model, gm))
        analysis.cost = cost.build(model, groups, alias, macs)
    return analysis


def shapes_of(model: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _analyse_graph(gm: fx.GraphModule, inputs: list[Any], offset: int = 0, prefix: str = "",
                   shaped: bool = False) -> tuple[list[Group], list[cost.Resolved]]:  # fmt: skip
    """The groups of one graph, and its MAC terms over units numbered from ``offset``."""
    alias, _ = tensor_aliases(gm)
    evidence = AtomInterpreter(gm, alias, shaped=shaped).collect(*inputs)
    groups, roots = assemble_roots(evidence, shapes_of(gm))
    return groups, cost.resolve_part(evidence.costs, groups, roots, alias, offset, prefix)


def _analyse_pieces(model: nn.Module, pieces: list[tuple[str, fx.GraphModule]], why: str) -> Analysis:
    """Groups of every piece, renamed to the model's state_dict names. A tensor tied to one outside its piece
    (shared embeddings) is frozen: the other user was not traced with it."""
    alias, alias_groups = tensor_aliases(model)
    groups: list[Group] = []
    macs: list[cost.Resolved] = []
    whole = type(model).__name__
    for path, gm in pieces:

        def full(t: str, path: str = path) -> str:
            name = f"{path}.{t}"
            return alias.get(name, name)

        offset = sum(len(g.units) for g in groups)
        piece_groups, piece_macs = _analyse_graph(gm, gm.meta["inputs"], offset, path)
        macs += piece_macs
        for g in piece_groups:
            renamed = {(full(t), d): g.member_index((t, d)) for t, d in g.members}
            reason = g.reason
            if gm.meta.get("empty_inputs"):
                reason = EMPTY.format(path=path)
            elif reason and reason.startswith("model input"):
                reason = f"input of {path}, traced as a separate piece: made by {whole}'s code that did not trace"
            elif reason == "model output":
                reason = (
                    f"output of {path}, traced as a separate piece: read by {whole}'s code that did not trace, which "
                    "depends on its layout (a detection head's anchors x box and class channels, a feature width)"
                )
            for t, _ in g.members:
                outside = [a for a in alias_groups.get(full(t), []) if not a.startswith(f"{path}.")]
                if outside and reason is None:
                    reason = f"{full(t)} is tied to {outside[0]}, outside the traced piece {path}"
            groups.append(
                Group(
                    id=len(groups),
                    name=f"{path}.{g.name}",
                    reason=reason,
                    normalised=g.normalised,
                    members=[(full(t), d) for t, d in g.members],
                    units=UnitList(renamed, [u.root for u in g.units]),
                    index=renamed,
                    roles={(full(t), d): r for (t, d), r in g.roles.items()},
                    kind=g.kind,
                )
            )
    first = why.split(": torch.fx needs")[0]
    notes = [f"{first}; traced piece by piece instead ({len(pieces)} pieces), their inputs and outputs left whole"]
    analysis = Analysis(groups=groups, aliases=alias_groups, shapes=shapes_of(model), notes=notes)
    analysis.pieces = [path for path, _ in pieces]
    analysis.cost = cost.build(model, groups, alias, macs, complete=False)
    return analysis


# ------------------------------------------------------------------------------------------ assembly
@dataclass
class Marks:
    """What the marks say, by class root."""

    poison: dict[int, str]
    normed: dict[int, str]
    notes: dict[int, str]
    heads: set[int]


def assemble(evidence: Evidence, shapes: Shapes) -> list[Group]:
    """The groups that ``evidence`` describes; ``shapes`` (state_dict name -> shape) says which tensors exist.
    Reads ``evidence`` and never changes it."""
    return assemble_roots(evidence, shapes)[0]


def assemble_roots(evidence: Evidence, shapes: Shapes) -> tuple[list[Group], np.ndarray]:
    """:func:`assemble`, and the root of every atom after assembly's merges (what the cost terms need)."""
    uf = UnionFind(evidence.parents)
    by_member = merge_shared_bindings(evidence.bindings, uf)
    unsliceable = bind_free_parameters(evidence.param_ranges, uf, by_member)
    roots = uf.roots()
    unit_roots, producer_of = channel_units(evidence.channel_ranges, roots)
    slots = unit_slots(by_member, roots, unit_roots, shapes)
    frozen = frozen_marks(by_member, evidence.frozen)
    marks = Marks(
        poison=first_reason_by_root([*evidence.poison, *unsliceable, *frozen], roots),
        normed=first_reason_by_root(evidence.normed, roots),
        notes=first_reason_by_root([*evidence.notes, *unsliceable], roots),
        heads={int(roots[a]) for a in evidence.heads},
    )
    return bucket_groups(slots, producer_of, marks), roots


def merge_shared_bindings(bindings: list[Binding], uf: UnionFind) -> ByMember:
    """Every binding by tensor dim; where one dim is bound several times, the atoms bound to one slice are
    merged (a shared module, a merged channel: they go together)."""
    by_member: ByMember = defaultdict(list)
    for name, dim, atoms, role in bindings:
        by_member[(name, dim)].append((atoms, role))
    for entries in by_member.values():
        if len(entries) > 1:
            stacked = np.stack([a for a, _ in entries])
            for col in stacked.T:
                uf.union_all([a for a in col if a >= 0])
    return by_member


def bind_free_parameters(
    param_ranges: dict[str, tuple[int, tuple[int, ...]]], uf: UnionFind, by_member: ByMember
) -> list[Mark]:
    """Free parameters (layer scales, position embeddings) got one atom per element: each is bound along the
    first dim whose every slice is one class (added to ``by_member``). Returns the marks, one per class, of
    those that no dim fits: they cannot be sliced, so their classes are left whole."""
    roots = uf.roots()
    marks: list[Mark] = []
    for name, (start, shape) in param_ranges.items():
        cls = roots[start : start + int(np.prod(shape))].reshape(shape)
        found = next((d for d in range(len(shape)) if shape[d] > 1 and _constant_slices(cls, d)), None)
        if found is None:
            marks += [(int(a), f"parameter {name} cannot be sliced along one dim") for a in np.unique(cls)]
        else:
            rows = np.moveaxis(cls, found, 0).reshape(shape[found], -1)
            by_member[(name, found)].append((rows[:, 0].copy(), ""))
    return marks


def _constant_slices(cls: np.ndarray, d: int) -> bool:
    rows = np.moveaxis(cls, d, 0).reshape(cls.shape[d], -1)
    return bool((rows == rows[:, :1]).all())


def channel_units(channel_ranges: list[tuple[int, int, str]], roots: np.ndarray) -> tuple[set[int], dict[int, str]]:
    """The classes that hold a produced channel (the units), and the first producer of each class."""
    first_range = np.full(len(roots), len(channel_ranges), dtype=np.int64)
    if channel_ranges:  # ranges in order: a class's first range wins (one unique over every range's atoms)
        atoms = np.concatenate([np.arange(start, start + n, dtype=np.int64) for start, n, _ in channel_ranges])
        ranges = np.repeat(np.arange(len(channel_ranges)), [n for _, n, _ in channel_ranges])
        classes, first = np.unique(roots[atoms], return_index=True)
        first_range[classes] = ranges[first]
    unit_roots = np.flatnonzero(first_range < len(channel_ranges))
    producer_of = dict(zip(unit_roots.tolist(), (channel_ranges[k][2] for k in first_range[unit_roots].tolist())))
    return set(unit_roots.tolist()), producer_of


def frozen_marks(by_member: ByMember, frozen: dict[str, str]) -> list[Mark]:
    """A parameter read by an op with no rule is frozen: every atom bound to it gets its reason."""
    return [
        (int(a), frozen[name])
        for (name, _), entries in by_member.items()
        if name in frozen
        for atoms, _ in entries
        for a in atoms[atoms >= 0].tolist()
    ]


def first_reason_by_root(marks: list[Mark], roots: np.ndarray) -> dict[int, str]:
    """The first reason given for any atom of each class, by root."""
    out: dict[int, str] = {}
    for a, why in marks:
        out.setdefault(int(roots[a]), why)
    return out


def bucket_groups(slots: Slots, producer_of: dict[int, str], marks: Marks) -> list[Group]:
    """Units with the same members form a group, in the order of their smallest root (the first atom made),
    named after the producer of that root (``name#2`` for a producer's second group). Within a group, units are
    ordered by their first index in the group's first member (units own disjoint slices)."""
    buckets = sorted(unit_member_sets(slots).items(), key=lambda kv: kv[1][0])
    n_atoms = int(slots.root.max()) + 1 if len(slots.root) else 0
    gid = np.full(n_atoms, -1, dtype=np.int64)
    first_member = np.zeros(len(buckets), dtype=np.int64)
    for g, (key, rs) in enumerate(buckets):
        gid[rs] = g
        first_member[g] = np.frombuffer(key, dtype=np.int64)[0]
    pos = unit_positions(slots, gid, first_member)
    index = member_indices(slots, gid, pos, [len(rs) for _, rs in buckets])
    groups: list[Group] = []
    names_seen: dict[str, int] = defaultdict(int)
    for g, (key, rs) in enumerate(buckets):
        members = [slots.members[k] for k in np.frombuffer(key, dtype=np.int64).tolist()]
        ordered = np.asarray(rs)[np.argsort(pos[rs], kind="stable")].tolist()
        name = producer_of.get(rs[0], members[0][0].rsplit(".", 1)[0])
        names_seen[name] += 1
        if names_seen[name] > 1:
            name = f"{name}#{names_seen[name]}"
        table = index[g]
        groups.append(
            Group(
                id=len(groups),
                name=name,
                units=UnitList(table, ordered),
                members=members,
                reason=_reason(rs, len(rs), marks),
                normalised=next((marks.normed[r] for r in rs if r in marks.normed), None),
                roles={m: slots.roles.get(m, "") for m in members},
                kind="heads" if any(r in marks.heads for r in rs) else "channels",
                index=table,
            )
        )
    return groups


def _reason(rs: list[int], n_units: int, marks: Marks) -> str | None:
    """Why a group of these unit roots is left whole (None: it is prunable)."""
    reason = next((marks.poison[r] for r in rs if r in marks.poison), None)
    if reason is None and n_units < 2:
        reason = marks.notes.get(rs[0], SINGLE)
        if reason != SINGLE:
            reason = f"all channels go together ({reason})"
    return reason
