"""The Python API: every CLI command is a thin shell over these functions.

from slimnet.api import shrink
result = shrink(model, torch.randn(1, 3, 224, 224), ratio=0.5, criterion="fpgm")
result.model    # the pruned nn.Module (a new object; ``model`` is left untouched)
result.plan     # slimnet.plan/1 data
result.report   # the same dict that ``slimnet shrink --json`` prints

graph(model, example) is ``slimnet graph``, apply(model, plan, example) ``slimnet apply``, and
bench(["a.pt", "b.pt"]) or bench([model, pruned], example) ``slimnet bench --json`` (:mod:`slimnet.benchmark`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import measure
from ._tensors import call, count_params
from ._util import first_line
from .allocate import check_target
from .benchmark import bench
from .errors import SlimnetError, VerificationError
from .groups import Analysis, analyse, analyse_reduced
from .plan import Decision, build_plan, choose
from .reduced import describe
from .settings import DEFAULT_ROUND_TO, check_settings
from .stages import Stages
from .surgeon import pruned_copy
from .verify import VerifyResult, verify

__all__ = ["ShrinkResult", "apply", "bench", "graph", "shrink"]


@dataclass
class ShrinkResult:
    model: nn.Module
    plan: dict[str, Any]
    analysis: Analysis
    decisions: list[Decision]
    verification: VerifyResult
    report: dict[str, Any]


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates, counted by fvcore (which calls one multiply-add one "flop")."""
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
    return int(measure.count_macs(model, example)["macs"])


def check_runs(model: nn.Module, example: Any) -> None:
    """Run the original once: an input the model rejects is the user's error, said in one line."""
    try:
        with torch.no_grad():
            call(model.eval(), example)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the input/model pairing
        first = first_line(exc)
        shapes = _describe(example)
        raise SlimnetError(
            f"the model rejects the example input {shapes}: {type(exc).__name__}: {first}; "
            "give the right --input-shape or --input"
        ) from None


def _describe(example: Any) -> str:
    if isinstance(example, torch.Tensor):
        return "x".join(str(s) for s in example.shape) or "scalar"
    if isinstance(example, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in example.items()) + "}"
    if isinstance(example, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in example) + ")"
    return type(example).__name__


def graph(model: nn.Module, example: Any, stages: Stages | None = None, reduce: bool = True) -> Analysis:
    """The coupled channel groups of ``model``, each prunable or with the reason it is not; ``analysis.cost``
    prices any plan of it. One analysis serves every ratio, target and criterion (``shrink(..., analysis=)``).

    ``reduce``: analyse on a small image when the model's graph holds for any size (:mod:`slimnet.reduced`;
    ``analysis.reduced`` is then that input, and the same groups and MACs come out for a fraction of the work);
    the model is otherwise run on the example first, so that an input it rejects is reported as such."""
    stages = stages or Stages()
    analysis, gm, why = analyse_reduced(model.eval(), example, stages) if reduce else (None, None, "not asked")
    if analysis is not None:
        return analysis
    with stages("trace"):
        check_runs(model, example)
    analysis = analyse(model, example, gm=gm, stages=stages)
    analysis.reduced_note = why
    return analysis


def shrink(
    model: nn.Module,
    example: Any,
    *,
    ratio: float = 0.5,
    criterion: str = "l1",
    round_to: int = DEFAULT_ROUND_TO,
    ignore: list[str] | None = None,
    seed: int = 0,
    prune_norm: bool = False,
    model_name: str = "",
    measure: bool = True,
    head_ratio: float | None = None,
    analysis: Analysis | None = None,
    target_macs: float | None = None,
    target_params: float | None = None,
    stages: Stages | None = None,
    reduce: bool = True,
    verify_dtype: torch.dtype | None = None,
) -> ShrinkResult:
    """Trace, group, rank, plan, cut and verify. Raises VerificationError (naming the group) on a mismatch.

    ``analysis``: this model's :func:`graph` on this example, when the caller has it already (it depends on the
    model and the input only, so one analysis serves every ratio and criterion); the model is then neither run
    nor traced again. ``target_macs`` / ``target_params``: instead of ``ratio``, the fraction of the original's
    MACs or parameters to keep (the report's ``target`` says what was reached). ``stages``: timings and progress
    (:class:`slimnet.stages.Stages`); the report's ``timings`` holds them either way. ``reduce``: see
    :func:`graph` (False: analyse and verify at the example's size). ``verify_dtype``: the verifier's precision
    (default: float64 up to 10M parameters, float32 above: :mod:`slimnet.verify`)."""
    t0 = time.perf_counter()
    stages = stages or Stages()
    check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    target = _target(target_macs, target_params)
    model = model.eval()
    if analysis is None:
        analysis = graph(model, example, stages, reduce=reduce)
    with stages("rank"):
        decisions, reached = choose(
            analysis,
            model,
            ratio=ratio,
            criterion=criterion,
            round_to=round_to,
            ignore=ignore,
            seed=seed,
            prune_norm=prune_norm,
            head_ratio=head_ratio,
            target=target,
        )
    with stages("cut"):
        plan = build_plan(
            analysis,
            decisions,
            model_name=model_name or type(model).__name__,
            criterion=criterion,
            ratio=round(reached.ratio, 6) if reached else ratio,
            round_to=round_to,
            seed=seed,
            head_ratio=head_ratio,
        )
        if reached is not None:
            plan["target"] = reached.report()
        pruned = pruned_copy(model, plan).eval()
    with stages("verify"):
        result = verify(model, pruned, plan, example, inputs=analysis.checks, precision=verify_dtype)
        approximate = any(d.pruned and d.group.normalised for d in decisions)
        if not result.passed and not approximate:
            culprit = find_culprit(model, example, analysis, decisions)
            raise VerificationError(f"verification failed: {result.error}{culprit}; nothing was written")
    with stages("measure"):
        report = make_report(model, pruned, example, analysis, decisions, plan, result, approximate, measure)
    if reached is not None:
        report["target"] = reached.report()
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["timings"] = stages.rounded()
    return ShrinkResult(pruned, plan, analysis, decisions, result, report)


