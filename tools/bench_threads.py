"""Where a shrink's time goes on a busy machine, by thread setting; writes its section of docs/shrink-time.md.

    python tools/bench_threads.py --model resnet50 --repeats 2

Each run is a fresh process (the OpenMP runtime reads its settings when torch loads): ``slimnet.shrink`` of a
torchvision model at ratio 0.5 with fpgm, timed per stage, under

* torch's defaults (one thread per core, OpenMP's active waiting),
* ``OMP_NUM_THREADS=1``,
* ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of spinning while they wait; what the command line sets),

each alone and with a competing job (one process spinning on one core), the command line as shipped
(``slimnet shrink ... --json``: its wall time includes starting Python and importing torch), and what importing
torch, torchvision and slimnet's pipeline costs a fresh process. The load average is recorded with each row.
The section goes below the marker line of docs/shrink-time.md, which tools/bench_shrink.py keeps when it rewrites
its table.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from bench_shrink import KEEP_MARKER  # noqa: E402

STAGES = ("load", "trace", "groups", "rank", "cut", "verify", "write")
IMPORTS = "import torch, torchvision, slimnet.api only"
CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch, torchvision
from slimnet import api
from slimnet.stages import Stages
stages = Stages()
with stages("load"):
    model = torchvision.models.get_model(sys.argv[1]).eval()
api.shrink(model, torch.randn(1, 3, 224, 224), ratio=0.5, criterion="fpgm", stages=stages)
print(json.dumps({"threads": torch.get_num_threads(), "timings": stages.rounded()}))
"""
CONFIGS = {
    "torch defaults (active waiting)": {},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
}
OMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


def run_api(model: str, extra: dict[str, str]) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, model], env=clean_env(extra), capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_cli(model: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "slimnet", "shrink", f"torchvision:{model}", "--criterion", "fpgm", "--json"],
            env=clean_env({}),
            cwd=tmp,
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
    return {"threads": None, "timings": json.loads(r.stdout)["timings"], "wall": wall}


def run_imports() -> dict:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torchvision, slimnet.api"], env=clean_env({}), check=True)
    return {"threads": None, "timings": {}, "wall": time.perf_counter() - t0}


def median_row(runs: list[dict]) -> dict:
    stages = {s: statistics.median(r["timings"].get(s, 0.0) for r in runs) for s in STAGES}
    total = statistics.median(sum(r["timings"].values()) for r in runs)
    wall = statistics.median(r["wall"] for r in runs) if "wall" in runs[0] else None
    return {"stages": stages, "total": total, "wall": wall, "threads": runs[0]["threads"], "load": os.getloadavg()[0]}


def measure(model: str, repeats: int) -> list[tuple[str, str, dict]]:
    rows = []
    for load in ("alone", "with a competing job"):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load != "alone" else None
        try:
            for name, extra in CONFIGS.items():
                runs = [run_api(model, extra) for _ in range(repeats)]
                rows.append((load, name, median_row(runs)))
                print(load, name, rows[-1], flush=True)
            runs = [run_cli(model) for _ in range(repeats)]
            rows.append((load, "slimnet shrink (as shipped)", median_row(runs)))
            print(load, "cli", rows[-1], flush=True)
            rows.append((load, IMPORTS, median_row([run_imports() for _ in range(repeats)])))
            print(load, "imports", rows[-1], flush=True)
        finally:
            if hog is not None:
                hog.kill()
    return rows


def section(model: str, repeats: int, rows: list[tuple[str, str, dict]]) -> str:
    lines = [
        "## Threads on a busy machine",
        "",
        f"Command: `python tools/bench_threads.py --model {model} --repeats {repeats}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other jobs "
        f"while this ran; median of {repeats} fresh processes per row; seconds. `{model}` at ratio 0.5, fpgm. "
        "The competing job is one process spinning on one core.",
        "",
        "| machine | setting | threads | total | " + " | ".join(STAGES) + " | wall (whole process) | load avg |",
        "|---|---|---|---|" + "---|" * len(STAGES) + "---|---|",
    ]
    for load, name, row in rows:
        cells = " | ".join(f"{row['stages'][s]:.1f}" if row["stages"][s] else "-" for s in STAGES)
        wall = f"{row['wall']:.1f}" if row["wall"] is not None else "-"
        threads = row["threads"] if row["threads"] is not None else "default"
        total = f"{row['total']:.1f}" if row["total"] else "-"
        lines.append(f"| {load} | {name} | {threads} | {total} | {cells} | {wall} | {row['load']:.1f} |")
    cli = [row for _, name, row in rows if name.startswith("slimnet shrink")]
    imports = [row["wall"] for _, name, row in rows if name == IMPORTS]
    lines += [
        "",
        "What the table says: the time is not lost in the float64 verification or in a tracer as such; it is lost "
        "waiting. torch runs each op on all cores, and its OpenMP threads *spin* while they wait for each other. "
        "When another job holds a core, every parallel op waits for a thread that is not running, so the stages "
        "with many small ops (grouping, which runs the model op by op; fpgm's distances; the float64 verification) "
        "slow down several-fold. With passive waiting the same threads cost about what one thread costs. "
        "`slimnet` (the command line) therefore sets `OMP_WAIT_POLICY=PASSIVE` before it "
        "imports torch, unless you set the variable yourself; no `OMP_NUM_THREADS` is needed. In your own Python "
        "scripts, set `OMP_WAIT_POLICY=PASSIVE` in the environment (it must be set before torch is imported) on a "
        "shared machine.",
        "",
        f"What to expect from a run of the command: its `load` stage includes starting Python and importing torch "
        f"and torchvision ({min(r['stages']['load'] for r in cli):.0f}-{max(r['stages']['load'] for r in cli):.0f}"
        f" s here; the imports alone took {min(imports):.0f}-{max(imports):.0f} s in a fresh process on this "
        "machine at the load average shown: that part grows with the machine's load and shrinks on a machine "
        "with cores to spare). The table above this section times the pipeline alone, in a warm process, "
        "which is why its numbers are smaller than a first command's.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="docs/shrink-time.md")
    args = ap.parse_args()
    rows = measure(args.model, args.repeats)
    out = Path(args.out)
    out.write_text(replace_section(out.read_text() if out.is_file() else "", section(args.model, args.repeats, rows)))


def replace_section(text: str, new: str) -> str:
    """``text`` with its threads section replaced by ``new`` (or ``new`` added below the marker line that
    tools/bench_shrink.py keeps); the other sections below the marker (the idle-machine one) stay."""
    if KEEP_MARKER not in text:
        text = text.rstrip("\n") + "\n\n" + KEEP_MARKER + "\n"
    start = text.find(TITLE)
    if start < 0:
        return text.rstrip("\n") + "\n\n" + new
    end = text.find("\n## ", start + len(TITLE))
    return text[:start] + new.rstrip("\n") + "\n" + (text[end:] if end >= 0 else "")


TITLE = "## Threads on a busy machine"


if __name__ == "__main__":
    main()
