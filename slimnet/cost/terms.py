"""The pieces of the cost model: forms, terms, what an entry sees of a node (:class:`CostCall`), the registry
:data:`COSTS` and :func:`terms_of`, which the atom interpreter calls for every node (module docstring of
:mod:`slimnet.cost` for the idea)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .._tensors import RecentByTensor
from .._util import bind_once

Member = tuple[str, int]


@dataclass
class Form:
    """``const + sum_i counts[i] * keep(unit of atoms[i])``, plus the kept size of a weight dim when ``dim``."""

    const: float = 0.0
    atoms: np.ndarray | None = None
    counts: np.ndarray | None = None
    dim: Member | None = None
    #: slices whose elements hold several atoms, each as its atoms: ``mixed_count`` each when all of its atoms
    #: end in one unit (kept with it), else always kept; resolved once the units are known
    mixed: list[np.ndarray] | None = None
    mixed_count: float = 1.0


@dataclass
class Term:
    """``scale * prod(forms)``: the MACs of one op (or a part of it), attributed to ``module``."""

    scale: float
    forms: list[Form]
    module: str = ""
    op: str = ""


@dataclass
class CostCall:
    """What a cost entry sees of one node (built by the atom interpreter after the node's channel rule ran)."""

    node: fx.Node
    module: nn.Module | None  # for call_module nodes
    value: Any  # the node's output
    args: tuple  # real values of the arguments
    kwargs: dict
    ids: Callable[[Any], Any]  # fx argument -> its atom ids
    out: Any  # the node's atom ids
    param: Callable[[Any], str | None]  # fx argument -> the state_dict name behind a get_attr, else None
    target_name: str = ""  # the module path, for call_module nodes

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)

    def node_arg(self, i: int, name: str) -> Any:
        n = self.node
        return n.args[i] if len(n.args) > i else n.kwargs.get(name)


CostFn = Callable[[CostCall], list[Term]]
#: The one registry of MAC rules: module classes (or qualified names), functions and method names -> entry.
COSTS: dict[Any, CostFn] = {}


def cost(*keys: Any) -> Callable[[CostFn], CostFn]:
    def deco(fn: CostFn) -> CostFn:
        for k in keys:
            bind_once(COSTS, k, fn, "MAC rule")
        return fn

    return deco


# ------------------------------------------------------------------------------------------------ forms
#: elements()'s counts (const, atoms, counts) for the last few id tensors: a layer's output ids are read by the
#: layer, its norm and its activation (one tensor: the rules pass it on).
_COUNTED = RecentByTensor()


def elements(ids: Any, value: Any = None) -> Form:
    """The elements of an activation that survive: one count per atom (elements with no atom always stay)."""
    if not isinstance(ids, torch.Tensor):
        return Form(const=float(value.numel()) if isinstance(value, torch.Tensor) else 0.0)
    if ids.numel() == 0:
        return Form()
    known = _COUNTED.get(ids)
    if known is None:
        counts = torch.bincount(ids.reshape(-1).to(torch.int64) + 1)
        nonzero = torch.nonzero(counts[1:]).flatten()
        known = (float(counts[0]), nonzero.numpy(), counts[1:][nonzero].double().numpy())
        _COUNTED.put(ids, known)
    # ids from a reduced-size run (slimnet.trace.reduced) stand for the value's larger size: they do not vary along
    # the dims that grew, so every count grows by the same factor
    grow = value.numel() / ids.numel() if isinstance(value, torch.Tensor) else 1.0
    return Form(const=known[0] * grow, atoms=known[1], counts=known[2] * grow)


def per_column(ids: Any, size: int) -> Form:
    """The columns (last dim) of a matmul's second operand that survive: a column whose elements all hold one
    atom goes with that atom's unit; one whose elements hold several atoms goes with their unit if the analysis
    made them one (two heads' channel j, tied by a reshape), else stays; a column with no atom always stays."""
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        return Form(const=float(size))
    cols = ids.reshape(-1, ids.shape[-1]) if ids.dim() > 1 else ids.reshape(1, -1)
    lo, hi = cols.amin(0), cols.amax(0)
    single = (lo == hi) & (lo >= 0)
    several = (lo != hi) & (lo >= 0)
    atoms = lo[single].to(torch.int64).numpy()
    grow = size / ids.shape[-1]  # reduced-size ids (see elements)
    mixed = [torch.unique(cols[:, j]).to(torch.int64).numpy() for j in torch.nonzero(several).flatten().tolist()]
    const = float((~single & ~several).sum()) * grow
    return Form(const=const, atoms=atoms, counts=np.full(len(atoms), grow), mixed=mixed or None, mixed_count=grow)


def kept(name: str | None, dim: int, size: int) -> Form:
    """The kept size of a state_dict tensor's dim (resolved from the groups when the model is assembled)."""
    return Form(dim=(name, dim), const=float(size)) if name else Form(const=float(size))


def constant(x: float) -> Form:
    return Form(const=float(x))


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def term(call: CostCall, scale: float, *forms: Form) -> list[Term]:
    stack = call.node.meta.get("nn_module_stack") or {}
    where = call.target_name or (next(reversed(stack.values()))[0] if stack else "")
    return [Term(float(scale), list(forms), where, call.node.name)]
