"""The Python API: every CLI command is a thin shell over these functions (also at the top level: ``slimnet.shrink``,
``slimnet.apply``, ``slimnet.graph``, ``slimnet.bench``, and ``slimnet.export`` from :mod:`slimnet.exporting.onnx`)::

    import slimnet
    result = slimnet.shrink(model, torch.randn(1, 3, 224, 224), ratio=0.5, criterion="fpgm")
    result.model    # the pruned nn.Module (a new object; ``model`` is left untouched)
    result.plan     # slimnet.plan/1 data
    result.report   # the same dict that ``slimnet shrink --json`` prints

``graph(model, example)`` is ``slimnet graph``; ``Planner(model, example)`` makes plans for any ratio, target or
allocation from one analysis (``Planner.plan(target_macs=0.5, use_global=True)``), and ``shrink(..., planner=)``
cuts them; ``apply(model, plan, example)`` is ``slimnet apply``, and ``bench(["a.pt", "b.pt"])`` or
``bench([model, pruned], example)`` ``slimnet bench --json`` (:mod:`slimnet.measure.bench`).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._tensors import count_params, in_eval
from .allocate.decide import Decision
from .cost import macs as fvcore_macs
from .cut.surgeon import pruned_copy
from .errors import SlimnetError, VerificationError
from .groups import Analysis
from .measure.bench import bench
from .plan import load as load_plan
from .planner import Planned, Planner, check_runs, describe, graph
from .rank.statistics import Statistics
from .repair import calibrate
from .settings import DEFAULT_MAX_LAYER_RATIO, DEFAULT_ROUND_TO, ShrinkSettings
from .stages import Stages
from .trace import reduced
from .verify.culprits import find_culprits, leave_whole
from .verify.verifier import VerifyResult, verify

__all__ = ["Planned", "Planner", "ShrinkResult", "apply", "bench", "check_runs", "describe", "graph", "shrink"]


@dataclass
class ShrinkResult:
    """What ``shrink`` returns.

    Attributes:
        model: the pruned model, a new ``nn.Module`` in eval mode (the input model is left untouched).
        plan: the ``slimnet.plan/1`` data: per original ``state_dict`` tensor, the indices each cut dimension
            keeps; ``apply`` re-applies it to another instance (``slimnet.plan.save`` writes it).
        analysis: the channel groups (``graph``), reusable for other ratios and criteria (``analysis=``).
        decisions: per group, what was kept and why a group was left whole.
        verification: the check of the pruned model against the masked original (``max_abs_diff``,
            ``tolerance``, ``passed``, ``inputs``).
        report: the ``slimnet shrink --json`` object: ``params_before``/``params_after``,
            ``macs_before``/``macs_after``, ``groups``, ``pruned_groups``, ``skipped`` (group and reason),
            ``max_abs_diff``, ``tolerance``, ``exact``, ``timings`` and more (``params`` and ``macs`` hold the same
            numbers as ``[before, after]``).
    """

    model: nn.Module
    plan: dict[str, Any]
    analysis: Analysis
    decisions: list[Decision]
    verification: VerifyResult
    report: dict[str, Any]


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates, counted by fvcore (which calls one multiply-add one "flop")."""
    warnings.filterwarnings("ignore", message=".*torch.jit.*", category=FutureWarning)
    return int(fvcore_macs.count_macs(model, example)["macs"])


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
    data: Any = None,
    loss: Any = None,
    recalibrate_bn: bool = False,
    compensate_bias: bool = False,
    sensitivity: dict[str, Any] | None = None,
    reduce: bool = True,
    reconstruct: bool = False,
    verify_dtype: torch.dtype | None = None,
    settings: ShrinkSettings | None = None,
) -> ShrinkResult:
    """Prune ``model``: trace, group coupled channels, rank, cut, verify (``slimnet shrink``).

    Every prunable group of coupled channels (or attention heads, or MLP hidden units) loses ``ratio`` of its
    units, the lowest-ranked by ``criterion``; the pruned copy is then checked against the original with the cut
    units zeroed, in float64, on ``example`` and on a batch-2 input 32 px larger, and only returned if it agrees.

    Args:
        model: the trained model. It is left untouched (the result is a new module); it is put in eval mode.
        example: an input it accepts: a tensor, a tuple (positional arguments), a dict (keyword arguments) or a
            list (one argument that is a list: ``model([image])``), nested as the model takes them, e.g.
            ``torch.randn(1, 3, 224, 224)``.
        ratio: fraction of each group's units to drop, ``0 <= ratio < 1``.
        criterion: how units are ranked: ``"l1"``, ``"l2"``, ``"fpgm"``, ``"random"`` or ``"bn-scale"``.
        round_to: kept counts are rounded to a multiple of this (8: fast kernels; 1: exact ratios).
        ignore: glob patterns of module names to leave untouched (``["layer4.*", "fc"]``).
        seed: seed of the ``random`` criterion.
        prune_norm: also prune groups normalised by LayerNorm/RMSNorm (not exact: the report says
            ``"exact": False`` and the verifier reports the difference instead of failing).
        model_name: the name recorded in the plan and the report (default: the class name).
        measure: count MACs before and after (``report["macs"]``); False skips it.
        head_ratio: fraction of attention heads to drop (default: ``ratio``).
        analysis: this model's ``graph`` on this example, when the caller has it already: the model is then
            neither run nor traced again.
        target_macs: instead of ``ratio``, the fraction of the original's MACs to keep (``report["target"]`` says
            what was reached).
        target_params: the same for parameters.
        target_latency: instead of ``ratio``, a latency to reach: a fraction of the original's latency measured on
            ``backend`` at ``threads`` and ``batch_size`` (``0.5``), or an absolute one (``"12ms"``).
        use_global: rank all groups' units together instead of cutting each group by the same share (no group
            loses more than ``max_layer_ratio``); with a target, the ranking is cost-aware.
        max_layer_ratio: the largest share any group may lose under ``use_global`` or a target.
        ratios: per-group shares, group name or glob -> share to drop (``{"layer4.*": 0.7}``); others use
            ``ratio``.
        backend: where latency targets are measured: ``"ort-cpu"`` (onnxruntime) or ``"torch-cpu"``.
        threads: threads for latency measurements.
        batch_size: batch size for latency measurements.
        cache: reuse this machine's latency table for the model (False measures it again).
        planner: this model's ``slimnet.Planner`` on this example, when the caller has it: its analysis, rankings
            and latency tables are reused.
        stages: timings and progress (``slimnet.stages.Stages``); ``report["timings"]`` holds them either way.
        progress: show progress while a latency table is measured.
        data: calibration data, for the data-driven criteria (``"taylor"``, ``"activation"``, ``"apoz"``,
            ``"wanda"``) and the repairs: a tensor, a list of batches, a DataLoader or a ``slimnet.load.data`` spec
            (:func:`slimnet.load.data.as_calibration`).
        loss: taylor's loss, ``loss(model, batch) -> scalar`` (default: the model's own output as the teacher).
        recalibrate_bn: after the verified cut, re-estimate BatchNorm statistics on ``data``.
        compensate_bias: after the verified cut, fold the mean contribution of the dropped channels into the next
            layer's bias (or BatchNorm running mean), measured on ``data``.
        reconstruct: after the verified cut, refit the weights and bias of every layer that reads pruned channels by
            ridge least squares on ``data``, so that its output matches the original's
            (:mod:`slimnet.repair.reconstruct`).
            Each repair is judged on held-out calibration batches and taken back when it makes agreement worse
            (``report["fidelity"]``, ``report["repairs_reverted"]``).
        sensitivity: a ``slimnet.sensitivity/1`` result (``slimnet.sensitivity.analysis.sensitivity``); with
            ``target_macs`` or ``target_params``, per-group ratios that reach it with the least measured loss.
        reduce: analyse and verify on a small image when the model's graph holds for any size (the same groups
            and MACs for a fraction of the work: :mod:`slimnet.trace.reduced`); False: at the example's size.
        verify_dtype: the verifier's precision (default: float64 up to 10M parameters, float32 above:
            :mod:`slimnet.verify.verifier`).
        settings: every planning setting above (``ratio`` ... ``cache``) as one checked, frozen
            :class:`slimnet.settings.ShrinkSettings` (what the command line builds once from its flags and a
            recipe), instead of the keywords; recorded in the plan under ``"settings"``.

    Returns:
        A ``ShrinkResult``: ``.model`` (the pruned module), ``.plan`` (plain data, for ``apply``),
        ``.report`` (the ``slimnet shrink --json`` object), ``.verification``, ``.analysis``, ``.decisions``.

    Raises:
        SlimnetError: a setting out of range, an example the model rejects, a model that cannot be traced,
            calibration data missing where a criterion or repair needs it, or data the model rejects.
        VerificationError: the pruned model does not compute what the masked original computes, and no group can
            be blamed (groups that can are left whole and the model planned again: ``report
            ["left_whole_after_verify"]``); the message names the group; nothing is returned. A subclass of
            SlimnetError.
    """
    t0 = time.perf_counter()
    stages = stages or Stages()
    asked = dict(
        ratio=ratio, criterion=criterion, round_to=round_to, ignore=ignore, seed=seed, prune_norm=prune_norm,
        head_ratio=head_ratio, target_macs=target_macs, target_params=target_params,
        target_latency=target_latency, use_global=use_global, max_layer_ratio=max_layer_ratio, ratios=ratios,
        backend=backend, threads=threads, batch_size=batch_size, cache=cache,
    )  # fmt: skip
    settings = one_settings(settings, asked)  # checked here, once, before any analysis
    criterion, seed = settings.criterion, settings.seed
    calibration = calibrate.prepare(
        in_eval(model), example, data, criterion, recalibrate_bn, compensate_bias, reconstruct
    )
    planner = planner if planner is not None else Planner(model, example, analysis, stages, reduce=reduce)
    with stages("rank"):
        stats = calibrate.statistics(model, planner.analysis, criterion, calibration, loss, seed)
    asks = dict(settings=settings, progress=progress, model_name=model_name, stats=stats, sensitivity=sensitivity)
    cut = cut_and_verify(model, example, planner, asks, stages, verify_dtype)
    pruned, plan, analysis, decisions = cut.pruned, cut.plan, cut.planner.analysis, cut.decisions
    with stages("measure"):
        report = make_report(model, pruned, example, analysis, decisions, plan, cut.result, cut.approximate,
                             measure)  # fmt: skip
    report["left_whole_after_verify"] = cut.left_whole
    if cut.reached is not None:
        report["target" if cut.reached.kind != "units" else "global"] = cut.reached.report()
    report["allocation"] = plan.get("allocation", "uniform")
    report["importance_kept"] = importance_kept(cut.planner, criterion, seed, decisions, stats)
    if calibration is not None:  # repairs run on the verified cut; agreement before and after each one
        with stages("repair"):
            report.update(calibrate.repair(model, pruned, plan, analysis, calibration, recalibrate_bn, compensate_bias,
                                           reconstruct=reconstruct))  # fmt: skip
    return ShrinkResult(pruned, plan, analysis, decisions, cut.result, {**report, **_timing(t0, stages)})


