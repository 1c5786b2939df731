"""Theoretical vs real speedup of pruned torchvision models, per backend, written to docs/speed.md.

    python tools/bench_speed.py --models resnet50,mobilenet_v2 --runs 30 --out docs/speed.md

Each model (randomly initialised; nothing downloaded) is shrunk by slimnet at ``--ratio`` with every
``--round-to`` value, and (unless ``--no-torch-pruning``) by Torch-Pruning's MagnitudePruner with the same ratio
and rounding. The original and all pruned variants are then timed *in one process, interleaved* (A B C A B C ...)
on each backend and thread count, so that drift of the machine hits every variant alike. MACs come from
:func:`slimnet.cost.macs.count_macs`; theoretical speedup = MACs(original) / MACs(variant), real speedup =
p50(original) / p50(variant), efficiency = real / theoretical. Only ratios are comparable across machines.
"""

from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimnet.cost.macs import count_macs, device_info
from slimnet.load.loader import load_model
from slimnet.measure.latency import time_models


@dataclass
class Variant:
    """One model to time: the original, or one tool's result at one rounding."""

    label: str
    tool: str
    round_to: int | None
    model: nn.Module | None
    macs: int = 0
    params: int = 0
    note: str = ""
    latency: dict[str, float] = field(default_factory=dict)  # "backend@threads" -> p50 ms


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slimnet_variant(model: nn.Module, x: Any, ratio: float, round_to: int, criterion: str) -> nn.Module:
    from slimnet.api import shrink

    return shrink(model, x, ratio=ratio, criterion=criterion, round_to=round_to, measure=False).model


def tp_variant(model: nn.Module, x: torch.Tensor, ratio: float, round_to: int) -> nn.Module:
    """Torch-Pruning's magnitude pruner, L1, the classifier (model output) left whole as slimnet leaves it."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    with torch.no_grad():
        out_features = model(x).shape[-1]
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == out_features]
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=round_to if round_to > 1 else None,
    )
    pruner.step()
    return model.eval()


#: Hugging Face architectures built from their default configs (random weights, nothing downloaded).
HF_MODELS = {"bert_base": ("BertModel", "BertConfig")}


def load_bench_model(name: str, args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """A torchvision model with an image, or a Hugging Face one (HF_MODELS) with --seq-len token ids."""
    if name in HF_MODELS:
        import transformers as tf

        model_cls, config_cls = (getattr(tf, n) for n in HF_MODELS[name])
        torch.manual_seed(0)
        model = model_cls(config_cls()).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, args.seq_len))
        return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return load_model(f"torchvision:{name}").model, torch.randn(1, 3, args.size, args.size)


def build_variants(name: str, x: Any, args: argparse.Namespace) -> list[Variant]:
    original = load_model(f"torchvision:{name}").model if name not in HF_MODELS else load_bench_model(name, args)[0]
    variants = [Variant(f"{name} original", "original", None, original)]
    tools = [("slimnet", lambda rt: slimnet_variant(original, x, args.ratio, rt, args.criterion))]
    if name in HF_MODELS:
        variants.append(
            Variant(
                f"{name} torch-pruning",
                "torch-pruning",
                None,
                None,
                note="not run: Torch-Pruning needs per-model head settings for Hugging Face BERT",
            )
        )
    elif not args.no_torch_pruning:
        tools.append(("torch-pruning", lambda rt: tp_variant(original, x, args.ratio, rt)))
    for tool, make in tools:
        for rt in args.round_to:
            t0 = time.perf_counter()
            try:
                model = make(rt)
                variants.append(Variant(f"{name} {tool} r{rt}", tool, rt, model))
                log(f"{name}: {tool} round_to {rt} in {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # noqa: BLE001 - a tool failing on a model is a result to report
                first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
                variants.append(Variant(f"{name} {tool} r{rt}", tool, rt, None, note=f"failed: {first}"))
                log(f"{name}: {tool} round_to {rt} failed: {type(exc).__name__}: {first}")
    for v in variants:
        if v.model is None:
            continue
        try:  # a variant that does not run (e.g. a cut the model's forward hard-codes) is a result, not a crash
            with torch.no_grad():
                v.model(**x) if isinstance(x, dict) else v.model(x)
            cost = count_macs(v.model, x)
        except Exception as exc:  # noqa: BLE001
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            v.model, v.note = None, f"failed: pruned model does not run: {first}"
            log(f"{v.label}: {v.note}")
            continue
        v.macs, v.params = cost["macs"], cost["params"]
    return variants


def time_variants(variants: list[Variant], x: Any, args: argparse.Namespace) -> dict[str, str]:
    """Fill each variant's p50 per backend@threads; returns the backends skipped and why."""
    live = [v for v in variants if v.model is not None]
    skipped: dict[str, str] = {}
    for threads in args.threads:
        log(f"timing {len(live)} variants, {threads} thread(s), {args.warmup}+{args.runs} runs per backend")
        res = time_models(
            [(v.label, v.model) for v in live],
            x,
            backends=args.backends,
            batch_size=1,
            warmup=args.warmup,
            runs=args.runs,
            threads=threads,
            progress=True,
        )
        for v in live:
            for backend, stats in res["latency_ms"][v.label].items():
                v.latency[f"{backend}@{threads}"] = stats["p50"]
        skipped.update({f"{b}@{threads}": why for b, why in res["skipped"].items()})
    return skipped


