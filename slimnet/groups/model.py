"""What the channel analysis produces (:class:`Group`, :class:`Unit`, :class:`Analysis`) and what assembly reads
(:class:`Evidence`): plain data, so that the interpreter, assembly, planning and tests meet only here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Member = tuple[str, int]  # (state_dict tensor name, dim)
Binding = tuple[str, int, np.ndarray, str]  # (tensor, dim, atom per index along dim (-1: none), role)
Mark = tuple[int, str]  # (atom, reason)


#: One member's indices for every unit of a group, unit after unit: ``flat[starts[i]:starts[i + 1]]`` are the
#: (ascending) indices unit ``i`` owns. Ranking, planning and the cost model read these arrays instead of
#: walking units (ResNet-50 has 12k units over 160k member slices: Python loops over them cost seconds).
MemberIndex = tuple[np.ndarray, np.ndarray]


class Unit:
    """One removable unit: the indices it owns in each member tensor dim (``members``).

    Assembly gives each unit a view into its group's :data:`MemberIndex` arrays instead of a dict of lists, and
    the dict is built on first use; ``Unit(members, root=...)`` builds one by hand."""

    __slots__ = ("_members", "_view", "root")

    def __init__(
        self, members: dict[Member, list[int]] | None = None, root: int = -1,
        view: tuple[dict[Member, MemberIndex], int] | None = None,
    ) -> None:  # fmt: skip
        self._members = members
        self._view = view  # (the group's index, this unit's position in it)
        #: the union-find root of the unit's atoms in the analysis that made it (what cost terms refer to)
        self.root = root

    @property
    def members(self) -> dict[Member, list[int]]:
        if self._members is None:
            index, i = self._view if self._view is not None else ({}, 0)
            self._members = {m: flat[starts[i] : starts[i + 1]].tolist() for m, (flat, starts) in index.items()}
        return self._members

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unit) and self.members == other.members

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value, like the dataclass it was

    def __repr__(self) -> str:
        return f"Unit(members={self.members!r})"


class UnitList(Sequence):
    """A group's units, made on first access from the group's :data:`MemberIndex` arrays and the units' roots
    (assembly makes thousands of groups' worth of units that ranking and planning never look at one by one)."""

    def __init__(self, index: dict[Member, MemberIndex], roots: Sequence[int]) -> None:
        self._index, self._roots = index, list(roots)
        self._made: dict[int, Unit] = {}

    def __len__(self) -> int:
        return len(self._roots)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        if i not in self._made:
            self._made[i] = Unit(root=self._roots[i], view=(self._index, i))
        return self._made[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))

    @property
    def roots(self) -> list[int]:
        return self._roots


def index_of(units: Sequence[Unit], member: Member) -> MemberIndex:
    """The :data:`MemberIndex` of ``member`` built from the units' own dicts (groups made by hand)."""
    lists = [u.members.get(member, []) for u in units]
    starts = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=starts[1:])
    flat = np.fromiter((i for x in lists for i in x), dtype=np.int64, count=int(starts[-1]))
    return flat, starts


@dataclass
class Group:
    """Units that share the same member tensors: one ratio, one ranking."""

    id: int
    name: str
    units: Sequence[Unit]  # a list, or assembly's UnitList
    members: list[Member]
    reason: str | None = None  # why it is left whole; None when prunable
    normalised: str | None = None  # set when a norm over channels sees it (pruning is then not exact)
    roles: dict[Member, str] = field(default_factory=dict)
    kind: str = "channels"  # "heads" when each unit is a whole attention head (or a key/value head's group)
    #: member -> :data:`MemberIndex` (filled by assembly; built from ``units`` on first use otherwise)
    index: dict[Member, MemberIndex] = field(default_factory=dict, compare=False, repr=False)
    #: the smallest multiple (in channels) the kept count rounds to, whatever ``--round-to`` says: a decoder LM's
    #: MLP keeps a multiple of 64 (:mod:`slimnet.allocate.decoder`), so that its widths stay GEMM-friendly and
    #: alike in every layer; 1 (no floor) for everything else
    round_to: int = 1

    @property
    def n_units(self) -> int:
        """How many units the group has: channels, or heads for a heads group."""
        return len(self.units)

    def member_index(self, member: Member) -> MemberIndex:
        """Every unit's indices in ``member`` as two arrays (:data:`MemberIndex`), unit after unit."""
        if member not in self.index:
            self.index[member] = index_of(self.units, member)
        return self.index[member]

    def unit_sizes(self, member: Member) -> np.ndarray:
        """How many indices of ``member`` each unit owns."""
        return np.diff(self.member_index(member)[1])

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "units": len(self.units),
            "members": [f"{t}[{d}]" for t, d in self.members],
            "prunable": self.prunable,
            "reason": self.reason,
            "normalised": self.normalised,
            "kind": self.kind,
        }


