"""The pipelines of the accuracy study (tools/accuracy.py), the same for every task: each one a step more than the
last, all cut to the same MACs target with slimnet's Python API, so the table shows what each step adds.

1. uniform cut, l1 (no data at all)
2. uniform cut, each data criterion (taylor, activation, apoz, wanda); the best on the *calibration* score is kept
3. + repair (bias compensation, BN recalibration: no training)
4. sensitivity-driven allocation (a repaired sweep on calibration data) + repair: still no training
5. + distillation towards the original on unlabelled data (digits: also after the uniform cut, to show what
   allocation still adds once the model is trained)

Nothing here sees the evaluation data except ``task.evaluate``; every choice is made on calibration data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimnet.api import graph, shrink
from slimnet.sensitivity.analysis import sensitivity
from slimnet.settings import DATA_CRITERIA


@dataclass
class Task:
    """One model and its data, as the pipelines need them."""

    name: str
    model: nn.Module
    example: Any
    calib: Any  # unlabelled calibration batches: ranking, repair
    sweep_data: Any  # the (smaller) calibration batches the sensitivity sweep cuts and measures on
    calib_score: Callable[[nn.Module], float]  # agreement with the original on calibration data, higher better
    evaluate: Callable[[nn.Module], dict[str, float]]  # held-out metrics; the first key is the headline
    distill: Callable[[nn.Module, nn.Module], dict[str, Any]]  # trains the student in place
    recalibrate_bn: bool = True
    compensate_bias: bool = True
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    round_to: int = 8
    target: float = 0.5
    criteria: tuple[str, ...] = DATA_CRITERIA
    distill_uniform: bool = True  # also distil the uniform cut (shows what allocation adds after training)
    log: Callable[[str], None] = print
    rows: list[dict[str, Any]] = field(default_factory=list)


def run(task: Task) -> dict[str, Any]:
    """Every pipeline on ``task``; returns plain data (rows, the chosen criterion, the sweep, timings)."""
    t0 = time.perf_counter()
    analysis = graph(task.model, task.example)
    original = task.evaluate(task.model)
    task.log(f"[{task.name}] original: {original}")
    common = {"analysis": analysis, "round_to": task.round_to, "target_macs": task.target, "measure": False}
    repairs = {"recalibrate_bn": task.recalibrate_bn, "compensate_bias": task.compensate_bias}
    cuts = {}
    for criterion in ("l1", *task.criteria):
        res = shrink(task.model, task.example, criterion=criterion, data=task.calib, **common)
        cuts[criterion] = task.calib_score(res.model)
        _row(task, res, f"uniform, {criterion}", "uniform", criterion, False, False)
    best = max(task.criteria, key=lambda c: cuts[c])
    task.log(f"[{task.name}] calibration score per criterion: {cuts}; best data criterion: {best}")
    l1_fixed = shrink(task.model, task.example, criterion="l1", data=task.calib, **common, **repairs)
    _row(task, l1_fixed, "uniform, l1 + repair", "uniform", "l1", True, False)
    uniform = shrink(task.model, task.example, criterion=best, data=task.calib, **common, **repairs)
    _row(task, uniform, f"uniform, {best} + repair", "uniform", best, True, False)
    t_sweep = time.perf_counter()
    sens = sensitivity(
        task.model, task.example, task.sweep_data, ratios=task.ratios, criterion=best, round_to=task.round_to,
        metric=task.calib_score, analysis=analysis, model_name=task.name, **repairs,
    )  # fmt: skip
    sweep_s = time.perf_counter() - t_sweep
    task.log(f"[{task.name}] sensitivity sweep: {len(sens['groups'])} groups x {len(task.ratios)} in {sweep_s:.0f} s")
    chosen = shrink(task.model, task.example, criterion=best, data=task.calib, sensitivity=sens, **common, **repairs)
    _row(task, chosen, f"sensitivity, {best} + repair", "sensitivity", best, True, False)
    _same_macs(task, chosen, uniform, best, common, repairs)
    tuned = [(uniform, f"uniform, {best} + repair")] if task.distill_uniform else []
    for res, label in (*tuned, (chosen, f"sensitivity, {best} + repair")):
        report = task.distill(res.model, task.model)
        _row(task, res, f"{label} + distill", label.split(",")[0], best, True, True, distill=report)
    return {
        "task": task.name,
        "original": original,
        "target": task.target,
        "criteria_calibration": cuts,
        "best_criterion": best,
        "repairs": [k for k, v in repairs.items() if v],
        "sensitivity": sens,
        "sweep_seconds": round(sweep_s, 1),
        "rows": task.rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _same_macs(task: Task, chosen: Any, uniform: Any, best: str, common: dict, repairs: dict) -> None:
    """The allocator stops at the first move that reaches the target, which can land below it; then the uniform
    cuts are also made at the MACs the sensitivity-driven one reached, so the comparison is at equal cost."""
    reached = chosen.report["target"]["reached"]
    if abs(reached - uniform.report["target"]["reached"]) <= 0.01:
        return
    at = {**common, "target_macs": reached}
    for criterion, fix in (("l1", False), (best, True)):
        res = shrink(task.model, task.example, criterion=criterion, data=task.calib, **at, **(repairs if fix else {}))
        if res.report["target"]["reached"] == uniform.report["target"]["reached"]:
            task.log(f"[{task.name}] a uniform cut cannot get nearer to {reached:.4f} of the MACs")
            return
        label = f"uniform, {criterion}{' + repair' if fix else ''} @ sensitivity's MACs"
        _row(task, res, label, "uniform", criterion, fix, False)


def _row(
    task: Task, res: Any, label: str, allocation: str, criterion: str, repaired: bool, distilled: bool, **extra: Any
) -> None:
    metrics = task.evaluate(res.model)
    target = res.report.get("target") or {}
    row = {
        "pipeline": label,
        "allocation": allocation,
        "criterion": criterion,
        "repair": repaired,
        "distill": distilled,
        "macs_kept": target.get("reached"),
        "params": sum(p.numel() for p in res.model.parameters()),
        "calibration_fidelity": res.report.get("fidelity"),
        **metrics,
        **extra,
    }
    task.rows.append(row)
    task.log(f"[{task.name}] {label}: MACs kept {row['macs_kept']}, {metrics}")