def _cell(original: Variant, v: Variant, key: str) -> str:
    if v is original:
        return f"{v.latency[key]:.2f} ms" if key in v.latency else "-"
    if key not in v.latency or key not in original.latency or not v.macs:
        return "-"
    real = original.latency[key] / v.latency[key]
    theoretical = original.macs / v.macs
    return f"{real:.2f}x ({real / theoretical:.0%})"


def table(variants: list[Variant], columns: list[str]) -> list[str]:
    head = ["model", "tool", "round_to", "MACs (G)", "params (M)", "theoretical"] + columns
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    original = variants[0]
    for v in variants:
        name = v.label.split(" ")[0]
        if v.model is None:
            note = v.note.replace("|", "/")
            lines.append(
                f"| {name} | {v.tool} | {v.round_to} | - | - | {note} | " + " | ".join(["-"] * len(columns)) + " |"
            )
            continue
        theo = "1.00x" if v is original else f"{original.macs / v.macs:.2f}x"
        cells = [_cell(original, v, c) for c in columns]
        lines.append(
            f"| {name} | {v.tool} | {v.round_to or '-'} | {v.macs / 1e9:.3f} | {v.params / 1e6:.2f} | "
            f"{theo} | " + " | ".join(cells) + " |"
        )
    return lines


def markdown(all_variants: list[list[Variant]], skipped: dict[str, str], args: argparse.Namespace) -> str:
    info = device_info(None)
    columns = [f"{b}@{t}" for t in args.threads for b in args.backends if f"{b}@{t}" not in skipped]
    try:
        import torch_pruning as tp

        tp_version = tp.__version__
    except ImportError:
        tp_version = "not installed"
    lines = [
        f"# Theoretical vs real speedup (ratio {args.ratio}, {args.size}x{args.size} input or {args.seq_len} tokens, "
        "batch 1)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Machine: {info['cpu']}, {info['cpu_count']} cores{', GPU ' + info['gpu'] if info['gpu'] else ''}; "
        f"{info['platform']}; Python {info['python']}, torch {info['torch']}, onnxruntime {info['onnxruntime']}, "
        f"onnx {info['onnx']}, fvcore {info['fvcore']}, slimnet {info['slimnet']}, torch-pruning {tp_version}.",
        "",
        f"Method: every variant of a model is timed in one process, interleaved (A B C A B C ...), {args.warmup} "
        f"warm-up and {args.runs} timed runs per backend; `backend@N` is N CPU threads (torch.set_num_threads; "
        "onnxruntime intra-op threads, one inter-op thread, spinning off). The original's row gives its p50 "
        "latency; every other row gives the real speedup p50(original) / p50(variant) and, in brackets, the "
        "efficiency = real / theoretical speedup, where theoretical = MACs(original) / MACs(variant) (fvcore with "
        "slimnet's op table; one multiply-add = one MAC). Random weights: only the ratios mean anything.",
        "",
        f"slimnet: `shrink(ratio={args.ratio}, criterion={args.criterion!r}, round_to=N)`. "
        f"Torch-Pruning: `MagnitudePruner(pruning_ratio={args.ratio}, round_to=N, L1)`, classifier ignored; "
        "timed in the same process (its speedups are ratios to the same original).",
        "",
    ]
    for variants in all_variants:
        lines += table(variants, columns) + [""]
    for key, why in skipped.items():
        lines.append(f"- {key} skipped: {why}")
    out = "\n".join(lines).rstrip() + "\n"
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    if NOTES in old:  # hand-written reading of the numbers survives a regeneration (review it against them)
        out += "\n" + NOTES + old.split(NOTES, 1)[1]
    return out


NOTES = "<!-- notes: kept when the tables above are regenerated -->"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2,efficientnet_b0")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--round-to", default="1,4,8,16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--backends", default="torch-cpu,ort-cpu")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--seq-len", type=int, default=128, help="tokens per input for Hugging Face models")
    ap.add_argument("--no-torch-pruning", action="store_true", help="skip the Torch-Pruning side by side")
    ap.add_argument("--out", default="docs/speed.md")
    args = ap.parse_args(argv)
    args.command = "python tools/bench_speed.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.models = [m for m in args.models.split(",") if m]
    args.round_to = [int(r) for r in args.round_to.split(",") if r]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.backends = [b for b in args.backends.split(",") if b]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    all_variants, skipped = [], {}
    for name in args.models:
        torch.manual_seed(0)
        x = load_bench_model(name, args)[1] if name in HF_MODELS else torch.randn(1, 3, args.size, args.size)
        variants = build_variants(name, x, args)
        skipped.update(time_variants(variants, x, args))
        all_variants.append(variants)
        Path(args.out).write_text(markdown(all_variants, skipped, args))  # partial results survive an interrupt
        log(f"{name} done; wrote {args.out}")


if __name__ == "__main__":
    main()
