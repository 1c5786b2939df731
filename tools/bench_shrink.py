"""How long a shrink takes, stage by stage, side by side with Torch-Pruning.

    python tools/bench_shrink.py --models resnet50,densenet201 --criteria l2,fpgm --repeats 7 \\
        --json docs/shrink-time.json --out docs/shrink-time.md

Both tools prune the same randomly initialised torchvision model at ratio 0.5 (round-to 8, classifier kept) in one
process, one after the other, each run on a freshly loaded model; the median of ``--repeats`` runs is reported.
slimnet's time is ``api.shrink`` (trace, groups, rank, cut, verify; MACs are not counted) and its per-stage
breakdown comes from the report's ``timings``; Torch-Pruning's is its dependency graph (``MetaPruner(...)``, which
runs the model once with autograd) plus its importance and pruning step (``pruner.step()``), and it verifies
nothing. ``l2`` is compared with ``MagnitudeImportance(p=2)`` and ``fpgm`` with ``FPGMImportance()``.

``--before FILE``: a JSON file written by this tool (``--json``) with another version of slimnet on the path (for
example ``PYTHONPATH=/path/to/old/checkout``): its stages are shown beside the current ones. ``--process``: also
time each tool as a user runs it, whole process (``python -m slimnet shrink ...`` against a script that loads the
same model and prunes it with Torch-Pruning), import and model construction included. Each tool's CPU seconds
(``time.process_time``) are recorded beside its wall seconds: with ``OMP_NUM_THREADS=1`` on a shared machine they
are the work done, which other jobs barely change. ``--load FILE`` writes the document from a ``--json`` file
(several runs' files concatenated, say) with ``--commands`` and ``--note`` for what produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

import slimnet
from slimnet.api import shrink
from slimnet.load.loader import load_model

STAGES = ["trace", "groups", "rank", "cut", "verify"]


def example_for(name: str) -> torch.Tensor:
    return torch.randn(1, 3, 299, 299) if name.startswith("inception") else torch.randn(1, 3, 224, 224)


def run_slimnet(name: str, criterion: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    model = load_model(f"torchvision:{name}").model.eval()
    load = time.perf_counter() - t0
    x = example_for(name)
    t0, c0 = time.perf_counter(), time.process_time()
    res = shrink(model, x, ratio=0.5, criterion=criterion, measure=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    rep = res.report
    return {
        "load": load,
        "total": total,
        "cpu": cpu,
        "stages": {k: float(v) for k, v in rep.get("timings", {}).items()},
        "params_after": sum(p.numel() for p in res.model.parameters()),
        "verify": f"{rep['verify_dtype'].replace('torch.', '')}, {'; '.join(rep['verify_inputs'])}",
        "diff": rep["max_abs_diff"],
    }


def tp_importance(criterion: str) -> Any:
    import torch_pruning as tp  # lazy: the peer, a dev dependency

    return tp.importance.FPGMImportance() if criterion == "fpgm" else tp.importance.MagnitudeImportance(p=2)


def classifier(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The last Linear (or 1x1 conv) layer: the classifier, kept by both tools."""
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return last[-1:]


def run_tp(name: str, criterion: str) -> dict[str, Any]:
    import torch_pruning as tp  # lazy: the peer, a dev dependency

    model = load_model(f"torchvision:{name}").model.eval()
    x = example_for(name)
    t0, c0 = time.perf_counter(), time.process_time()
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp_importance(criterion), pruning_ratio=0.5, ignored_layers=classifier(model), round_to=8
    )
    t1 = time.perf_counter()
    pruner.step()
    t2, cpu = time.perf_counter(), time.process_time() - c0
    return {
        "cpu": cpu,
        "graph": t1 - t0,
        "prune": t2 - t1,
        "total": t2 - t0,
        "params_after": sum(p.numel() for p in model.parameters()),
    }


def forward_seconds(name: str, repeats: int) -> float:
    """One float32 forward pass at the example's size (the unit the stages are compared with)."""
    model = load_model(f"torchvision:{name}").model.eval()
    x = example_for(name)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


