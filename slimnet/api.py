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
from .culprits import find_culprits, leave_whole
from .errors import SlimnetError, VerificationError
from .groups import Analysis, analyse
from .plan import Decision, build_plan, choose
from .settings import DEFAULT_ROUND_TO, check_settings
from .stages import Stages
from .surgeon import pruned_copy
from .trace_symbolic import untouched
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
        with torch.no_grad(), untouched(model):
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
    if isinstance(example, tuple):
        return "(" + ", ".join(_describe(v) for v in example) + ")"
    if isinstance(example, list):
        return "[" + ", ".join(_describe(v) for v in example) + "]"
    return type(example).__name__


def graph(model: nn.Module, example: Any, stages: Stages | None = None) -> Analysis:
    """The coupled channel groups of ``model``, each prunable or with the reason it is not; ``analysis.cost``
    prices any plan of it. One analysis serves every ratio, target and criterion (``shrink(..., analysis=)``)."""
    stages = stages or Stages()
    with stages("trace"):
        check_runs(model, example)
    return analyse(model, example, stages=stages)


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
) -> ShrinkResult:
    """Trace, group, rank, plan, cut and verify. Raises VerificationError (naming the group) on a mismatch.

    ``analysis``: this model's :func:`graph` on this example, when the caller has it already (it depends on the
    model and the input only, so one analysis serves every ratio and criterion); the model is then neither run
    nor traced again. ``target_macs`` / ``target_params``: instead of ``ratio``, the fraction of the original's
    MACs or parameters to keep (the report's ``target`` says what was reached). ``stages``: timings and progress
    (:class:`slimnet.stages.Stages`); the report's ``timings`` holds them either way."""
    t0 = time.perf_counter()
    stages = stages or Stages()
    check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    settings = {"ratio": ratio, "criterion": criterion, "round_to": round_to, "ignore": ignore, "seed": seed}
    settings.update(prune_norm=prune_norm, head_ratio=head_ratio, target=_target(target_macs, target_params))
    model = model.eval()
    if analysis is None:
        analysis = graph(model, example, stages)
    cut = _cut_and_verify(model, example, analysis, settings, model_name or type(model).__name__, stages)
    with stages("measure"):
        report = make_report(model, example, analysis, cut, measure)
    if cut.reached is not None:
        report["target"] = cut.reached.report()
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["timings"] = stages.rounded()
    return ShrinkResult(cut.pruned, cut.plan, analysis, cut.decisions, cut.result, report)


#: How often a plan is made again after the verifier blamed some groups (each round leaves more groups whole).
REPLANS = 3


@dataclass
class _Cut:
    """One verified cut: what :func:`shrink` reports."""

    pruned: nn.Module
    plan: dict[str, Any]
    decisions: list[Decision]
    result: VerifyResult
    approximate: bool
    reached: Any
    left_whole: list[dict[str, str]]


def _cut_and_verify(
    model: nn.Module, example: Any, analysis: Analysis, settings: dict[str, Any], name: str, stages: Stages
) -> _Cut:
    """Rank, plan, cut and verify; when the verifier rejects the cut, leave the groups it blames whole
    (:mod:`slimnet.culprits`), plan again and verify again. Raises VerificationError when no group can be
    blamed or the rounds run out: a wrong cut is never returned."""
    current, left_whole = analysis, []
    for attempt in range(REPLANS + 1):
        with stages("rank"):
            decisions, reached = choose(current, model, **settings)
        with stages("cut"):
            plan = _plan(current, decisions, reached, name, settings)
            pruned = pruned_copy(model, plan).eval()
        with stages("verify"):
            result = verify(model, pruned, plan, example, analysis.pieces)
            approximate = any(d.pruned and d.group.normalised for d in decisions)
            if result.passed or approximate:
                return _Cut(pruned, plan, decisions, result, approximate, reached, left_whole)
            culprits = find_culprits(model, example, current, decisions)
            if not culprits or attempt == REPLANS:
                group = f" (group {', '.join(d.group.name for d in culprits[:3])})" if culprits else ""
                raise VerificationError(f"verification failed: {result.error}{group}; nothing was written")
            current = leave_whole(current, culprits, result.error)
            left_whole += [{"group": d.group.name, "reason": current.groups[d.group.id].reason} for d in culprits]
    raise AssertionError("unreachable")


def _plan(
    analysis: Analysis, decisions: list[Decision], reached: Any, name: str, settings: dict[str, Any]
) -> dict[str, Any]:
    plan = build_plan(
        analysis,
        decisions,
        model_name=name,
        criterion=settings["criterion"],
        ratio=round(reached.ratio, 6) if reached else settings["ratio"],
        round_to=settings["round_to"],
        seed=settings["seed"],
        head_ratio=settings["head_ratio"],
    )
    if reached is not None:
        plan["target"] = reached.report()
    if analysis.pieces:
        plan["pieces"] = list(analysis.pieces)  # what `slimnet apply` verifies piece by piece
    return plan


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
    """Apply a saved plan to a fresh instance; verify it when an example input is given (piece by piece when the
    plan was made piece by piece: its ``pieces``)."""
    pruned = pruned_copy(model.eval(), plan).eval()
    result = verify(model, pruned, plan, example, plan.get("pieces")) if example is not None else None
    return pruned, result


def _macs(model: nn.Module, pruned: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]
          ) -> tuple[list[int | None], str | None]:  # fmt: skip
    """MACs before and after: from the analysis' cost model (no second pass over either model), or from fvcore
    when the model was analysed piece by piece (the cost model then misses what lies outside the pieces)."""
    cost = analysis.cost
    keep = cost.keep_vector([d.keep for d in decisions]) if cost is not None else None
    if cost is not None and cost.complete:
        return [cost.macs(), cost.macs(keep)], "slimnet"
    try:
        return [count_macs(model, example), count_macs(pruned, example)], "fvcore"
    except SlimnetError:  # fvcore's TorchScript trace fails on some forwards (a detector's post-processing)
        if cost is None:
            return [None, None], None
        return [cost.macs(), cost.macs(keep)], "slimnet (traced pieces only)"


def make_report(model: nn.Module, example: Any, analysis: Analysis, cut: _Cut, measure: bool) -> dict[str, Any]:
    """The --json object (a contract: fields may be added, never changed)."""
    pruned, plan, decisions, result = cut.pruned, cut.plan, cut.decisions, cut.result
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
        "exact": not cut.approximate,
        "verify_dtype": result.dtype,
        "verify_inputs": result.inputs,
        "verify_randomised": result.randomised,
        "verify_randomised_diff": result.randomised_diff,
        "verify_compared": result.compared,
        "left_whole_after_verify": cut.left_whole,
        "trace_notes": list(analysis.notes),
        "output": None,
        "plan": None,
    }
