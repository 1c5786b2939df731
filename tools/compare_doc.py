"""The document of ``tools/compare.py``: docs/compare.md and the scaling plot, from the cached records."""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from compare_parts import TIME_MODELS

import slimnet

Records = dict[str, dict[str, Any]]
KEYS = ("shrinks", "runs", "onnx", "right")
STAGES = ("trace", "groups", "rank", "cut", "verify")


def cell(value: Any) -> str:
    """``yes``, ``no`` (the reason goes to the last column) or ``-`` (not reached)."""
    if value is None:
        return "-"
    text = str(value)
    return "no" if text.startswith("no") else text


def why(rec: dict[str, Any]) -> str:
    """The first failure of a tool's record, shortened for a table cell."""
    if "error" in rec:
        return rec["error"][:140]
    for key in KEYS:
        v = str(rec.get(key, "yes"))
        if v.startswith("no"):
            return f"{key}: {v[3:].strip()[:140]}"
    return ""


def ordered(recs: Records) -> list[str]:
    """The issue's six models (those not run say so), then any others that were run."""
    return TIME_MODELS + sorted(n for n in recs if n not in TIME_MODELS)


def coverage_section(recs: Records) -> list[str]:
    lines = [f"## 1. Coverage: {len(recs)} torchvision classifiers", ""]
    for tool, label in (("slimnet", "slimnet"), ("tp", "Torch-Pruning")):
        counts = {k: sum(1 for r in recs.values() if r.get(tool, {}).get(k) == "yes") for k in KEYS}
        failed = sum(1 for r in recs.values() if str(r.get(tool, {}).get("shrinks", "no")).startswith("no"))
        rights = [str(r.get(tool, {}).get("right", "")) for r in recs.values()]
        unread = sum(1 for v in rights if v.startswith("no: not a slice"))
        wrong = sum(1 for v in rights if v.startswith("no")) - unread
        broke = sum(1 for r in recs.values() if "error" in r)
        lines.append(
            f"- **{label}**: right {counts['right']}/{len(recs)}; wrong (the verifier finds other outputs) {wrong}; "
            f"cut not readable as a slice of the original {unread}; failed to shrink {failed}"
            + (f" (of which {broke} the whole run, both tools, timed out or crashed)" if broke else "")
            + "; "
            + ", ".join(f"{k} {counts[k]}" for k in KEYS[:3])
        )
    lines += [
        "",
        "| model | size | slimnet shrinks / runs / ONNX / right | s | Torch-Pruning shrinks / runs / ONNX / right "
        "| s | what failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in sorted(recs):
        r = recs[name]
        s, t = r.get("slimnet", {}), r.get("tp", {})
        notes = f"run: {r['error'][:140]}" if "error" in r else ""
        notes = notes or "; ".join(f"{label}: {why(x)}" for label, x in (("slimnet", s), ("TP", t)) if why(x))
        ours, theirs = " / ".join(cell(s.get(k)) for k in KEYS), " / ".join(cell(t.get(k)) for k in KEYS)
        lines.append(
            f"| {name} | {r.get('size', '-')} | {ours} | {s.get('seconds', '-')} | {theirs} | {t.get('seconds', '-')} "
            f"| {notes.replace('|', '/')} |"
        )
    return lines + [""]


def time_row(name: str, r: dict[str, Any]) -> str:
    s, t = r["slimnet"], r["tp"]
    if "total" in t:
        tp_cells = f"{t['graph']:.2f} | {t['prune']:.2f} | **{t['total']:.2f}** | {t['total'] / s['total']:.1f}x"
        tp_cells += f" | {s['cpu']:.2f} / {t['cpu']:.2f} = {t['cpu'] / s['cpu']:.1f}x" if "cpu" in t else " | -"
    else:
        tp_cells = f"- | - | failed: {t.get('error', '')[:80]} | - | -"
    stages = " | ".join(f"{s.get(k, 0.0):.2f}" for k in STAGES)
    verified = f"{r['verify_dtype'].replace('torch.', '')}: {', '.join(r['verify'])}"
    return f"| {name} | {stages} | **{s['total']:.2f}** | {tp_cells} | {r['repeats']} | {verified} |"


def time_section(recs: Records) -> list[str]:
    lines = [
        "## 2. Time to shrink (ratio 0.5, L2, seconds, median of interleaved runs)",
        "",
        "| model | " + " | ".join(STAGES) + " | **slimnet** | TP graph | TP prune | **Torch-Pruning** | TP / slimnet "
        "| CPU s: slimnet / TP = TP / slimnet | runs | slimnet verified on |",
        "|" + "---|" * 14,
    ]
    for name in ordered(recs):
        r = recs.get(name)
        if r is None or "error" in r:
            lines.append(f"| {name} | {r['error'][:120] if r else 'not run in this sweep'} |" + " |" * 13)
        else:
            lines.append(time_row(name, r))
    return lines + [""]


def quality_cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "failed"
    ms = row.get("ort_ms")
    return f"{row['params'] / 1e6:.2f}M / {row['macs'] / 1e9:.2f} / {f'{ms:.1f}' if ms else '-'}"


def quality_section(recs: Records) -> list[str]:
    lines = [
        "## 3. What the results cost: parameters, GMACs (fvcore), onnxruntime CPU latency (ms, 1 thread, batch 1)",
        "",
        "| model | original | slimnet | Torch-Pruning |",
        "|---|---|---|---|",
    ]
    for name in ordered(recs):
        r = recs.get(name)
        if r is None or "error" in r:
            lines.append(f"| {name} | {r['error'][:120] if r else 'not run in this sweep'} | | |")
            continue
        cells = [quality_cell(r["rows"].get(label)) for label in ("original", "slimnet", "torch-pruning")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def why_far(rec: dict[str, Any]) -> str:
    """What the record itself says about a model far above the line."""
    s = rec["slimnet"]
    if s.get("reduced") is None:
        size, params = rec.get("size"), rec.get("params", 0) / 1e6
        return (f": no reduced input (run at {size} px, analysed and verified at that size), {params:.0f}M "
                f"parameters; verify {s['timings'].get('verify', 0):.1f} s")  # fmt: skip
    return ""


def scaling(recs: Records, png: str, out: str) -> list[str]:
    """Shrink time against graph nodes, a line through the origin at the median seconds per node, and the
    models far off it."""
    pts = [
        (r["slimnet"]["nodes"], r["slimnet"]["seconds"], n)
        for n, r in recs.items()
        if r.get("slimnet", {}).get("nodes") and r["slimnet"].get("seconds")
    ]
    if not pts:
        return []
    import matplotlib  # lazy: only the document needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    per_node = statistics.median(s / n for n, s, _ in pts)
    off = sorted(((s / (per_node * n), name, n, s) for n, s, name in pts), reverse=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([n for n, _, _ in pts], [s for _, s, _ in pts], s=14)
    xs = np.linspace(0, max(n for n, _, _ in pts), 50)
    ax.plot(xs, per_node * xs, "r--", label=f"{per_node * 1000:.2f} ms per node")
    for _, name, n, s in off:
        ax.annotate(name, (n, s), fontsize=6)
    ax.set_xlabel("graph nodes (torch.fx)")
    ax.set_ylabel("slimnet shrink, seconds")
    ax.set_title(f"Shrink time against graph size, {len(pts)} torchvision models (ratio 0.5, l2)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    far = [f"{name} ({n} nodes, {s:.1f} s, {ratio:.1f}x the line{why_far(recs[name])})" for ratio, name, n, s in off
           if ratio > 2]  # fmt: skip
    rel = os.path.relpath(png, Path(out).parent)
    return [
        "## 4. Cost that grows linearly with the graph",
        "",
        f"![shrink time against graph nodes]({rel})",
        "",
        f"{len(pts)} models (the coverage part's runs: CNNs at 64 px); median {per_node * 1000:.2f} ms per graph "
        "node. Far above the line (over 2x): " + (", ".join(far) if far else "none") + ".",
        "",
    ]


def write(args: argparse.Namespace, load_part: Any, doc: str) -> None:
    """docs/compare.md (and the plot) from the records the driver cached; ``doc`` is the driver's docstring,
    whose setup paragraph the document repeats."""
    import torch_pruning as tp  # lazy: the peer (a dev dependency)

    cov, tim, qual = load_part(args, "coverage"), load_part(args, "time"), load_part(args, "quality")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = [
        "# slimnet beside Torch-Pruning",
        "",
        "Command (everything, resumable, hours on 2 cores): `python tools/compare.py all`; parts: `coverage`, "
        "`time`, `quality`, `write` (results cached under `.compare/`, one JSON file per part and model).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch "
        f"thread(s) per run, load average {load:.1f} when this was written; torch {torch.__version__}, "
        f"torch-pruning {tp.__version__}, slimnet {slimnet.__version__}. CNNs ran at 64 px in part 1 "
        "(inception_v3 at 299, the transformers at 224) and at 224 px in parts 2 and 3.",
        "",
    ]
    if args.note:
        head += [args.note, ""]
    setup = " ".join(doc.split("\n\n", 3)[3].split()).replace(":func:", "").replace("``", "`")
    head += [setup.replace("Torch- Pruning", "Torch-Pruning"), ""]
    body = coverage_section(cov) + time_section(tim) + quality_section(qual) + scaling(cov, args.plot, args.out)
    Path(args.out).write_text("\n".join(head + body).rstrip() + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