def one_settings(settings: ShrinkSettings | None, asked: dict[str, Any]) -> ShrinkSettings:
    """``settings`` when given (then every keyword of its fields must be left at its default: one source, so a
    keyword cannot silently lose to it), else the keywords made into settings, which checks them."""
    made = ShrinkSettings(**asked)
    if settings is None:
        return made
    if made != DEFAULT_SETTINGS:
        changed = sorted(k for k, v in made.to_dict().items() if DEFAULT_SETTINGS.to_dict()[k] != v)
        raise SlimnetError(f"give either settings= or the keywords {changed}, not both")
    return settings


#: every setting at its default (what ``one_settings`` compares the keywords with)
DEFAULT_SETTINGS = ShrinkSettings()


def _timing(t0: float, stages: Stages) -> dict[str, Any]:
    return {"seconds": round(time.perf_counter() - t0, 3), "timings": stages.rounded()}


#: How often a plan is made again after the verifier blamed some groups (each round leaves more groups whole).
REPLANS = 3


@dataclass
class Cut:
    """One verified cut: the pruned copy, its plan and check, and the groups left whole on the way."""

    pruned: nn.Module
    plan: dict[str, Any]
    decisions: list[Decision]
    result: VerifyResult
    approximate: bool
    reached: Any
    left_whole: list[dict[str, str]]
    planner: Planner  # the one that made the plan (a new one when groups were left whole after verification)


