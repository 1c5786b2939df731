"""Training state carried through a cut: the optimizer's per-parameter state and an EMA copy of the model.

A cut keeps every parameter object (:func:`slimnet.cut.surgeon.apply_plan` with ``keep_objects=True``): the
optimizer's ``param_groups`` and its ``state`` keys stay valid, and so do learning-rate schedulers, gradient
hooks and anything else holding a parameter. What changes is each pruned parameter's shape, so each state
tensor shaped like its parameter is sliced with the same plan: SGD's ``momentum_buffer``, Adam/AdamW's
``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq``, Adagrad's ``sum``, RMSprop's ``square_avg``, and any other
optimizer's tensors of the parameter's shape. A tensor that agrees with the parameter's dims where it is cut and
has size 1 there otherwise (a factored second moment, Adafactor's row and column variances) is sliced where it
matches. Scalars (``step``) stay. Any other tensor cannot be sliced faithfully (LBFGS keeps flattened history):
the cut is refused before anything changes, naming the optimizer and the entry, rather than leaving state that
no longer lines up with its parameter.

Why keep the parameter objects rather than build new ones and re-point the optimizer? Because many things hold
parameters besides the optimizer: LR schedulers and gradient scalers reach them through ``param_groups``; tied
weights, ``register_hook``/``register_post_accumulate_grad_hook`` hooks, Lightning's and Hugging Face's trainers
keep references. Assigning ``.data`` keeps all of them consistent at once; re-pointing would have to find each.

An EMA copy (timm's ``ModelEmaV2``/``ModelEmaV3``, ``torch.optim.swa_utils.AveragedModel``, or a plain copy of
the model) is cut with the same plan: its ``.module`` (or itself) must have the model's state_dict names and the
model's shapes before the cut.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import SlimnetError

Dims = dict[str, list[int]]  # a plan entry: dim (a string) -> kept indices


def _sliceable_dims(value: torch.Tensor, shape: tuple[int, ...], dims: Dims) -> list[int] | None:
    """The cut dims along which ``value`` follows its parameter (old ``shape``), or None if it does not."""
    if value.dim() == 0 or value.numel() == 1:
        return []
    if value.dim() != len(shape):
        return None
    if tuple(value.shape) == shape:
        return [int(d) for d in dims]
    cut = [int(d) for d in dims if value.shape[int(d)] == shape[int(d)]]
    uncut_agree = all(value.shape[i] in (shape[i], 1) for i in range(len(shape)))
    others_one = all(value.shape[int(d)] == 1 for d in dims if int(d) not in cut)
    return cut if uncut_agree and others_one else None


def check_optimizer(optimizer: Any, targets: dict[int, tuple[nn.Parameter, tuple[int, ...], Dims]]) -> None:
    """Refuse (before anything is cut) optimizer state that cannot be sliced with the plan."""
    for p in _params(optimizer):
        if id(p) not in targets:
            continue
        _, shape, dims = targets[id(p)]
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor):
                ok = _sliceable_dims(value, shape, dims) is not None
            else:
                ok = not isinstance(value, (list, tuple, dict))
            if not ok:
                raise SlimnetError(
                    f"{type(optimizer).__name__}'s state entry {key!r} of a pruned parameter is not shaped like it "
                    f"({_shape_of(value)} vs {list(shape)}): slimnet cannot carry it through the cut; use another "
                    "optimizer or rebuild it after the cut"
                )


def slice_optimizer(optimizer: Any, targets: dict[int, tuple[nn.Parameter, tuple[int, ...], Dims]]) -> int:
    """Slice the state of every parameter in ``targets`` (id -> (parameter, shape before the cut, plan dims));
    returns how many state tensors were sliced. Call :func:`check_optimizer` first."""
    sliced = 0
    for p in _params(optimizer):
        if id(p) not in targets or p not in optimizer.state:
            continue
        _, shape, dims = targets[id(p)]
        entry = optimizer.state[p]
        for key, value in list(entry.items()):
            if not isinstance(value, torch.Tensor):
                continue
            cut = _sliceable_dims(value, shape, dims) or []
            for d in sorted(cut):
                value = value.index_select(d, torch.as_tensor(dims[str(d)], dtype=torch.long, device=value.device))
            if cut:
                entry[key] = value.contiguous()
                sliced += 1
    return sliced


def _params(optimizer: Any) -> Iterable[nn.Parameter]:
    seen: set[int] = set()
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                yield p


def _shape_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    return type(value).__name__


def unwrap(optimizer: Any) -> Any:
    """The torch optimizer inside a trainer's wrapper (Accelerate's ``AcceleratedOptimizer.optimizer``,
    Lightning's ``LightningOptimizer._optimizer``), whose ``state`` and step hooks are the real ones."""
    for attr in ("optimizer", "_optimizer"):
        inner = getattr(optimizer, attr, None)
        if isinstance(inner, torch.optim.Optimizer):
            return unwrap(inner)
    return optimizer


def ema_module(ema: Any) -> nn.Module:
    """The module an EMA object averages into: ``ema.module`` (timm's ModelEma*, AveragedModel) or ``ema``."""
    inner = getattr(ema, "module", None)
    if isinstance(inner, nn.Module):
        return inner
    if isinstance(ema, nn.Module):
        return ema
    raise SlimnetError(
        f"ema={type(ema).__name__} is not an EMA of the model: give timm's ModelEmaV3, "
        "torch.optim.swa_utils.AveragedModel or a copy of the model"
    )


def check_ema(module: nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """The EMA copy must hold every planned tensor, with the model's shape before the cut."""
    state = module.state_dict(keep_vars=True)
    for name, shape in shapes.items():
        if name not in state:
            raise SlimnetError(f"the EMA model has no tensor {name!r}: is it a copy of the pruned model?")
        if tuple(state[name].shape) != shape:
            raise SlimnetError(
                f"the EMA model's {name} has shape {list(state[name].shape)}, the model's {list(shape)}: "
                "was it cut with the model at every earlier cut?"
            )
