"""Tensors created inside forward (``torch.zeros``, ``x.new_ones``, ``torch.ones_like``) and attribute reads
(``x.shape``, ``x.T``). A created tensor carries no channel; one of a literal size cannot follow pruning, so it
gets a poisoned atom that keeps whole whatever it is combined with (broadcasting still couples nothing).
"""

from __future__ import annotations

import builtins
from typing import Any

import torch
from torch import fx

from ..atoms import constant_ids
from ..interpreter import AtomInterpreter
from ..registry import arg, rule
from .movement import literal_dims

_FACTORIES = [
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.randn,
    torch.rand,
    torch.eye,
    torch.tensor,
    torch.linspace,
    torch.as_tensor,
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "new_tensor",
]


@rule(*_FACTORIES)
def factory(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """A tensor built with a literal size > 1 cannot follow pruning: it carries a poisoned atom so that
    combining it with channels (rather than broadcasting) keeps them whole; sizes from tensors adapt."""
    sizes = args[1:] if n.op == "call_method" else args
    if n.target in (torch.tensor, torch.as_tensor, "new_tensor"):
        it.value_use(list(sizes[:1]))  # torch.tensor(q.size(-1)): a size become a value (DeBERTa's scale)
    elif n.target in (torch.full, "new_full"):
        it.value_use([arg(sizes, kwargs, 1, "fill_value")])
    if n.target in (torch.arange, torch.linspace, torch.tensor, torch.as_tensor, torch.eye):
        literal = True
    else:
        literal = bool(literal_dims(tuple(sizes)))
    if literal and isinstance(value, torch.Tensor) and value.numel() > 1:
        a = it.poisoned_atom(f"tensor of fixed size created at node {it.where()}")
        return constant_ids(value, float(a))
    return constant_ids(value)


_LIKE = [
    torch.zeros_like,
    torch.ones_like,
    torch.full_like,
    torch.empty_like,
    torch.rand_like,
    torch.randn_like,
    "zero_",
    "fill_",
    "uniform_",
    "normal_",
    "bernoulli",
    "bernoulli_",
    torch.bernoulli,
]


@rule(*_LIKE)
def filled_like(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """New values shaped like an existing tensor: they follow its shape and carry no channel."""
    return constant_ids(value)


@rule(builtins.getattr, "size", "dim", "numel")
def tensor_attribute(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Attribute reads (``x.shape``, ``x.T``...)."""
    if isinstance(value, torch.Tensor) and n.target is builtins.getattr and args[1] in ("T", "mT", "data"):
        src = it.ids_of(args[0])
        return getattr(src, args[1])
    return None
