"""Which loss distillation uses, chosen by what the teacher outputs (``--loss auto``):

* **kl**: class scores (a ``[N, classes]`` tensor or a ``logits`` field, unbounded): KL divergence between the
  softened class distributions at temperature ``T``, scaled by ``T**2`` (Hinton et al.); softmax
  *probabilities* (in [0, 1], each row summing to 1) are matched the same way through their logarithms;
* **bce**: sigmoid outputs (every value in [0, 1], rows not summing to 1: a binary or multi-label classifier
  with its sigmoid inside the model): binary cross-entropy against the teacher's probabilities; asked for on
  unbounded outputs (``--loss bce``: multi-label logits), BCE of the student's logits against the teacher's
  sigmoid;
* **mse**: anything else (regression, features, hidden states): mean squared error on the raw outputs, summed
  over every floating output tensor.

MSE on probabilities, the old default for a single sigmoid output, has vanishing gradients where the sigmoid
saturates; BCE does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .._tensors import flat_tensors
from ..errors import SlimnetError
from ..rank.statistics import logits_of

DistillLoss = Callable[[Any, Any, Any], torch.Tensor]  # (student output, teacher output, batch) -> scalar
LOSS_KINDS = ("auto", "kl", "bce", "mse")
EPS = 1e-6


def _floats(output: Any) -> list[torch.Tensor]:
    return [t for t in flat_tensors(output) if t.is_floating_point()]


def _is_probability(t: torch.Tensor) -> bool:
    return bool(t.numel()) and float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def output_kind(teacher_output: Any) -> tuple[str, str]:
    """``(kind, why)`` for ``--loss auto``, from one batch of the teacher's outputs (module docstring)."""
    logits = logits_of(teacher_output)
    if logits is not None:
        if _is_probability(logits):
            sums = logits.float().sum(-1)
            if torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
                return "kl", "softmax probabilities"
            return "bce", "sigmoid (multi-label) probabilities"
        return "kl", "class scores (softmax logits)"
    floats = _floats(teacher_output)
    if not floats:
        raise SlimnetError("the model's outputs hold no floating tensors to match: give a loss")
    if len(floats) == 1 and _is_probability(floats[0]):
        return "bce", "sigmoid probabilities"
    return "mse", "raw outputs (regression or features)"


def kl_loss(student: Any, teacher: Any, temperature: float) -> torch.Tensor:
    s_logits, t_logits = logits_of(student), logits_of(teacher)
    if s_logits is None or t_logits is None:
        raise SlimnetError("--loss kl needs class scores ([N, classes] or a logits field): use --loss mse")
    s, t = s_logits.float().flatten(0, -2), t_logits.float().flatten(0, -2)
    if _is_probability(t):  # softmax probabilities: their logs are logits up to a constant
        s, t = s.clamp_min(EPS).log(), t.clamp_min(EPS).log()
    s = F.log_softmax(s / temperature, -1)
    t = F.log_softmax(t / temperature, -1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def bce_loss(student: Any, teacher: Any) -> torch.Tensor:
    s_logits, t_logits = logits_of(student), logits_of(teacher)
    pairs = [(s_logits, t_logits)] if s_logits is not None and t_logits is not None else []
    pairs = pairs or list(zip(_floats(student), _floats(teacher)))
    if not pairs:
        raise SlimnetError("the model's outputs hold no floating tensors to match: give a loss")
    total = torch.zeros(())
    for s, t in pairs:
        s, t = s.float(), t.float().detach()
        if _is_probability(t):
            total = total.to(s.device) + F.binary_cross_entropy(s.clamp(EPS, 1 - EPS), t)
        else:
            total = total.to(s.device) + F.binary_cross_entropy_with_logits(s, torch.sigmoid(t))
    return total


def mse_loss(student: Any, teacher: Any) -> torch.Tensor:
    pairs = [(a, b) for a, b in zip(_floats(student), _floats(teacher))]
    if not pairs:
        raise SlimnetError("the model's outputs hold no floating tensors to match: give a loss")
    return sum(F.mse_loss(a.float(), b.float()) for a, b in pairs)


def make_loss(kind: str, temperature: float) -> DistillLoss:
    """The loss of ``kind`` (kl, bce or mse) as ``loss(student_output, teacher_output, batch)``."""
    if kind == "kl":
        return lambda s, t, _b: kl_loss(s, t, temperature)
    if kind == "bce":
        return lambda s, t, _b: bce_loss(s, t)
    if kind == "mse":
        return lambda s, t, _b: mse_loss(s, t)
    raise SlimnetError(f"--loss {kind}: give one of {', '.join(LOSS_KINDS)}")


def distill_loss(student: Any, teacher: Any, temperature: float) -> torch.Tensor:
    """KL at ``temperature`` for class scores, else MSE summed over the floating output tensors (the loss before
    output kinds were told apart; kept for callers)."""
    if logits_of(student) is not None and logits_of(teacher) is not None:
        return kl_loss(student, teacher, temperature)
    return mse_loss(student, teacher)
