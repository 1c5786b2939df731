"""What routing SlimMultiheadAttention through F.scaled_dot_product_attention buys; writes its section of
docs/speed.md.

    python tools/bench_attention.py --runs 15

torchvision's vit_b_16 (random weights, eval, batch 1, 224x224) and the same model after
``slimnet.shrink(ratio=0.5)`` (heads 12 -> 6 per block, MLP 3072 -> 1536, so every block's attention is a
:class:`slimnet.modules.SlimMultiheadAttention`), on the CPU with ``torch.set_num_threads(N)`` (default 1), in
float32 and bfloat16 (the models cast with ``.to``). The pruned model is timed three ways in the same process:

* ``first version``: the module's forward as it was before the fused path (three projections, explicit
  ``softmax(q k^T / sqrt(d)) v``), put back by patching the class's ``forward``;
* ``explicit``: today's module with its fused path switched off (``SlimMultiheadAttention.fused = False``): one
  packed projection for self-attention, explicit attention;
* ``sdpa``: today's module as shipped (``F.scaled_dot_product_attention``).

All variants of one dtype are timed interleaved (A B C D A B C D ...) after warm-up runs; each row gives the
median (p50) of the timed runs and the speedup p50(original) / p50(variant). The original runs
``nn.MultiheadAttention`` as torch ships it (its fused inference path). Random weights: only ratios mean
anything. CUDA is not measured here (no GPU on the machine that wrote the section; see the CUDA section above
for the float16 slowdown that motivated the fused path).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

from slimnet.api import count_macs, shrink  # noqa: E402
from slimnet.modules import SlimMultiheadAttention  # noqa: E402

TITLE = "## SlimMultiheadAttention: fused (SDPA) against explicit attention, CPU"
NOTES = "<!-- notes: kept when the tables above are regenerated -->"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def first_version_forward(
    self,
    query,
    key,
    value,
    key_padding_mask=None,
    need_weights=True,
    attn_mask=None,
    average_attn_weights=True,
    is_causal=False,
):
    """SlimMultiheadAttention.forward before the fused path (masks left out: vit_b_16 passes none)."""
    if attn_mask is not None or key_padding_mask is not None or is_causal:
        raise NotImplementedError("the benchmark's copy of the first version takes no masks")
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    inner = self.num_heads * self.head_dim
    w, b = self.in_proj_weight, self.in_proj_bias
    bq, bk, bv = (None, None, None) if b is None else b.split(inner)
    wq, wk, wv = w.split(inner)
    q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    bsz, tq = q.shape[0], q.shape[1]
    q, k, v = (t.reshape(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
    attn = torch.softmax(scores, dim=-1)
    out = self.out_proj((attn @ v).transpose(1, 2).reshape(bsz, tq, inner))
    if not self.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, attn.mean(1) if average_attn_weights else attn


def _variant(name: str):
    """(forward, fused) for SlimMultiheadAttention in variant ``name``."""
    return {
        "first version": (first_version_forward, False),
        "explicit": (SHIPPED_FORWARD, False),
        "sdpa": (SHIPPED_FORWARD, True),
    }[name]


SHIPPED_FORWARD = SlimMultiheadAttention.forward
PRUNED = ("first version", "explicit", "sdpa")


def _set(name: str) -> None:
    forward, fused = _variant(name)
    SlimMultiheadAttention.forward = forward
    SlimMultiheadAttention.fused = fused


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def measure(runs: int, warmup: int, dtypes: list[str]) -> tuple[dict, dict]:
    torch.manual_seed(0)
    original = torchvision.models.vit_b_16(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    res = shrink(original, x, ratio=0.5, measure=False)
    pruned = res.model.eval()
    heads = ", ".join(str(h) for h in sorted({b.self_attention.num_heads for b in pruned.encoder.layers}))
    info = {"macs": [count_macs(original, x), count_macs(pruned, x)], "heads": heads}  # (shrink measure=False)
    times: dict[str, dict[str, list[float]]] = {}
    for dname in dtypes:
        dtype = DTYPES[dname]
        models = {"original": copy.deepcopy(original).to(dtype), "pruned": copy.deepcopy(pruned).to(dtype)}
        xd = x.to(dtype)
        order = [("original", None)] + [("pruned", v) for v in PRUNED]
        with torch.inference_mode():
            ref = None
            for kind, v in order:  # the variants compute the same (within the dtype's rounding)
                if v is not None:
                    _set(v)
                    out = models[kind](xd).float()
                    ref = out if ref is None else ref
                    tol = 1e-3 if dtype == torch.float32 else 0.1
                    assert (out - ref).abs().max() <= tol * (1 + ref.abs().max()), (dname, v)
            for _ in range(warmup):
                for kind, v in order:
                    if v is not None:
                        _set(v)
                    models[kind](xd)
            got: dict[str, list[float]] = {v or "original": [] for _, v in order}
            for _ in range(runs):
                for kind, v in order:
                    if v is not None:
                        _set(v)
                    t0 = time.perf_counter()
                    models[kind](xd)
                    got[v or "original"].append(time.perf_counter() - t0)
        _set("sdpa")
        times[dname] = got
        print(dname, {k: round(statistics.median(t) * 1e3, 1) for k, t in got.items()}, flush=True)
        times[f"{dname} one block's attention"] = _attention_alone(original, pruned, dtype, runs * 20, warmup * 5)
        print(
            dname,
            "attention",
            {k: round(statistics.median(t) * 1e3, 3) for k, t in times[f"{dname} one block's attention"].items()},
        )
    return times, info


def _attention_alone(original: torch.nn.Module, pruned: torch.nn.Module, dtype: torch.dtype, runs: int, warmup: int):
    """The first block's attention module by itself on its 197 tokens (where the variants differ, without the
    MLPs and projections of the rest of the model that dilute the difference)."""
    att = {
        "original": copy.deepcopy(original.encoder.layers[0].self_attention).to(dtype),
        "pruned": copy.deepcopy(pruned.encoder.layers[0].self_attention).to(dtype),
    }
    x = torch.randn(1, 197, att["original"].embed_dim, dtype=dtype)
    order = [("original", None)] + [("pruned", v) for v in PRUNED]
    got: dict[str, list[float]] = {v or "original": [] for _, v in order}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for kind, v in order:
                if v is not None:
                    _set(v)
                t0 = time.perf_counter()
                att[kind](x, x, x, need_weights=False)
                if i >= warmup:
                    got[v or "original"].append(time.perf_counter() - t0)
    _set("sdpa")
    return got


def section(times: dict, info: dict, args: argparse.Namespace) -> str:
    cmd = f"python tools/bench_attention.py --runs {args.runs} --warmup {args.warmup} --threads {args.threads}"
    if args.dtypes != "fp32,bf16":
        cmd += f" --dtypes {args.dtypes}"
    lines = [
        TITLE,
        "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d', time.gmtime())}).",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, torch.set_num_threads({args.threads}); "
        f"{platform.platform()}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}; load average before the run {args.load}.",
        "",
        f"vit_b_16, random weights, batch 1, 224x224; pruned = `shrink(ratio=0.5)` (heads 12 -> {info['heads']} "
        f"per block; MACs {info['macs'][0] / 1e9:.3f} G -> {info['macs'][1] / 1e9:.3f} G). Median of {args.runs} "
        f"timed runs after {args.warmup} warm-up runs, all rows of a dtype interleaved; speedup = "
        "p50(original) / p50(row). `first version`: the module's forward before the fused path (three "
        "projections, explicit softmax); `explicit`: today's module with `SlimMultiheadAttention.fused = False` "
        "(one packed projection, explicit softmax); `sdpa`: today's module as shipped "
        "(`F.scaled_dot_product_attention`). Rows `... one block's attention`: the first block's attention module "
        f"alone on a [1, 197, 768] input ({args.runs * 20} timed calls after {args.warmup * 5}), where the variants "
        "differ without the rest of the model diluting it. CUDA is not measured here (no GPU on this machine).",
        "",
        "| dtype | model | attention | p50 | speedup vs original | vs first version |",
        "|---|---|---|---|---|---|",
    ]
    for dname, got in times.items():
        p50 = {k: statistics.median(v) for k, v in got.items()}
        unit, scale = ("us", 1e6) if "attention" in dname else ("ms", 1e3)
        for k, t in p50.items():
            model = "original" if k == "original" else "pruned"
            attn = "nn.MultiheadAttention (fused)" if k == "original" else k
            vs_first = "-" if k == "original" else f"{p50['first version'] / t:.2f}x"
            lines.append(
                f"| {dname} | {model} | {attn} | {t * scale:.1f} {unit} | {p50['original'] / t:.2f}x | {vs_first} |"
            )
    lines += ["", *reading(times)]
    return "\n".join(lines) + "\n"


def reading(times: dict) -> list[str]:
    """What the table says, from its numbers: the shipped (SDPA) path against the explicit one, per dtype."""
    out = []
    for dname, got in times.items():
        p50 = {k: statistics.median(v) for k, v in got.items()}
        gain = p50["explicit"] / p50["sdpa"] - 1
        verdict = "faster than" if gain > 0.03 else "slower than" if gain < -0.03 else "within 3% of"
        what = "one block's attention" if "attention" in dname else "the model"
        out.append(f"* {dname}: SDPA is {verdict} the explicit path ({gain:+.1%}); pruned, {what} runs "
                   f"{p50['original'] / p50['sdpa']:.2f}x as fast as the original's.")  # fmt: skip
    out.append(
        "* On the CPU at batch 1 attention is a small part of a ViT's time, so the whole model moves by a few "
        "percent whichever path runs; the fused path was built for GPUs, where the explicit one made the pruned "
        "vit_b_16 slower than the original in float16 (CUDA section above). Not re-measured on a GPU: none was "
        "lent to the session that wrote this."
    )
    return out


def replace_section(text: str, new: str) -> str:
    """``text`` with this tool's section replaced by ``new``, or ``new`` appended below the notes marker (the
    part of docs/speed.md that tools/bench_speed.py keeps when it rewrites its tables)."""
    if NOTES not in text:
        text = text.rstrip("\n") + "\n\n" + NOTES + "\n"
    start = text.find(TITLE)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + new
    end = text.find("\n## ", start + len(TITLE))
    return text[:start] + new.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--out", default=str(ROOT / "docs" / "speed.md"), help="'-' prints the section instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    times, info = measure(args.runs, args.warmup, args.dtypes.split(","))
    text = section(times, info, args)
    if args.out == "-":
        print(text)
        return
    out = Path(args.out)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(replace_section(out.read_text() if out.is_file() else "", text))
    tmp.replace(out)


if __name__ == "__main__":
    main()
