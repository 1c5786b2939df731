"""Statistics from calibration data, for the data-driven criteria (:mod:`slimnet.rank.data_criteria`).

This is the one place that hooks modules or takes gradients for ranking; the criteria then read only the
tensors collected here, like the magnitude criteria read weights. Two kinds of evidence:

* **Channel statistics** (``activation``, ``apoz``, ``wanda``): a forward hook on each module that owns a
  parameter member of a prunable group records, per channel of its input and of its output, the sum of
  ``|x|``, the sum of ``x**2`` and how many values are positive. The channel dimension is 1 for convolutions
  and batch/instance/group norms and the last dimension otherwise (:data:`CHANNEL_DIM`). A group's member
  with role ``"in"`` (a consumer's input channels) reads the module's input statistics, every other member its
  output statistics: the statistics are per member *index*, so heads and grouped units sum their slices.
* **Gradients** (``taylor``): per-element importance tensors, one per parameter, from the loss on calibration
  data (:func:`collect_gradients`): first order ``|w * dL/dw|`` for a loss (by default cross-entropy against
  the model's own predictions, for classifiers), or, for models that are not classifiers, a Fisher-style second
  order score ``sum over batches of (w * dL_b/dw)**2`` where ``L_b`` projects the outputs on seeded standard
  normal noise: its expectation is ``w**2`` times the diagonal of ``J^T J``, the Fisher information of a unit
  Gaussian around the model's own output (the distance to the original output is no loss here: before any cut
  it and its gradient are exactly zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import call, flat_tensors
from .._util import lookup
from ..errors import SlimnetError
from ..groups import Analysis

#: Dimension of a module's input/output activations that indexes its channels (default: the last one).
CHANNEL_DIM: dict[type | str, int] = {
    nn.modules.conv._ConvNd: 1,
    nn.modules.batchnorm._NormBase: 1,
    nn.GroupNorm: 1,
}
#: Which dim of a module's ``weight`` multiplies its input channels (wanda): nn.Linear [out, in], convolutions
#: [out, in/groups, ...], transposed convolutions and Hugging Face's Conv1D [in, out...].
WEIGHT_INPUT_DIM: dict[type | str, int] = {
    nn.Linear: 1,
    nn.Conv1d: 1,
    nn.Conv2d: 1,
    nn.Conv3d: 1,
    nn.modules.conv._ConvTransposeNd: 0,
    "transformers.pytorch_utils.Conv1D": 0,
}

Loss = Callable[[Any, Any], torch.Tensor]  # (model output, batch) -> scalar


@dataclass
class ChannelStats:
    """Per-channel sums over every calibration value seen in one activation."""

    abs_sum: torch.Tensor
    sq_sum: torch.Tensor
    positive: torch.Tensor
    count: int = 0  # values seen per channel

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.count, 1)

    @property
    def norm(self) -> torch.Tensor:
        """The L2 norm of the channel over all calibration values (Wanda's ``||X_j||``)."""
        return self.sq_sum.sqrt()

    @property
    def active(self) -> torch.Tensor:
        """Fraction of positive values: 1 - APoZ (a non-positive value is off after ReLU, GELU or SiLU)."""
        return self.positive / max(self.count, 1)


@dataclass
class Statistics:
    """What the data-driven criteria read: channel statistics per module, importance tensors per parameter."""

    inputs: dict[str, ChannelStats] = field(default_factory=dict)
    outputs: dict[str, ChannelStats] = field(default_factory=dict)
    input_scale: dict[str, torch.Tensor] = field(default_factory=dict)  # weight name -> ||X|| broadcast to it
    importance: dict[str, torch.Tensor] = field(default_factory=dict)  # parameter name -> per-element score
    taylor_mode: str = ""  # "first-order" or "fisher"


def owner(tensor: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1``."""
    return tensor.rpartition(".")[0]


def member_modules(analysis: Analysis, params: set[str]) -> set[str]:
    """Modules that own a parameter member of a prunable group: the only ones worth hooking."""
    return {owner(t) for g in analysis.groups if g.prunable for t, _ in g.members if t in params}


def _accumulate(table: dict[str, ChannelStats], name: str, x: Any, cdim: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        return
    x = x.detach()
    flat = x.movedim(cdim if x.dim() > 1 else 0, -1).reshape(-1, x.shape[cdim if x.dim() > 1 else 0]).double()
    s = table.get(name)
    if s is None:
        c = flat.shape[1]
        s = table[name] = ChannelStats(
            torch.zeros(c, dtype=torch.float64),
            torch.zeros(c, dtype=torch.float64),
            torch.zeros(c, dtype=torch.float64),
        )
    if flat.shape[1] != s.abs_sum.numel():
        return  # a module called on inputs of different widths: its statistics would mix channels
    s.abs_sum += flat.abs().sum(0)
    s.sq_sum += (flat * flat).sum(0)
    s.positive += (flat > 0).sum(0)
    s.count += flat.shape[0]


def collect_activations(model: nn.Module, batches: Iterable[Any], modules: set[str]) -> Statistics:
    """Channel statistics of the inputs and outputs of ``modules`` over the calibration batches (eval mode,
    no gradients; the model is left as it was)."""
    stats = Statistics()
    handles = []

    def hook(name: str, cdim: int) -> Callable[..., None]:
        def fn(_m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            inputs = [a for a in args if isinstance(a, torch.Tensor)] or flat_tensors(kwargs)
            if inputs:
                _accumulate(stats.inputs, name, inputs[0], cdim)
            outs = flat_tensors(out)
            if outs:
                _accumulate(stats.outputs, name, outs[0], cdim)

        return fn

    for name, mod in model.named_modules():
        if name in modules:
            cdim = lookup(CHANNEL_DIM, type(mod))
            handles.append(mod.register_forward_hook(hook(name, -1 if cdim is None else cdim), with_kwargs=True))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                call(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    stats.input_scale = _input_scales(model, stats)
    return stats


def _input_scales(model: nn.Module, stats: Statistics) -> dict[str, torch.Tensor]:
    """For each hooked weight whose layout is known, the input channel norms shaped to broadcast against it."""
    scales = {}
    for name, s in stats.inputs.items():
        mod = model.get_submodule(name)
        in_dim = lookup(WEIGHT_INPUT_DIM, type(mod))
        w = getattr(mod, "weight", None)
        if in_dim is None or not isinstance(w, torch.Tensor):
            continue
        norm = s.norm.float()
        groups = int(getattr(mod, "groups", 1) or 1)
        size = w.shape[in_dim]
        if groups > 1 and in_dim == 1:  # weight [out, in/g, ...]: row o reads input group o // (out/g)
            if norm.numel() != size * groups:
                continue
            per_out = norm.view(groups, size).repeat_interleave(w.shape[0] // groups, dim=0)
            scales[f"{name}.weight"] = per_out.view(*per_out.shape, *([1] * (w.dim() - 2)))
            continue
        if norm.numel() != size:
            continue
        shape = [1] * w.dim()
        shape[in_dim] = size
        scales[f"{name}.weight"] = norm.view(shape)
    return scales


# ------------------------------------------------------------------------------------------ gradients
def logits_of(output: Any) -> torch.Tensor | None:
    """The class scores of a classifier's output (a ``[N, classes]`` tensor, or a ``logits`` field such as a
    Hugging Face classification or language-model output), else None."""
    if isinstance(output, torch.Tensor):
        return output if output.dim() == 2 and output.shape[1] > 1 and output.is_floating_point() else None
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    return logits if isinstance(logits, torch.Tensor) and logits.dim() >= 2 and logits.shape[-1] > 1 else None


def self_cross_entropy(output: Any, _batch: Any = None) -> torch.Tensor:
    """Cross-entropy of a classifier against its own top-1 predictions, summed over samples (no labels needed;
    its gradient is not zero: the softmax is never one-hot)."""
    logits = logits_of(output)
    if logits is None:
        raise SlimnetError("the model's output is not class scores: give a loss for taylor")
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, flat.argmax(-1).detach(), reduction="sum")


def collect_gradients(
    model: nn.Module, batches: Iterable[Any], params: set[str], loss: Loss | None = None, seed: int = 0
) -> Statistics:
    """Per-element Taylor importance of the parameters ``params`` (module docstring). The model's weights and
    its ``requires_grad`` flags are left as they were; parameter ``.grad`` fields are not touched."""
    named = {n: p for n, p in model.named_parameters() if n in params}
    if not named:  # nothing prunable: nothing to score
        return Statistics(taylor_mode="first-order" if loss is not None else "")
    flags = {n: p.requires_grad for n, p in named.items()}
    gen = torch.Generator().manual_seed(seed)
    fisher: bool | None = None if loss is None else False
    acc: dict[str, torch.Tensor] = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named.items()}
    training = model.training
    try:
        model.eval()
        for p in named.values():
            p.requires_grad_(True)
        for batch in batches:
            out = call(model, batch)
            if fisher is None:
                fisher = logits_of(out) is None
            value = _projected(out, gen) if fisher else (loss or self_cross_entropy)(out, batch)
            if not value.requires_grad:  # the loss does not depend on any parameter: all scores stay zero
                continue
            grads = torch.autograd.grad(value, list(named.values()), allow_unused=True)
            for (n, p), g in zip(named.items(), grads):
                if g is not None:
                    acc[n] += (p.detach() * g).double() ** 2 if fisher else g.double()
    finally:
        for n, p in named.items():
            p.requires_grad_(flags[n])
        model.train(training)
    if not fisher:
        acc = {n: (named[n].detach().double() * g).abs() for n, g in acc.items()}
    return Statistics(importance=acc, taylor_mode="fisher" if fisher else "first-order")


def _projected(output: Any, gen: torch.Generator) -> torch.Tensor:
    """Every floating output projected on fresh standard normal noise: the Fisher loss of one batch."""
    total = torch.zeros(())
    for t in flat_tensors(output):
        if t.is_floating_point():
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.device, t.dtype)
            total = total + (t * noise).sum()
    return total
