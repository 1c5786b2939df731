"""Models run with other tensors in place of some of their own, without copying them: what the verifier
(:mod:`slimnet.verify`) compares. The masked reference and the float64 copies cost the tensors they change and
nothing else; every other tensor and attribute is shared with the model."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ._tensors import call, flat_tensors, map_tensors, put_tensor


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() else t)


#: One call of a submodule: its path, arguments, keyword arguments and outputs.
Call = tuple[str, tuple, dict, list[torch.Tensor]]


class Bound:
    """A model run with other tensors in place of some of its own: a copy of its module tree (:func:`_light_copy`)
    that shares every other tensor and attribute, so the masked reference and the float64 copies cost the
    tensors they change, never a copy of the whole model."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.model, self.state, self.dtype = model, state, dtype
        self.copy = _light_copy(model, state)

    def swap(self, tensors: dict[str, torch.Tensor], plan: dict[str, Any] | None = None) -> Bound:
        """The same model and tensors but ``tensors`` (cast, and masked by ``plan`` where it plans them)."""
        state, done = dict(self.state), {}
        for name, t in tensors.items():
            if id(t) not in done:  # tied names share one tensor
                dims = plan["tensors"].get(name) if plan is not None else None
                done[id(t)] = masked(t, dims, self.dtype) if dims else t.to(self.dtype)
            state[name] = done[id(t)]
        return Bound(self.model, state, self.dtype)

    def __call__(self, inp: Any) -> list[torch.Tensor]:
        with torch.no_grad():
            out = call(self.copy, _cast(inp, self.dtype))
        return [o.detach() for o in flat_tensors(out)]

    def calls(self, inp: Any, paths: list[str]) -> tuple[list[Call], list[torch.Tensor]]:
        """Every call of every submodule in ``paths`` while the model runs ``inp``, in call order (its arguments
        and outputs), and the model's own outputs."""
        calls: list[Call] = []
        hooks = []
        for path in paths:

            def record(_m: nn.Module, a: tuple, kw: dict, out: Any, path: str = path) -> None:
                calls.append((path, a, kw, [o.detach() for o in flat_tensors(out)]))

            hooks.append(self.copy.get_submodule(path).register_forward_hook(record, with_kwargs=True))
        try:
            out = self(inp)
        finally:
            for h in hooks:
                h.remove()
        return calls, out

    def piece(self, path: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """One piece run on given (already cast) arguments."""
        with torch.no_grad():
            out = self.copy.get_submodule(path)(*args, **kwargs)
        return [o.detach() for o in flat_tensors(out)]


def _light_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The module tree of ``model`` with the tensors named in ``state`` replaced: each module a shallow copy
    (new parameter, buffer and child dicts; every other attribute shared), a module that appears twice copied
    once. The model itself is not touched. Only for running the copy: nothing of it is returned to the user."""
    made: dict[int, nn.Module] = {}

    def visit(m: nn.Module) -> nn.Module:
        if id(m) not in made:
            new = copy.copy(m)
            made[id(m)] = new
            new.__dict__["_parameters"] = dict(m._parameters)
            new.__dict__["_buffers"] = dict(m._buffers)
            new.__dict__["_modules"] = {k: visit(c) if c is not None else None for k, c in m._modules.items()}
        return made[id(m)]

    root = visit(model)
    for name, t in state.items():
        put_tensor(root, name, t)
    return root


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it has (tied ones under each, as the same object)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return dict(named)


def state_of(tensors: dict[str, torch.Tensor], make: Any) -> dict[str, torch.Tensor]:
    """``make(name, tensor)`` for every name, once per tensor (tied names get the same object), keeping only
    the tensors ``make`` changed."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in tensors.items():
        if id(t) not in done:
            done[id(t)] = make(name, t)
        if done[id(t)] is not t:
            out[name] = done[id(t)]
    return out


def masked(t: torch.Tensor, dims: dict[str, list[int]], dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, zero outside the kept indices of each planned dim: one multiplication by a
    broadcast 0/1 mask, so the copy, the cast and the masking are one pass over the tensor."""
    mask = torch.ones((), dtype=dtype)
    for dim_s, idx in dims.items():
        dim = int(dim_s)
        keep = np.zeros(t.shape[dim])
        keep[np.asarray(idx, dtype=np.int64)] = 1.0
        shape = [1] * t.dim()
        shape[dim] = -1
        mask = mask * torch.from_numpy(keep).to(dtype).reshape(shape)
    return torch.mul(t, mask)