@dataclass
class Analysis:
    """The channel graph of one model: every group, and the aliases of tied tensors."""

    groups: list[Group]
    aliases: dict[str, list[str]]  # canonical tensor name -> every state_dict name sharing it
    shapes: dict[str, tuple[int, ...]]
    notes: list[str] = field(default_factory=list)  # how the model was traced, when not in one piece
    #: the submodules a model that did not trace whole was traced as (empty when it traced whole): everything
    #: prunable lies inside them, so the verifier compares their outputs
    pieces: list[str] = field(default_factory=list)
    #: for a model that traced whole but selects its outputs by breaking ties (top-k, NMS), the submodules whose
    #: outputs the verifier compares instead (:mod:`slimnet.groups.taps`)
    taps: list[str] = field(default_factory=list)
    #: MACs and parameters of any plan (:class:`slimnet.cost.CostModel`), from the same pass
    cost: Any = field(default=None, compare=False, repr=False)
    #: the smaller input the analysis ran on when the model's graph holds for any size (:mod:`slimnet.trace.reduced`;
    #: the verifier then runs it too), None when it ran on the example
    reduced: Any = field(default=None, compare=False, repr=False)
    reduced_note: str = ""  # why the analysis (or the verifier) runs on the example instead, when it does
    #: the verifier's inputs when they are reduced too (``[(label, input), ...]``), None: the example's variants
    checks: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Evidence:
    """Everything one run of :class:`~slimnet.groups.interpreter.AtomInterpreter` found, and all that
    :func:`~slimnet.groups.assemble.assemble` reads: atoms are ``0 .. len(parents) - 1``.

    * ``parents``: the union-find forest over atoms after the run (atoms the rules merged share a root);
    * ``channel_ranges``: ``(first atom, count, producer)`` for each layer output (a conv's output channels): the
      classes holding such an atom are the removable units, named after the producer;
    * ``param_ranges``: ``name -> (first atom, shape)`` for parameters that got one atom per element (free
      parameters read by elementwise ops: layer scales, position embeddings);
    * ``bindings``: ``(tensor, dim, atoms, role)``: slice ``i`` of ``tensor`` along ``dim`` belongs to ``atoms[i]``
      (-1: to none); ``role`` is ``"out"``, ``"in"``, ``"norm_scale"`` or ``""``;
    * ``poison``, ``normed``, ``notes``: ``(atom, reason)`` marks, the first per class wins: a poisoned class is
      left whole; a normalised one is pruned only on request; a note says why a class is one unit;
    * ``heads``: atoms that stand for a whole attention head;
    * ``frozen``: parameters read by an op with no rule, with the reason (every atom bound to them is poisoned);
    * ``costs``: the MAC terms of every node (:mod:`slimnet.cost`), over atoms and weight dims.
    """

    parents: list[int]
    channel_ranges: list[tuple[int, int, str]] = field(default_factory=list)
    param_ranges: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    poison: list[Mark] = field(default_factory=list)
    normed: list[Mark] = field(default_factory=list)
    notes: list[Mark] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    frozen: dict[str, str] = field(default_factory=dict)
    costs: list[Any] = field(default_factory=list)  # MAC terms (:class:`slimnet.cost.Term`) of every node
