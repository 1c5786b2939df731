"""Where the ints of a graph come from: which tensor dims each size was read from, and what a reshape by such a
size ties.

A forward reads sizes off tensors (``B, N, C = x.shape``, ``x.size(-1)``) and uses them two ways. As a *value*
(``x / math.sqrt(C)``) the number must not change, so the dim it was read from is tied
(:meth:`~slimnet.groups.interpreter.AtomInterpreter.value_use`). As a *size* in a reshape it must still fit after
pruning: ``q.reshape(B, N, heads, C // heads)`` with ``C`` read from the block's input ``x`` (attention with
spatial reduction, cross-attention between two token streams) only works if ``q``'s width and ``x``'s stay
equal, which nothing else in the graph promises. :func:`tie_reshape_sizes` says what that costs:

* a size read from the reshaped tensor itself, from a tensor whose atoms along that dim are the reshaped
  tensor's own (the same channels before a norm or an activation), or from a parameter (a size attribute traced
  by :mod:`slimnet.cut.sizes`, which the surgeon recomputes) follows pruning: nothing to do;
* a size read *exactly* (``C``, not ``C // heads``) from another tensor's dim: the reshaped dim and that dim must
  lose the same positions, so their atoms are unified position by position (an SE block's ``fc(y).view(b, c,
  1, 1)`` with ``c`` read from ``x``: the later ``x * y`` would unify them anyway);
* an expression of such following sizes and of dims that never change (their atoms do not vary along them: a
  batch dim, MViT's ``B * n_head * q_h * q_w`` with ``B`` and the pooled grid read off ``q``) follows pruning too;
* anything else (an expression of another tensor's size, a dim that only one side can prune): both dims are
  tied, so neither changes size, with the node named as the reason.
"""

from __future__ import annotations

import builtins
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from .atoms import nodes_in, one_atom_per_slice, unique_atoms


@dataclass
class SizeSource:
    """A size read from dim ``dim`` of the tensor that ``node`` computed (``ids``: its atom ids, given as a
    function for a parameter read for its shape: made only where a rule needs them, see :meth:`SizeFlow.track`)."""

    node: fx.Node
    ids_or_fn: torch.Tensor | Callable[[], torch.Tensor]
    dim: int

    @property
    def ids(self) -> torch.Tensor:
        if not isinstance(self.ids_or_fn, torch.Tensor):
            self.ids_or_fn = self.ids_or_fn()
        return self.ids_or_fn


class SizeFlow:
    """Which tensor dims every int (or float computed from ints) of the graph was read from; ``exact`` for the
    ones that *are* a dim's size (``x.shape[1]``, ``x.size(-1)``, one of ``B, N, C = x.shape``)."""

    def __init__(self) -> None:
        self._sources: dict[fx.Node, list[SizeSource]] = {}
        self._exact: dict[fx.Node, SizeSource] = {}
        self._shapes: dict[fx.Node, list[SizeSource]] = {}  # x.shape / x.size() / x.shape[a:b]: one source per dim

    def sources(self, node: Any) -> list[SizeSource]:
        return self._sources.get(node, []) if isinstance(node, fx.Node) else []

    def exact(self, node: Any) -> SizeSource | None:
        return self._exact.get(node) if isinstance(node, fx.Node) else None

    def shape(self, node: Any) -> list[SizeSource] | None:
        """The per-dim sources of a node that is a whole shape (``x.shape``, ``x.size()``, ``x.shape[:-1]``)."""
        return self._shapes.get(node) if isinstance(node, fx.Node) else None

    def forget(self, node: fx.Node) -> None:
        for table in (self._sources, self._exact, self._shapes):
            table.pop(node, None)

    def track(self, n: fx.Node, it: Any) -> None:
        """Record where the non-tensor value of node ``n`` was read from (``it``: the
        :class:`~slimnet.groups.interpreter.AtomInterpreter`, typed loosely: it imports this module). A
        parameter's shape (a size attribute traced as ``self.query.weight.shape[0]``, :mod:`slimnet.cut.sizes`) does
        not make its ids: they are one atom per element, which for BERT-base's twelve 768x768 query weights is 7M
        atoms that only a size used as a value would ever read. Its source is one atom per index of each dim,
        bound to that dim and made only when needed (``AtomInterpreter.dim_ids_later``)."""
        is_size = n.op == "call_method" and n.target == "size"
        is_shape = n.op == "call_function" and n.target is builtins.getattr and len(n.args) > 1 and n.args[1] == "shape"
        if is_size or is_shape:
            arg = n.args[0]
            lazy = isinstance(arg, fx.Node) and arg.op == "get_attr"
            src = it.env.get(arg) if lazy else it.ids_of(arg)
            if not isinstance(src, torch.Tensor) or src.dim() == 0:
                return
            dim = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")) if is_size else None
            every = [SizeSource(arg, it.dim_ids_later(arg, src, d) if lazy else src, d) for d in range(src.dim())]
            if dim is None:
                self._shapes[n] = every
                self._sources[n] = every
            else:
                one = every[int(dim) % src.dim()]
                self._exact[n], self._sources[n] = one, [one]
            return
        shape = self.shape(n.args[0]) if n.target is operator.getitem and n.args else None
        if shape is not None and isinstance(n.args[1], int):
            one = shape[n.args[1]]
            self._exact[n], self._sources[n] = one, [one]
            return
        if shape is not None and isinstance(n.args[1], slice):
            part = shape[n.args[1]]
            self._shapes[n], self._sources[n] = part, part
            return
        found = [s for a in nodes_in((n.args, n.kwargs)) for s in self.sources(a)]
        if found:
            self._sources[n] = found


