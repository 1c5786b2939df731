"""The surgeon: rewrite a model into a smaller dense one by slicing every planned tensor.

It reads the plan and nothing else (it never ranks). Each planned tensor is replaced by exactly the original
sliced along its planned dims; then every module whose tensors changed gets its size attributes updated by
its entry in :data:`SURGERY` (one small function per module type, found by the class's MRO). A module type
with no entry just keeps its sliced tensors, which is right for modules that read sizes off their tensors.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._tensors import index_tensor, put_tensor
from .._util import lookup
from ..errors import SlimnetError
from ..modules import SlimMultiheadAttention
from .sizes import recompute

Fixer = Callable[[nn.Module], "nn.Module | None"]  # may return a replacement module
#: One registry of per-module surgery rules: module class (or qualified class name, for optional libraries)
#: -> fixer that updates its size attributes.
SURGERY: dict[type | str, Fixer] = {}


def surgery(*classes: type | str) -> Callable[[Fixer], Fixer]:
    def deco(fn: Fixer) -> Fixer:
        for c in classes:
            SURGERY[c] = fn
        return fn

    return deco


@surgery(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Module) -> None:
    per_group_out = m.out_channels // m.groups
    new_out = m.weight.shape[0]
    groups = m.groups if m.groups == 1 else new_out // per_group_out
    m.groups = groups
    m.out_channels = new_out
    m.in_channels = m.weight.shape[1] * groups


@surgery(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(m: nn.Module) -> None:
    per_group_in = m.in_channels // m.groups
    new_in = m.weight.shape[0]
    groups = m.groups if m.groups == 1 else new_in // per_group_in
    m.groups = groups
    m.in_channels = new_in
    m.out_channels = m.weight.shape[1] * groups


@surgery(nn.Linear)
def _linear(m: nn.Module) -> None:
    m.out_features, m.in_features = m.weight.shape


@surgery(nn.modules.batchnorm._NormBase)
def _batchnorm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@surgery(nn.GroupNorm)
def _groupnorm(m: nn.Module) -> None:
    per_group = m.num_channels // m.num_groups
    m.num_channels = m.weight.shape[0]
    m.num_groups = m.num_channels // per_group


@surgery(nn.LayerNorm)
def _layernorm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.bias
    m.normalized_shape = tuple(t.shape)


if hasattr(nn, "RMSNorm"):
    surgery(nn.RMSNorm)(_layernorm)


@surgery(nn.PReLU)
def _prelu(m: nn.Module) -> None:
    m.num_parameters = m.weight.shape[0]


@surgery(nn.Embedding)
def _embedding(m: nn.Module) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@surgery(nn.MultiheadAttention)
def _mha(m: nn.Module) -> nn.Module | None:
    """Heads removed: nn.MultiheadAttention cannot have an inner width other than embed_dim, so it is
    replaced by SlimMultiheadAttention holding the very same (sliced) parameters."""
    head_dim = m.head_dim
    if m.in_proj_weight.shape[0] == 3 * m.embed_dim and m.in_proj_weight.shape[1] == m.embed_dim:
        return None
    _linear(m.out_proj)
    return SlimMultiheadAttention(m, m.in_proj_weight, m.in_proj_bias, m.out_proj, head_dim)


@surgery(SlimMultiheadAttention)
def _slim_mha(m: nn.Module) -> None:
    """Heads removed from an already pruned attention (a model shrunk again): the head size stays, the counts
    follow the sliced tensors."""
    _linear(m.out_proj)
    packed = m._qkv_same_embed_dim
    ref = m.in_proj_weight if packed else m.q_proj_weight
    m.num_heads = ref.shape[0] // ((3 if packed else 1) * m.head_dim)
    m.embed_dim = ref.shape[1]
    m.kdim = m.embed_dim if packed else m.k_proj_weight.shape[1]
    m.vdim = m.embed_dim if packed else m.v_proj_weight.shape[1]


@surgery("transformers.pytorch_utils.Conv1D")
def _hf_conv1d(m: nn.Module) -> None:
    m.nx, m.nf = m.weight.shape


def _slice(t: torch.Tensor, dims: dict[str, list[int]], name: str, cache: dict | None = None) -> torch.Tensor:
    out = t.detach()
    for dim_s, idx in sorted(dims.items(), key=lambda kv: int(kv[0])):
        dim = int(dim_s)
        if dim >= out.dim():
            raise SlimnetError(f"plan does not fit the model: {name} has {out.dim()} dims, the plan cuts dim {dim}")
        if idx and (idx[-1] >= out.shape[dim] or idx[0] < 0):
            raise SlimnetError(
                f"plan does not fit the model: {name} dim {dim} has size {out.shape[dim]}, the plan keeps index "
                f"{idx[-1]} (was the plan made for another model?)"
            )
        out = out.index_select(dim, index_tensor(idx, cache).to(out.device))
    # index_select made a new tensor (a clone would copy it again); with no dim cut it is still the original's
    return out if dims else out.clone()


def _sliced(model: nn.Module, plan: dict[str, Any]) -> dict[int, torch.Tensor]:
    """id(original tensor) -> its sliced replacement, for every planned tensor (tied ones sliced once)."""
    state = model.state_dict(keep_vars=True)
    missing = [n for n in plan["tensors"] if n not in state]
    if missing:
        raise SlimnetError(
            f"plan does not fit the model: it has no tensor {missing[0]!r} (was the plan made for another model?)"
        )
    new_by_id: dict[int, torch.Tensor] = {}
    cache: dict = {}
    for name, dims in plan["tensors"].items():
        old = state[name]
        if id(old) not in new_by_id:
            new = _slice(old, dims, name, cache)
            if isinstance(old, nn.Parameter):
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            new_by_id[id(old)] = new
    return new_by_id


def pruned_copy(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """A pruned copy of ``model``; the full-size planned tensors are never copied (peak memory: original +
    pruned), and ``model`` is left as it was."""
    memo: dict[int, Any] = dict(_sliced(model, plan))
    for m in model.modules():  # a module's empty hook dicts and sets, copied here: deepcopy's generic path
        for v in m.__dict__.values():  # for them (OrderedDict and set are C types whose slot names it cannot
            if type(v) in (OrderedDict, dict, set) and not v:  # cache) was over half of efficientnet_b7's copy
                memo[id(v)] = type(v)()
    clone = copy.deepcopy(model, memo=memo)
    return _fix_modules(clone, plan)


def apply_plan(model: nn.Module, plan: dict[str, Any], *, keep_objects: bool = False) -> nn.Module:
    """Slice ``model`` in place according to ``plan`` and fix the size attributes; returns ``model``.

    ``keep_objects``: every planned parameter and buffer stays the same tensor object and takes its sliced
    values (``tensor.data = ...``; a parameter's ``.grad`` is sliced likewise), so that whatever holds a
    reference to it (an optimizer's param_groups and state, an LR scheduler, hooks, tied weights) stays attached:
    this is how :class:`slimnet.train.pruner.Pruner` cuts a model in the middle of training. Otherwise planned tensors
    are replaced by new ones."""
    state = model.state_dict(keep_vars=True)
    new_by_id = _sliced(model, plan)
    done: set[int] = set()
    for name, dims in plan["tensors"].items():
        old = state[name]
        new = new_by_id[id(old)]
        if keep_objects:
            if id(old) not in done:
                _assign(old, new, dims, name)
                done.add(id(old))
            continue
        put_tensor(model, name, new)
    return _fix_modules(model, plan)


def _assign(old: torch.Tensor, new: torch.Tensor, dims: dict[str, list[int]], name: str) -> None:
    """``old`` takes the values (and shape) of ``new``; its gradient, if any, is sliced with the same plan."""
    grad = old.grad
    if grad is not None:
        grad = _slice(grad, dims, f"{name}.grad") if grad.shape == old.shape else None
        old.grad = None
    if old.requires_grad:
        # A change of dtype is what makes autograd drop the parameter's cached gradient accumulator, whose
        # shape a graph still alive (the last step's ``loss``, kept by the loop) would otherwise pin to the old one.
        other = torch.float64 if old.dtype != torch.float64 else torch.float32
        old.data = torch.empty(0, dtype=other, device=old.device)
    old.data = new.detach()
    if grad is not None:
        old.grad = grad


def _fix_modules(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Update the size attributes of every module whose tensors the plan changed (or replace the module)."""
    touched = {name.rpartition(".")[0] for name in plan["tensors"]}
    for mod_name in sorted(touched, key=lambda n: (-n.count("."), n)):  # children before their parents
        mod = model.get_submodule(mod_name) if mod_name else model
        fix = lookup(SURGERY, type(mod))
        if fix is None:
            continue
        replacement = fix(mod)
        if replacement is not None:
            parent_name, _, child = mod_name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, replacement)
    # size attributes a parent's forward reads (GPT-2's split_size): recomputed from the pruned tensors
    ancestors = {name.rsplit(".", k)[0] for name in touched for k in range(1, name.count(".") + 1)} | {""}
    for mod_name in sorted(touched | ancestors):
        recompute(model.get_submodule(mod_name) if mod_name else model)
    return model


def mask_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Zero every planned tensor outside its kept indices, in place (the verifier's reference)."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, dims in plan["tensors"].items():
            t = state[name]
            for dim_s, idx in dims.items():
                dim = int(dim_s)
                keep = torch.zeros(t.shape[dim], dtype=torch.bool, device=t.device)
                keep[torch.as_tensor(idx, dtype=torch.long)] = True
                shape = [1] * t.dim()
                shape[dim] = -1
                t.mul_(keep.reshape(shape).to(t.dtype))
    return model