TP_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch_pruning as tp
    from slimnet.load.loader import load_model
    name, criterion = sys.argv[1], sys.argv[2]
    model = load_model(f"torchvision:{name}").model.eval()
    x = torch.randn(1, 3, 224, 224)
    imp = tp.importance.FPGMImportance() if criterion == "fpgm" else tp.importance.MagnitudeImportance(p=2)
    last = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1:]
    pruner = tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=0.5, ignored_layers=last, round_to=8)
    pruner.step()
    torch.save(model, sys.argv[3])
    """
)


def run_processes(name: str, criterion: str) -> dict[str, float]:
    """Wall-clock seconds of each tool as a whole process (import, model, prune, save)."""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "tp_prune.py"
        script.write_text(TP_SCRIPT)
        out = {}
        cmds = {
            "slimnet": [sys.executable, "-m", "slimnet", "shrink", f"torchvision:{name}", "--ratio", "0.5",
                        "--criterion", criterion, "-o", str(Path(tmp) / "s.pt")],
            "tp": [sys.executable, str(script), name, criterion, str(Path(tmp) / "t.pt")],
        }  # fmt: skip
        for tool, cmd in cmds.items():
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=os.environ.copy())
            out[tool] = time.perf_counter() - t0
    return out


def warm_up() -> None:
    """One untimed run of each tool on resnet18: the first call in a process pays for lazy imports and the
    first-use setup of torch's kernels, which would otherwise land in the first timed run."""
    run_slimnet("resnet18", "l2")
    run_tp("resnet18", "l2")


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def bench(name: str, criterion: str, args: argparse.Namespace) -> dict[str, Any]:
    ours, peer, procs = [], [], []
    for i in range(args.repeats):
        ours.append(run_slimnet(name, criterion))
        try:
            peer.append(run_tp(name, criterion))
        except Exception as exc:  # noqa: BLE001 - the peer failing is a result too
            nan = float("nan")
            peer.append({"graph": nan, "prune": nan, "total": nan, "cpu": nan, "error": str(exc)[:200]})
        if args.process and i < 3:
            procs.append(run_processes(name, criterion))
        print(f"{name} {criterion} run {i + 1}: slimnet {ours[-1]['total']:.2f}s, tp {peer[-1]['total']:.2f}s",
              file=sys.stderr, flush=True)  # fmt: skip
    row = {
        "model": name,
        "criterion": criterion,
        "repeats": args.repeats,
        "forward": forward_seconds(name, 5),
        "slimnet": {
            "total": median_of(ours, "total"),
            "cpu": median_of(ours, "cpu"),
            "load": median_of(ours, "load"),
            "stages": {s: statistics.median(r["stages"].get(s, 0.0) for r in ours) for s in STAGES},
            "params_after": ours[0]["params_after"],
            "verify": ours[0]["verify"],
            "diff": ours[0]["diff"],
        },
        "tp": {k: median_of(peer, k) for k in ("graph", "prune", "total", "cpu")}
        | {"params_after": peer[0].get("params_after"), "error": peer[0].get("error")},
    }
    if procs:
        row["process"] = {k: statistics.median(p[k] for p in procs) for k in procs[0]}
    return row


def machine() -> str:
    threads = os.environ.get("OMP_NUM_THREADS", "all")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch_pruning as tp  # lazy: the peer

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={threads}, "
        f"load average {load:.1f} at the end; torch {torch.__version__}, torch-pruning {tp.__version__}"
    )


