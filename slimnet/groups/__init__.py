"""The channel graph: which indices of which tensors must be removed together.

Every channel of every producer (conv/linear output channel, embedding column, element of a free parameter)
gets an integer id, an *atom*. The traced fx graph is then interpreted once on **id tensors** (float64,
:data:`NO_ATOM` = -1 for "no atom") alongside the real values:

* data-movement ops (view, flatten, permute, cat, split, getitem, pixel_shuffle, pad, nearest interpolate...)
  are simply applied to the id tensor, so concat offsets, flatten blocks and shuffles come out exact;
* per-element ops pass ids through; elementwise binary ops *unify* atoms position by position (union-find),
  except that an operand broadcast over a dimension where the other operand's atoms vary couples nothing
  (a ``[B,1,H,W]`` spatial gate); an SE scale ``[B,C,1,1]`` still couples its channels to ``x``;
* ops that mix channels (conv, linear, norms, embedding) have explicit rules in :data:`RULES`: they bind atoms
  to weight slices and start new atoms for their outputs;
* ops that mix positions (pooling, reductions, softmax) tie the atoms they mix into one unit;
* a reshape whose size is a literal in the forward code cannot follow a pruned size, so it ties the atoms
  along that dimension (a channel shuffle's group dimension, a hard-coded ``view(b, 512*7*7)``);
* an op with no rule *poisons* the atoms it touches, naming the op: never a silent guess.

A union-find class of atoms is one removable *unit*; units whose members span the same (tensor, dim) pairs
form a *group*, the thing a ratio applies to. Supporting a new op is one entry in :data:`RULES`.

The package, one concept per module: :mod:`.model` (the results, and the :class:`Evidence` between the two
passes), :mod:`.registry` (:data:`RULES`, :func:`rule` and the rule contract), :mod:`.atoms` (atoms, id tensors,
union-find), :mod:`.interpreter` (:class:`AtomInterpreter`), :mod:`.assemble` (:func:`analyse`,
:func:`assemble`), :mod:`.slots` (the indices each unit owns) and :mod:`.rules` (one module per family of ops;
imported here so that every rule registers).
"""

from . import rules
from .assemble import analyse, assemble, tensor_aliases
from .atoms import NO_ATOM, UnionFind
from .interpreter import AtomInterpreter
from .model import Analysis, Evidence, Group, Member, Unit
from .registry import RULES, Rule, is_leaf_class, rule, rule_for
from .small import analyse_reduced

__all__ = [
    "NO_ATOM",
    "RULES",
    "Analysis",
    "AtomInterpreter",
    "Evidence",
    "Group",
    "Member",
    "Rule",
    "UnionFind",
    "Unit",
    "analyse",
    "analyse_reduced",
    "assemble",
    "is_leaf_class",
    "rule",
    "rule_for",
    "rules",
    "tensor_aliases",
]
