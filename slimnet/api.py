"""The Python API: every CLI command is a thin shell over these functions.

from slimnet.api import shrink
result = shrink(model, torch.randn(1, 3, 224, 224), ratio=0.5, criterion="fpgm")
result.model    # the pruned nn.Module (a new object; ``model`` is left untouched)
result.plan     # slimnet.plan/1 data
result.report   # the same dict that ``slimnet shrink --json`` prints

graph(model, example) is ``slimnet graph``; Planner(model, example) makes plans for any ratio, target or
allocation from one analysis (``Planner.plan(target_macs=0.5, use_global=True)``), and ``shrink(..., planner=)``
cuts them; apply(model, plan, example) ``slimnet apply``, and
bench(["a.pt", "b.pt"]) or bench([model, pruned], example) ``slimnet bench --json`` (:mod:`slimnet.benchmark`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from torch import nn

from . import measure
from ._tensors import count_params
from .benchmark import bench
from .errors import VerificationError
from .groups import Analysis
from .plan import Decision, build_plan
from .planner import Planned, Planner, check_runs, describe, graph
from .settings import DEFAULT_MAX_LAYER_RATIO, DEFAULT_ROUND_TO, check_allocation, check_settings
from .stages import Stages
from .surgeon import pruned_copy
from .verify import VerifyResult, verify

__all__ = ["Planned", "Planner", "ShrinkResult", "apply", "bench", "check_runs", "describe", "graph", "shrink"]


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
    target_latency: float | str | None = None,
    use_global: bool = False,
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO,
    ratios: dict[str, float] | None = None,
    backend: str = "ort-cpu",
    threads: int = 1,
    batch_size: int = 1,
    cache: bool = True,
    planner: Planner | None = None,
    stages: Stages | None = None,
    progress: bool = False,
) -> ShrinkResult:
    """Trace, group, rank, plan, cut and verify. Raises VerificationError (naming the group) on a mismatch.

    Each group drops ``ratio`` (``head_ratio`` for heads) unless ``ratios`` (group name or glob -> share) names
    it; ``use_global`` ranks all units together (no group loses more than ``max_layer_ratio``). Targets replace
    ``ratio``: ``target_macs`` / ``target_params`` (fraction of the original's to keep), ``target_latency`` (a
    fraction of the latency measured on ``backend`` at ``threads`` and ``batch_size``, or ``"12ms"``;
    ``cache=False`` measures the latency table again); the report's ``target`` says what was reached.
    ``planner`` / ``analysis``: this model's :class:`Planner` or :func:`graph` on this example, if the caller has
    it (the model is then neither run nor traced again). ``stages``: timings and progress."""
    t0 = time.perf_counter()
    stages = stages or Stages()
    check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    targets = {"macs": target_macs, "params": target_params, "latency": target_latency}
    check_allocation(targets=targets, max_layer_ratio=max_layer_ratio, backend=backend)  # before any analysis
    planner = planner if planner is not None else Planner(model.eval(), example, analysis, stages)
    with stages("rank"):
        planned = planner.plan(
            ratio=ratio, criterion=criterion, round_to=round_to, ignore=ignore, seed=seed, prune_norm=prune_norm,
            head_ratio=head_ratio, target_macs=target_macs, target_params=target_params,
            target_latency=target_latency, use_global=use_global, max_layer_ratio=max_layer_ratio, ratios=ratios,
            backend=backend, threads=threads, batch_size=batch_size, cache=cache, progress=progress,
            model_name=model_name,
        )  # fmt: skip
    decisions, plan, reached, analysis = planned.decisions, planned.plan, planned.target, planner.analysis
    pruned, result, approximate = cut_and_verify(model.eval(), example, analysis, decisions, plan, stages)
    with stages("measure"):
        report = make_report(model, pruned, example, analysis, decisions, plan, result, approximate, measure)
    if reached is not None:
        report["target" if reached.kind != "units" else "global"] = reached.report()
    report["allocation"] = plan.get("allocation", "uniform")
    report["importance_kept"] = importance_kept(planner, criterion, seed, decisions)
    return ShrinkResult(pruned, plan, analysis, decisions, result, {**report, **_timing(t0, stages)})


def _timing(t0: float, stages: Stages) -> dict[str, Any]:
    return {"seconds": round(time.perf_counter() - t0, 3), "timings": stages.rounded()}


def cut_and_verify(model: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision],
                   plan: dict[str, Any], stages: Stages) -> tuple[nn.Module, VerifyResult, bool]:  # fmt: skip
    """The pruned copy, its verification, and whether the cut is approximate (normalised groups pruned on
    request); raises VerificationError, naming the culprit group, when an exact cut does not verify."""
    with stages("cut"):
        pruned = pruned_copy(model, plan).eval()
    with stages("verify"):
        result = verify(model, pruned, plan, example)
        approximate = any(d.pruned and d.group.normalised for d in decisions)
        if not result.passed and not approximate:
            culprit = find_culprit(model, example, analysis, decisions)
            raise VerificationError(f"verification failed: {result.error}{culprit}; nothing was written")
    return pruned, result, approximate


def importance_kept(planner: Planner, criterion: str, seed: int, decisions: list[Decision]) -> dict[str, float]:
    """The sum of the normalised scores of the kept units (:mod:`slimnet.allocate.ranking`), of all, and its
    share, over the groups that were pruned or could have been."""
    ranking = planner.ranking(criterion, seed)
    ranked = [d for d in decisions if d.reason is None and d.group.id in ranking.orders]
    kept = ranking.kept_importance({d.group.id: len(d.keep) for d in ranked})
    total = ranking.kept_importance({d.group.id: len(d.group.units) for d in ranked})
    return {"kept": round(kept, 4), "total": round(total, 4), "share": round(kept / total, 6) if total else 1.0}


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
            if not verify(model, pruned, single, example).passed:
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
        "output": None,
        "plan": None,
    }
