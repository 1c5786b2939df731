"""Distillation: pull a pruned model's outputs back towards the original's on unlabelled calibration data.

The student (the pruned model) is trained to match the teacher (the original) batch by batch with a loss chosen
by what the teacher outputs (:mod:`slimnet.distill_loss`: KL at temperature ``T`` for class scores, BCE against
the teacher's probabilities for sigmoid outputs, MSE on raw outputs otherwise; the report says which); any
``loss(student_output, teacher_output, batch)`` may replace it. No labels are used.

Training: AdamW (lr 1e-3 by default) with a linear warm-up over the first 5% of the steps and a cosine decay to
zero. The calibration batches are split (:func:`slimnet.fidelity.split_held_out`): the student trains on the
first, and every ``eval_every`` steps it is scored on the held-out rest (fidelity with the teacher, the held-out
loss breaking ties); the best student seen, *step 0 included*, is what is returned, so distillation never hands
back a model that is worse on held-out data than the one it was given. After ``patience`` evaluations without
improvement it stops early. The teacher's outputs on the training batches are computed once (under
``torch.no_grad``) and reused: with a handful of calibration batches and hundreds of steps, re-running the teacher
every step was a third of the work.

The student stays in eval mode while it trains: dropout off, and BatchNorm normalising with its running
statistics instead of each small batch's (re-estimate those first with ``--recalibrate-bn``). Progress, with an
ETA, goes to stderr. Under ``torchrun --nproc-per-node N`` (one GPU per rank, or CPU processes with gloo) the
student is wrapped in DistributedDataParallel and each rank takes its own batches; every rank scores the same
held-out batches with the same weights, so all take the same decisions; rank 0 reports.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._tensors import call, eval_mode, flat_tensors
from ..distributed import World
from ..errors import SlimnetError
from ..load.data import Calibration, as_calibration
from .distill_loss import LOSS_KINDS, DistillLoss, distill_loss, make_loss, output_kind
from .fidelity import Reference, compare, reference, run_all, split_held_out, to_device

__all__ = ["DistillLoss", "DistillResult", "distill", "distill_loss", "check_steps"]
#: Teacher outputs are cached for the training batches up to this many bytes (else computed every step).
CACHE_BYTES = 1 << 29


@dataclass
class DistillResult:
    """The tuned student (the same object, trained in place and left at its best state), its fidelity along the
    way, and the cost."""

    model: nn.Module
    metric: str
    before: float
    after: float
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    loss: str = "custom"
    loss_why: str = ""
    best_step: int = 0
    steps_run: int = 0
    stopped_early: bool = False
    held_out: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "before": self.before,
            "after": self.after,
            "steps": self.steps,
            "seconds": round(self.seconds, 2),
            "history": self.history,
            "loss": self.loss,
            "loss_why": self.loss_why,
            "best_step": self.best_step,
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "kept_start": self.best_step == 0,
            "held_out": self.held_out,
            **self.settings,
        }


def check_steps(steps: int, lr: float, temperature: float, patience: int = 0, loss: str = "auto") -> None:
    if steps < 1:
        raise SlimnetError(f"--steps {steps} must be at least 1")
    if not lr > 0:
        raise SlimnetError(f"--lr {lr} must be positive")
    if not temperature > 0:
        raise SlimnetError(f"--temperature {temperature} must be positive")
    if patience < 0:
        raise SlimnetError(f"--patience {patience} must be 0 (never stop early) or more")
    if loss not in LOSS_KINDS:
        raise SlimnetError(f"--loss {loss}: give one of {', '.join(LOSS_KINDS)}")


def schedule(step: int, steps: int, warmup: int) -> float:
    """The learning-rate factor at ``step`` (0-based): linear warm-up, then a cosine to zero."""
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Any,
    *,
    steps: int = 200,
    lr: float = 1e-3,
    temperature: float = 2.0,
    loss: DistillLoss | str | None = None,
    example: Any = None,
    log_every: int | None = None,
    eval_batches: int = 4,
    world: World | None = None,
    progress: bool = True,
    patience: int = 6,
    weight_decay: float = 0.0,
) -> DistillResult:
    """Train ``student`` in place towards ``teacher`` for up to ``steps`` batches (module docstring) and leave
    it at its best state on the held-out batches (at most ``eval_batches`` of them), scored every ``log_every``
    steps (default: twenty times in all). ``loss``: a callable, or ``"auto"`` / ``"kl"`` / ``"bce"`` /
    ``"mse"``; ``patience``: evaluations without improvement before stopping (0: never)."""
    kind = loss if isinstance(loss, str) or loss is None else "custom"
    check_steps(steps, lr, temperature, patience, "auto" if kind in (None, "custom") else kind)
    world = world or World()
    every = log_every or max(1, steps // 20)
    calibration = data if isinstance(data, Calibration) else as_calibration(data, _example(data, example))
    fit, held, disjoint = split_held_out(calibration.batches)
    held = held[-eval_batches:] if eval_batches > 0 else held
    student.to(world.device)
    teacher.to(world.device).eval()
    ref = reference(teacher, held)
    why = "given by the caller"
    if callable(loss):
        fn: DistillLoss = loss
    else:
        if kind in (None, "auto"):
            kind, why = output_kind(ref.outputs[0])
        else:
            why = "asked for"
        fn = make_loss(kind, temperature)
    t0 = time.perf_counter()
    trained = _wrap(student, world)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: schedule(i, steps, warmup))
    score = _Scorer(student, ref, fn)
    first = score()
    best, best_step, best_state = first, 0, _snapshot(student)
    history: list[dict[str, float]] = [{"step": 0, "loss": first[2], "value": first[1]}]
    cache = _TeacherCache(teacher)
    bar = _Bar(steps, world.main and progress, ref.metric)
    since, step = 0, 0
    with eval_mode(student):
        for step in range(1, steps + 1):
            index = (step * world.size + world.rank) % len(fit)
            batch = to_device(fit[index], world.device)
            value = fn(call(trained, batch), cache.get(index, batch), batch)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            if step % every == 0 or step == steps:
                now = score()
                history.append({"step": step, "loss": float(value.detach()), "value": now[1], "held_out_loss": now[2]})
                if now[0] > best[0]:
                    best, best_step, best_state, since = now, step, _snapshot(student), 0
                else:
                    since += 1
                bar.update(step, history[-1]["loss"], now[1], best[1], t0)
                if patience and since >= patience:
                    break
    bar.close()
    student.load_state_dict(best_state)
    return DistillResult(
        student, ref.metric, first[1], best[1], steps, time.perf_counter() - t0, history, kind or "auto", why,
        best_step, step, step < steps, {"batches": len(held), "train_batches": len(fit), "disjoint": disjoint},
        {"lr": lr, "schedule": f"warm-up {warmup} steps + cosine", "eval_every": every, "patience": patience},
    )  # fmt: skip


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Scorer:
    """The student on the held-out batches: ``(key, fidelity, loss)``, ``key`` ordered so that larger is
    better (fidelity first, the held-out distillation loss breaking ties)."""

    def __init__(self, student: nn.Module, ref: Reference, fn: DistillLoss) -> None:
        self.student, self.ref, self.fn = student, ref, fn

    def __call__(self) -> tuple[tuple[float, float], float, float]:
        outputs = run_all(self.student, self.ref.batches)
        value = compare(self.ref, outputs)
        with torch.no_grad():
            losses = [float(self.fn(o, t, b)) for o, t, b in zip(outputs, self.ref.outputs, self.ref.batches)]
        held_loss = sum(losses) / max(len(losses), 1)
        return ((value if self.ref.higher_is_better else -value), -held_loss), value, held_loss


class _TeacherCache:
    """The teacher's outputs on the training batches, computed once under no_grad while they fit in
    :data:`CACHE_BYTES`, then recomputed per step for the rest."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher, self.bytes = teacher, 0
        self.kept: dict[int, Any] = {}

    def get(self, index: int, batch: Any) -> Any:
        if index in self.kept:
            return self.kept[index]
        with torch.no_grad():
            out = call(self.teacher, batch)
        size = sum(t.numel() * t.element_size() for t in flat_tensors(out))
        if self.bytes + size <= CACHE_BYTES:
            self.kept[index] = out
            self.bytes += size
        return out


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
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per tenth otherwise), with the
    fidelity at the last evaluation, the best so far and an ETA."""

    def __init__(self, total: int, enabled: bool, metric: str) -> None:
        self.total, self.enabled, self.metric = total, enabled, metric
        self.tty = sys.stderr.isatty()
        self.last = -1

    def update(self, step: int, loss: float, value: float, best: float, t0: float) -> None:
        if not self.enabled:
            return
        tenth = step * 10 // self.total
        if not self.tty and tenth == self.last and step != self.total:
            return
        self.last = tenth
        filled = step * 30 // self.total
        bar = "#" * filled + "." * (30 - filled)
        elapsed = time.perf_counter() - t0
        eta = elapsed / step * (self.total - step)
        line = (
            f"distill [{bar}] {step}/{self.total} loss {loss:.4g} {self.metric} {value:.4f} (best {best:.4f}) "
            f"{elapsed:.0f} s, ETA {eta:.0f} s"
        )
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
