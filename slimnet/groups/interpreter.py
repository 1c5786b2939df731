"""The atom interpreter: runs an fx graph on real values and, beside them, on tensors of atom ids.

:class:`AtomInterpreter` dispatches every node to its rule (:mod:`slimnet.groups.registry`), offers the rules a
small public API, and hands what it found to assembly as one :class:`~slimnet.groups.model.Evidence`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import fx

from .._tensors import RecentByTensor, flat_tensors, shape_signature
from ..cost import Term, terms_of
from ..trace.reduced import shaped_layer
from ..trace.symbolic import user_line
from ..trace.values import TRACED
from .atoms import UnionFind, constant_ids, nodes_in, unique_atoms
from .idtensors import IdTensorOps
from .model import Evidence
from .registry import IN_PLACE, rule_for
from .sizeflow import SizeFlow


def _where(node: fx.Node) -> str:
    line = user_line(node)
    return f" ({line})" if line else ""


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} module {node.target}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    t = node.target
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".lstrip(".")


class ShapesDiverged(Exception):
    """With layers reduced to their shapes, a node of a graph traced with example values got another shape (or
    another number) than when traced: its shape depends on values. The caller runs the layers for real."""


class AtomInterpreter(IdTensorOps, fx.Interpreter):
    """Runs the graph on real values and, beside them, on atom-id tensors; the rules fill a union-find.

    Every placeholder gets one poisoned atom (inputs are never pruned), every layer output new atoms (one per
    channel), every parameter read outside a layer one atom per element; each node's rule (see the contract in
    :mod:`slimnet.groups.registry`) returns its output's id tensor and records what it learnt: bindings of
    atoms to weight slices, unions, marks. :meth:`collect` runs the graph and returns all of it as one
    :class:`~slimnet.groups.model.Evidence`, which :func:`~slimnet.groups.assemble.assemble` turns into groups.

    Example: conv -> bn -> conv, traced with plain torch.fx::

        >>> import torch
        >>> from torch import fx, nn
        >>> from slimnet.groups import AtomInterpreter, assemble, tensor_aliases
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
        >>> gm = fx.symbolic_trace(net)
        >>> evidence = AtomInterpreter(gm, tensor_aliases(gm)[0]).collect(torch.randn(1, 3, 8, 8))

    Atom 0 is the input (poisoned); the first conv makes atoms 1-4, the second atoms 5-6::

        >>> evidence.channel_ranges
        [(1, 4, '0'), (5, 2, '2')]
        >>> evidence.poison
        [(0, 'model input input'), (5, 'model output'), (6, 'model output')]

    Each layer binds the atoms it reads or makes to its tensors' slices: ``0.weight`` dim 0 (its output
    channels) to atoms 1-4, dim 1 to the input's atom, and the BatchNorm's four tensors to the atoms it reads::

        >>> for tensor, dim, atoms, role in evidence.bindings:
        ...     print(tensor, dim, atoms.tolist(), role or "-")
        0.bias 0 [1, 2, 3, 4] -
        0.weight 0 [1, 2, 3, 4] out
        0.weight 1 [0, 0, 0] in
        1.weight 0 [1, 2, 3, 4] norm_scale
        1.bias 0 [1, 2, 3, 4] -
        1.running_mean 0 [1, 2, 3, 4] -
        1.running_var 0 [1, 2, 3, 4] -
        2.bias 0 [5, 6] -
        2.weight 0 [5, 6] out
        2.weight 1 [1, 2, 3, 4] in

    Assembly makes one unit per class of atoms holding a layer's channel; units with the same member slices
    form a group. The first conv's four channels are one group of four units over seven tensor dims; the last
    conv's two channels are the model's output, left whole (atom 0 holds no produced channel: no unit)::

        >>> shapes = {k: tuple(v.shape) for k, v in gm.state_dict().items()}
        >>> for g in assemble(evidence, shapes):
        ...     print(g.name, g.n_units, g.reason, " ".join(f"{t}[{d}]" for t, d in g.members))
        0 4 None 0.bias[0] 0.weight[0] 1.bias[0] 1.running_mean[0] 1.running_var[0] 1.weight[0] 2.weight[1]
        2 2 model output 2.bias[0] 2.weight[0]
    """

    def __init__(self, gm: fx.GraphModule, aliases: dict[str, str], shaped: bool = False) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self._alias = aliases  # any state_dict name -> canonical name
        #: convolutions and linear layers give zeros of their output's shape instead of computing: the rules read
        #: ids and shapes, never these values. Only for a symbolic graph that has run on such zeros before (the
        #: full-size shape pass of :mod:`slimnet.trace.reduced`, which refuses ops whose output shape depends on values)
        #: or a graph traced with example values, each node then checked against its traced value (ShapesDiverged)
        self._shaped = shaped
        self._uf = UnionFind()
        self._channel_ranges: list[tuple[int, int, str]] = []  # (start, n, producer name)
        self._param_ranges: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._bindings: list[tuple[str, int, np.ndarray, str]] = []  # (tensor, dim, atom per index, role)
        self._poison: list[tuple[int, str]] = []
        self._normed: list[tuple[int, str]] = []
        self._notes: list[tuple[int, str]] = []
        self._heads: list[int] = []  # atoms that stand for a whole attention head
        self._frozen: dict[str, str] = {}  # parameters read by an op with no rule
        self._costs: list[Term] = []  # MAC terms of the nodes run so far
        self._ids: dict[fx.Node, Any] = {}
        #: where every int/float node computed from tensor sizes was read from; a size used as a *value* (a
        #: 1/sqrt(d) scale, a mean's divisor) must not change, so those dims get tied (see value_use), and a size
        #: read from one tensor and used to reshape another couples the two (sizeflow.tie_reshape_sizes)
        self.sizes = SizeFlow()
        self._current: fx.Node | None = None
        #: per_index's recent answers: (id of the ids tensor, dim) -> (the tensor, its version, atoms)
        self._known = RecentByTensor()

    def collect(self, *inputs: Any) -> Evidence:
        """Run the graph on ``inputs`` (graph placeholders in order) and return what the rules found."""
        with torch.inference_mode(False), torch.no_grad():
            self.run(*inputs)
        return Evidence(
            parents=list(self._uf.parent),
            channel_ranges=self._channel_ranges,
            param_ranges=self._param_ranges,
            bindings=self._bindings,
            poison=self._poison,
            normed=self._normed,
            notes=self._notes,
            heads=self._heads,
            frozen=self._frozen,
            costs=self._costs,
        )

    # -- reading arguments ------------------------------------------------------------------------------
    def ids_of(self, value: Any) -> Any:
        """Map fx nodes in an argument structure to their id tensors (lazily creating parameter atoms)."""
        return fx.node.map_aggregate(value, lambda v: self._node_ids(v) if isinstance(v, fx.Node) else v)

    def _node_ids(self, node: fx.Node) -> Any:
        if node not in self._ids:
            return None
        v = self._ids[node]
        if callable(v) and not isinstance(v, torch.Tensor):
            v = v()
            self._ids[node] = v
        return v

    def dim_ids_later(self, node: fx.Node, value: torch.Tensor, dim: int) -> Any:
        """A function giving ids for dim ``dim`` of a parameter read for its shape: one new atom per index, bound
        to that dim of the tensor (so they join the channels a layer binds there), the same along the other dims;
        made only when a rule needs them (a size used as a value ties them). Per-element atoms would cost
        millions of atoms, and would bind the dim to classes of their own instead of the layer's channels. A
        tensor outside the state_dict gets its ids as :meth:`ids_of` gives them."""
        name = self.param_name(node)
        if name is None or self._alias.get(name) is None or not value.is_floating_point():
            return lambda: self._node_ids(node) if node in self._ids else None

        def make() -> torch.Tensor:
            start = self._uf.add(value.shape[dim])
            atoms = np.arange(start, start + value.shape[dim], dtype=np.int64)
            self.bind(name, dim, atoms)
            return self.fill(atoms, value.shape, dim)

        return make

    def value_of(self, value: Any) -> Any:
        """Real values of an argument structure (after the node ran: for sizes, dims, indices)."""
        return fx.node.map_arg(value, lambda nd: self.env[nd] if nd in self.env else None)

    def param_name(self, arg: Any) -> str | None:
        """The state_dict name behind a ``get_attr`` argument (a weight passed to F.conv2d...), else None."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            return str(arg.target)
        return None

    def module_of(self, n: fx.Node) -> Any:
        """The submodule a ``call_module`` node calls."""
        return self.module.get_submodule(n.target)

    def where(self) -> str:
        """The node being run and the user's source line, for reasons."""
        n = self._current
        return f"{n.name}{_where(n)}" if n is not None else ""

    def at_node(self, text: str) -> Callable[[], str]:
        """``"{text} at node {where}"``, made only when a reason needs it: finding the user's source line costs
        a traceback lookup, and most ties and merges turn out to merge nothing."""
        n = self._current
        return lambda: f"{text} at node {n.name}{_where(n)}" if n is not None else text

    # -- atoms and marks --------------------------------------------------------------------------------
    def new_atoms(self, count: int, producer: str) -> np.ndarray:
        """``count`` new channel atoms made by layer ``producer`` (their classes are units named after it)."""
        start = self._uf.add(count)
        self._channel_ranges.append((start, count, producer))
        return np.arange(start, start + count, dtype=np.int64)

    def poisoned_atom(self, reason: str) -> int:
        """A new atom that keeps whatever it is combined with whole."""
        a = self._uf.add(1)
        self._poison.append((a, reason))
        return a

    def poisoned_roots(self) -> np.ndarray:
        """The classes (root atoms) that hold a poisoned atom so far: a model input, a fixed-size tensor..."""
        atoms = np.fromiter((a for a, _ in self._poison), dtype=np.int64, count=len(self._poison))
        return np.unique(self.roots()[atoms]) if len(atoms) else atoms

    def poison(self, atoms: Any, reason: str) -> None:
        """The classes of ``atoms`` are left whole, for ``reason``."""
        self._poison.extend((int(a), reason) for a in atoms if a >= 0)

    def poison_ids(self, ids: Any, reason: str) -> None:
        """Every atom in an id structure is poisoned."""
        for t in flat_tensors(ids):
            self.poison(unique_atoms(t), reason)

    def unify(self, atoms: Any) -> None:
        """The atoms (``NO_ATOM`` skipped) are one unit."""
        self._uf.union_all([int(a) for a in atoms if a >= 0])

    def unify_pairs(self, pairs: Any) -> None:
        """Each ``(a, b)`` pair of atoms is one unit."""
        self._uf.union_pairs(pairs)

    def roots(self) -> np.ndarray:
        """The current class (root atom) of every atom."""
        return self._uf.roots()

    def bind(self, name: str | None, dim: int, atoms: np.ndarray, role: str = "") -> None:
        """Tensor ``name``'s slice ``i`` along ``dim`` belongs to ``atoms[i]``'s unit (-1: to none)."""
        if name is None:
            return
        self._bindings.append((self._alias.get(name, name), dim, np.asarray(atoms, dtype=np.int64), role))

    def mark_heads(self, atoms: Any) -> None:
        """Each of ``atoms`` stands for a whole attention head: its group is a heads group."""
        self._heads.extend(int(a) for a in atoms)

    def mark_normalised(self, atoms: Any, reason: str) -> None:
        """A norm over channels sees these atoms: pruning them is exact only on request (``--prune-norm``)."""
        self._normed.extend((int(a), reason) for a in atoms)

    def note(self, atom: int, reason: str) -> None:
        """Why ``atom``'s class became one unit, should it end up the only unit of its group."""
        self._notes.append((int(atom), reason))

    def value_use(self, values: Any) -> None:
        """``values`` (fx nodes) enter a computation as numbers, not as sizes: where one was read from a
        tensor's dim, that dim's size must not change (pruning it would change the number), so it is tied."""
        for v in nodes_in(values):
            for src in self.sizes.sources(v):
                self.tie(src.ids, src.dim, self.at_node(f"the size of dim {src.dim} is used as a value"))

    def unknown(self, n: fx.Node, value: Any, what: str | None = None) -> Any:
        """The op has no rule (or its rule refused): everything it reads is poisoned, naming the op, and its
        output is one poisoned atom. Never a silent guess."""
        reason = f"no channel rule for {what or _op_name(n, self.module)} at node {self.where()}"
        # Parameters handed straight to the op are frozen by name (giving each element an atom would cost
        # memory for nothing); everything else it reads is poisoned atom by atom.
        args = []
        for a in list(n.args) + list(n.kwargs.values()):
            name = self.param_name(a)
            if name is not None and (a not in self._ids or callable(self._ids[a])):
                self._frozen.setdefault(self._alias.get(name, name), reason)
            else:
                args.append(a)
        self.poison_ids(self.ids_of(args), reason)
        return constant_ids(value, float(self.poisoned_atom(reason)))

    # -- running (fx.Interpreter) -------------------------------------------------------------------------
    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        out = shaped_layer(self.fetch_attr(target), args, kwargs) if self._shaped else None
        return out if out is not None else super().call_module(target, args, kwargs)

    def run_node(self, n: fx.Node) -> Any:
        self._current = n
        value = super().run_node(n)
        if self._shaped and TRACED in n.meta and shape_signature(value) != n.meta[TRACED]:
            raise ShapesDiverged(f"node {n.name}: its value is not the one it had when traced")
        if n.op == "get_attr":
            self._ids[n] = self._lazy_param(n, value)
        elif n.op == "output":
            self.poison_ids(self.ids_of(n.args[0]), "model output")
        elif n.op == "placeholder":
            self._ids[n] = self._input_ids(value, str(n.target))
        else:
            self._ids[n] = self._apply_rule(n, value)
            self._costs.extend(self.costs_of(n, value))
        for dead in self.user_to_last_uses.get(n, []):
            self._ids.pop(dead, None)
            self.sizes.forget(dead)
        return value

    def costs_of(self, n: fx.Node, value: Any) -> list[Term]:
        """The MAC terms of node ``n`` (just run, its inputs' ids still live)."""
        return terms_of(self, n, value)

    def _input_ids(self, value: Any, name: str) -> Any:
        if not flat_tensors(value):
            return None
        a = self.poisoned_atom(f"model input {name}")  # named: a group tied to an attention mask says so
        return constant_ids(value, float(a))

    def _lazy_param(self, n: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        name = self._alias.get(str(n.target), str(n.target))
        if not value.is_floating_point():
            return lambda: constant_ids(value)
        if name not in self._alias:  # a constant or non-persistent buffer: no plan can slice it, so it is a
            # fixed size (like a tensor built in forward): combined with channels it keeps them whole
            if value.numel() <= 1:
                return lambda: constant_ids(value)
            a = self.poisoned_atom(f"tensor {name} is not in the state_dict, so it cannot be sliced")
            return lambda: constant_ids(value, float(a))

        def make() -> torch.Tensor:
            if name in self._param_ranges:
                start, shape = self._param_ranges[name]
            else:
                start = self._uf.add(value.numel())
                shape = tuple(value.shape)
                self._param_ranges[name] = (start, shape)
            return torch.arange(start, start + value.numel(), dtype=torch.float64).reshape(shape)

        return make

    def _apply_rule(self, n: fx.Node, value: Any) -> Any:
        if n.op == "call_function" and n.target in IN_PLACE:
            fn = rule_for(n, self.module)
            if fn is None or fn(self, n, n.args, n.kwargs, value) is None:
                self.unknown(n, value)
            return None
        if not flat_tensors(value):
            self.sizes.track(n, self)
            return None
        fn = rule_for(n, self.module)
        out = None if fn is None else fn(self, n, n.args, n.kwargs, value)
        if out is None:  # a rule that cannot say where a tensor's channels come from must not guess
            return self.unknown(n, value)
        return out
