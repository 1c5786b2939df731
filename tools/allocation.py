"""Uniform vs global vs latency-targeted allocation at 50% of the MACs, measured on onnxruntime CPU; written to
docs/allocation.md.

    python tools/allocation.py --models resnet50,mobilenet_v2 --out docs/allocation.md

For each model (torchvision, random weights: nothing is downloaded) one :class:`slimnet.api.Planner` serves every
variant (one trace, one ranking, one latency table):

* ``uniform``: ``--target-macs 0.5`` (every group drops the same share);
* ``global``: ``--target-macs 0.5 --global`` (one ranking; importance per MAC saved);
* ``latency, same MACs as uniform``: widths chosen from the latency table for the latency budget whose plan has
  the MACs the uniform plan reached, or the least above them (the budget bisected on the table's prediction; no
  measured re-aiming), so that it cannot win by having fewer MACs;
* ``--target-latency 0.5`` and ``0.33``: as ``slimnet shrink`` runs them (predict, cut, measure, re-aim);
* ``uniform --ratio 0.5``: docs/speed.md's row, for reference.

Every variant is cut and verified by slimnet, exported with :func:`slimnet.export` (the file checked against
torch), and all files of a model are timed in one process, interleaved, at batch 1: on 1 thread by the
thread's CPU time (what an idle core would take; see :mod:`slimnet.measure.lut.runners`) and by the wall clock, and on 2
threads by the wall clock. The latency table is measured once with ``cache=False`` and read back from the cache to
show what the cache saves.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

from slimnet import api
from slimnet.allocate.decide import choose
from slimnet.cost.macs import count_macs, device_info
from slimnet.errors import SlimnetError
from slimnet.exporting.onnx import export_onnx
from slimnet.measure.lut import runners
from slimnet.plan import build_plan
from slimnet.settings import DEFAULT_MAX_LAYER_RATIO

NOTES = "<!-- notes: kept when the tables above are regenerated -->"


@dataclass
class Variant:
    label: str
    model: Any
    plan: dict[str, Any] | None = None
    report: dict[str, Any] = field(default_factory=dict)
    macs: int = 0
    params: int = 0
    ms: dict[str, float] = field(default_factory=dict)  # clock -> p50 ms


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def latency_at_macs(planner: api.Planner, table: Any, wanted: float, settings: dict[str, Any]) -> tuple[float, Any]:
    """The latency budget (fraction) whose table-chosen plan has ``wanted`` x the MACs, by bisection on the
    prediction: the plan with the fewest MACs at or above ``wanted`` (so that it never wins by having fewer),
    and its decisions."""
    cost, full = planner.analysis.cost, planner.analysis.cost.macs()
    lo, hi, best = 0.15, 0.99, None
    for _ in range(16):
        mid = (lo + hi) / 2
        try:
            decisions, result = choose(
                planner.analysis, planner.model, target=("latency", mid), table=table, **settings
            )
        except SlimnetError:  # below the floor: aim higher
            lo = mid
            continue
        frac = cost.macs(cost.keep_vector([d.keep for d in decisions])) / full
        if frac >= wanted and (best is None or frac < best[1]):
            best = (mid, frac, decisions, result)
        lo, hi = (lo, mid) if frac > wanted else (mid, hi)
    return best[0], best


def variants_of(name: str, args: argparse.Namespace) -> tuple[list[Variant], dict[str, Any]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(1, 3, args.size, args.size)
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    planner = api.Planner(model, x)
    info["analysis_s"] = time.perf_counter() - t0
    common = dict(criterion=args.criterion, round_to=args.round_to, planner=planner, measure=False)
    t0 = time.perf_counter()
    built = planner.latency_table(round_to=args.round_to, cache=False)
    info["table_build_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = planner.latency_table(round_to=args.round_to, cache=True)
    info["table_load_s"], info["table_cached"] = time.perf_counter() - t0, cached.cached
    info["table"] = built.table
    log(f"{name}: table in {info['table_build_s']:.1f} s, read back in {info['table_load_s']:.2f} s")
    out = [Variant("original", model)]
    for label, kw in (
        ("uniform, --target-macs 0.5", dict(target_macs=0.5)),
        ("global, --target-macs 0.5", dict(target_macs=0.5, use_global=True)),
    ):
        res = api.shrink(model, x, **common, **kw)
        out.append(Variant(label, res.model, res.plan, res.report))
        log(f"{name}: {label}: {res.report['target']['reached']:.4f}")
    settings = dict(
        ratio=0.5, criterion=args.criterion, round_to=args.round_to, ranking=planner.ranking(args.criterion)
    )
    uniform_macs = out[1].report["target"]["reached"]
    budget, (_, frac, decisions, result) = latency_at_macs(planner, built.table, uniform_macs, settings)
    plan = build_plan(planner.analysis, decisions, model_name=name, criterion=args.criterion, ratio=result.ratio,
                      round_to=args.round_to, seed=0)  # fmt: skip
    pruned, verified = api.apply(model, plan, x)
    assert verified is not None and verified.passed, "latency @ MACs 0.5 did not verify"
    report = {"predicted": result.reached, "budget": budget, "importance_kept": api.importance_kept(
        planner, args.criterion, 0, decisions)}  # fmt: skip
    out.append(Variant(f"latency, same MACs as uniform (budget {budget:.3f})", pruned, plan, report))
    info["refused"] = []
    for target in args.latency:
        try:
            res = api.shrink(model, x, **common, target_latency=target, cache=True)
        except SlimnetError as exc:
            info["refused"].append(f"--target-latency {target}: {exc}")
            log(f"{name}: {exc}")
            continue
        out.append(Variant(f"--target-latency {target}", res.model, res.plan, res.report))
        log(f"{name}: --target-latency {target}: {res.report['target']['note']}")
    res = api.shrink(model, x, **common, ratio=0.5)
    out.append(Variant("uniform, --ratio 0.5", res.model, res.plan, res.report))
    for v in out:
        v.macs = int(count_macs(v.model, x)["macs"])
        v.params = sum(p.numel() for p in v.model.parameters())
    time_all(out, x, args)
    return out, info


def time_all(variants: list[Variant], x: torch.Tensor, args: argparse.Namespace) -> None:
    """Export every variant (checked against torch) and time them interleaved on each clock."""
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for i, v in enumerate(variants):
            path = Path(folder) / f"v{i}.onnx"
            export_onnx(v.model, x, path)
            files.append(path.read_bytes())
        feed = {"input": x.numpy()}
        for clock, threads, wall in (("cpu@1", 1, False), ("wall@1", 1, True), ("wall@2", 2, True)):
            steps = [runners.ort_step(f, feed, "ort-cpu", threads, wall=wall) for f in files]
            ms = runners.medians(steps, 3, args.runs, threads)
            for v, m in zip(variants, ms):
                v.ms[clock] = m
            log(f"timed {clock}: " + ", ".join(f"{m:.2f}" for m in ms))


def importance(v: Variant) -> str:
    imp = v.report.get("importance_kept")
    return f"{imp['share']:.3f}" if imp else "1.000"


def rows(name: str, variants: list[Variant]) -> list[str]:
    base = variants[0]
    head = (
        "| model | allocation | MACs (G) | MACs kept | params (M) | importance kept | ort@1 CPU time | speedup | "
        "ort@1 wall | speedup | ort@2 wall | speedup | target reached (slimnet's own measure) |"
    )
    lines = [head, "|" + "---|" * 13]
    for v in variants:
        t = v.report.get("target") or {}
        cells = [name, v.label, f"{v.macs / 1e9:.3f}", f"{v.macs / base.macs:.3f}", f"{v.params / 1e6:.2f}",
                 importance(v)]  # fmt: skip
        for clock in ("cpu@1", "wall@1", "wall@2"):
            cells += [f"{v.ms[clock]:.2f} ms", f"{base.ms[clock] / v.ms[clock]:.2f}x"]
        if t.get("kind") == "latency":
            cells.append(
                f"{t['reached']:.3f} measured, {t['predicted_fraction']:.3f} predicted, {t['rounds']} round(s)"
            )
        elif t:
            cells.append(f"{t['kind']} {t['reached']:.4f}")
        elif "predicted" in v.report:
            cells.append(f"latency {v.report['predicted']:.3f} predicted")
        else:
            cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def widths(variants: list[Variant], planner_groups: list[str]) -> list[str]:
    """Kept units per group for each pruned variant (the allocation itself)."""
    lines = ["| allocation | " + " | ".join(planner_groups) + " |", "|" + "---|" * (len(planner_groups) + 1)]
    for v in variants[1:]:
        kept = {}
        for tensor, dims in (v.plan or {}).get("tensors", {}).items():
            module = tensor.rsplit(".", 1)[0]
            if tensor.endswith("weight") and "0" in dims and module in planner_groups:
                kept[module] = len(dims["0"])
        lines.append(f"| {v.label} | " + " | ".join(str(kept.get(g, "all")) for g in planner_groups) + " |")
    return lines


def method() -> str:
    """The module docstring after its usage line, in Markdown."""
    body = (__doc__ or "").split("\n\n", 2)[2]
    body = body.replace("``", "`")
    return re.sub(r":(class|func|mod):`([^`]+)`", r"`\2`", body).strip()


def markdown(results: list[tuple[str, list[Variant], dict[str, Any]]], args: argparse.Namespace, load: list) -> str:
    d = device_info(1)
    lines = [
        "# Allocation: uniform vs global vs latency-targeted (onnxruntime CPU, batch 1)",
        "",
        f"Command: `{args.command}`",
        "",
        f"Machine: {d['cpu']}, {d['cpu_count']} cores; {d['platform']}; torch {d['torch']}, onnxruntime "
        f"{d['onnxruntime']}, slimnet {d['slimnet']}. Load average (1/5/15 min) at the start "
        f"{' / '.join(f'{v:.1f}' for v in load[0])}, at the end {' / '.join(f'{v:.1f}' for v in load[1])}: the "
        "machine was shared with other jobs throughout.",
        "",
        f"Method: {method()}",
        "",
        f"Settings: {args.size}x{args.size} input, criterion {args.criterion}, round-to {args.round_to}, "
        f"max-layer-ratio {DEFAULT_MAX_LAYER_RATIO}, "
        f"{args.runs} timed runs (3 warm-up) per variant and clock. *importance kept*: the sum of the kept units' "
        "scores (tensor shares, see slimnet/allocate/ranking.py) over the sum of all, over the prunable groups. "
        "Speedups are p50(original) / p50(variant) on the same clock.",
        "",
    ]
    for name, variants, info in results:
        lines += [f"## {name}", ""]
        lines += [
            f"Analysis {info['analysis_s']:.1f} s. Latency table ({len(info['table'].groups)} groups x up to 6 widths, "
            f"{info['table'].method}): measured in {info['table_build_s']:.1f} s, read back from the cache in "
            f"{info['table_load_s']:.2f} s (saves {info['table_build_s'] - info['table_load_s']:.1f} s per later run).",
            "",
        ]
        lines += rows(name, variants) + [""]
        lines += [f"- refused: {why}" for why in info["refused"]] + ([""] if info["refused"] else [])
        groups = [g for g in info["table"].groups]
        lines += ["Kept units per group (module producing the group's channels):", ""]
        lines += widths(variants, groups) + [""]
    text = "\n".join(lines).rstrip() + "\n"
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    if NOTES in old:
        text += "\n" + NOTES + old.split(NOTES, 1)[1]
    return text


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--latency", default="0.5,0.33", help="latency targets to run as slimnet shrink runs them")
    ap.add_argument("--runs", type=int, default=25)
    ap.add_argument("--out", default="docs/allocation.md")
    args = ap.parse_args(argv)
    args.command = "python tools/allocation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.models = [m for m in args.models.split(",") if m]
    args.latency = [float(t) for t in args.latency.split(",") if t]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    load = [os.getloadavg()]
    results = []
    for name in args.models:
        variants, info = variants_of(name, args)
        results.append((name, variants, info))
        Path(args.out).write_text(markdown(results, args, load + [os.getloadavg()]))
        log(f"{name} done; wrote {args.out}")


if __name__ == "__main__":
    main()