def _target(target_macs: float | None, target_params: float | None) -> tuple[str, float] | None:
    if target_macs is not None and target_params is not None:
        raise SlimnetError("give one target: --target-macs or --target-params, not both")
    if target_macs is not None:
        check_target("macs", target_macs)
        return ("macs", float(target_macs))
    if target_params is not None:
        check_target("params", target_params)
        return ("params", float(target_params))
    return None


def apply(model: nn.Module, plan: dict[str, Any], example: Any | None = None) -> tuple[nn.Module, VerifyResult | None]:
    """Apply a saved plan to a fresh instance; verify it when an example input is given."""
    pruned = pruned_copy(model.eval(), plan).eval()
    result = verify(model, pruned, plan, example) if example is not None else None
    return pruned, result


def find_culprit(model: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]) -> str:
    """Re-verify one pruned group at a time to name the one whose cut is wrong."""
    bad = []
    for d in decisions:
        if not d.pruned:
            continue
        single = build_plan(analysis, [d], model_name="", criterion="", ratio=0.0, round_to=1, seed=0)
        try:
            pruned = pruned_copy(model, single)
            if not verify(model, pruned, single, example, inputs=analysis.checks).passed:
                bad.append(d.group.name)
        except Exception:  # noqa: BLE001 - a crash during the re-check also names the group
            bad.append(d.group.name)
        if len(bad) >= 3:
            break
    return f" (group {', '.join(bad)})" if bad else ""


def _macs(
    model: nn.Module, pruned: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]
) -> tuple[list[int | None], str]:
    """MACs before and after: from the analysis' cost model (no second pass over either model), or from fvcore
    when the model was analysed piece by piece (the cost model then misses what lies outside the pieces)."""
    cost = analysis.cost
    if cost is not None and cost.complete:
        keep = cost.keep_vector([d.keep for d in decisions])
        return [cost.macs(), cost.macs(keep)], "slimnet"
    return [count_macs(model, example), count_macs(pruned, example)], "fvcore"


def make_report(
    model: nn.Module,
    pruned: nn.Module,
    example: Any,
    analysis: Analysis,
    decisions: list[Decision],
    plan: dict[str, Any],
    result: VerifyResult,
    approximate: bool,
    measure: bool,
) -> dict[str, Any]:
    """The --json object (a contract: fields may be added, never changed)."""
    macs, counter = _macs(model, pruned, example, analysis, decisions) if measure else ([None, None], None)
    return {
        "model": plan.get("model"),
        "criterion": plan.get("criterion"),
        "ratio": plan.get("ratio"),
        "round_to": plan.get("round_to"),
        "params": [count_params(model), count_params(pruned)],
        "macs": macs,
        "macs_note": "one multiply-add is one MAC (fvcore's convention); FLOPs = 2 x MACs",
        "macs_counter": counter,
        "groups": len(analysis.groups),
        "pruned_groups": sum(1 for d in decisions if d.pruned),
        "skipped": [{"group": d.group.name, "reason": d.reason} for d in decisions if d.reason],
        "group_details": [
            {
                "group": d.group.name,
                "units": len(d.group.units),
                "kept": len(d.keep),
                "reason": d.reason,
                "criterion": d.criterion or None,
                "members": len(d.group.members),
            }
            for d in decisions
        ],
        "max_abs_diff": result.max_abs_diff,
        "tolerance": result.tolerance,
        "verified": result.passed,
        "exact": not approximate,
        "verify_dtype": result.dtype,
        "verify_inputs": result.inputs,
        "verify_randomised": result.randomised,
        "verify_randomised_diff": result.randomised_diff,
        "reduced_input": describe(analysis.reduced) if analysis.reduced is not None else None,
        "reduced_note": analysis.reduced_note or None,
        "output": None,
        "plan": None,
    }
