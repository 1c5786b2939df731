"""``slimnet bench``: parameters, MACs and latency of several models, and the speedup of each over the first.

Models are torch models (any MODEL string, or modules) or ``.onnx`` files. An ONNX file is timed on onnxruntime
as it is (the torch backends cannot run it: its cells stay empty, with the reason under ``not_timed``); its MACs
come from its torch twin when the same bench is given one (``pruned.pt`` beside ``pruned.onnx``: one counting
convention for both), else from its graph (:mod:`slimnet.cost.onnx`).

Noise is watched (:mod:`slimnet.measure.latency`): a wide spread, halves of the rounds that disagree, or a speedup above
:data:`EFFICIENCY_LIMIT` of the MAC ratio (pruning cannot earn more than it removes, so that is the machine) make
bench run more rounds, within ``budget`` seconds per backend; the report says what it saw (``noise``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._tensors import batch_input
from ..cost import macs
from ..errors import SlimnetError
from ..load.loader import load_input, load_model, model_and_input
from ..load.spec import check_model, parse_spec
from ..settings import check_counts, parse_backends
from ..stages import Stages
from .latency import Judge, OnnxFile, Timed, time_models

#: A real speedup above this fraction of the theoretical one is suspect (noise, or a cache effect): more rounds.
EFFICIENCY_LIMIT = 1.05

Model = str | nn.Module | tuple[str, nn.Module]


def bench(
    models: Sequence[Model],
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
    budget: float = 30.0,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """Parameters, MACs and latency of each model and, with two or more, the speedup of each over the first.

    This is ``slimnet bench --json``: the returned dict is that JSON object (a contract: fields may be added,
    never changed).

    Args:
        models: MODEL strings as the command line takes them (``torchvision:resnet50``, ``model.pt``,
            ``FILE.py:FACTORY``, ``hf:FOLDER``, or an ``.onnx`` file), ``nn.Module`` objects (labelled by their
            class name) or ``(label, module)`` pairs. The first is the baseline.
        example: the example input (a tensor, a tuple or a dict of tensors). Without it the first model must be
            a MODEL string, and the input comes from ``input_file`` / ``input_shape`` (for an ``hf:`` folder
            from its config, for an ONNX file from its graph's input shapes).
        backends: ``torch-cpu``, ``ort-cpu``, ``torch-cuda``, ``ort-cuda`` (default: all); one that cannot run
            here is skipped, with the reason under ``skipped_backends``.
        batch_size: the example is repeated along dim 0 to this many rows.
        warmup: untimed runs per model and backend.
        runs: timed rounds per backend (each round runs every model once, interleaved: A B A B ...).
        threads: CPU threads for torch and onnxruntime (default: torch's).
        per_layer: also return each module's MACs (``models[i]["per_layer"]``).
        input_file: ``--input``: a tensor, tuple or dict of tensors saved with ``torch.save``.
        input_shape: ``--input-shape``, e.g. ``"1,3,224,224"``.
        trust_pickle: fully unpickle model files (runs code the file names; only for files you trust).
        budget: seconds per backend that bench may spend on extra rounds when the timings look noisy (0: none).
        stages: timings and progress (``slimnet.stages.Stages``): ``load``, ``macs``, ``export``,
            ``time <backend>``.

    Returns:
        ``{"models": [{"path", "params", "macs", "flops", "skipped_ops", "by_op", "macs_counter",
        "latency_ms": {backend: {"p50", "p90", "min"}}, "latency_spread": {backend: {"p90_over_p50",
        "rounds"}}, "speedup", "efficiency", ...}], "baseline", "speedup": {"theoretical", backend...},
        "efficiency", "skipped_backends", "noise": {backend: {"rounds", "noisy", "settled", "still",
        "p90_over_p50"}}, "backends", "batch_size", "warmup", "runs", "threads", "macs_note", "device"}``;
        latencies in milliseconds, MACs as fvcore counts them (one multiply-add = one MAC).

    Raises:
        SlimnetError: a bad count or backend name, no model, a model that does not load, or a module first
            without an ``example``.
    """
    backends = parse_backends(backends)
    check_counts(batch_size=batch_size, warmup=warmup, runs=runs, threads=threads)
    stages = stages or Stages()
    names, loaded, example = _bench_models(models, example, input_file, input_shape, trust_pickle, stages)
    timed_input = batch_input(example, batch_size)
    with stages("macs"):
        entries = [_cost_entry(name, model, timed_input, per_layer) for name, model in zip(names, loaded)]
    _twins(names, entries)
    labels = _labels(names)
    timing = time_models(
        list(zip(labels, loaded)),
        example,
        backends=backends,
        batch_size=batch_size,
        warmup=warmup,
        runs=runs,
        threads=threads,
        budget=budget,
        judge=_judge(labels, entries),
        stages=stages,
    )
    for label, entry in zip(labels, entries):
        _attach_timing(entry, label, timing)
    for entry in entries[1:]:
        entry.update(macs.compare(entries[0], entry))
    first = macs.compare(entries[0], entries[1]) if len(entries) > 1 else {"speedup": {}, "efficiency": {}}
    return {
        "models": entries,
        "baseline": names[0],
        "speedup": first["speedup"],
        "efficiency": first["efficiency"],
        "skipped_backends": timing["skipped"],
        "noise": timing["noise"],
        "backends": backends,
        "batch_size": batch_size,
        "warmup": warmup,
        "runs": runs,
        "budget": budget,
        "threads": timing["threads"],
        "macs_note": macs.MACS_NOTE,
        "device": macs.device_info(timing["threads"]),
    }


def _attach_timing(entry: dict[str, Any], label: str, timing: dict[str, Any]) -> None:
    """A model's latencies (p50/p90/min per backend), their spread and rounds, and the backends that could not
    time it."""
    entry["latency_ms"] = {b: {k: s[k] for k in ("p50", "p90", "min")} for b, s in timing["latency_ms"][label].items()}
    entry["latency_spread"] = {
        b: {"p90_over_p50": n["p90_over_p50"][label], "rounds": n["rounds"]}
        for b, n in timing["noise"].items()
        if label in n["p90_over_p50"]
    }
    if label in timing["not_timed"]:
        entry["not_timed"] = timing["not_timed"][label]


def _bench_models(
    models: Sequence[Model],
    example: Any | None,
    input_file: str | None,
    input_shape: str | None,
    trust_pickle: bool,
    stages: Stages,
) -> tuple[list[str], list[Timed], Any]:
    """Names, models (MODEL strings loaded in order; ``.onnx`` files as :class:`OnnxFile`) and the example."""
    if not models:
        raise SlimnetError("give at least one model to bench")
    if example is None and not isinstance(models[0], str):
        raise SlimnetError("give the example input: the first model is a module, not a MODEL string to load")
    for m in models:  # every file is checked before the first one loads
        if isinstance(m, str):
            check_model(m, onnx=True)
    names: list[str] = []
    loaded: list[Timed] = []
    for m in models:
        with stages("load"):
            if isinstance(m, str) and parse_spec(m).kind == "onnx":
                onnx_file = OnnxFile(Path(m))
                example = example if example is not None else _onnx_input(onnx_file, input_file, input_shape, m)
                names.append(m)
                loaded.append(onnx_file)
            elif isinstance(m, str) and example is None:  # the first: its input comes with it (hf: -> token ids)
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


def _onnx_input(model: OnnxFile, input_file: str | None, input_shape: str | None, spec: str) -> Any:
    """The example for an ONNX file first in line: ``--input`` / ``--input-shape``, else zeros of its graph's
    input shapes (a symbolic dimension, such as a dynamic batch, taken as 1)."""
    if input_file is not None or input_shape is not None:
        return load_input(input_file, input_shape, spec)
    import onnx  # lazy: only an .onnx model needs its graph read here

    graph = onnx.load(str(model.path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    tensors = []
    for value in graph.input:
        if value.name in inits:
            continue
        tt = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        dtype = torch.int64 if tt.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) else torch.float32
        tensors.append(torch.randn(dims).to(dtype) if dtype.is_floating_point else torch.zeros(dims, dtype=dtype))
    if not tensors:
        raise SlimnetError(f"{spec} has no graph inputs to feed")
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _cost_entry(name: str, model: Timed, timed_input: Any, per_layer: bool) -> dict[str, Any]:
    if isinstance(model, OnnxFile):
        from ..cost.onnx import count_onnx  # lazy: only bench of .onnx files needs it

        inputs = list(timed_input.values()) if isinstance(timed_input, dict) else timed_input
        tensors = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        cost = count_onnx(model.path, [tuple(t.shape) for t in tensors])
        counter = "onnx"
    else:
        cost = macs.count_macs(model, timed_input)
        counter = "fvcore"
    entry = {
        "path": name,
        "params": cost["params"],
        "macs": cost["macs"],
        "flops": cost["flops"],
        "skipped_ops": cost["skipped_ops"],
        "by_op": cost["by_op"],
        "macs_counter": counter,
    }
    if per_layer:
        entry["per_layer"] = cost.get("per_layer", {})
    return entry


def _twins(names: list[str], entries: list[dict[str, Any]]) -> None:
    """An ONNX file whose torch twin is benched too (``x.onnx`` and ``x.pt``) takes the twin's counts, so that
    both sides of a comparison are counted one way (fvcore's)."""
    torch_stems = {
        str(Path(n).with_suffix("")): e for n, e in zip(names, entries) if e["macs_counter"] == "fvcore" and "." in n
    }
    for name, entry in zip(names, entries):
        twin = torch_stems.get(str(Path(name).with_suffix(""))) if entry["macs_counter"] == "onnx" else None
        if twin is not None:
            entry.update({k: twin[k] for k in ("params", "macs", "flops", "skipped_ops", "by_op")})
            entry["macs_counter"] = f"fvcore, from {twin['path']}"


def _judge(labels: list[str], entries: list[dict[str, Any]]) -> Judge:
    """Speedups above :data:`EFFICIENCY_LIMIT` of the MAC ratio, from a backend's medians: a sign of noise."""
    macs = {label: e["macs"] for label, e in zip(labels, entries)}

    def judge(medians: dict[str, float]) -> str | None:
        base = labels[0]
        if base not in medians or not macs[base]:
            return None
        for label, ms in medians.items():
            if label == base or not macs[label] or not ms:
                continue
            efficiency = (medians[base] / ms) / (macs[base] / macs[label])
            if efficiency > EFFICIENCY_LIMIT:
                return f"{label}: efficiency {efficiency:.0%}, above {EFFICIENCY_LIMIT:.0%} of the MAC ratio"
        return None

    return judge


def _labels(names: list[str]) -> list[str]:
    """The names, made unique (the same file given twice is timed twice, as ``a.pt`` and ``a.pt#2``)."""
    seen: dict[str, int] = {}
    labels = []
    for s in names:
        seen[s] = seen.get(s, 0) + 1
        labels.append(s if seen[s] == 1 else f"{s}#{seen[s]}")
    return labels