def size_args(sizes: tuple, flow: SizeFlow) -> list[Any]:
    """A reshape's size arguments, one per output dim: ``(B, N, -1)``, ``((B, N, -1),)``, or one traced shape
    (``y.view(x.shape)``, whose dims become their sources)."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = tuple(sizes[0])
    if len(sizes) == 1 and flow.shape(sizes[0]) is not None:
        return list(flow.shape(sizes[0]) or [])
    return list(sizes)


def varies(ids: torch.Tensor, dim: int) -> bool:
    """Whether the atoms change along ``dim`` (a dim that pruning can shorten)."""
    n = ids.shape[dim]
    if n <= 1:
        return False
    rows = ids.movedim(dim, -1).reshape(-1, n)
    return bool(one_atom_per_slice(rows, 1)[1].any()) if rows.numel() else False


def own_atoms(source: SizeSource, reshaped: torch.Tensor, roots: Any) -> bool:
    """Whether the atoms along the source dim are all atoms of the reshaped tensor too (its own channels, read
    before an activation or a norm): the size then follows the reshaped tensor."""
    along = torch.as_tensor(unique_atoms(source.ids), dtype=torch.int64)
    if len(along) == 0:
        return True
    mine = torch.as_tensor(unique_atoms(reshaped), dtype=torch.int64)
    r = torch.as_tensor(roots)
    return bool(torch.isin(r[along], r[mine]).all()) if len(mine) else False


def tie_reshape_sizes(it: Any, out: torch.Tensor, sizes: list[Any], reshaped: fx.Node, first: int = 0) -> None:
    """``out`` is ``reshaped`` reshaped; ``sizes[i]`` (an int, an fx node or a :class:`SizeSource`) gave the
    size of its dim ``first + i``. Couple or tie what sizes read from other tensors need (module docstring).
    ``it`` is the :class:`~slimnet.groups.interpreter.AtomInterpreter` (typed loosely: it imports this module)."""
    own = it.ids_of(reshaped)
    for e, size in enumerate(sizes, first):
        if e >= out.dim() or not isinstance(size, (fx.Node, SizeSource)):
            continue
        sources = [size] if isinstance(size, SizeSource) else it.sizes.sources(size)
        exact = size if isinstance(size, SizeSource) else it.sizes.exact(size)
        foreign = [s for s in sources if _foreign(s, reshaped, own, it)]
        if not foreign or (
            exact is None and len(foreign) < len(sources) and not any(varies(s.ids, s.dim) for s in foreign)
        ):
            continue  # (in an expression, sizes that never change times one that follows: it follows)
        why = it.at_node(f"size read from another tensor ({foreign[0].node.name} dim {foreign[0].dim})")
        if exact is not None and foreign == [exact] and _pair(it, exact.ids, exact.dim, out, e):
            continue
        for s in foreign:
            it.tie(s.ids, s.dim, why)
        it.tie(out, e, why)


def _foreign(s: SizeSource, reshaped: fx.Node, own: Any, it: Any) -> bool:
    """A size source other than the reshaped tensor, its own channels, or a parameter (see module docstring)."""
    if s.node is reshaped or s.node.op == "get_attr" or not isinstance(own, torch.Tensor):
        return False
    return not (varies(s.ids, s.dim) and own_atoms(s, own, it.roots()))


def _pair(it: Any, a: torch.Tensor, d: int, b: torch.Tensor, e: int) -> bool:
    """Dim ``d`` of ``a`` and dim ``e`` of ``b`` lose the same positions: their atoms are unified position by
    position. False (nothing done) where they cannot be: other lengths, or an atom facing a position of none."""
    va, vb = varies(a, d), varies(b, e)
    if not va and not vb:
        return True
    n = a.shape[d]
    if not (va and vb) or b.shape[e] != n:
        return False
    for t, dim in ((a, d), (b, e)):
        rows = t.movedim(dim, 0).reshape(n, -1)
        if ((rows < 0).any(1) & (rows >= 0).any(1)).any():
            return False
    fa, fb = it.per_index(a, d), it.per_index(b, e)
    if ((fa >= 0) != (fb >= 0)).any():
        return False
    it.unify_pairs((int(x), int(y)) for x, y in zip(fa, fb) if x >= 0)
    return True
