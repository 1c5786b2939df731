"""How long a shrink takes (load, trace, group, rank, cut, verify), side by side with Torch-Pruning.

    python tools/bench_shrink.py --models resnet50,densenet201 --out docs/shrink-time.md

Both tools prune the same randomly initialised torchvision model at ratio 0.5 in one process, alternating, and
the median of ``--repeats`` runs is reported. slimnet's time includes its verification (two inputs through the
masked original and the pruned model in float64, and since torchvision's fresh BatchNorms are constant tensors,
the example again in float32 with those randomised) and excludes MAC counting; Torch-Pruning's includes building its
dependency graph, its importance and the pruning step (it has no verification).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from slimnet._tensors import count_params
from slimnet.api import shrink
from slimnet.load import load_model


def run_slimnet(name: str, criterion: str) -> tuple[float, int, str]:
    model = load_model(f"torchvision:{name}").model
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    res = shrink(model, x, ratio=0.5, criterion=criterion, measure=False)
    dt = time.perf_counter() - t0
    return dt, count_params(res.model), f"{res.report['max_abs_diff']:.1e}"


def run_tp(name: str) -> tuple[float, int, str]:
    import torch_pruning as tp

    model = load_model(f"torchvision:{name}").model
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    imp = tp.importance.MagnitudeImportance(p=1)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
    pruner = tp.pruner.MagnitudePruner(model, x, importance=imp, pruning_ratio=0.5, ignored_layers=ignored, round_to=8)
    pruner.step()
    dt = time.perf_counter() - t0
    return dt, count_params(model), "not verified"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,densenet201")
    ap.add_argument("--criterion", default="fpgm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="docs/shrink-time.md")
    args = ap.parse_args()
    rows = []
    for name in args.models.split(","):
        ours, peer = [], []
        for _ in range(args.repeats):
            ours.append(run_slimnet(name, args.criterion))
            try:
                peer.append(run_tp(name))
            except Exception as exc:  # noqa: BLE001 - the peer failing is a result too
                peer.append((float("nan"), 0, f"failed: {type(exc).__name__}"))
        s = statistics.median(t for t, _, _ in ours)
        p = statistics.median(t for t, _, _ in peer)
        rows.append((name, s, ours[0][1], ours[0][2], p, peer[0][1], peer[0][2]))
        print(f"{name}: slimnet {s:.2f}s, torch-pruning {p:.2f}s", file=sys.stderr)
    import torch_pruning as tp

    lines = [
        "# Time to shrink (ratio 0.5, 224x224 input, batch 1)",
        "",
        f"Command: `python tools/bench_shrink.py --models {args.models} --criterion {args.criterion} "
        f"--repeats {args.repeats}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"torch-pruning {tp.__version__}; median of {args.repeats} runs in one process, the two tools alternating.",
        "",
        "slimnet's time covers trace, grouping, ranking, surgery and verification (float64, two inputs; then, "
        "because the fresh BatchNorms of a built-in model are constant tensors, the example again in float32 with "
        "those randomised: see README, verification); "
        "Torch-Pruning's covers its graph, importance and pruning step, with no verification.",
        "",
        "| model | slimnet s | slimnet params after | verify diff | torch-pruning s | TP params after "
        "| ratio TP/slimnet |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s, sp, sd, p, pp, _note in rows:
        lines.append(f"| {name} | {s:.2f} | {sp / 1e6:.2f}M | {sd} | {p:.2f} | {pp / 1e6:.2f}M | {p / s:.2f}x |")
    Path(args.out).write_text("\n".join(lines) + "\n" + kept_sections(Path(args.out)))


#: Sections below this line in the document are other measurements (threads, first run): rewriting the table
#: keeps them.
KEEP_MARKER = "<!-- sections below are not written by tools/bench_shrink.py -->"


def kept_sections(path: Path) -> str:
    """What follows :data:`KEEP_MARKER` in the existing document, marker included ('' if none)."""
    text = path.read_text() if path.is_file() else ""
    at = text.find(KEEP_MARKER)
    return "\n" + text[at:] if at >= 0 else ""


if __name__ == "__main__":
    main()
