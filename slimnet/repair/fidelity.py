"""How close a changed model stays to the original on calibration data: the number that repair, sensitivity and
distillation report.

* classifiers (a ``[N, classes]`` output, or a ``logits`` field): **top-1 agreement**, the fraction of samples
  (tokens, for a language model) whose top class is the original's; higher is better, 1.0 is identical;
* anything else: **relative error**, ``||pruned - original|| / ||original||`` over every floating output
  tensor of every batch; lower is better, 0.0 is identical.

Python callers may pass any ``metric(model) -> float`` instead, with ``higher_is_better`` saying its direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._tensors import call, eval_mode, flat_tensors, map_tensors
from ..rank.statistics import logits_of

AGREEMENT = "top1-agreement"
RELATIVE_ERROR = "relative-error"


@dataclass
class Reference:
    """The original model's outputs on the calibration batches, and which metric fits them."""

    batches: list[Any]
    outputs: list[Any]
    metric: str

    @property
    def higher_is_better(self) -> bool:
        return self.metric == AGREEMENT

    @property
    def perfect(self) -> float:
        """The metric's value for the original itself."""
        return 1.0 if self.metric == AGREEMENT else 0.0


def split_held_out(batches: list[Any]) -> tuple[list[Any], list[Any], bool]:
    """Calibration batches as (fit, held out, disjoint): the last quarter (at least one batch) is held out, so that
    a repair or a distillation is judged on data it did not fit; a single batch is both (``disjoint`` False)."""
    batches = list(batches)
    if len(batches) < 2:
        return batches, batches, False
    k = max(1, len(batches) // 4)
    return batches[:-k], batches[-k:], True


def worse(value: float, than: float, higher_is_better: bool) -> bool:
    """Whether ``value`` is strictly worse than ``than`` (beyond float noise)."""
    slack = 1e-9 * max(1.0, abs(than))
    return value < than - slack if higher_is_better else value > than + slack


def run_all(model: nn.Module, batches: Iterable[Any]) -> list[Any]:
    """Outputs of ``model`` (eval mode, no gradients) on every batch, on the model's device."""
    device = _device(model)
    with torch.no_grad(), eval_mode(model):
        return [call(model, to_device(b, device)) for b in batches]


def reference(model: nn.Module, batches: Iterable[Any]) -> Reference:
    """Run the original once; later comparisons reuse its outputs."""
    batches = list(batches)
    outputs = run_all(model, batches)
    metric = AGREEMENT if outputs and logits_of(outputs[0]) is not None else RELATIVE_ERROR
    return Reference(batches, outputs, metric)


def compare(ref: Reference, outputs: list[Any]) -> float:
    """The reference's metric between its outputs and ``outputs`` (same batches)."""
    if ref.metric == AGREEMENT:
        same = total = 0
        for a, b in zip(ref.outputs, outputs):
            top_a = logits_of(a).argmax(-1)
            top_b = logits_of(b).argmax(-1).to(top_a.device)
            same += int((top_a == top_b).sum())
            total += top_a.numel()
        return same / max(total, 1)
    err = norm = 0.0
    for a, b in zip(ref.outputs, outputs):
        for x, y in zip(flat_tensors(a), flat_tensors(b)):
            if x.is_floating_point():
                err += float((x.double() - y.to(x.device).double()).pow(2).sum())
                norm += float(x.double().pow(2).sum())
    return (err / norm) ** 0.5 if norm > 0 else err**0.5


def fidelity(model: nn.Module, ref: Reference, metric: Callable[[nn.Module], float] | None = None) -> float:
    """``metric(model)`` when given, else the reference's metric on its calibration batches."""
    if metric is not None:
        return float(metric(model))
    return compare(ref, run_all(model, ref.batches))


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch moved to ``device`` (no copy when it is there already)."""
    return map_tensors(batch, lambda t: t.to(device))
