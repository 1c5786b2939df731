"""Training-free repair, applied to the pruned model *after* the verifier has proved the cut exact.

* :func:`recalibrate_bn` re-estimates every BatchNorm's running mean and variance on the calibration data (NNCF's
  batch-norm adaptation): a pruned network's activations no longer have the statistics the original's norms
  learnt, and normalising with stale ones shifts every later layer.
* :func:`compensate_bias` folds the mean contribution of each removed input channel into its consumer's bias
  (FLAP's bias compensation). A consumer ``y = f(x)`` that is affine in its input (linear, convolution,
  transposed convolution, Hugging Face Conv1D) loses ``f(x_removed) - f(0)``; its mean over the calibration data
  (per output channel, over samples and positions, so zero padding at borders is accounted for) is added to the
  bias, which makes the layer's mean output over that data what the original's was: exact in expectation.
  A consumer without a bias whose output goes straight into a BatchNorm folds it into that norm's
  ``running_mean`` instead (the norm computes ``y - mean``: lowering the mean by what ``y`` lost is the same
  shift); a consumer with neither is left alone and reported. Means are taken on the original model's
  activations, as FLAP does.

Both change weights that the plan does not describe: a repaired model is no longer what ``slimnet apply``
rebuilds from the plan, and the report says which repairs ran.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._tensors import call, eval_mode
from .._util import lookup
from ..groups import Analysis
from ..rank.statistics import CHANNEL_DIM, WEIGHT_INPUT_DIM, owner


def recalibrate_bn(model: nn.Module, batches: Iterable[Any]) -> int:
    """Reset and re-estimate the running statistics of every BatchNorm over all batches (a cumulative average,
    not a momentum one, so the result depends only on the data). Returns how many norms were re-estimated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    with eval_mode(model), torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for batch in batches:
                call(model, batch)
        finally:
            for m, momentum in zip(norms, momenta):
                m.momentum = momentum
    return len(norms)


@dataclass
class Compensation:
    """Which consumers took the removed channels' mean, and where it went."""

    into_bias: list[str] = field(default_factory=list)
    into_norm: list[str] = field(default_factory=list)  # "conv -> bn"
    skipped: list[str] = field(default_factory=list)  # "name: why"

    def describe(self) -> dict[str, Any]:
        return {"into_bias": self.into_bias, "into_norm": self.into_norm, "skipped": self.skipped}


def removed_inputs(analysis: Analysis, plan: dict[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Consumer module -> mask (1 = removed) over its input channels, for every planned input dim of a weight
    whose layout is known (grouped convolutions lose whole groups, inputs with their outputs: nothing to fold)."""
    masks: dict[str, torch.Tensor] = {}
    for g in analysis.groups:
        for (name, dim), role in g.roles.items():
            kept = plan["tensors"].get(name, {}).get(str(dim))
            if role != "in" or kept is None or owner(name) in masks:
                continue
            mod = model.get_submodule(owner(name))
            if lookup(WEIGHT_INPUT_DIM, type(mod)) != dim or int(getattr(mod, "groups", 1) or 1) != 1:
                continue
            mask = torch.ones(analysis.shapes[name][dim])
            mask[torch.as_tensor(kept, dtype=torch.long)] = 0.0
            masks[owner(name)] = mask
    return masks


def _missing_means(original: nn.Module, masks: dict[str, torch.Tensor], batches: Iterable[Any]) -> tuple:
    """Per consumer, the mean over the data of ``f(x * removed) - f(0)`` per output channel, and the BatchNorm
    (if any) that reads the consumer's output directly."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    follower: dict[str, str] = {}
    last_out: dict[str, torch.Tensor] = {}
    busy: set[str] = set()

    def consumer_hook(name: str, cdim: int) -> Callable[..., None]:
        def fn(m: nn.Module, args: tuple, out: Any) -> None:
            if name in busy or not args or not isinstance(out, torch.Tensor):
                return
            x = args[0]
            shape = [1] * x.dim()
            shape[cdim] = -1
            busy.add(name)
            try:
                delta = m(x * masks[name].to(x).view(shape), *args[1:]) - m(torch.zeros_like(x), *args[1:])
            finally:
                busy.discard(name)
            flat = delta.movedim(cdim, -1).reshape(-1, delta.shape[cdim]).double()
            sums[name] = sums.get(name, 0) + flat.sum(0)
            counts[name] = counts.get(name, 0) + flat.shape[0]
            last_out[name] = out

        return fn

    def norm_hook(bn_name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple) -> None:
            for name, out in last_out.items():
                if args and args[0] is out:
                    follower.setdefault(name, bn_name)

        return fn

    handles = []
    for name, mod in original.named_modules():
        if name in masks:
            cdim = lookup(CHANNEL_DIM, type(mod))
            handles.append(mod.register_forward_hook(consumer_hook(name, -1 if cdim is None else cdim)))
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            handles.append(mod.register_forward_pre_hook(norm_hook(name)))
    try:
        with eval_mode(original), torch.no_grad():
            for batch in batches:
                last_out.clear()
                call(original, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: s / counts[n] for n, s in sums.items()}, follower


def compensate_bias(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], analysis: Analysis, batches: Iterable[Any]
) -> Compensation:
    """Fold the removed input channels' mean contribution into each consumer's bias (or the BatchNorm right
    after it) in ``pruned``, in place; ``original`` is left as it was."""
    result = Compensation()
    masks = removed_inputs(analysis, plan, original)
    means, follower = _missing_means(original, masks, batches)
    tensors = pruned.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in sorted(masks):
            delta = means.get(name)
            if delta is None:
                result.skipped.append(f"{name}: not called as a module on the calibration data")
                continue
            bias = tensors.get(f"{name}.bias")
            if isinstance(bias, torch.Tensor):
                bias.add_(_kept(delta, plan, f"{name}.bias").to(bias))
                result.into_bias.append(name)
                continue
            bn = follower.get(name)
            if bn is not None and isinstance(tensors.get(f"{bn}.running_mean"), torch.Tensor):
                mean = tensors[f"{bn}.running_mean"]
                mean.sub_(_kept(delta, plan, f"{bn}.running_mean").to(mean))
                result.into_norm.append(f"{name} -> {bn}")
                continue
            result.skipped.append(f"{name}: no bias and no BatchNorm right after it")
    return result


def _kept(values: torch.Tensor, plan: dict[str, Any], tensor: str) -> torch.Tensor:
    """``values`` (one per original output channel) at the indices the plan keeps of ``tensor``'s dim 0."""
    kept = plan["tensors"].get(tensor, {}).get("0")
    return values if kept is None else values[torch.as_tensor(kept, dtype=torch.long)]