def cut_and_verify(model: nn.Module, example: Any, planner: Planner, asks: dict[str, Any], stages: Stages,
                   verify_dtype: torch.dtype | None = None) -> Cut:  # fmt: skip
    """Plan, cut and verify; when the verifier rejects the cut, leave the groups it blames whole
    (:mod:`slimnet.verify.culprits`), plan again and verify again. Raises VerificationError when no group can be
    blamed or the rounds run out: a wrong cut is never returned. Approximate cuts (normalised groups pruned on
    request) are returned with the verifier's difference."""
    current, left_whole = planner, []
    for attempt in range(REPLANS + 1):
        with stages("rank"):
            planned = current.plan(**asks)
        analysis, plan, decisions = current.analysis, planned.plan, planned.decisions
        with stages("cut"):
            pruned = in_eval(pruned_copy(model, plan))
        with stages("verify"):
            result = verify(model, pruned, plan, example, inputs=analysis.checks, precision=verify_dtype,
                            pieces=analysis.pieces, taps=analysis.taps)  # fmt: skip
            approximate = any(d.pruned and d.group.normalised for d in decisions)
            if result.passed or approximate:
                return Cut(pruned, plan, decisions, result, approximate, planned.target, left_whole, current)
            culprits = find_culprits(model, example, analysis, decisions)
            if not culprits or attempt == REPLANS:
                group = f" (group {', '.join(d.group.name for d in culprits[:3])})" if culprits else ""
                raise VerificationError(f"verification failed: {result.error}{group}; nothing was written")
            fewer = leave_whole(analysis, culprits, result.error)
            left_whole += [{"group": d.group.name, "reason": fewer.groups[d.group.id].reason} for d in culprits]
            current = Planner(model, example, fewer, stages)
    raise AssertionError("unreachable")


