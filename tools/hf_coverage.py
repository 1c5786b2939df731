"""Sweep Hugging Face architectures through slimnet and write docs/hf-coverage.md.

    python tools/hf_coverage.py --out docs/hf-coverage.md
    python tools/hf_coverage.py --models bert,t5 --out /tmp/hf.md

Every architecture is built from a small config (2 layers, hidden 64, random weights, nothing downloaded) and
shrunk with :func:`slimnet.api.shrink` at ``--ratio`` 0.5 (heads follow the ratio), then saved with
:func:`slimnet.load.hf.save_pretrained` and reloaded twice: with :func:`slimnet.load.hf.from_pretrained` and with
transformers' own ``AutoModel*.from_pretrained(..., trust_remote_code=True)``; both reloads must compute what
the pruned model computes. A row records what was pruned (heads, MLP units, parameters), the verify diff, and
for what could not be pruned the reasons slimnet gave. One architecture failing costs one row: every exception is
recorded as a one-line failure.

The tests (tests/test_hf.py) cover BERT, GPT-2, ViT and a GQA Llama; this sweep is the wider net users bring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import re
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf

from slimnet.api import shrink
from slimnet.load import hf
from slimnet.verify import verifier as verify

ROOT = Path(__file__).resolve().parent.parent

tf.logging.set_verbosity_error()

H, L, HEADS, FF, VOCAB, POS = 64, 2, 4, 96, 64, 64


def text(n: int = 12) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def seq2seq(n: int = 12) -> dict[str, torch.Tensor]:
    out = text(n)
    out["decoder_input_ids"] = out["input_ids"][:, : n // 2].clone()
    return out


def pixels(size: int = 32) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))}


ENC = {
    "hidden_size": H,
    "num_hidden_layers": L,
    "num_attention_heads": HEADS,
    "intermediate_size": FF,
    "vocab_size": VOCAB,
    "max_position_embeddings": POS,
}
DEC = {**ENC, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
GQA = {**DEC, "num_attention_heads": 8, "num_key_value_heads": 2}
VIS = {
    "hidden_size": H,
    "num_hidden_layers": L,
    "num_attention_heads": HEADS,
    "intermediate_size": FF,
    "image_size": 32,
    "patch_size": 8,
    "num_labels": 5,
}

#: name -> (config class, model class, config kwargs, example input)
ARCHS: dict[str, tuple[str, str, dict[str, Any], Callable[[], dict[str, torch.Tensor]]]] = {
    "bert": ("BertConfig", "BertForSequenceClassification", {**ENC, "num_labels": 3}, text),
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", {**ENC, "pad_token_id": 1}, text),
    "distilbert": (
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        {
            "dim": H,
            "n_layers": L,
            "n_heads": HEADS,
            "hidden_dim": FF,
            "vocab_size": VOCAB,
            "max_position_embeddings": POS,
        },
        text,
    ),
    "albert": ("AlbertConfig", "AlbertForMaskedLM", {**ENC, "embedding_size": 32}, text),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", {**ENC, "embedding_size": 32}, text),
    "deberta_v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", ENC, text),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {
            "n_embd": H,
            "n_layer": L,
            "n_head": HEADS,
            "vocab_size": VOCAB,
            "n_positions": POS,
            "bos_token_id": 0,
            "eos_token_id": 0,
        },
        text,
    ),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", DEC, text),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {
            "hidden_size": H,
            "num_hidden_layers": L,
            "num_attention_heads": HEADS,
            "ffn_dim": FF,
            "vocab_size": VOCAB,
            "max_position_embeddings": POS,
            "word_embed_proj_dim": H,
        },
        text,
    ),
    "bloom": (
        "BloomConfig",
        "BloomForCausalLM",
        {"hidden_size": H, "n_layer": L, "n_head": HEADS, "vocab_size": VOCAB},
        text,
    ),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        {
            "hidden_size": H,
            "num_hidden_layers": L,
            "num_attention_heads": HEADS,
            "vocab_size": VOCAB,
            "new_decoder_architecture": True,
            "num_kv_heads": 2,
        },
        text,
    ),
    "llama": ("LlamaConfig", "LlamaForCausalLM", GQA, text),
    "mistral": ("MistralConfig", "MistralForCausalLM", GQA, text),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", GQA, text),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**GQA, "head_dim": 8}, text),
    "phi": ("PhiConfig", "PhiForCausalLM", DEC, text),
    "t5": (
        "T5Config",
        "T5ForConditionalGeneration",
        {
            "d_model": H,
            "d_kv": 16,
            "d_ff": FF,
            "num_layers": L,
            "num_heads": HEADS,
            "vocab_size": VOCAB,
            "decoder_start_token_id": 0,
        },
        seq2seq,
    ),
    "bart": (
        "BartConfig",
        "BartForConditionalGeneration",
        {
            "d_model": H,
            "encoder_layers": L,
            "decoder_layers": L,
            "encoder_attention_heads": HEADS,
            "decoder_attention_heads": HEADS,
            "encoder_ffn_dim": FF,
            "decoder_ffn_dim": FF,
            "vocab_size": VOCAB,
            "max_position_embeddings": POS,
        },
        seq2seq,
    ),
    "vit": ("ViTConfig", "ViTForImageClassification", VIS, pixels),
    "deit": ("DeiTConfig", "DeiTForImageClassification", VIS, pixels),
    "dinov2": ("Dinov2Config", "Dinov2Model", {**VIS, "mlp_ratio": 2}, pixels),
    "convnext": (
        "ConvNextConfig",
        "ConvNextForImageClassification",
        {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "num_labels": 5, "image_size": 32},
        pixels,
    ),
}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random norms and biases too, so that a wrong cut cannot hide behind ones and zeros."""
    return verify.randomise(model, seed=1).eval()


