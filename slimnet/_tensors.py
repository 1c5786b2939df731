"""Example inputs and outputs: walking them, and calling models with them.

A model's example input or output is a tensor, or tuples, lists, dicts, named tuples and Hugging Face
``ModelOutput`` objects of tensors; :func:`flat_tensors` and :func:`map_tensors` walk them with
``torch.utils._pytree`` (which knows all of those), so no stage carries its own walker. :func:`call`,
:func:`as_args` and :class:`PositionalCall` call a model the way its example says; :func:`batch_input` grows the
example's batch; :func:`eval_mode` measures in eval mode and gives the model back as it came.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .errors import SlimnetError


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested structure (tuples, lists, dicts, named tuples, ModelOutputs), in order."""
    if hasattr(value, "to_tuple") and not isinstance(value, (tuple, list, dict)):
        value = value.to_tuple()
    return [leaf for leaf in pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any], others: Any = ...) -> Any:
    """``fn`` applied to every tensor of a nested structure; other leaves are kept, or replaced by ``others``
    when it is given (``others=None``: a structure that holds only what ``fn`` made)."""
    keep = others is ...
    return pytree.tree_map(lambda x: fn(x) if isinstance(x, torch.Tensor) else (x if keep else others), value)


#: What :func:`shape_signature` gives an object it does not describe: two such objects compare equal, so only
#: the tensors and plain values around them are checked (a node whose whole value is opaque is not checked).
OPAQUE = "<opaque>"


class RecentByTensor:
    """Values computed from a tensor, kept for the last few tensors asked about and found again only for the
    same tensor object not written to since (its version counter): the analysis reads one id tensor in several
    rules (a layer's output by its norm, its activation and the next layer). It holds those few tensors alive,
    so their ids cannot be reused while they are kept."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._items: dict[tuple[int, Any], tuple[torch.Tensor, int, Any]] = {}

    def get(self, t: torch.Tensor, key: Any = None) -> Any:
        """The value kept for ``t`` (and ``key``), or None."""
        hit = self._items.get((id(t), key))
        return hit[2] if hit is not None and hit[0] is t and hit[1] == t._version else None

    def put(self, t: torch.Tensor, value: Any, key: Any = None) -> None:
        self._items[(id(t), key)] = (t, t._version, value)
        while len(self._items) > self._size:
            del self._items[next(iter(self._items))]


def keep_vector(size: int, kept: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A 0/1 vector of ``size``: 1 at the kept indices (a plan's, for one dim)."""
    keep = torch.zeros(size, dtype=dtype)
    keep[torch.as_tensor(kept, dtype=torch.long)] = 1
    return keep


