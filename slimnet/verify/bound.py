"""Models run with other tensors in place of some of their own, without copying them: what the verifier
(:mod:`slimnet.verify.verifier`) compares. The masked reference and the float64 copies cost the tensors they change and
nothing else; every other tensor and attribute is shared with the model."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .._buffers import pooled
from .._tensors import call, flat_tensors, keep_vector, map_tensors, put_attr, put_tensor
from .layer_masks import LayerMask, WithheldUsed, masked_forward, withheld


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() else t)


#: One call of a submodule: its path, arguments, keyword arguments and outputs.
Call = tuple[str, tuple, dict, list[torch.Tensor]]


class Bound:
    """A model run with other tensors in place of some of its own: a copy of its module tree (:func:`_light_copy`)
    that shares every other tensor and attribute, so the masked reference and the float64 copies cost the
    tensors they change, never a copy of the whole model."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype,
                 layers: dict[str, LayerMask] | None = None,
                 planned: dict[str, Any] | None = None) -> None:  # fmt: skip
        """``layers``: convolutions and linear layers masked through their activations instead of a masked copy
        of their weight (:mod:`slimnet.verify.layer_masks`), with ``planned`` (the plan's tensors) to mask those
        weights after all should the model read one outside its layer."""
        self.model, self.state, self.dtype = model, state, dtype
        self.layers, self.planned = dict(layers or {}), planned or {}
        self.copy = _light_copy(model, state, self.layers)

    def swap(self, tensors: dict[str, torch.Tensor], plan: dict[str, Any] | None = None) -> Bound:
        """The same model and tensors but ``tensors`` (cast, and masked by ``plan`` where it plans them)."""
        state, done, masks = dict(self.state), {}, {}
        for name, t in tensors.items():
            if id(t) not in done:  # tied names share one tensor
                dims = plan["tensors"].get(name) if plan is not None else None
                done[id(t)] = masked(t, dims, self.dtype, masks=masks) if dims else t.to(self.dtype)
            state[name] = done[id(t)]
        layers = {path: lm for path, lm in self.layers.items() if lm.name not in tensors}  # a swapped weight: as given
        return Bound(self.model, state, self.dtype, layers, self.planned)

    def _run(self, fn: Any) -> Any:
        """``fn()``; when the model computed with a weight its layer masks (read outside the layer), the layers'
        weights are masked by copy after all and ``fn`` runs again."""
        try:
            return fn()
        except WithheldUsed:
            if not self.layers:
                raise
        for lm in self.layers.values():
            self.state[lm.name] = masked(lm.weight, self.planned[lm.name], self.dtype)
        self.layers = {}
        self.copy = _light_copy(self.model, self.state, self.layers)
        return fn()

    def __call__(self, inp: Any) -> list[torch.Tensor]:
        return self._run(lambda: self._forward(inp))

    def _forward(self, inp: Any) -> list[torch.Tensor]:
        with torch.no_grad():
            out = call(self.copy, _cast(inp, self.dtype))
        return [o.detach() for o in flat_tensors(out)]

    def calls(self, inp: Any, paths: list[str]) -> tuple[list[Call], list[torch.Tensor]]:
        """Every call of every submodule in ``paths`` while the model runs ``inp``, in call order (its arguments
        and outputs), and the model's own outputs."""
        return self._run(lambda: self._calls(inp, paths))

    def _calls(self, inp: Any, paths: list[str]) -> tuple[list[Call], list[torch.Tensor]]:
        calls: list[Call] = []
        hooks = []
        for path in paths:

            def record(_m: nn.Module, a: tuple, kw: dict, out: Any, path: str = path) -> None:
                calls.append((path, a, kw, [o.detach() for o in flat_tensors(out)]))

            hooks.append(self.copy.get_submodule(path).register_forward_hook(record, with_kwargs=True))
        try:
            out = self._forward(inp)
        finally:
            for h in hooks:
                h.remove()
        return calls, out

    def piece(self, path: str, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        """One piece run on given (already cast) arguments."""

        def run() -> list[torch.Tensor]:
            with torch.no_grad():
                out = self.copy.get_submodule(path)(*args, **kwargs)
            return [o.detach() for o in flat_tensors(out)]

        return self._run(run)


def _light_copy(model: nn.Module, state: dict[str, torch.Tensor],
                layers: dict[str, LayerMask] | None = None) -> nn.Module:  # fmt: skip
    """The module tree of ``model`` with the tensors named in ``state`` replaced: each module a shallow copy
    (new parameter, buffer and child dicts; every other attribute shared), a module that appears twice copied
    once; each layer in ``layers`` runs :func:`slimnet.verify.layer_masks.masked_forward` with a stand-in weight. The
    model itself is not touched. Only for running the copy: nothing of it is returned to the user."""
    made: dict[int, nn.Module] = {}
    at: dict[str, nn.Module] = {}  # every path of the copy (a module that appears twice under each)

    def visit(m: nn.Module, path: str) -> nn.Module:
        if id(m) not in made:
            new = copy.copy(m)
            made[id(m)] = new
            new.__dict__["_parameters"] = dict(m._parameters)
            new.__dict__["_buffers"] = dict(m._buffers)
            new.__dict__["_modules"] = {
                k: visit(c, f"{path}.{k}" if path else k) if c is not None else None for k, c in m._modules.items()
            }
        at[path] = made[id(m)]
        return made[id(m)]

    root = visit(model, "")
    for name, t in state.items():
        path, _, attr = name.rpartition(".")
        owner = at.get(path)
        if owner is None:  # not a module path (an attribute path fx made): the general lookup
            put_tensor(root, name, t)
        else:
            put_attr(owner, attr, t)
    for path, lm in (layers or {}).items():
        layer = at.get(path) or root.get_submodule(path)
        layer._parameters["weight"] = withheld(lm.weight)  # type: ignore[assignment]
        layer.forward = masked_forward(layer, lm)  # an instance attribute: the class's forward is untouched
    return root


def tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it has (tied ones under each, as the same object)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return dict(named)


def cast_state(tensors: dict[str, torch.Tensor], dtype: torch.dtype,
               planned: dict[str, dict[str, list[int]]] | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """The tensors that change for a run in ``dtype`` with ``planned`` masked (:func:`masked`): each planned
    tensor (masked, and in ``dtype`` when floating) and every other floating tensor not in ``dtype``, once per
    tensor (tied names get the same object); the others are left out (shared). The new floating tensors are
    views of one buffer (:func:`slimnet._buffers.pooled`: the page faults of fresh memory were most of the
    copy's cost)."""
    planned, masks = planned or {}, {}
    todo: dict[int, tuple[torch.Tensor, dict[str, list[int]] | None]] = {}
    names: dict[int, list[str]] = {}
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if id(t) not in names:
            names[id(t)] = []
            dims = planned.get(name)
            if dims is not None and not t.is_floating_point():
                out[name] = masked(t, dims, t.dtype, masks=masks)
            elif dims is not None or (t.is_floating_point() and t.dtype != dtype):
                todo[id(t)] = (t, dims)
        names[id(t)].append(name)
    buffers = pooled([t.shape for t, _ in todo.values()], dtype)
    for (key, (t, dims)), buf in zip(todo.items(), buffers):
        made = masked(t, dims, dtype, out=buf, masks=masks) if dims is not None else buf.copy_(t.detach())
        for name in names[key]:
            out[name] = made
    for name, t in tensors.items():  # the other names of a tied integer tensor
        first = names[id(t)][0]
        if first in out and name not in out:
            out[name] = out[first]
    return out


def masked(t: torch.Tensor, dims: dict[str, list[int]], dtype: torch.dtype, out: torch.Tensor | None = None,
           masks: dict | None = None) -> torch.Tensor:  # fmt: skip
    """``t`` in ``dtype``, zero outside the kept indices of each planned dim: multiplied by one broadcast 0/1
    vector per dim (a product of the vectors would be as large as a 1x1 convolution's weight), so the copy,
    the cast and the first dim's masking are one pass over the tensor (into ``out`` when given). ``masks``: a
    dict kept by the caller across calls; tensors with the same kept indices (a norm's weight, bias and
    statistics) then share the vectors instead of building them again."""
    if not dims:
        return t.to(dtype) if out is None else out.copy_(t.detach())
    vectors = []
    for dim_s, idx in dims.items():
        dim = int(dim_s)
        key = (t.dim(), dim, t.shape[dim], dtype, tuple(idx))
        vector = masks.get(key) if masks is not None else None
        if vector is None:
            shape = [1] * t.dim()
            shape[dim] = -1
            vector = keep_vector(t.shape[dim], key[-1], dtype).reshape(shape)
            if masks is not None:
                masks[key] = vector
        vectors.append(vector)
    result = torch.mul(t, vectors[0]) if out is None else torch.mul(t.detach(), vectors[0], out=out)
    for vector in vectors[1:]:
        result.mul_(vector)
    return result