def outputs(model: torch.nn.Module, example: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(**example)
    vals = out.values() if hasattr(out, "values") else out
    return [v for v in vals if isinstance(v, torch.Tensor)]


def reload_diff(pruned: torch.nn.Module, plan: dict[str, Any], example: dict[str, torch.Tensor]) -> dict[str, float]:
    """Save the pruned model and reload it both ways; the largest output difference of each reload."""
    want = outputs(pruned, example)
    res: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = hf.save_pretrained(pruned, plan, Path(tmp) / "pruned")
        loaders = {"slimnet": lambda: hf.from_pretrained(folder)}
        auto = hf._auto_classes(pruned)
        if auto:
            cls = getattr(tf, auto[-1])
            loaders["auto"] = lambda: cls.from_pretrained(str(folder), trust_remote_code=True).eval()
        for name, load in loaders.items():
            got = outputs(load(), example)
            res[name] = max(float((a - b).abs().max()) for a, b in zip(want, got, strict=True))
    return res


def run_one(name: str, ratio: float) -> dict[str, Any]:
    cfg_cls, model_cls, kwargs, make_input = ARCHS[name]
    rec: dict[str, Any] = {"name": name, "model": model_cls}
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = randomise(getattr(tf, model_cls)(getattr(tf, cfg_cls)(**kwargs)))
        example = make_input()
        res = shrink(model, example, ratio=ratio, criterion="l1", round_to=1, model_name=name)
        rep = res.report
        kinds = Counter(d.group.kind for d in res.decisions if d.pruned)
        rec.update(
            status="pass",
            params=tuple(rep["params"]),
            heads=kinds.get("heads", 0),
            pruned=sum(kinds.values()),
            groups=len(res.decisions),
            diff=res.verification.max_abs_diff,
        )
        reasons = Counter(short(d.reason).split(": ")[0][:130] for d in res.decisions if d.reason)
        rec["left"] = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
        rd = reload_diff(res.model, res.plan, example)
        rec["reload"] = rd
        if max(rd.values()) > 1e-4:
            rec["status"] = "reload differs"
    except Exception as exc:  # noqa: BLE001 - a sweep records failures instead of stopping
        rec.update(status="fail", error=f"{type(exc).__name__}: {short(str(exc).splitlines()[0])[:240]}")
        rec["trace"] = traceback.format_exc(limit=-3)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    return rec


def short(text: str) -> str:
    """Paths inside site-packages shortened to the package's own path."""
    return re.sub(r"/\S*?/site-packages/", "", text).replace("|", "\\|")


def row(r: dict[str, Any]) -> str:
    if r["status"] == "fail":
        return f"| {r['name']} | {r['model']} | **fail** | | | | | {short(r['error'])} |"
    before, after = r["params"]
    reload = ", ".join(f"{k} {v:.1e}" for k, v in r["reload"].items())
    return (
        f"| {r['name']} | {r['model']} | {r['status']} | {before:,} -> {after:,} | {r['heads']} / {r['pruned']}"
        f" of {r['groups']} | {r['diff']:.1e} | {reload} | {short(r['left'])} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ARCHS))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", default="")
    ap.add_argument("--verbose", action="store_true", help="print the traceback of failures")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        sys.exit(f"unknown architecture(s) {unknown}; known: {', '.join(ARCHS)}")
    records = []
    for name in names:
        r = run_one(name, args.ratio)
        records.append(r)
        print(row(r), flush=True)
        if args.verbose and "trace" in r:
            print(r["trace"])
    passed = sum(r["status"] == "pass" for r in records)
    lines = [
        "# Hugging Face coverage",
        "",
        f"Generated {dt.date.today()} by `python tools/hf_coverage.py --out docs/hf-coverage.md` "
        f"(transformers {tf.__version__}, torch {torch.__version__}, {platform.machine()}).",
        "",
        f"Each architecture is built from a small config (2 layers, hidden 64, random weights), shrunk at ratio "
        f"{args.ratio} with `l1`, round-to 1 (the configs are too small for 8), verified, saved with "
        "`save_pretrained` and reloaded with slimnet's loader and with transformers' Auto class "
        "(`trust_remote_code=True`). **{passed}/{total} pass.**".format(passed=passed, total=len(records)),
        "",
        "Columns: parameters before -> after; head groups / all groups pruned, of the groups found; the verifier's "
        "max abs diff (float64); the reloads' max abs diff against the pruned model; what was left whole and why "
        "(the embedding/residual stream goes through LayerNorm and is left unless `--prune-embed`).",
        "",
        "| arch | class | status | params | pruned (heads / all of groups) | verify diff | reload diff | left whole |",
        "|---|---|---|---|---|---|---|---|",
        *[row(r) for r in records],
        "",
        "Notes. BLOOM's heads stay whole: its ALiBi bias is computed from the attention mask for the configured "
        "head count, so the heads are tied to that input (`model input attention_mask`). T5's cross-attention "
        "heads stay whole: with no relative bias of its own it adds `torch.zeros((1, n_heads, ...))`, a tensor "
        "of fixed size; its self-attention heads go (shared across layers by the relative position bias, so "
        "every layer keeps the same heads). Falcon (new decoder architecture) prunes whole key/value groups. "
        "Reload differences up to ~1e-7 are float32 rounding: the reloaded state dicts equal the pruned ones "
        "bit for bit (tests/test_hf.py), but weights memory-mapped from safetensors can take other kernel "
        "paths.",
        "",
    ]
    if args.out:
        Path(args.out).write_text("\n".join(lines))
        print(f"wrote {args.out}: {passed}/{len(records)} pass")


if __name__ == "__main__":
    main()
