"""``slimnet bench``: parameters, MACs and latency of several models, and the speedup of each over the first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from . import measure
from ._tensors import batch_input
from .errors import SlimnetError
from .latency import time_models
from .load import load_model, model_and_input
from .settings import check_counts, parse_backends


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
