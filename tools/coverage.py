"""Sweep torchvision's whole classification zoo through slimnet and write docs/coverage.md.

    nice -n 10 python tools/coverage.py --out docs/coverage.md
    python tools/coverage.py --models resnet18,vit_b_16 --criteria l1,fpgm --size 160 --out /tmp/cov.md

Every model is built randomly initialised (``torchvision:NAME``, seeded, nothing downloaded), analysed once, and
shrunk at ``--ratio`` (0.5) with every criterion. The first criterion goes through :func:`slimnet.api.shrink`
unchanged (so the public path is what is measured, MAC counting included); the others pass its analysis,
which is a function of the model and the input only, back in (``api.shrink(..., analysis=...)``: decide, plan,
cut, verify) with MAC counting off. ``--reanalyse`` analyses again for every criterion instead.

Each model runs in its own child process, so that a crash, an out-of-memory kill or a hang (``--timeout``)
costs one row, not the sweep; every exception is recorded per model and criterion as a one-line failure.
The markdown is rewritten after every model, so an interrupted sweep still leaves its rows behind;
``--jsonl`` keeps the raw records and ``--resume`` reuses them.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

ALL_CRITERIA = ("l1", "l2", "fpgm", "random", "bn-scale")
TRANSFORMERS = ("vit", "swin", "swin_v2", "maxvit")
#: Name prefixes -> family, longest first so that ``efficientnet_v2`` wins over ``efficientnet``.
FAMILIES = sorted(
    [
        "alexnet",
        "convnext",
        "densenet",
        "efficientnet",
        "efficientnet_v2",
        "googlenet",
        "inception",
        "maxvit",
        "mnasnet",
        "mobilenet_v2",
        "mobilenet_v3",
        "regnet_x",
        "regnet_y",
        "resnet",
        "resnext",
        "shufflenet_v2",
        "squeezenet",
        "swin",
        "swin_v2",
        "vgg",
        "vit",
        "wide_resnet",
    ],
    key=len,
    reverse=True,
)


def family(name: str) -> str:
    """The architecture family a zoo name belongs to (rows are grouped by it)."""
    for prefix in FAMILIES:
        if name.startswith(prefix):
            return prefix
    return name.rstrip("0123456789_")


def zoo() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def nominal_params(name: str) -> int | None:
    """Parameter count from torchvision's weight metadata: known without building (or downloading) the model."""
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
        return int(weights[0].meta["num_params"]) if weights else None
    except Exception:  # noqa: BLE001 - metadata is a convenience for --max-params only
        return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300]


# --------------------------------------------------------------------------------------------------- worker


def perturb(model: Any, seed: int = 0) -> dict[str, int]:
    """Make every channel of the random model distinguishable, so that a misplaced cut shows in the outputs.

    torchvision's init leaves whole families of tensors constant across channels: norm layers are the identity
    (weight 1, bias 0, running mean 0, var 1), most biases are 0, ConvNeXt's layer scales are 1e-6 and ViT's
    classifier head is all zeros (every output exactly 0). A cut that keeps the wrong indices of a constant
    tensor computes the same numbers, and a branch scaled by 1e-6 hides any error below the tolerance: the
    verification would pass without checking. So norm tensors and near-zero parameters get seeded noise
    (:func:`slimnet.verify.verifier.randomise`: vectors ~0.1 around their mean, kernels at 1/sqrt(fan-in)), which keeps
    deep models' activations finite and well scaled."""
    import torch

    from slimnet.verify.verifier import randomise

    state = model.state_dict(keep_vars=True)
    params = {n for n, _ in model.named_parameters()}
    names = []
    for mod_name, mod in model.named_modules():
        norm = "Norm" in type(mod).__name__
        for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            full = f"{mod_name}.{name}" if mod_name else name
            if t is None or not t.is_floating_point() or t.numel() == 0 or full not in state:
                continue
            if norm and name in ("weight", "bias", "running_mean", "running_var"):
                names.append(full)
            elif full in params and float(t.detach().abs().max()) < 1e-4:
                names.append(full)
    with torch.no_grad():
        randomise(model, names, seed=seed)
    return {"tensors": len(names)}