def importance_kept(planner: Planner, criterion: str, seed: int, decisions: list[Decision],
                    stats: Statistics | None = None) -> dict[str, float]:  # fmt: skip
    """The sum of the normalised scores of the kept units (:mod:`slimnet.rank.ranking`), of all, and its
    share, over the groups that were pruned or could have been."""
    ranking = planner.ranking(criterion, seed, stats)
    ranked = [d for d in decisions if d.reason is None and d.group.id in ranking.orders]
    kept = ranking.kept_importance({d.group.id: len(d.keep) for d in ranked})
    total = ranking.kept_importance({d.group.id: len(d.group.units) for d in ranked})
    return {"kept": round(kept, 4), "total": round(total, 4), "share": round(kept / total, 6) if total else 1.0}


def apply(
    model: nn.Module, plan: dict[str, Any] | str | os.PathLike[str], example: Any | None = None
) -> tuple[nn.Module, VerifyResult | None]:
    """Cut ``model`` as ``plan`` says (``slimnet apply``): move a pruning found on one instance to another, e.g.
    from the model that was shrunk to a freshly trained or fine-tuned instance of the same architecture. A plan
    made piece by piece (its ``pieces``) is verified piece by piece.

    Args:
        model: an instance of the architecture the plan was made for (left untouched).
        plan: the plan: ``ShrinkResult.plan``, or the path of a saved ``.plan.json``.
        example: an input the model accepts; when given, the result is verified against the masked original
            (as ``shrink`` does) and the check is returned.

    Returns:
        ``(pruned, verification)``: the pruned copy (eval mode), and the ``slimnet.verify.verifier.VerifyResult``
        (None without ``example``; check ``verification.passed``).

    Raises:
        SlimnetError: a plan file that is missing or not a ``slimnet.plan/1`` plan, or a plan that does not fit
            the model (a tensor it names is missing or of another shape).
    """
    if not isinstance(plan, dict):
        plan = load_plan(plan)
    pruned = pruned_copy(model.eval(), plan).eval()
    result = (
        verify(model, pruned, plan, example, pieces=plan.get("pieces"), taps=plan.get("taps"))
        if example is not None
        else None
    )
    return pruned, result


def _macs(
    model: nn.Module, pruned: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]
) -> tuple[list[int | None], str | None]:
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
    params = [count_params(model), count_params(pruned)]
    return {
        "model": plan.get("model"),
        "criterion": plan.get("criterion"),
        "ratio": plan.get("ratio"),
        "round_to": plan.get("round_to"),
        "mlp_round_to": plan.get("mlp_round_to"),
        "params": params,
        "macs": macs,
        "params_before": params[0],
        "params_after": params[1],
        "macs_before": macs[0],
        "macs_after": macs[1],
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
        "reduced_input": reduced.describe(analysis.reduced) if analysis.reduced is not None else None,
        "reduced_note": analysis.reduced_note or None,
        "verify_compared": result.compared,
        "left_whole_after_verify": [],
        "trace_notes": list(analysis.notes),
        "output": None,
        "plan": None,
    }
