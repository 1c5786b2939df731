"""What the channel analysis produces (:class:`Group`, :class:`Unit`, :class:`Analysis`) and what assembly reads
(:class:`Evidence`): plain data, so that the interpreter, assembly, planning and tests meet only here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Member = tuple[str, int]  # (state_dict tensor name, dim)
Binding = tuple[str, int, np.ndarray, str]  # (tensor, dim, atom per index along dim (-1: none), role)
Mark = tuple[int, str]  # (atom, reason)


@dataclass
class Unit:
    """One removable unit: the indices it owns in each member tensor dim."""

    members: dict[Member, list[int]]
    #: the union-find root of the unit's atoms in the analysis that made it (what cost terms refer to)
    root: int = field(default=-1, compare=False, repr=False)


@dataclass
class Group:
    """Units that share the same member tensors: one ratio, one ranking."""

    id: int
    name: str
    units: list[Unit]
    members: list[Member]
    reason: str | None = None  # why it is left whole; None when prunable
    normalised: str | None = None  # set when a norm over channels sees it (pruning is then not exact)
    roles: dict[Member, str] = field(default_factory=dict)
    kind: str = "channels"  # "heads" when each unit is a whole attention head (or a key/value head's group)

    @property
    def n_units(self) -> int:
        """How many units the group has: channels, or heads for a heads group."""
        return len(self.units)

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
    #: MACs and parameters of any plan (:class:`slimnet.cost.CostModel`), from the same pass
    cost: Any = field(default=None, compare=False, repr=False)


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
