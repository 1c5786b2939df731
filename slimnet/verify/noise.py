"""Seeded noise for constant tensors: the verifier's second check (:mod:`slimnet.verify.verifier`, "Constant tensors")
and the randomiser that tests and tools use to make every channel of a freshly initialised model
distinguishable. One noise function, so that both see the same values for the same tensor name."""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch
from torch import nn

from .._tensors import index_tensor


def constant_tensors(model: nn.Module) -> list[str]:
    """State-dict names of floating parameters and norm running statistics of more than one element whose
    elements are all equal (tied names listed once)."""
    state = model.state_dict(keep_vars=True)
    names = []
    for name in _noisy_names(model):
        flat = state[name].detach().reshape(-1)
        # the first elements settle it for nearly every trained or random tensor without reading the rest
        if flat.numel() > 1 and bool((flat[:16] == flat[0]).all()) and bool((flat == flat[0]).all()):
            names.append(name)
    return names


def _noise(name: str, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Seeded by the tensor's name (and ``seed``): around the tensor's mean, at a scale that keeps activations
    in range: 1/sqrt(fan-in) for weight matrices and kernels, 0.1 for vectors (0.1 of the mean's size when that
    is above 1); running variances stay positive."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
    value = float(t.double().mean())
    z = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    if name.endswith("running_var"):
        return (abs(value) or 1.0) * (0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
    if t.dim() >= 2:
        return value + z / math.sqrt(max(1, t.numel() // t.shape[0]))
    return value + 0.1 * z * max(abs(value), 1.0)


def randomise(model: nn.Module, names: list[str] | None = None, seed: int = 0) -> nn.Module:
    """Replace tensors of ``model`` in place with seeded noise (see :func:`_noise`): the ``names`` given, or every
    floating parameter and norm running statistic. A wrong cut cannot hide behind a randomised tensor, which is
    what the verifier's second check does with constant tensors, and what tests and tools use to make every
    channel of a freshly initialised model distinguishable."""
    state = model.state_dict(keep_vars=True)
    chosen = names if names is not None else _noisy_names(model)
    with torch.no_grad():
        for name in chosen:
            t = state[name]
            t.copy_(_noise(name, t, seed).to(t.dtype))
    return model


def _noisy_names(model: nn.Module) -> list[str]:
    """Floating parameters and norm running statistics, each tensor once."""
    buffers = {n for n, _ in model.named_buffers() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    params = {n for n, _ in model.named_parameters()}
    names, seen = [], set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or (name not in params and name not in buffers) or not t.is_floating_point():
            continue
        seen.add(id(t))
        names.append(name)
    return names


def _noise_for(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same seeded noise for both models' constant tensors, sliced by the plan on the pruned side (an
    AssertionError when the pruned model's tensor has another shape). Keyed by state_dict name; a tied name
    finds its tensor's noise through any of its names."""
    source = original.state_dict(keep_vars=True)
    cand_tensors = pruned.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for alias, t in source.items():
        names_of.setdefault(id(t), []).append(alias)
    ref: dict[str, torch.Tensor] = {}
    cand: dict[str, torch.Tensor] = {}
    indices: dict = {}
    for name in names:
        noise = _noise(name, source[name].detach()).to(source[name].dtype)
        sliced = noise
        for dim_s, idx in plan["tensors"].get(name, {}).items():
            sliced = sliced.index_select(int(dim_s), index_tensor(idx, indices))
        for alias in names_of[id(source[name])]:
            ref[alias] = noise
            if alias in cand_tensors:
                if tuple(sliced.shape) != tuple(cand_tensors[alias].shape):
                    shape = tuple(cand_tensors[alias].shape)
                    raise AssertionError(f"{alias}: planned shape {tuple(sliced.shape)} != {shape}")
                cand[alias] = sliced
    return ref, cand
