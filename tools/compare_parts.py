"""The pieces of ``tools/compare.py``: the models, the two tools run the same way, a cut read back from the
tensors as a slimnet plan, and the three parts (coverage, time, quality), each a JSON-able record of one model."""

from __future__ import annotations

import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimnet.api import bench, shrink
from slimnet.exporting.onnx import export_onnx
from slimnet.trace.tracer import trace
from slimnet.verify.verifier import randomise, verify

TIME_MODELS = ["resnet50", "densenet201", "efficientnet_b7", "regnet_y_16gf", "vit_b_16", "hf:bert-base"]
TRANSFORMERS = ("vit_", "swin_", "maxvit_")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ models and inputs
def zoo() -> list[str]:
    import torchvision  # lazy: only the coverage part needs the list

    return sorted(torchvision.models.list_models(module=torchvision.models))


def coverage_size(name: str) -> int:
    """CNNs at 64 px (channel rules do not depend on image size, and both tools run 80 models in a few hours),
    inception_v3 at 299, the transformer families at their own 224."""
    if name.startswith("inception"):
        return 299
    return 224 if name.startswith(TRANSFORMERS) else 64


def build(name: str, size: int | None = None) -> tuple[nn.Module, Any]:
    """A randomised model and its example: ``hf:bert-base`` is BERT-base from its default config (16 tokens)."""
    torch.manual_seed(0)
    if name == "hf:bert-base":
        from transformers import BertConfig, BertModel  # lazy: optional dependency

        model = BertModel(BertConfig(), add_pooling_layer=False).eval()
        example = {"input_ids": torch.randint(0, 30522, (1, 16), generator=torch.Generator().manual_seed(0))}
    else:
        import torchvision  # lazy: heavy

        model = torchvision.models.get_model(name).eval()
        s = size or (299 if name.startswith("inception") else 224)
        example = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    return randomise(model).eval(), example


def classifier(model: nn.Module) -> list[nn.Module]:
    """The layer that makes the model's output (kept by both tools): the last Linear or conv."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:] if not _is_hf(model) else []


def _is_hf(model: nn.Module) -> bool:
    return type(model).__module__.startswith("transformers")


def call(model: nn.Module, example: Any) -> Any:
    with torch.no_grad():
        return model(**example) if isinstance(example, dict) else model(example)


# ------------------------------------------------------------------------------------------ the two tools
def run_slimnet(model: nn.Module, example: Any) -> tuple[nn.Module, dict[str, Any], float]:
    t0 = time.perf_counter()
    res = shrink(model, example, ratio=0.5, criterion="l2", measure=False)
    return res.model, res.report, time.perf_counter() - t0


def tp_options(model: nn.Module) -> dict[str, Any]:
    """Torch-Pruning's attention settings: head counts of every attention projection, whole heads pruned."""
    heads: dict[nn.Module, int] = {}
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            heads[m] = m.num_heads
        elif type(m).__name__.endswith("SelfAttention") and hasattr(m, "query"):  # Hugging Face BERT
            for proj in (m.query, m.key, m.value):
                heads[proj] = m.num_attention_heads
    if not heads:
        return {}
    return {"num_heads": heads, "prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": 0.5}


def run_tp(model: nn.Module, example: Any) -> tuple[nn.Module, float, float]:
    """Prune in place; the seconds of its graph (``MetaPruner``) and of its importance and cut (``step``)."""
    import torch_pruning as tp  # lazy: the peer (a dev dependency)

    opts = tp_options(model)
    t0 = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
        ignored_layers=classifier(model), round_to=8, **opts,
    )  # fmt: skip
    t1 = time.perf_counter()
    pruner.step()
    t2 = time.perf_counter()
    for m in opts.get("num_heads", {}):  # what Torch-Pruning's examples do after a head cut
        if isinstance(m, nn.MultiheadAttention):
            m.num_heads = pruner.num_heads[m]
            m.head_dim = m.embed_dim // m.num_heads
    for m in model.modules():
        if type(m).__name__.endswith("SelfAttention") and hasattr(m, "query") and m.query in pruner.num_heads:
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
    return model, t1 - t0, t2 - t1


# ------------------------------------------------------------------------------------------ reading a cut back
class NotASlice(Exception):
    """A pruned tensor that is not a slice of the original (values changed, or a shape grew)."""


