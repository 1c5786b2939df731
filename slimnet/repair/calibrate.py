"""The data side of :func:`slimnet.api.shrink`: statistics before ranking, repair after the verified cut.

``shrink`` stays one pipeline (trace -> groups -> decide -> plan -> cut -> verify); with calibration data it
gains two steps, both here so that the core modules only pass values along:

1. before ``decide``: :func:`statistics` collects what a data-driven criterion reads (:mod:`slimnet.rank.statistics`);
2. after ``verify``: :func:`repair` runs the requested training-free repairs (:mod:`slimnet.repair.steps`,
   :mod:`slimnet.repair.reconstruct`) on the already verified pruned model and measures agreement with the original on
   held-out calibration batches before and after each one, taking back any step that makes it worse.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import RepairWarning, SlimnetError
from ..groups import Analysis
from ..load.data import Calibration, as_calibration, check_data
from ..rank.data_criteria import NEEDS, check_statistics
from ..rank.statistics import Loss, Statistics, collect_activations, collect_gradients, member_modules
from ..settings import data_needs
from .fidelity import fidelity, reference, split_held_out, worse
from .reconstruct import reconstruct as refit
from .steps import compensate_bias, recalibrate_bn


def prepare(
    model: nn.Module,
    example: Any,
    data: Any,
    criterion: str,
    recalibrate: bool = False,
    compensate: bool = False,
    reconstruct: bool = False,
) -> Calibration | None:
    """Check that what needs data has it, and the data against the model, before any work."""
    if data is None:
        needs = data_needs(criterion, recalibrate, compensate, reconstruct)
        if needs:
            raise SlimnetError(f"{needs[0]} needs calibration data: give --data (a tensor file, folder, ...)")
        return None
    calibration = as_calibration(data, example)
    check_data(model, calibration)
    return calibration


def statistics(
    model: nn.Module,
    analysis: Analysis,
    criterion: str,
    calibration: Calibration | None,
    loss: Loss | None = None,
    seed: int = 0,
) -> Statistics | None:
    """What ``criterion`` reads from the calibration data (None for the magnitude criteria)."""
    kind = NEEDS.get(criterion)
    if kind is None or calibration is None:
        return None
    params = {n for n, _ in model.named_parameters()}
    if kind == "gradients":
        members = {t for g in analysis.groups if g.prunable for t, _ in g.members if t in params}
        stats = collect_gradients(model, calibration.batches, members, loss, seed)
    else:
        stats = collect_activations(model, calibration.batches, member_modules(analysis, params))
    check_statistics(stats, criterion)
    return stats


def repair(
    original: nn.Module,
    pruned: nn.Module,
    plan: dict[str, Any],
    analysis: Analysis,
    calibration: Calibration | None,
    recalibrate: bool = False,
    compensate: bool = False,
    metric: Callable[[nn.Module], float] | None = None,
    reconstruct: bool = False,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """Repair ``pruned`` in place and return the report fields: fidelity (agreement with the original) on
    *held-out* calibration batches after the cut and after each repair, which were reverted and why.

    Order: bias compensation (it reads the original's activations), least-squares reconstruction (it refits the
    consumers on what the pruned model feeds them, and overrides the compensated biases it refits), then BN
    recalibration (on what the repaired model computes). Each step fits on the first calibration batches and is
    judged on the held-out rest (:func:`slimnet.fidelity.split_held_out`); a step that makes fidelity worse is
    taken back (the weights before it are restored), with a :class:`RepairWarning` and a line in
    ``report["repair_warnings"]``: a repair never leaves the model worse than it found it, on that data."""
    if calibration is None:
        return {}
    fit, held, disjoint = split_held_out(calibration.batches)
    ref = reference(original, held)
    better_high = higher_is_better if metric is not None else ref.higher_is_better
    name = "custom" if metric is not None else ref.metric
    steps: dict[str, float] = {"cut": fidelity(pruned, ref, metric)}
    done: dict[str, Any] = {}
    reverted: list[str] = []
    notes: list[str] = []
    best = steps["cut"]
    runs: list[tuple[str, bool, Callable[[], Any]]] = [
        ("compensate_bias", compensate, lambda: compensate_bias(original, pruned, plan, analysis, fit).describe()),
        ("reconstruct", reconstruct, lambda: refit(original, pruned, plan, analysis, fit).describe()),
        ("recalibrate_bn", recalibrate, lambda: {"norms": recalibrate_bn(pruned, fit)}),
    ]
    for step, wanted, run in runs:
        if not wanted:
            continue
        saved = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        done[step] = run()
        steps[step] = fidelity(pruned, ref, metric)
        if worse(steps[step], best, better_high):
            pruned.load_state_dict(saved)
            reverted.append(step)
            note = (
                f"{step} made {name} on held-out calibration data worse ({best:.4f} -> {steps[step]:.4f}): "
                "reverted, the model before it is kept"
            )
            notes.append(note)
            warnings.warn(note, RepairWarning, stacklevel=2)
        else:
            best = steps[step]
    return {
        "calibration": calibration.describe(),
        "fidelity_metric": name,
        "fidelity": steps,
        "repairs": done,
        "fidelity_final": best,
        "fidelity_data": {"fit_batches": len(fit), "held_out_batches": len(held), "held_out": disjoint},
        "repairs_reverted": reverted,
        "repair_warnings": notes,
        "weights_refit": [s for s in done if s not in reverted],
    }
