"""The data side of :func:`slimnet.api.shrink`: statistics before ranking, repair after the verified cut.

``shrink`` stays one pipeline (trace -> groups -> decide -> plan -> cut -> verify); with calibration data it
gains two steps, both here so that the core modules only pass values along:

1. before ``decide``: :func:`statistics` collects what a data-driven criterion reads (:mod:`slimnet.rank.statistics`);
2. after ``verify``: :func:`repair` runs the requested training-free repairs (:mod:`slimnet.repair.steps`) on the
   already verified pruned model and measures agreement with the original before and after each one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import SlimnetError
from ..groups import Analysis
from ..load.data import Calibration, as_calibration, check_data
from ..rank.data_criteria import NEEDS, check_statistics
from ..rank.statistics import Loss, Statistics, collect_activations, collect_gradients, member_modules
from ..settings import data_needs
from .fidelity import fidelity, reference
from .steps import compensate_bias, recalibrate_bn


def prepare(
    model: nn.Module, example: Any, data: Any, criterion: str, recalibrate: bool = False, compensate: bool = False
) -> Calibration | None:
    """Check that what needs data has it, and the data against the model, before any work."""
    if data is None:
        needs = data_needs(criterion, recalibrate, compensate)
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
) -> dict[str, Any]:
    """Repair ``pruned`` in place (bias compensation first: it reads the original's activations; then BN
    recalibration, which re-estimates the norms on what the compensated model computes) and return the report
    fields: agreement with the original after the cut and after each repair (none without calibration data)."""
    if calibration is None:
        return {}
    ref = reference(original, calibration.batches)
    steps: dict[str, float] = {"cut": fidelity(pruned, ref, metric)}
    done: dict[str, Any] = {}
    if compensate:
        done["compensate_bias"] = compensate_bias(original, pruned, plan, analysis, calibration.batches).describe()
        steps["compensate_bias"] = fidelity(pruned, ref, metric)
    if recalibrate:
        done["recalibrate_bn"] = {"norms": recalibrate_bn(pruned, calibration.batches)}
        steps["recalibrate_bn"] = fidelity(pruned, ref, metric)
    return {
        "calibration": calibration.describe(),
        "fidelity_metric": "custom" if metric is not None else ref.metric,
        "fidelity": steps,
        "repairs": done,
    }
