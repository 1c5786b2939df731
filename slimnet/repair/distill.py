"""Distillation: pull a pruned model's outputs back towards the original's on unlabelled calibration data.

The student (the pruned model) is trained to match the teacher (the original) batch by batch: KL divergence
between the softened class distributions at temperature ``T`` (scaled by ``T**2``, Hinton et al.) when the
teacher's output is class scores, mean squared error over every floating output tensor otherwise (a sentence
encoder's hidden states); any ``loss(student_output, teacher_output, batch)`` may replace it. No labels are used.

The student stays in eval mode while it trains: dropout off, and BatchNorm normalising with its running
statistics instead of each small batch's (re-estimate those first with ``--recalibrate-bn``); AdamW updates
every parameter. Progress goes to stderr, with agreement with the teacher (:mod:`slimnet.repair.fidelity`) measured
every ``log_every`` steps. Under ``torchrun --nproc-per-node N`` (one GPU per rank, or CPU processes with gloo)
the student is wrapped in DistributedDataParallel and each rank takes its own batches; rank 0 reports.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import call, eval_mode, flat_tensors
from ..distributed import World
from ..errors import SlimnetError
from ..load.data import Calibration, as_calibration
from ..rank.statistics import logits_of
from .fidelity import Reference, compare, reference, run_all, to_device

DistillLoss = Callable[[Any, Any, Any], torch.Tensor]  # (student output, teacher output, batch) -> scalar


@dataclass
class DistillResult:
    """The tuned student (the same object, trained in place), its agreement along the way, and the cost."""

    model: nn.Module
    metric: str
    before: float
    after: float
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "history": self.history,
        }


def distill_loss(student: Any, teacher: Any, temperature: float) -> torch.Tensor:
    """KL at ``temperature`` for class scores, else MSE summed over the floating output tensors."""
    s_logits, t_logits = logits_of(student), logits_of(teacher)
    if s_logits is not None and t_logits is not None:
        s = F.log_softmax(s_logits.float().flatten(0, -2) / temperature, -1)
        t = F.log_softmax(t_logits.float().flatten(0, -2) / temperature, -1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2
    pairs = [(a, b) for a, b in zip(flat_tensors(student), flat_tensors(teacher)) if a.is_floating_point()]
    if not pairs:
        raise SlimnetError("the model's outputs hold no floating tensors to match: give a loss")
    return sum(F.mse_loss(a.float(), b.float()) for a, b in pairs)


def check_steps(steps: int, lr: float, temperature: float) -> None:
    if steps < 1:
        raise SlimnetError(f"--steps {steps} must be at least 1")
    if not lr > 0:
        raise SlimnetError(f"--lr {lr} must be positive")
    if not temperature > 0:
        raise SlimnetError(f"--temperature {temperature} must be positive")


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    steps: int = 200,
    lr: float = 1e-4,
    temperature: float = 2.0,
    loss: DistillLoss | None = None,
    example: Any = None,
    log_every: int | None = None,
    eval_batches: int = 4,
    world: World | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train ``student`` in place towards ``teacher`` for ``steps`` batches (module docstring); returns the
    agreement before and after, on the first ``eval_batches`` calibration batches, measured every ``log_every``
    steps (default: ten times in all)."""
    check_steps(steps, lr, temperature)
    world = world or World()
    log_every = log_every or max(1, steps // 10)
    calibration = data if isinstance(data, Calibration) else as_calibration(data, _example(data, example))
    student.to(world.device)
    teacher.to(world.device).eval()
    ref = reference(teacher, calibration.batches[:eval_batches])
    t0 = time.perf_counter()
    before = compare(ref, run_all(student, ref.batches))
    trained = _wrap(student, world)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    bar = _Bar(steps, world.main and progress, ref.metric)
    with eval_mode(student):
        for step in range(1, steps + 1):
            batch = to_device(calibration.batches[(step * world.size + world.rank) % len(calibration)], world.device)
            with torch.no_grad():
                target = call(teacher, batch)
            value = (loss or (lambda s, t, _b: distill_loss(s, t, temperature)))(call(trained, batch), target, batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            value = value.detach()
            opt.step()
            if step % log_every == 0 or step == steps:
                history.append({"step": step, "loss": float(value), "value": _fidelity(student, ref)})
            bar.update(step, float(value), history[-1]["value"] if history else before)
    bar.close()
    after = history[-1]["value"]
    return DistillResult(student, ref.metric, before, after, steps, time.perf_counter() - t0, history)


def _fidelity(student: nn.Module, ref: Reference) -> float:
    return compare(ref, run_all(student, ref.batches))


def _example(data: Any, example: Any) -> Any:
    """The example input that calibration batches are checked against: given, or the data's first row."""
    if example is not None:
        return example
    if isinstance(data, torch.Tensor):
        return data[:1]
    if isinstance(data, dict):
        return {k: v[:1] for k, v in data.items()}
    first = next(iter(data), None)
    if first is None:
        raise SlimnetError("calibration data holds no batches")
    return first[0] if isinstance(first, list | tuple) and isinstance(example, torch.Tensor) else first


def _wrap(student: nn.Module, world: World) -> nn.Module:
    if world.size == 1:
        return student
    from torch.nn.parallel import DistributedDataParallel  # lazy: only under torchrun

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(student, device_ids=ids)


class _Bar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per update otherwise)."""

    def __init__(self, total: int, enabled: bool, metric: str) -> None:
        self.total, self.enabled, self.metric = total, enabled, metric
        self.tty = sys.stderr.isatty()
        self.last = -1

    def update(self, step: int, loss: float, value: float) -> None:
        if not self.enabled:
            return
        tenth = step * 10 // self.total
        if not self.tty and tenth == self.last and step != self.total:
            return
        self.last = tenth
        filled = step * 30 // self.total
        bar = "#" * filled + "." * (30 - filled)
        line = f"distill [{bar}] {step}/{self.total} loss {loss:.4g} {self.metric} {value:.4f}"
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