def kept_indices(w: torch.Tensor, p: torch.Tensor) -> dict[int, list[int]]:
    """The indices along each shrunk dim of ``w`` that ``p`` kept (``p == w[kept...]`` exactly). Every slice of
    ``p`` over its shrunk dims is matched with the slices of ``w`` by a fingerprint of its values (the other dims);
    each pruned position then takes the original index most of its slices point to, and the result is checked
    for exact equality."""
    if w.dim() != p.dim():
        raise NotASlice(f"rank {p.dim()} instead of {w.dim()}")
    changed = [d for d in range(w.dim()) if w.shape[d] != p.shape[d]]
    if any(p.shape[d] > w.shape[d] for d in changed):
        raise NotASlice("a dim grew")
    rest = [d for d in range(w.dim()) if d not in changed]
    wm = w.detach().permute(changed + rest).reshape(-1, int(np.prod([w.shape[d] for d in rest] or [1]))).double()
    pm = p.detach().permute(changed + rest).reshape(-1, wm.shape[1]).double()
    vec = torch.randn(wm.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    kw, kp = (wm @ vec).numpy(), (pm @ vec).numpy()
    order = np.argsort(kw, kind="stable")
    lo, hi = np.searchsorted(kw[order], kp, "left"), np.searchsorted(kw[order], kp, "right")
    counts = hi - lo
    if (counts == 0).any():
        raise NotASlice("values that are not in the original")
    js = np.repeat(np.arange(len(kp)), counts)
    starts = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    jm = np.unravel_index(js, [p.shape[d] for d in changed])
    im = np.unravel_index(order[starts], [w.shape[d] for d in changed])
    out: dict[int, list[int]] = {}
    for k, d in enumerate(changed):
        keys, votes = np.unique(jm[k].astype(np.int64) * w.shape[d] + im[k], return_counts=True)
        pos, orig = keys // w.shape[d], keys % w.shape[d]
        best = np.lexsort((-votes, pos))
        first = np.r_[True, pos[best][1:] != pos[best][:-1]]
        out[d] = orig[best][first].tolist()
    sliced = w.detach()
    for d, idx in out.items():
        sliced = sliced.index_select(d, torch.as_tensor(idx))
    if not torch.equal(sliced, p.detach()) or any(sorted(set(v)) != v for v in out.values()):
        raise NotASlice("no slice of the original equals it")
    return out


def recovered_plan(original: dict[str, torch.Tensor], pruned: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The slimnet plan of a cut made by another tool, read from the tensors alone. A tensor whose values tie
    (two equal running variances after the float32 cast, say) cannot name its indices alone: it takes those of
    a tensor read before it of the same sizes that slice it exactly, its own module's first."""
    tensors: dict[str, dict[str, list[int]]] = {}
    for name, w in original.items():
        if name not in pruned:
            raise NotASlice(f"{name} is gone")
        p = pruned[name]
        if tuple(p.shape) == tuple(w.shape):
            if not torch.equal(p, w):
                raise NotASlice(f"{name} changed values")
            continue
        try:
            tensors[name] = {str(d): idx for d, idx in sorted(kept_indices(w, p).items())}
        except NotASlice as exc:
            found = borrowed(name, w, p, tensors, original)
            if found is None:
                raise NotASlice(f"{name}: {exc}") from None
            tensors[name] = found
    return {"format": "slimnet.plan/1", "tensors": tensors}


def borrowed(
    name: str, w: torch.Tensor, p: torch.Tensor, read: dict[str, dict[str, list[int]]], original: dict[str, Any]
) -> dict[str, list[int]] | None:
    """Indices of an already read tensor that slice ``w`` into ``p`` exactly (see :func:`recovered_plan`)."""
    if w.dim() != 1:
        return None
    module = name.rsplit(".", 1)[0]
    order = sorted(read, key=lambda other: other.rsplit(".", 1)[0] != module)
    for other in order:
        for dim_s, idx in read[other].items():
            if original[other].shape[int(dim_s)] == w.shape[0] and len(idx) == p.shape[0]:
                if torch.equal(w.detach().index_select(0, torch.as_tensor(idx)), p.detach()):
                    return {"0": idx}
    return None


# ------------------------------------------------------------------------------------------ part 1: coverage
def export_ok(model: nn.Module, example: Any) -> str:
    """``yes`` when ``model`` exports to ONNX and onnxruntime agrees with torch, else why not."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            info = export_onnx(model, example, Path(tmp) / "m.onnx")
        except Exception as exc:  # noqa: BLE001 - a failed export is a result
            return f"no: {first_line(exc)}"
    return "yes" if info.get("max_abs_diff", 0.0) <= info.get("tolerance", float("inf")) else "no: parity"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def runs(model: nn.Module, example: Any) -> str:
    try:
        call(model, example)
    except Exception as exc:  # noqa: BLE001 - a model that no longer runs is a result
        return f"no: {first_line(exc)}"
    return "yes"


def coverage_slimnet(model: nn.Module, example: Any) -> dict[str, Any]:
    try:
        pruned, report, seconds = run_slimnet(model, example)
    except Exception as exc:  # noqa: BLE001 - a refusal is a result
        return {"shrinks": f"no: {first_line(exc)}"}
    rec = {
        "shrinks": "yes",
        "seconds": round(seconds, 3),
        "timings": report["timings"],
        "right": "yes" if report["verified"] else "no",
        "verify": report["verify_dtype"],
        "reduced": report.get("reduced_input"),
        "params_after": sum(p.numel() for p in pruned.parameters()),
        "pruned_groups": report["pruned_groups"],
    }
    rec["runs"] = runs(pruned, example)
    rec["onnx"] = export_ok(pruned, example)
    try:
        rec["nodes"] = len(trace(model, example).graph.nodes)
    except Exception:  # noqa: BLE001 - traced piece by piece: no one graph to count
        rec["nodes"] = None
    return rec


def coverage_tp(model: nn.Module, example: Any) -> dict[str, Any]:
    original = copy.deepcopy(model)
    try:
        pruned, graph_s, prune_s = run_tp(model, example)
    except Exception as exc:  # noqa: BLE001 - a failure is a result
        return {"shrinks": f"no: {first_line(exc)}"}
    rec = {"shrinks": "yes", "seconds": round(graph_s + prune_s, 3),
           "params_after": sum(p.numel() for p in pruned.parameters())}  # fmt: skip
    rec["runs"] = runs(pruned, example)
    try:
        plan = recovered_plan(original.state_dict(), pruned.state_dict())
        result = verify(original, pruned, plan, example)
        rec["right"] = "yes" if result.passed else f"no: {result.error}"
    except NotASlice as exc:
        rec["right"] = f"no: not a slice of the original ({exc})"
    except Exception as exc:  # noqa: BLE001 - the check itself failing says the model is not right
        rec["right"] = f"no: {first_line(exc)}"
    rec["onnx"] = export_ok(pruned, example) if rec["runs"] == "yes" else "no: does not run"
    return rec


def warm_up() -> None:
    """Both tools once on a tiny network, untimed: each worker is a fresh process, and the first call pays for
    lazy imports and first-use setup that would otherwise land in the first model's seconds (and lift every
    small model off the scaling line)."""
    tiny = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.Flatten(),
                         nn.LazyLinear(4))  # fmt: skip
    x = torch.randn(1, 3, 16, 16)
    call(tiny, x)
    run_slimnet(copy.deepcopy(tiny), x)
    run_tp(tiny, x)


def coverage(name: str) -> dict[str, Any]:
    warm_up()
    size = coverage_size(name)
    model, example = build(name, size)
    rec: dict[str, Any] = {"model": name, "size": size, "params": sum(p.numel() for p in model.parameters())}
    rec["slimnet"] = coverage_slimnet(copy.deepcopy(model), example)
    rec["tp"] = coverage_tp(model, example)
    return rec


# ------------------------------------------------------------------------------------------ part 2: time
def time_one(name: str, repeats: int) -> dict[str, Any]:
    """Interleaved runs (slimnet, Torch-Pruning, slimnet, ...) on fresh copies of one randomised model, after
    one untimed warm-up of each tool. Wall seconds, and CPU seconds of this process (``cpu``: with one torch
    thread, the work done, which other jobs on a shared machine barely change)."""
    warm_up()
    model, example = build(name)
    ours: list[dict[str, Any]] = []
    peer: list[dict[str, Any]] = []
    for _ in range(repeats):
        mine, theirs = copy.deepcopy(model), copy.deepcopy(model)
        c0 = time.process_time()
        _, report, seconds = run_slimnet(mine, example)
        ours.append({"total": seconds, "cpu": time.process_time() - c0, **report["timings"]})
        try:
            c0 = time.process_time()
            _, graph_s, prune_s = run_tp(theirs, example)
            cpu = time.process_time() - c0
            peer.append({"graph": graph_s, "prune": prune_s, "total": graph_s + prune_s, "cpu": cpu})
        except Exception as exc:  # noqa: BLE001 - the peer failing is a result
            peer.append({"error": first_line(exc)})
        log(f"time {name}: slimnet {seconds:.2f}s, tp {peer[-1].get('total', float('nan')):.2f}s")
    med = {k: statistics.median(r.get(k, 0.0) for r in ours) for k in ours[0]}
    if "error" in peer[0]:
        tp_med: dict[str, Any] = {"error": peer[0]["error"]}
    else:
        tp_med = {k: statistics.median(r[k] for r in peer) for k in ("graph", "prune", "total", "cpu")}
    return {"model": name, "repeats": repeats, "slimnet": med, "tp": tp_med, "verify": report["verify_inputs"],
            "verify_dtype": report["verify_dtype"]}  # fmt: skip


# ------------------------------------------------------------------------------------------ part 3: quality
def quality(name: str, runs_: int) -> dict[str, Any]:
    """MACs (fvcore), parameters and onnxruntime CPU latency (1 thread, batch 1) of the original and both
    results, timed interleaved by :func:`slimnet.api.bench`."""
    model, example = build(name)
    ours, _, _ = run_slimnet(copy.deepcopy(model), example)
    entries = [("original", model), ("slimnet", ours)]
    try:
        theirs, _, _ = run_tp(copy.deepcopy(model), example)
        entries.append(("torch-pruning", theirs))
    except Exception as exc:  # noqa: BLE001 - the peer failing is a result
        log(f"quality {name}: torch-pruning failed: {first_line(exc)}")
    result = bench(entries, example, backends=["ort-cpu"], warmup=5, runs=runs_, threads=1)
    rows = {
        m["path"]: {
            "params": m["params"],
            "macs": m["macs"],
            "ort_ms": (m["latency_ms"].get("ort-cpu") or {}).get("p50"),
        }
        for m in result["models"]
    }
    return {"model": name, "rows": rows, "skipped": result.get("skipped_backends", {})}
