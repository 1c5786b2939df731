"""slimnet and Torch-Pruning side by side: the torchvision zoo, time to shrink, and what the results cost.

    python tools/compare.py all                       # everything below, then docs/compare.md (hours on 2 cores)
    python tools/compare.py coverage [--models a,b]   # part 1: each of the 80 classifiers through both tools
    python tools/compare.py time [--repeats 5]        # part 2: time to shrink six models, interleaved medians
    python tools/compare.py quality                   # part 3: MACs, parameters, onnxruntime CPU latency
    python tools/compare.py write                     # docs/compare.md and docs/shrink-scaling.png from the cache

Every result is cached as one JSON file per part and model under ``--cache`` (default ``.compare/``): a run that
stops (or is stopped) picks up where it was; ``--fresh`` measures again. Models run one per subprocess (a crash,
a memory blow-up or ``--timeout`` is a result, not the end of the sweep). ``--note``: a paragraph for the
document (the scope run, the machine's load). The pieces live beside this driver: ``compare_parts.py`` (the
models, both tools, reading a cut back, the three parts) and ``compare_doc.py`` (the document and the plot).

Setup, the same for both tools: a randomly initialised model (nothing downloaded) whose tensors are then all
randomised (:func:`slimnet.verify.verifier.randomise`: every channel distinguishable, so that a wrong cut shows and
Torch-
Pruning's kept indices can be read back from its tensors), ratio 0.5, round-to 8, the L2 norm as the criterion
(slimnet ``l2``, Torch-Pruning ``MagnitudeImportance(p=2)``), the classifier kept (``ignored_layers``). Torch-
Pruning runs as its documentation shows (``MetaPruner``; attention modules with their head counts, whole heads
pruned at the same ratio). *Right* means: the kept indices recovered from Torch-Pruning's tensors (each pruned
tensor compared with the original) make a slimnet plan, and slimnet's verifier finds Torch-Pruning's model equal
to the original with the dropped channels masked.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from compare_doc import write
from compare_parts import TIME_MODELS, coverage, first_line, log, quality, time_one, zoo

ROOT = Path(__file__).resolve().parent.parent


def run_one(part: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The record of one part for one model."""
    if part == "coverage":
        return coverage(name)
    return time_one(name, args.repeats) if part == "time" else quality(name, args.runs)


def cache_file(args: argparse.Namespace, part: str, name: str) -> Path:
    return Path(args.cache) / part / f"{name.replace(':', '_')}.json"


def worker(args: argparse.Namespace) -> int:
    """One part of one model, in this process (the driver runs each in a subprocess)."""
    torch.set_num_threads(args.threads)
    try:
        rec = run_one(args.part, args.models, args)
    except Exception as exc:  # noqa: BLE001 - recorded, so the sweep goes on
        rec = {"model": args.models, "error": first_line(exc), "trace": traceback.format_exc()[-2000:]}
    out = cache_file(args, args.part, args.models)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1, default=str))
    tmp.replace(out)
    return 0


def run_part(part: str, names: list[str], args: argparse.Namespace) -> None:
    for i, name in enumerate(names):
        out = cache_file(args, part, name)
        if out.exists() and not args.fresh:
            continue
        log(f"[{part} {i + 1}/{len(names)}] {name}")
        cmd = [sys.executable, __file__, "--worker", "--part", part, "--models", name, "--cache", args.cache,
               "--repeats", str(args.repeats), "--runs", str(args.runs), "--threads", str(args.threads)]  # fmt: skip
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, timeout=args.timeout, capture_output=True, text=True)
            failed = proc.returncode != 0 and not out.exists()
            reason = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
        except subprocess.TimeoutExpired:
            failed, reason = True, f"timed out after {args.timeout} s"
        if failed:  # killed (memory) or timed out: that is the result
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"model": name, "error": reason}))
        log(f"    {time.perf_counter() - t0:.0f} s")


def load_part(args: argparse.Namespace, part: str) -> dict[str, dict[str, Any]]:
    folder = Path(args.cache) / part
    recs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []
    return {r["model"]: r for r in recs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", nargs="?", default="all", choices=["all", "coverage", "time", "quality", "write"])
    ap.add_argument("--models", default=None, help="comma-separated (default: the zoo, or the six timed models)")
    ap.add_argument("--cache", default=str(ROOT / ".compare"))
    ap.add_argument("--fresh", action="store_true", help="measure again what the cache holds")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved runs per model (time)")
    ap.add_argument("--runs", type=int, default=30, help="timed onnxruntime runs per model (quality)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per model and part")
    ap.add_argument("--out", default=str(ROOT / "docs" / "compare.md"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "shrink-scaling.png"))
    ap.add_argument("--note", default="", help="a paragraph for the document: the scope run, the machine's load")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--part", dest="worker_part", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        args.part = args.worker_part
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    chosen = args.models.split(",") if args.models else None
    for part in ("coverage", "time", "quality"):
        if args.part in (part, "all"):
            run_part(part, chosen or (zoo() if part == "coverage" else TIME_MODELS), args)
    write(args, load_part, __doc__ or "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