def shape_signature(value: Any) -> Any:
    """What a pass that computes shapes but not layer arithmetic must reproduce of a node's value: each tensor's
    shape and dtype, and every plain number, string, flag, size and dtype as it is (a number read from a
    tensor's values, ``.item()``, differs when the values do), nested as the value is; other objects
    :data:`OPAQUE`."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(shape_signature(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, shape_signature(v)) for k, v in value.items()))
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device, slice)):
        return value
    return OPAQUE


def replace_tensors(value: Any, tensors: Sequence[Any]) -> Any:
    """``value`` with its tensors (in :func:`flat_tensors` order) replaced by ``tensors``, one for one."""
    leaves, spec = pytree.tree_flatten(value)
    it = iter(tensors)
    return pytree.tree_unflatten([next(it) if isinstance(x, torch.Tensor) else x for x in leaves], spec)


def index_tensor(idx: Sequence[int], cache: dict | None = None) -> torch.Tensor:
    """A plan's index list as a long tensor; ``cache`` (a dict the caller keeps for one plan) returns the same
    tensor for equal lists: a group's members keep the same indices, and converting a list of a thousand
    Python ints costs more than hashing it."""
    if cache is None:
        return torch.as_tensor(idx, dtype=torch.long)
    key = tuple(idx)
    found = cache.get(key)
    if found is None:
        found = cache[key] = torch.as_tensor(key, dtype=torch.long)
    return found


#: How many rows a call that only got empty batches is given instead (:func:`filled_if_empty`).
FILL_ROWS = 2


def only_empty(value: Any) -> bool:
    """Whether every tensor of a call's arguments is empty along dim 0 (and there is one): a detector's per-box
    head on an example where nothing was detected. Running it checks nothing and reading its channels finds
    nothing, since no value flows through an empty tensor."""
    tensors = flat_tensors(value)
    return bool(tensors) and all(t.dim() > 0 and t.shape[0] == 0 for t in tensors)


def filled_if_empty(value: Any, seed: int = 0) -> Any:
    """``value`` with each tensor, empty along dim 0, given :data:`FILL_ROWS` rows of seeded standard normal
    values (its dtype and device), or None when that cannot be done (a non-floating tensor: random indices or
    ids would be meaningless; another dim of size 0). The same ``seed`` gives the same tensors, so the analysis
    and the verifier (which cannot share state: ``slimnet apply`` verifies from the plan alone) use one input."""
    tensors = flat_tensors(value)
    if any(not t.is_floating_point() or 0 in t.shape[1:] for t in tensors):
        return None
    gen = torch.Generator().manual_seed(seed)
    filled = [torch.randn((FILL_ROWS, *t.shape[1:]), generator=gen).to(t.device, t.dtype) for t in tensors]
    return replace_tensors(value, filled)


# ------------------------------------------------------------------------------------------ calling models
def call_args(example: Any) -> tuple[tuple, dict[str, Any]]:
    """How an example input calls a model: a tensor is the one argument, a tuple the positional arguments, a
    dict the keyword arguments, and a list one argument that is a list (torchvision's detection models take
    ``model([image, ...])``); tuple elements and dict values may themselves be lists, tuples or dicts."""
    if isinstance(example, dict):
        return (), dict(example)
    if isinstance(example, tuple):
        return tuple(example), {}
    return (example,), {}


def call(model: nn.Module, example: Any) -> Any:
    """Call a model the way the example input says (:func:`call_args`)."""
    args, kwargs = call_args(example)
    return model(*args, **kwargs)


def as_args(example: Any) -> tuple[tuple[torch.Tensor, ...], list[str] | None]:
    """The example as positional tensors plus the keyword names (for a dict example), or an error."""
    if isinstance(example, torch.Tensor):
        return (example,), None
    if isinstance(example, dict) and all(isinstance(v, torch.Tensor) for v in example.values()):
        return tuple(example.values()), list(example)
    if isinstance(example, tuple) and all(isinstance(v, torch.Tensor) for v in example):
        return tuple(example), None
    raise SlimnetError(
        f"the example input is a {type(example).__name__}: give a tensor, a tuple or a dict of tensors"
        + (" (a list of images is not supported here)" if isinstance(example, list) else "")
    )


class PositionalCall(nn.Module):
    """Calls the model with the example's structure (args or kwargs) and returns a flat tuple of tensors, which
    is what the TorchScript tracer (under fvcore and the ONNX exporter) can digest. With ``structure`` (any
    example input, nested lists included), the positional tensors are that example's tensors in
    :func:`flat_tensors` order and are put back in its places."""

    def __init__(self, model: nn.Module, keys: Sequence[str] | None, structure: Any = None) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys) if keys is not None else None
        self.structure = structure

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.structure is not None:
            out = call(self.model, replace_tensors(self.structure, args))
        elif self.keys is not None:
            out = self.model(**dict(zip(self.keys, args)))
        else:
            out = self.model(*args)
        return tuple(flat_tensors(out))


def batch_input(example: Any, batch_size: int | None) -> Any:
    """The example repeated along dim 0 to ``batch_size`` rows (same structure: tensor, tuple or dict)."""
    if batch_size is None:
        return example
    if batch_size < 1:
        raise SlimnetError(f"batch_size={batch_size} (--batch-size) must be at least 1")

    def grow(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] == batch_size:
            return t
        reps = -(-batch_size // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size].contiguous()

    return map_tensors(example, grow)


def in_eval(model: nn.Module) -> nn.Module:
    """``model.eval()``, skipped when every module already is in eval mode: ``eval()`` sets an attribute on each
    module through ``nn.Module.__setattr__`` (efficientnet_b7: 1,100 of them, ~9 ms), and a shrink asks
    several times; reading the flags costs a tenth of that."""
    if any(m.training for m in model.modules()):
        model.eval()
    return model


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run in eval mode (dropout off, BN on running stats) and give every model back as it came."""
    modes = {m: m.training for model in models for m in model.modules()}
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.train(training)


def count_params(model: nn.Module) -> int:
    """Parameters, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def like_model(example: Any, model: nn.Module) -> Any:
    """``example`` on the model's device, its floating tensors in the model's floating dtype (the model may have
    moved to a GPU or changed precision since the Pruner was built)."""
    p = next(iter(model.parameters()), None)
    if p is None:
        return example
    floating = p.dtype if p.is_floating_point() else None
    return map_tensors(
        example,
        lambda t: t.to(p.device, floating) if floating is not None and t.is_floating_point() else t.to(p.device),
    )


def put_tensor(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set the tensor a state_dict ``name`` refers to, as a parameter or buffer where it is one (without
    nn.Module's type checks, so a plain tensor can stand in for a parameter), else as an attribute."""
    path, _, attr = name.rpartition(".")
    put_attr(root.get_submodule(path) if path else root, attr, value)


def put_attr(owner: nn.Module, attr: str, value: torch.Tensor) -> None:
    """Set ``owner``'s tensor ``attr`` (:func:`put_tensor` once the owner is found)."""
    if attr in owner._parameters:
        owner._parameters[attr] = value  # type: ignore[assignment]
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)
