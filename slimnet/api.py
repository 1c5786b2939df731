"""The Python API: every CLI command is a thin shell over these functions.

from slimnet.api import shrink
result = shrink(model, torch.randn(1, 3, 224, 224), ratio=0.5, criterion="fpgm")
result.model    # the pruned nn.Module (a new object; ``model`` is left untouched)
result.plan     # slimnet.plan/1 data
result.report   # the same dict that ``slimnet shrink --json`` prints

graph(model, example) is ``slimnet graph``, apply(model, plan, example) ``slimnet apply``, and
bench(["a.pt", "b.pt"]) or bench([model, pruned], example) ``slimnet bench --json``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import measure
from ._tensors import batch_input, call, count_params
from ._util import first_line
from .errors import SlimnetError, VerificationError
from .groups import Analysis, analyse
from .latency import time_models
from .load import load_model, model_and_input
from .plan import Decision, build_plan, decide
from .settings import DEFAULT_ROUND_TO, check_counts, check_settings, parse_backends
from .surgeon import pruned_copy
from .verify import VerifyResult, verify


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


def graph(model: nn.Module, example: Any) -> Analysis:
    """The coupled channel groups of ``model``, each prunable or with the reason it is not."""
    check_runs(model, example)
    return analyse(model, example)


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
) -> ShrinkResult:
    """Trace, group, rank, plan, cut and verify. Raises VerificationError (naming the group) on a mismatch.

    ``analysis``: this model's :func:`graph` on this example, when the caller has it already (it depends on the
    model and the input only, so one analysis serves every ratio and criterion); the model is then neither run
    nor traced again."""
    t0 = time.perf_counter()
    check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
    model = model.eval()
    if analysis is None:
        analysis = graph(model, example)
    decisions = decide(
        analysis,
        model,
        ratio=ratio,
        criterion=criterion,
        round_to=round_to,
        ignore=ignore,
        seed=seed,
        prune_norm=prune_norm,
        head_ratio=head_ratio,
    )
    plan = build_plan(
        analysis,
        decisions,
        model_name=model_name or type(model).__name__,
        criterion=criterion,
        ratio=ratio,
        round_to=round_to,
        seed=seed,
        head_ratio=head_ratio,
    )
    pruned = pruned_copy(model, plan).eval()
    result = verify(model, pruned, plan, example)
    approximate = any(d.pruned and d.group.normalised for d in decisions)
    if not result.passed and not approximate:
        culprit = find_culprit(model, example, analysis, decisions)
        raise VerificationError(f"verification failed: {result.error}{culprit}; nothing was written")
    seconds = time.perf_counter() - t0
    report = make_report(model, pruned, example, analysis, decisions, plan, result, approximate, measure)
    report["seconds"] = round(seconds, 3)
    return ShrinkResult(pruned, plan, analysis, decisions, result, report)


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
    macs = [count_macs(model, example), count_macs(pruned, example)] if measure else [None, None]
    return {
        "model": plan.get("model"),
        "criterion": plan.get("criterion"),
        "ratio": plan.get("ratio"),
        "round_to": plan.get("round_to"),
        "params": [count_params(model), count_params(pruned)],
        "macs": macs,
        "macs_note": "fvcore counts one multiply-add as one flop; FLOPs = 2 x MACs",
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


# ------------------------------------------------------------------------------------------ bench
def bench(
    models: Sequence[str | nn.Module | tuple[str, nn.Module]],
    example: Any | None = None,
    *,
    backends: Sequence[str] = (),
    batch_size: int = 1,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    per_layer: bool = False,
    input_file: str | None = None,
    input_shape: str | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Params, MACs and latency of each model, and with two or more the speedup of each over the first: the
    ``slimnet bench --json`` object (a contract: fields may be added, never changed).

    ``models``: MODEL strings as the command line takes them, ``nn.Module`` objects (labelled by their class) or
    ``(label, module)`` pairs; the first is the baseline. ``example``: the input; without it, the first model
    must be a MODEL string, and the input comes from ``input_file`` / ``input_shape`` (``--input`` /
    ``--input-shape``; for an ``hf:`` folder, from its config). ``backends``: names as ``--backend`` takes them
    (default: all); one that cannot run here is skipped, with the reason. Models are timed interleaved."""
    backends = parse_backends(backends)
    check_counts(batch_size=batch_size, warmup=warmup, runs=runs, threads=threads)
    names, loaded, example = _bench_models(models, example, input_file, input_shape, trust_pickle)
    timed_input = batch_input(example, batch_size)
    entries = [_cost_entry(name, model, timed_input, per_layer) for name, model in zip(names, loaded)]
    labels = _labels(names)
    timing = time_models(
        list(zip(labels, loaded)),
        example,
        backends=backends,
        batch_size=batch_size,
        warmup=warmup,
        runs=runs,
        threads=threads,
    )
    for label, entry in zip(labels, entries):
        entry["latency_ms"] = {
            b: {k: s[k] for k in ("p50", "p90", "min")} for b, s in timing["latency_ms"][label].items()
        }
    for entry in entries[1:]:
        entry.update(measure.compare(entries[0], entry))
    first = measure.compare(entries[0], entries[1]) if len(entries) > 1 else {"speedup": {}, "efficiency": {}}
    return {
        "models": entries,
        "baseline": names[0],
        "speedup": first["speedup"],
        "efficiency": first["efficiency"],
        "skipped_backends": timing["skipped"],
        "backends": backends,
        "batch_size": batch_size,
        "warmup": warmup,
        "runs": runs,
        "threads": timing["threads"],
        "macs_note": measure.MACS_NOTE,
        "device": measure.device_info(timing["threads"]),
    }


def _bench_models(
    models: Sequence[str | nn.Module | tuple[str, nn.Module]],
    example: Any | None,
    input_file: str | None,
    input_shape: str | None,
    trust_pickle: bool,
) -> tuple[list[str], list[nn.Module], Any]:
    """Names, modules (MODEL strings loaded in order) and the example input."""
    if not models:
        raise SlimnetError("give at least one model to bench")
    if example is None and not isinstance(models[0], str):
        raise SlimnetError("give the example input: the first model is a module, not a MODEL string to load")
    names: list[str] = []
    loaded: list[nn.Module] = []
    for m in models:
        if isinstance(m, str) and example is None:  # the first: its input comes with it (hf: -> token ids)
            first, example = model_and_input(m, None, input_file, input_shape, trust_pickle)
            names.append(m)
            loaded.append(first.model)
        elif isinstance(m, str):
            names.append(m)
            loaded.append(load_model(m, trust_pickle=trust_pickle).model)
        else:
            name, module = m if isinstance(m, tuple) else (type(m).__name__, m)
            names.append(name)
            loaded.append(module)
    return names, loaded, example


def _cost_entry(name: str, model: nn.Module, timed_input: Any, per_layer: bool) -> dict[str, Any]:
    cost = measure.count_macs(model, timed_input)
    entry = {
        "path": name,
        "params": cost["params"],
        "macs": cost["macs"],
        "flops": cost["flops"],
        "skipped_ops": cost["skipped_ops"],
        "by_op": cost["by_op"],
    }
    if per_layer:
        entry["per_layer"] = cost["per_layer"]
    return entry


def _labels(names: list[str]) -> list[str]:
    """The names, made unique (the same file given twice is timed twice, as ``a.pt`` and ``a.pt#2``)."""
    seen: dict[str, int] = {}
    labels = []
    for s in names:
        seen[s] = seen.get(s, 0) + 1
        labels.append(s if seen[s] == 1 else f"{s}#{seen[s]}")
    return labels
