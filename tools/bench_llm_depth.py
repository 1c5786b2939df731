"""Peak memory and time of depth pruning (``shrink hf:DIR --drop-layers N``) on a random Llama, beside the size of
its weights and the peak of simply loading it with transformers; writes docs/llm-depth.md.

    python tools/bench_llm_depth.py --layers 24 --hidden 1024 --intermediate 2816 --drop 6 --out docs/llm-depth.md

The model (random weights, float32, safetensors shards of 200 MB) and a calibration text are written to a
temporary folder by a child process; each measured step then runs in its own child process, whose peak resident
memory (``ru_maxrss`` from ``wait4``) is reported:

* ``load whole``: ``AutoModelForCausalLM.from_pretrained`` of the input and one forward pass (the reference point);
* ``shrink --drop-layers`` (the CLI): block influence layer by layer, the rewrite tensor by tensor, the
  verification with plain transformers (the written model loaded whole: the default up to 2 GiB of weights);
* ``drop_layers(verify="layer-by-layer")`` (the API): the same with the verification layer by layer too (the
  default above 2 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAKE = """
import sys, torch, transformers as tf
from pathlib import Path
from tokenizers import Tokenizer, models, pre_tokenizers
folder, layers, hidden, inter = Path(sys.argv[1]), *map(int, sys.argv[2:5])
cfg = tf.LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
    num_attention_heads=hidden // 64, num_key_value_heads=max(1, hidden // 256), vocab_size=8192,
    max_position_embeddings=256)
torch.manual_seed(0)
model = tf.AutoModelForCausalLM.from_config(cfg)
model.save_pretrained(folder, max_shard_size="200MB")
words = [f"w{i}" for i in range(8000)]
vocab = {"[UNK]": 0, "</s>": 1, **{w: i + 2 for i, w in enumerate(words)}}
tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>").save_pretrained(folder)
g = torch.Generator().manual_seed(1)
lines = [" ".join(words[int(i)] for i in torch.randint(0, 8000, (64,), generator=g)) for _ in range(16)]
(folder / "calib.txt").write_text("\\n".join(lines) + "\\n")
"""

LOAD = """
import sys, torch, transformers as tf
m = tf.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    m(input_ids=torch.ones(8, 64, dtype=torch.long))
"""

API = """
import sys
from pathlib import Path
from slimnet.llm import depth
src = depth.inspect_folder(sys.argv[1])
b = depth.text_batches(src, sys.argv[1] + "/calib.txt", 8, 2)
r = depth.drop_layers(src, int(sys.argv[3]), b, Path(sys.argv[2]), verify="layer-by-layer")
print(r.verified_by, r.max_abs_diff)
"""


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MiB, seconds, stdout) of one child process; the peak is the child's own (wait4)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{err.read()[-2000:]}")
        return usage.ru_maxrss / 1024.0, seconds, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--drop", type=int, default=6)
    ap.add_argument("--out", default="docs/llm-depth.md")
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "llama"
        run([py, "-c", MAKE, str(folder), str(args.layers), str(args.hidden), str(args.intermediate)])
        weights = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
        shard = max(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20
        start = [py, "-c", "import torch, transformers, safetensors, slimnet.llm.depth"]
        rows = [("start-up only (import torch, transformers)", *run(start)[:2], "")]
        rows.append(("load whole + one forward (transformers)", *run([py, "-c", LOAD, str(folder)])[:2], ""))
        cli = [py, "-m", "slimnet", "shrink", f"hf:{folder}", "--drop-layers", str(args.drop), "--data"]
        cli += [str(folder / "calib.txt"), "--calib-batch-size", "8", "--calib-batches", "2", "--json"]
        rss, sec, out = run([*cli, "-o", str(Path(tmp) / "cli")])
        d = json.loads(out.strip().splitlines()[-1])["depth"]
        rows.append(("shrink --drop-layers (CLI)", rss, sec, f"{d['verified_by']}, diff {d['max_abs_diff']}"))
        rss, sec, out = run([py, "-c", API, str(folder), str(Path(tmp) / "api"), str(args.drop)])
        rows.append(('drop_layers(verify="layer-by-layer")', rss, sec, out.strip().replace(" ", ", diff ")))
    table = [
        "| step | peak RSS (MiB) | x weights | time (s) | verification |",
        "|---|---:|---:|---:|---|",
        *(f"| {name} | {rss:.0f} | {rss / weights:.2f} | {sec:.1f} | {note} |" for name, rss, sec, note in rows),
    ]
    text = "\n".join(
        [
            "# Depth pruning of decoder LMs: memory and time",
            "",
            f"Command: `python tools/bench_llm_depth.py --layers {args.layers} --hidden {args.hidden} "
            f"--intermediate {args.intermediate} --drop {args.drop}` (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', '1')}).",
            "",
            f"A random Llama, {args.layers} layers, hidden {args.hidden}, MLP {args.intermediate}, vocab 8192, float32:"
            f" {weights:.0f} MiB of safetensors in shards of at most {shard:.0f} MiB; {args.drop} layers dropped by "
            "block influence on 16 lines of 64 tokens (2 batches of 8). Each step is its own process; peak RSS "
            "includes the Python, torch and transformers start-up (first row).",
            "",
            *table,
            "",
            "Ranking (block influence) and the rewrite run layer by layer: the embeddings, one decoder layer and the "
            "calibration hidden states are in memory, never the model. The CLI's verification loads the written "
            "model whole with plain `AutoModelForCausalLM` (the proof that standard transformers loads it) up to "
            "2 GiB of weights, layer by layer above. `--layer-rank ppl` runs layer by layer too (every layer read "
            "once, applied to the dense states and to each skipped-layer branch).",
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