def run_model(
    name: str,
    criteria: list[str],
    ratio: float,
    round_to: int,
    size: int | None,
    reanalyse: bool,
    plain_init: bool = False,
) -> dict[str, Any]:
    """Everything about one model, as plain data; never raises."""
    import resource
    import warnings

    from slimnet import api

    warnings.filterwarnings("ignore")
    rec: dict[str, Any] = {"model": name, "family": family(name), "criteria": {}, "size": None}
    t_start = time.perf_counter()
    try:
        model, example = load(name, size, plain_init, rec)
    except Exception as exc:  # noqa: BLE001
        rec["error"] = f"load: {one_line(exc)}"
        rec["seconds"] = round(time.perf_counter() - t_start, 1)
        return rec
    analysis = None
    for i, crit in enumerate(criteria):
        t0 = time.perf_counter()
        row: dict[str, Any] = {"passed": False}
        try:
            res = api.shrink(
                model,
                example,
                ratio=ratio,
                criterion=crit,
                round_to=round_to,
                model_name=f"torchvision:{name}",
                measure=(i == 0),
                analysis=None if reanalyse else analysis,
            )
            analysis = res.analysis
            record(res, rec, row)
        except Exception as exc:  # noqa: BLE001 - a failure is a result, not the end of the sweep
            row["error"] = one_line(exc)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rec["criteria"][crit] = row
    if analysis is not None:
        rec["groups"] = len(analysis.groups)
        rec["prunable"] = sum(1 for g in analysis.groups if g.reason is None)
    rec["seconds"] = round(time.perf_counter() - t_start, 1)
    rec["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return rec


def load(name: str, size: int | None, plain_init: bool, rec: dict[str, Any]) -> tuple[Any, Any]:
    """The randomly initialised (and unless ``plain_init``, perturbed) model and its example input; notes the
    input size, parameter count and output magnitude in ``rec``."""
    import torch

    from slimnet._tensors import count_params
    from slimnet.load.loader import default_input_shape, load_model

    model = load_model(f"torchvision:{name}").model
    shape = default_input_shape(f"torchvision:{name}")
    if size is not None:
        shape = shape[:2] + (size, size)
    rec["size"] = shape[-1]
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rec["params_before"] = count_params(model)
    if not plain_init:
        rec["perturbed"] = perturb(model)
    with torch.no_grad():
        out = model(example)
    rec["output_absmax"] = float(out.abs().max()) if isinstance(out, torch.Tensor) else None
    return model, example


def record(res: Any, rec: dict[str, Any], row: dict[str, Any]) -> None:
    """One criterion's result in its ``row`` (and the MACs, counted with the first, in ``rec``)."""
    rep = res.report
    row.update(
        passed=bool(res.verification.passed),
        max_diff=rep["max_abs_diff"],
        tolerance=rep["tolerance"],
        params_after=rep["params"][1],
        pruned=rep["pruned_groups"],
        groups=rep["groups"],
        exact=rep["exact"],
        dtype=rep["verify_dtype"],
    )
    if rep["macs"][0] is not None:
        rec["macs"] = rep["macs"]
    if not res.verification.passed:
        row["error"] = res.verification.error or "not verified"


# --------------------------------------------------------------------------------------------------- driver


def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one model in a fresh interpreter: a segfault, OOM kill or hang costs only its row."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--criteria",
        ",".join(args.criteria),
        "--ratio",
        str(args.ratio),
        "--round-to",
        str(args.round_to),
        "--threads",
        str(args.threads),
    ]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.reanalyse:
        cmd.append("--reanalyse")
    if args.plain_init:
        cmd.append("--plain-init")
    t0 = time.perf_counter()
    # OpenMP's default spin-waiting collapses when the machine is shared (other processes, `nice`): a float64
    # forward of convnext_small at 64 px took 42 s with 2 threads against 0.35 s with passive waiting.
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {
            "model": name,
            "family": family(name),
            "criteria": {},
            "error": f"timed out after {args.timeout} s",
            "seconds": round(time.perf_counter() - t0, 1),
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    why = tail[-1][:300] if tail else "no output"
    return {
        "model": name,
        "family": family(name),
        "criteria": {},
        "error": f"worker died (exit {proc.returncode}): {why}",
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _g(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e9:.3g}"


def _m(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def passed_cell(rec: dict[str, Any], criteria: list[str]) -> str:
    if rec.get("error"):
        return f"**failed**: {rec['error']}"
    crit = rec.get("criteria", {})
    bad = [c for c in criteria if not crit.get(c, {}).get("passed")]
    ok = len(criteria) - len(bad)
    if not bad:
        return f"{ok}/{len(criteria)}"
    errors = {c: crit.get(c, {}).get("error", "not run") for c in bad}
    if len(set(errors.values())) == 1:
        who = "all" if ok == 0 else ", ".join(bad)
        detail = f"{who}: {short(next(iter(errors.values())))}"
    else:
        detail = "; ".join(f"{c}: {short(e)}" for c, e in errors.items())
    return f"**{ok}/{len(criteria)}** ({detail})"


def short(error: str, limit: int = 160) -> str:
    """Table cells stay readable; the Failures list below the table has every message in full."""
    return error if len(error) <= limit else error[: limit - 3] + "..."


def row_of(rec: dict[str, Any], criteria: list[str]) -> str:
    crit = rec.get("criteria", {})
    ok = [crit[c] for c in criteria if crit.get(c, {}).get("passed")]
    first = ok[0] if ok else {}
    after = {r.get("params_after") for r in ok}
    params_after = _m(first.get("params_after")) + (" (varies)" if len(after) > 1 else "")
    macs = rec.get("macs") or [None, None]
    diffs = [r["max_diff"] for r in ok if r.get("max_diff") is not None]
    diff = f"{max(diffs):.1e}" if diffs else "-"
    pruned = {r.get("pruned") for r in ok}
    pruned_s = "/".join(str(p) for p in sorted(pruned)) if pruned else "-"
    size = f" @{rec['size']}" if rec.get("size") and rec["size"] != 224 else ""
    if rec.get("output_absmax") == 0:
        size += " (**output all zero: verification vacuous**)"
    cells = [
        f"{rec['model']}{size}",
        rec.get("family", ""),
        str(rec.get("groups", "-")),
        pruned_s,
        f"{_m(rec.get('params_before'))} -> {params_after}",
        f"{_g(macs[0])} -> {_g(macs[1])}",
        diff,
        passed_cell(rec, criteria),
        f"{rec.get('seconds', 0):.0f}",
        str(rec.get("peak_rss_gb", "-")),
    ]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def write_doc(
    path: Path,
    recs: dict[str, dict[str, Any]],
    order: list[str],
    skipped: dict[str, str],
    args: argparse.Namespace,
    command: str,
    started: str,
    done: bool,
) -> None:
    crits = {n: args.criteria_for(n) for n in order}
    ran = [recs[n] for n in order if n in recs]
    lines = doc_header(args, command, started, done)
    lines += doc_summary(ran, crits, skipped, args)
    lines += [row_of(recs[n], crits[n]) for n in order if n in recs]
    if skipped:
        lines += ["", "Skipped:", ""]
        lines += [f"- {n}: {why}" for n, why in skipped.items()]
    pending = [n for n in order if n not in recs]
    if pending and not done:
        lines += ["", f"Not yet run: {', '.join(pending)}"]
    failures = [
        (r["model"], c, row.get("error", ""))
        for r in ran
        for c, row in r.get("criteria", {}).items()
        if not row.get("passed")
    ]
    failures += [(r["model"], "(model)", r["error"]) for r in ran if r.get("error")]
    lines += ["", "## Failures", ""]
    lines += [f"- {m} / {c}: {e}" for m, c, e in failures] if failures else ["None."]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def doc_header(args: argparse.Namespace, command: str, started: str, done: bool) -> list[str]:
    """Title, command, date, versions and the setup of the sweep."""
    import torch
    import torchvision

    lines = [
        "# Coverage: torchvision's classification zoo through `slimnet shrink`",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {started} (started){'' if done else ' - **in progress: partial table**'}",
        "",
        f"slimnet: {args.revision}. "
        f"Versions: torch {torch.__version__}, torchvision {torchvision.__version__}, Python "
        f"{platform.python_version()}. Machine: {platform.machine()}, {os.cpu_count()} cores "
        f"({args.threads} torch thread(s) per model, {args.jobs} model(s) at a time), CPU only.",
        "",
        f"Setup: every model randomly initialised (`torchvision:NAME`, seeded; nothing downloaded), input "
        f"{'1x3x' + str(args.size) + 'x' + str(args.size) if args.size else '1x3x224x224 (299 for inception_v3)'}, "
        f"ratio {args.ratio}, round-to {args.round_to}. The first criterion runs `slimnet.api.shrink` as is "
        "(MACs from its report: `api.count_macs`, i.e. fvcore with slimnet.cost.macs's extra op handles where that "
        "module is present; one multiply-add = one MAC); "
        + (
            "every other criterion too."
            if args.reanalyse
            else "the others reuse its channel analysis and repeat decide/plan/cut/verify."
        )
        + (
            " Before shrinking, tensors that torchvision initialises constant across channels are given seeded "
            "random values (norm weights/biases/running stats, zero biases, ConvNeXt's 1e-6 layer scales, ViT's "
            "all-zero head; `perturb()` in the tool): otherwise a cut that keeps the wrong indices of such a tensor "
            "computes the same numbers, and ViT's outputs are exactly 0, so the verification would check nothing."
            if not args.plain_init
            else " torchvision's init is kept as built (`--plain-init`)."
        )
        + " A criterion *passes* when the pruned model is verified against the masked original (in float64; "
        "in float32 for models of more than 100M parameters; on the example input and a larger batch-2 input).",
        "",
    ]
    if args.transformer_criteria:
        lines += [
            f"Transformer families ({', '.join(TRANSFORMERS)}) ran with {','.join(args.transformer_criteria)} "
            "only, to keep the sweep within time on 2 cores.",
            "",
        ]
    return lines


def doc_summary(
    ran: list[dict[str, Any]], crits: dict[str, list[str]], skipped: dict[str, str], args: argparse.Namespace
) -> list[str]:
    """The summary line, the column notes and the table's head."""
    n_pass = {c: sum(1 for r in ran if r.get("criteria", {}).get(c, {}).get("passed")) for c in args.criteria}
    n_ran = {c: sum(1 for r in ran if c in crits[r["model"]]) for c in args.criteria}
    all_ok = sum(
        1
        for r in ran
        if not r.get("error") and all(r.get("criteria", {}).get(c, {}).get("passed") for c in crits[r["model"]])
    )
    return [
        f"**Summary: {len(ran)} models run ({all_ok} passed every criterion), {len(skipped)} skipped; passed per "
        "criterion: " + ", ".join(f"{c} {n_pass[c]}/{n_ran[c]}" for c in args.criteria) + ".**",
        "",
        "Columns: *groups* = coupled channel groups found; *pruned* = groups actually cut (the others are left "
        "whole with a reason: the model's output, LayerNorm-normalised widths such as a transformer's residual "
        "stream, ...); params and MACs after are those of the first passing criterion (all criteria keep the "
        "same counts); *max diff* = largest verified |pruned - masked original| over the passing criteria; "
        "*seconds* = load + analysis + all criteria, wall time on a machine shared with other work (indicative "
        "only); *peak RSS* = the model's process.",
        "",
        "| model | family | groups | pruned | params before -> after | MACs before -> after (G) | max diff "
        "| criteria passed | seconds | peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]


def revision() -> str:
    """The commit the sweep ran on, and whether slimnet/ had uncommitted changes (results then may not repeat)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "slimnet"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" with uncommitted changes in slimnet/" if dirty else "")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="Comma-separated zoo names (default: the whole zoo).")
    ap.add_argument("--skip", default="", help="Comma-separated names to leave out.")
    ap.add_argument(
        "--max-params",
        type=float,
        default=300e6,
        help="Skip models with more parameters than this (torchvision metadata); 0 = no limit.",
    )
    ap.add_argument("--criteria", default=",".join(ALL_CRITERIA))
    ap.add_argument(
        "--transformer-criteria",
        default="",
        help="Criteria for vit/swin/maxvit models if different (e.g. l1), to save time.",
    )
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--size", type=int, default=None, help="Image size (default 224, 299 for inception).")
    ap.add_argument("--out", default="docs/coverage.md")
    ap.add_argument("--jobs", type=int, default=1, help="Models run at the same time (each in its own process).")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per model (default cores / jobs).")
    ap.add_argument("--timeout", type=int, default=3600, help="Seconds per model before it is recorded as a hang.")
    ap.add_argument("--reanalyse", action="store_true", help="Call api.shrink (trace + analyse) per criterion.")
    ap.add_argument(
        "--plain-init",
        action="store_true",
        help="Keep torchvision's init as built (identity norms, zero biases and heads: weaker checks).",
    )
    ap.add_argument("--jsonl", default="", help="Append every model's raw record to this file.")
    ap.add_argument("--resume", action="store_true", help="Reuse records already in --jsonl.")
    ap.add_argument(
        "--date", default="", help="Date for the header (when re-rendering a finished sweep with --resume)."
    )
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.criteria = [c for c in args.criteria.split(",") if c]
    args.transformer_criteria = [c for c in args.transformer_criteria.split(",") if c]
    if not args.threads:
        args.threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))

    def criteria_for(name: str) -> list[str]:
        if args.transformer_criteria and family(name) in TRANSFORMERS:
            return args.transformer_criteria
        return args.criteria

    args.criteria_for = criteria_for
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    command = shown_command(list(argv if argv is not None else sys.argv[1:]))
    started = args.date or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    args.revision = revision()
    selected = select(args)
    if selected is None:
        return 2
    order, skipped = selected
    recs = resumed(args, order)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    todo = [n for n in order if n not in recs]
    print(f"coverage: {len(order)} models ({len(todo)} to run), {len(skipped)} skipped; writing {out}", file=sys.stderr)
    write_doc(out, recs, order, skipped, args, command, started, done=False)
    t0 = time.perf_counter()

    def finish(rec: dict[str, Any]) -> None:
        name = rec["model"]
        recs[name] = rec
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
        write_doc(out, recs, order, skipped, args, command, started, done=False)
        crits = args.criteria_for(name)
        status = passed_cell(rec, crits)
        print(
            f"[{len(recs)}/{len(order)} {time.perf_counter() - t0:.0f}s] {name}: {status} "
            f"({rec.get('seconds', 0):.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    if not sweep(args, todo, finish):
        print("interrupted: the table holds the models finished so far", file=sys.stderr)
        return 130
    write_doc(out, recs, order, skipped, args, command, started, done=True)
    failed = sum(
        1
        for r in recs.values()
        if r.get("error")
        or not all(r.get("criteria", {}).get(c, {}).get("passed") for c in args.criteria_for(r["model"]))
    )
    print(
        f"coverage: done in {time.perf_counter() - t0:.0f} s; {failed} model(s) with failures; wrote {out}",
        file=sys.stderr,
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    """``--worker NAME``: one model, its record as one JSON line on stdout."""
    import torch

    torch.set_num_threads(args.threads)
    rec = run_model(args.worker, args.criteria, args.ratio, args.round_to, args.size, args.reanalyse, args.plain_init)
    sys.stdout.write(json.dumps(rec) + "\n")
    return 0


def shown_command(raw: list[str]) -> str:
    """The sweep's own command for the header: --resume/--date only re-render it, so they are left out."""
    shown = []
    while raw:
        a = raw.pop(0)
        if a == "--date":
            raw = raw[1:]
        elif a != "--resume" and not a.startswith("--date="):
            shown.append(a)
    return "python tools/coverage.py " + " ".join(shlex.quote(a) for a in shown)


def select(args: argparse.Namespace) -> tuple[list[str], dict[str, str]] | None:
    """The models to run, in zoo order, and those skipped with the reason; None (after the message) when
    --models names something that is not in the zoo."""
    names = zoo()
    if args.models:
        wanted = [m for m in args.models.split(",") if m]
        unknown = [m for m in wanted if m not in names]
        if unknown:
            print(f"error: not in torchvision's classification zoo: {', '.join(unknown)}", file=sys.stderr)
            return None
        names = wanted
    skipped: dict[str, str] = {}
    for n in args.skip.split(","):
        if n in names:
            skipped[n] = "--skip"
    if args.max_params:
        for n in names:
            p = nominal_params(n)
            if n not in skipped and p is not None and p > args.max_params:
                skipped[n] = f"{p / 1e6:.0f}M params > --max-params {args.max_params / 1e6:.0f}M"
    return [n for n in names if n not in skipped], skipped


def resumed(args: argparse.Namespace, order: list[str]) -> dict[str, dict[str, Any]]:
    """With --resume, the records already in --jsonl for the models of this sweep."""
    recs: dict[str, dict[str, Any]] = {}
    if args.resume and args.jsonl and Path(args.jsonl).is_file():
        for line in Path(args.jsonl).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if r["model"] in order:
                    recs[r["model"]] = r
    return recs


def sweep(args: argparse.Namespace, todo: list[str], finish: Any) -> bool:
    """Run ``todo`` in child processes, --jobs at a time, calling ``finish`` with each record; False when
    interrupted (the children got the same SIGINT; no more are started)."""

    def submit(name: str) -> dict[str, Any]:
        sub = argparse.Namespace(**vars(args))
        sub.criteria = args.criteria_for(name)
        return child(name, sub)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(submit, n) for n in todo]
        for fut in cf.as_completed(futures):
            finish(fut.result())
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        return False
    pool.shutdown()
    return True


if __name__ == "__main__":
    sys.exit(main())
