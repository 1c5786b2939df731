"""Peak memory of a shrink on a large model, in units of the model's own weights.

    python tools/memory.py --model regnet_y_128gf --size 224 --out docs/reliability.md

Measures the process's peak resident memory (ru_maxrss) after loading the model and after shrinking it (MAC
counting off). The target: shrinking keeps at most about two extra copies of the weights alive (the pruned
model, and the reference the verifier masks), plus activations.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from slimnet.api import shrink
from slimnet.load.loader import load_model

ROOT = Path(__file__).resolve().parent.parent


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="regnet_y_128gf")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default="docs/reliability.md")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    base = peak_mb()
    model = load_model(f"torchvision:{args.model}").model
    weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    loaded = peak_mb()
    t0 = time.perf_counter()
    res = shrink(model, torch.randn(1, 3, args.size, args.size), ratio=0.5, measure=False)
    seconds = time.perf_counter() - t0
    after = peak_mb()
    extra = (after - loaded) / weights_mb
    section = "\n".join(
        [
            "## Peak memory while shrinking",
            "",
            f"Command: `python tools/memory.py --model {args.model} --size {args.size}`",
            "",
            f"{args.model}: weights {weights_mb:.0f} MiB; peak RSS {base:.0f} MiB at start, {loaded:.0f} MiB with the "
            f"model loaded, {after:.0f} MiB after shrinking at ratio 0.5 ({seconds:.0f} s, verified in "
            f"{res.report['verify_dtype']}, max diff {res.report['max_abs_diff']:.2g}). Extra peak = {extra:.2f} x the "
            "weights (pruned copy + masked reference of the planned tensors + activations and id tensors).",
            "",
        ]
    )
    out = ROOT / args.out
    old = out.read_text() if out.exists() else "# Reliability\n\n"
    start = old.find("## Peak memory while shrinking")
    if start >= 0:
        end = old.find("\n## ", start + 5)
        old = old[:start] + (old[end + 1 :] if end >= 0 else "")
    out.write_text(old.rstrip("\n") + "\n\n" + section)
    print(section)


if __name__ == "__main__":
    main()