def table(rows: list[dict[str, Any]], before: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    head = (
        "| model | criterion | version | " + " | ".join(STAGES) + " | slimnet total | TP graph | TP prune | TP total "
        "| TP / slimnet | CPU s: slimnet / TP = TP / slimnet | 1 forward at 224 | runs |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        versions = [("before", before[(r["model"], r["criterion"])])] if (r["model"], r["criterion"]) in before else []
        for label, row in versions + [("now", r)]:
            s, p = row["slimnet"], row["tp"]
            stages = " | ".join(f"{s['stages'].get(k, 0.0):.3f}" for k in STAGES)
            lines.append(
                f"| {r['model']} | {r['criterion']} | {label} | {stages} | **{s['total']:.3f}** | {p['graph']:.3f} "
                f"| {p['prune']:.3f} | **{p['total']:.3f}** | {p['total'] / s['total']:.2f}x "
                f"| {cpu_cell(s, p)} | {row['forward']:.3f} "
                f"| {row.get('repeats', '-')} |"
            )
    return lines


def cpu_cell(s: dict[str, Any], p: dict[str, Any]) -> str:
    """CPU seconds of each tool (older --json files have none)."""
    if "cpu" not in s or "cpu" not in p:
        return "-"
    return f"{s['cpu']:.2f} / {p['cpu']:.2f} = {p['cpu'] / s['cpu']:.2f}x"


def write_doc(rows: list[dict[str, Any]], before: dict, args: argparse.Namespace) -> None:
    cmd = f"python tools/bench_shrink.py --models {args.models} --criteria {args.criteria} --repeats {args.repeats}"
    cmd = f"`{cmd}{' --process' if args.process else ''} --out {args.out}`"
    lines = [
        "# Time to shrink, stage by stage, beside Torch-Pruning",
        "",
        f"Command: {args.commands or cmd} (with `--before FILE` for *before* rows: the same tool run on another "
        "version, its `--json` output)",
        "",
        *([args.note, ""] if args.note else []),
        f"Machine: {machine()}; slimnet {slimnet.__version__}. Seconds, median of the runs given in the table, in one "
        "process, the two tools one after the other on freshly loaded, randomly initialised models, ratio 0.5, "
        "round-to 8, classifier kept.",
        "",
        "slimnet's total is `api.shrink`: trace (symbolic trace, and the full-size shape pass that replaced running "
        "the model on the example), groups (the channel analysis and the cost model), rank, cut (plan and surgery) "
        "and verify (the masked original against the pruned model, and again with the constant tensors of a "
        "freshly initialised model randomised). Torch-Pruning's graph runs the model once at 224 px with autograd; "
        "its prune step ranks and cuts; it verifies nothing.",
        "",
        *table(rows, before),
        "",
        "How each result was verified (now): "
        + "; ".join(f"{r['model']} ({r['criterion']}): {r['slimnet']['verify']}" for r in rows),
        "",
    ]
    procs = [r for r in rows if "process" in r]
    if procs:
        lines += ["As a user runs it, whole process (import, model construction, prune, save; median of 3):", ""]
        lines += ["| model | criterion | slimnet shrink (CLI) s | Torch-Pruning script s |", "|---|---|---|---|"]
        for r in procs:
            lines.append(
                f"| {r['model']} | {r['criterion']} | {r['process']['slimnet']:.2f} | {r['process']['tp']:.2f} |"
            )
        lines.append("")
    Path(args.out).write_text("\n".join(lines) + "\n" + kept_sections(Path(args.out)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,densenet201")
    ap.add_argument("--criteria", default="l2,fpgm")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--process", action="store_true", help="also time both tools as whole processes")
    ap.add_argument("--json", default=None, help="write the measurements here (for --before of a later run)")
    ap.add_argument("--before", default=None, help="measurements of another slimnet version, shown beside")
    ap.add_argument("--out", default=None, help="the markdown document to write")
    ap.add_argument("--commands", default="", help="the commands that measured a --load file, for the document")
    ap.add_argument("--note", default="", help="a paragraph for the document (the machine's load, say)")
    ap.add_argument("--load", default=None, help="write the document from this --json file instead of measuring")
    args = ap.parse_args()
    if args.load:
        rows = json.loads(Path(args.load).read_text())
    else:
        warm_up()
        rows = []
        for m in args.models.split(","):
            for c in args.criteria.split(","):
                rows.append(bench(m, c, args))
                if args.json:  # after each row: a long sweep stopped midway keeps what it measured
                    Path(args.json).write_text(json.dumps(rows, indent=1))
    before = {}
    if args.before:
        before = {(r["model"], r["criterion"]): r for r in json.loads(Path(args.before).read_text())}
    if args.out:
        write_doc(rows, before, args)


#: Sections below this line in the document are other measurements (threads: tools/bench_threads.py): rewriting
#: the tables keeps them.
KEEP_MARKER = "<!-- sections below are not written by tools/bench_shrink.py -->"


def kept_sections(path: Path) -> str:
    """What follows :data:`KEEP_MARKER` in the existing document, marker included ('' if none)."""
    text = path.read_text() if path.is_file() else ""
    at = text.find(KEEP_MARKER)
    return "\n" + text[at:] if at >= 0 else ""


if __name__ == "__main__":
    main()
