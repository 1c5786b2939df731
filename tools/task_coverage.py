"""Sweep non-classification models through slimnet and write their table into docs/coverage.md.

    nice -n 10 python tools/task_coverage.py --jsonl /tmp/tasks.jsonl               # every model below
    python tools/task_coverage.py --models fcn_resnet50,yolov8n --out /tmp/cov.md   # a few

Every model is built with its library's own constructor, randomly initialised and seeded (nothing downloaded):
torchvision's segmentation, detection (keypoint and mask R-CNN included), video and optical-flow models,
ultralytics' YOLOv8 and YOLO11 (n, detection and segmentation, from their YAML) and segmentation-models-pytorch
architectures. ultralytics and segmentation-models-pytorch are optional: their rows say so when missing.
Detectors are called as documented, ``model([image])``; inputs are small where the model allows (see the
``INPUT`` column and the doc's header).

Before shrinking, norm tensors and near-zero parameters get seeded noise (as in tools/coverage.py) and the
batch-norm statistics are recalibrated on the example (BN layers alone in train mode, cumulative average), so
that activations stay O(1) through deep random models and a wrong cut would show in the outputs; each row gives
the scale the verifier compared at. Each model is shrunk at ratio 0.5 with l1 through :func:`slimnet.api.shrink`
(MACs from its report: the cost model, or fvcore where the model was analysed piece by piece) in its own child
process (a crash or hang costs one row); ``--jsonl`` keeps the raw records and ``--resume`` reuses them.

The section between ``<!-- task-coverage -->`` markers in ``--out`` is replaced (appended if absent); the rest of
the file (tools/coverage.py's classification table) is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- task-coverage -->", "<!-- /task-coverage -->"


@dataclass(frozen=True)
class Case:
    """One model: its family, how it is built and called, and the input in words."""

    family: str
    build: Callable[[], tuple[Any, Any]]
    shape: str


# ------------------------------------------------------------------------------------------------ the models
def _tv(name: str, **kwargs: Any) -> Any:
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def _image(*shape: int) -> Any:
    import torch

    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


#: R-CNN-style detectors resize every image to min_size..max_size; fewer RPN proposals keep the box head short.
SMALL_RCNN = {"min_size": 224, "max_size": 224, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}
SMALL_ONE_STAGE = {"min_size": 224, "max_size": 224}


def torchvision_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for name in ("deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50",
                 "fcn_resnet101", "lraspp_mobilenet_v3_large"):  # fmt: skip
        cases[name] = Case("segmentation", lambda n=name: (_tv(n, weights_backbone=None), _image(1, 3, 128, 128)),
                           "1x3x128x128")  # fmt: skip
    rcnn = ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn",
            "fasterrcnn_resnet50_fpn_v2", "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn",
            "maskrcnn_resnet50_fpn_v2")  # fmt: skip
    for name in rcnn:
        kw = dict(SMALL_RCNN)
        if "mobilenet" in name:
            kw = {"rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}  # their own (small) sizes
        cases[name] = Case("detection", lambda n=name, kw=kw: (_tv(n, weights_backbone=None, **kw),
                           ([_image(3, 224, 224)],)), "[3x224x224]")  # fmt: skip
    for name in ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn"):
        cases[name] = Case("detection", lambda n=name: (_tv(n, weights_backbone=None, **SMALL_ONE_STAGE),
                           ([_image(3, 224, 224)],)), "[3x224x224]")  # fmt: skip
    cases["ssd300_vgg16"] = Case("detection", lambda: (_tv("ssd300_vgg16", weights_backbone=None),
                                 ([_image(3, 300, 300)],)), "[3x300x300]")  # fmt: skip
    cases["ssdlite320_mobilenet_v3_large"] = Case(
        "detection", lambda: (_tv("ssdlite320_mobilenet_v3_large", weights_backbone=None), ([_image(3, 320, 320)],)),
        "[3x320x320]")  # fmt: skip
    for name in ("mc3_18", "r2plus1d_18", "r3d_18"):
        cases[name] = Case("video", lambda n=name: (_tv(n), _image(1, 3, 8, 112, 112)), "1x3x8x112x112")
    cases["s3d"] = Case("video", lambda: (_tv("s3d"), _image(1, 3, 16, 224, 224)), "1x3x16x224x224")
    for name in ("mvit_v1_b", "mvit_v2_s"):  # fixed input size (positional embeddings / pooled sizes)
        cases[name] = Case("video", lambda n=name: (_tv(n), _image(1, 3, 16, 224, 224)), "1x3x16x224x224")
    for name in ("swin3d_t", "swin3d_s", "swin3d_b"):
        cases[name] = Case("video", lambda n=name: (_tv(n), _image(1, 3, 8, 112, 112)), "1x3x8x112x112")
    for name in ("raft_small", "raft_large"):
        cases[name] = Case("optical flow", lambda n=name: (_tv(n), (_image(1, 3, 128, 128), _image(1, 3, 128, 128))),
                           "2 x 1x3x128x128")  # fmt: skip
    return cases


def _yolo(cfg: str) -> Any:
    from slimnet.load.loader import load_model

    return load_model(f"ultralytics:{cfg}").model


def _smp(arch: str, encoder: str) -> Any:
    import segmentation_models_pytorch as smp
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return getattr(smp, arch)(encoder, encoder_weights=None, classes=3).eval()


def library_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for cfg in ("yolov8n.yaml", "yolov8n-seg.yaml", "yolo11n.yaml", "yolo11n-seg.yaml"):
        cases[cfg.removesuffix(".yaml")] = Case("ultralytics", lambda c=cfg: (_yolo(c), _image(1, 3, 256, 256)),
                                                "1x3x256x256")  # fmt: skip
    for arch, encoder in (("Unet", "resnet34"), ("FPN", "resnet34"), ("DeepLabV3Plus", "resnet34"),
                          ("Segformer", "mit_b0"), ("Unet", "mit_b0")):  # fmt: skip
        cases[f"smp.{arch}({encoder})"] = Case(
            "segmentation-models-pytorch", lambda a=arch, e=encoder: (_smp(a, e), _image(1, 3, 128, 128)),
            "1x3x128x128")  # fmt: skip
    return cases


def all_cases() -> dict[str, Case]:
    return {**torchvision_cases(), **library_cases()}


# --------------------------------------------------------------------------------------------------- worker
def prepare(model: Any, example: Any) -> int:
    """Seeded noise in norm tensors and near-zero parameters (tools/coverage.py's perturb), then batch-norm
    statistics recalibrated on the example: random models otherwise shrink their activations towards zero
    through every layer (SSDlite's heads answer at 1e-30), and at that scale no cut could be told wrong."""
    import torch

    from slimnet._tensors import call
    from tools.coverage import perturb

    n = perturb(model)["tensors"]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
        m.train()
    try:
        with torch.no_grad():
            for _ in range(2):
                call(model, example)
    except Exception:  # noqa: BLE001 - a batch of one cannot calibrate BatchNorm1d: keep the perturbed stats
        pass
    finally:
        for m, momentum in saved:
            m.momentum = momentum
            m.eval()
    return n


def run_model(name: str, ratio: float) -> dict[str, Any]:
    """Everything about one model, as plain data; never raises."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")
    case = all_cases()[name]
    rec: dict[str, Any] = {"model": name, "family": case.family, "input": case.shape, "revision": revision()}
    t0 = time.perf_counter()
    try:
        model, example = case.build()
        rec["perturbed"] = prepare(model, example)
    except Exception as exc:  # noqa: BLE001 - a missing optional library is a row, not the end
        rec["status"] = "not run"
        rec["error"] = one_line(exc)
        return rec
    try:
        shrink(model, example, ratio, rec)
    except Exception as exc:  # noqa: BLE001 - a failure is a result
        rec["status"] = "refused" if type(exc).__name__ in ("SlimnetError", "VerificationError") else "error"
        rec["error"] = one_line(exc)
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    rec["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return rec


def shrink(model: Any, example: Any, ratio: float, rec: dict[str, Any]) -> None:
    from slimnet import api

    res = api.shrink(model, example, ratio=ratio, criterion="l1", round_to=8, model_name=rec["model"])
    rep = res.report
    rec.update(
        status="verified" if res.verification.passed else "not verified",
        groups=rep["groups"],
        pruned=rep["pruned_groups"],
        macs=rep["macs"],
        macs_counter=rep["macs_counter"],
        params=rep["params"],
        max_diff=rep["max_abs_diff"],
        tolerance=rep["tolerance"],
        dtype=rep["verify_dtype"],
        inputs=rep["verify_inputs"],
        compared=rep["verify_compared"],
        left_whole_after_verify=rep["left_whole_after_verify"],
        reasons=[s["reason"] for s in rep["skipped"]],
        notes=rep["trace_notes"],
    )


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:400]


# ------------------------------------------------------------------------------------------------- document
_KINDS = [
    (r"^output of (\S+), traced as a separate piece", "piece outputs"),
    (r"^input of (\S+), traced as a separate piece", "piece inputs"),
    (r"^model output", "model outputs"),
    (r"^model input", "fed by the model input"),
    (r"LayerNorm|RMSNorm|normalis", "normalised (--prune-norm)"),
    (r"no channel rule for ([^ ]+(?: module [^ ]+)?)", "no channel rule"),
    (r"size read from another tensor", "sized by another tensor"),
    (r"size fixed in forward|indexed with fixed positions|selected by position|split at node", "fixed sizes"),
    (r"used as a value", "size used as a value"),
    (r"its cut failed verification", "cut failed verification (bug)"),
    (r"single unit|all channels go together", "one unit"),
]


def reason_kind(reason: str) -> tuple[str, str]:
    """A short label for a reason, and the detail worth naming (the op without a rule, the piece)."""
    for pattern, label in _KINDS:
        m = re.search(pattern, reason)
        if m:
            detail = m.group(1) if m.groups() else ""
            if label == "no channel rule":
                detail = detail.split(" at node")[0].rsplit(".", 1)[-1] if "module" not in detail else detail
            return label, detail
    return "other", reason[:60]


def reasons_cell(reasons: list[str]) -> str:
    kinds: Counter[str] = Counter()
    details: dict[str, Counter[str]] = {}
    for r in reasons:
        label, detail = reason_kind(r)
        kinds[label] += 1
        if detail:
            details.setdefault(label, Counter())[detail] += 1
    parts = []
    for label, count in kinds.most_common():
        named = details.get(label)
        extra = ""
        if named:
            extra = f" ({', '.join(d for d, _ in named.most_common(3))}{', ...' if len(named) > 3 else ''})"
        parts.append(f"{label} {count}{extra}")
    return "; ".join(parts).replace("|", "/") or "-"


def _g(n: Any) -> str:
    return "-" if n is None else f"{n / 1e9:.3g}"


def not_run(name: str, reason: str) -> dict[str, Any]:
    """The row of a model that has no record (``--render-only``): said so, with the reason, never a result."""
    case = all_cases()[name]
    return {"model": name, "family": case.family, "input": case.shape, "status": "not run this time", "error": reason}


def row_of(rec: dict[str, Any]) -> str:
    status = rec.get("status", "error")
    if status != "verified":
        why = rec.get("error", "")
        return f"| {rec['model']} | {rec['family']} | {rec['input']} | **{status}**: {why.replace('|', '/')} | | | | |"
    macs = rec.get("macs") or [None, None]
    ratio = f" ({macs[1] / macs[0]:.2f})" if macs[0] and macs[1] else ""
    counter = " (pieces)" if rec.get("macs_counter", "").endswith("pieces only)") else ""
    check = f"{rec['max_diff']:.1e} <= {rec['tolerance']:.1e} {rec['dtype'].replace('torch.', '')}"
    pieces = " (piece by piece)" if rec.get("notes") else ""
    after = rec["left_whole_after_verify"]
    bug = f"; **{len(after)} left whole after verify**" if after else ""
    return (
        f"| {rec['model']} | {rec['family']} | {rec['input']} | verified{pieces}{bug} | "
        f"{_g(macs[0])} -> {_g(macs[1])}{ratio}{counter} | {rec['pruned']}/{rec['groups']} | {check} | "
        f"{reasons_cell(rec.get('reasons', []))} |"
    )


def section(recs: dict[str, dict[str, Any]], order: list[str], args: argparse.Namespace, command: str) -> list[str]:
    import torch
    import torchvision

    ran = [recs[n] for n in order if n in recs]
    revisions = Counter(r.get("revision", args.revision) for r in ran) or Counter([args.revision])
    code = "; ".join(f"{rev} ({n} models)" for rev, n in revisions.most_common())
    code = code if len(revisions) > 1 else next(iter(revisions))
    missing = [not_run(n, args.not_run_reason) for n in order if n not in recs]
    ok = sum(1 for r in ran if r.get("status") == "verified")
    timed_out = sum(1 for r in ran if r.get("status") == "timed out")
    failed = len(ran) - ok - timed_out
    bugs = sum(1 for r in ran if r.get("left_whole_after_verify"))
    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    for lib in ("ultralytics", "segmentation_models_pytorch"):
        try:
            versions += f", {lib} {__import__(lib).__version__}"
        except ImportError:
            versions += f", {lib} not installed"
    return [
        BEGIN,
        "",
        "## Beyond classifiers: detection, segmentation, video, optical flow, YOLO",
        "",
        f"Command: `{command}` ({args.date}; slimnet {code}; {versions}; Python "
        f"{platform.python_version()}, {os.cpu_count()} cores, {args.threads} torch thread(s), CPU only).",
        "",
        "Every model is built with its library's own constructor, randomly initialised and seeded (nothing "
        "downloaded), then given seeded noise in its norm tensors and near-zero parameters and batch-norm statistics "
        "recalibrated on the example (`prepare()` in the tool), so that activations stay O(1) and a wrong cut would "
        f"show; shrunk at ratio {args.ratio}, l1, round-to 8, through `slimnet.api.shrink`. Inputs are small where "
        "the model allows: R-CNN, RetinaNet and FCOS resize to 224 (`min_size=max_size=224`; the R-CNNs keep 100 "
        "RPN proposals instead of 1000), SSD300/SSDlite take their own 300/320, MViT its fixed 16x224x224, S3D "
        "16x224x224 (its pooling needs it). Detectors are called as documented, with a list of images; the verifier "
        "then compares each traced piece's outputs (backbone, FPN, heads) on the inputs the masked original gave it, "
        "since top-k and NMS break ties between equal scores, and runs the pruned model whole.",
        "",
        f"**Summary: {len(order)} models: {ok} verified, {failed} refused or failed; {bugs} with groups left "
        f"whole because their cut failed verification; {timed_out} stopped by the time limit before a result"
        f"{f'; {len(missing)} not run this time' if missing else ''}.**",
        "",
        "Columns: *MACs* in G (one multiply-add = one MAC; after/before in brackets; *(pieces)*: counted over the "
        "traced pieces only, where fvcore could not trace the model); *pruned* = groups cut / groups found; *check* = "
        "max |pruned - masked original| <= the verifier's tolerance (1e-6 x (1 + largest |output| compared) in "
        "float64, 1e-4 x ... in float32), and the precision; *left whole* = why the "
        "other groups were not cut, by kind, with counts (*piece outputs*: a piece's output is read by code that did "
        "not trace, such as a detection head's box/class layout; *normalised*: a LayerNorm sees the channels, "
        "pruned only with `--prune-norm`). *timed out*: stopped by `--timeout` (wall time, each model in its own "
        "process with one torch thread, on a machine shared with other work; float64 3-D convolutions are slow on "
        "CPU), not a failure of the model; *not run this time*: no record yet (the same command with `--resume` "
        "continues from the `--jsonl` records).",
        "",
        "| model | family | input | status | MACs before -> after (G) | pruned | check | left whole |",
        "|---|---|---|---|---|---|---|---|",
        *[row_of(recs[n] if n in recs else not_run(n, args.not_run_reason)) for n in order],
        "",
        END,
    ]


def write_doc(path: Path, lines: list[str]) -> None:
    text = path.read_text() if path.is_file() else ""
    block = "\n".join(lines) + "\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text)


# --------------------------------------------------------------------------------------------------- driver
def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--ratio", str(args.ratio),
           "--threads", str(args.threads)]  # fmt: skip
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONPATH=path)
    for key, value in {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "0"}.items():
        env.setdefault(key, value)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, "family": all_cases()[name].family, "input": all_cases()[name].shape,
                "status": "timed out", "error": f"stopped after {args.timeout} s (--timeout)",
                "revision": revision()}  # fmt: skip
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "family": all_cases()[name].family, "input": all_cases()[name].shape, "status": "error",
            "error": f"worker died (exit {proc.returncode}, {time.perf_counter() - t0:.0f} s): {tail}"}  # fmt: skip


def revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "slimnet"], capture_output=True, text=True,
                               cwd=ROOT, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" with uncommitted changes in slimnet/" if dirty else "")


def shown_args(argv: list[str] | None) -> list[str]:
    """The arguments that reproduce the table: without the ones that only say how this run reused records."""
    args = list(argv if argv is not None else sys.argv[1:])
    shown: list[str] = []
    while args:
        a = args.pop(0)
        if a == "--not-run-reason":
            args = args[1:]
        elif a not in ("--resume", "--render-only") and not a.startswith("--not-run-reason="):
            shown.append(a)
    return shown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="Comma-separated names (default: all).")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--out", default="docs/coverage.md")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per model.")
    ap.add_argument("--timeout", type=int, default=3600, help="Seconds per model before it is recorded as a hang.")
    ap.add_argument("--jsonl", default="", help="Append every model's raw record to this file.")
    ap.add_argument("--resume", action="store_true", help="Reuse records already in --jsonl.")
    ap.add_argument("--date", default="", help="Date for the header (when re-rendering with --resume).")
    ap.add_argument("--render-only", action="store_true",
                    help="Run nothing: write the table from the --jsonl records; models without one are 'not run "
                         "this time'.")  # fmt: skip
    ap.add_argument("--not-run-reason", default="no record in --jsonl",
                    help="Why the models without a record were not run (with --render-only).")  # fmt: skip
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        sys.stdout.write(json.dumps(run_model(args.worker, args.ratio)) + "\n")
        return 0
    cases = all_cases()
    order = [m for m in args.models.split(",") if m] or list(cases)
    unknown = [m for m in order if m not in cases]
    if unknown:
        print(f"error: unknown models {unknown}; known: {', '.join(cases)}", file=sys.stderr)
        return 2
    command = "python tools/task_coverage.py " + " ".join(shlex.quote(a) for a in shown_args(argv))
    args.date = args.date or dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    args.revision = revision()
    recs: dict[str, dict[str, Any]] = {}
    if (args.resume or args.render_only) and args.jsonl and Path(args.jsonl).is_file():
        for line in Path(args.jsonl).read_text().splitlines():
            rec = json.loads(line)
            if rec.get("status") == "error" and rec.get("error", "").startswith("timed out after"):
                rec.update(status="timed out", error=f"stopped after {rec['error'].split()[-2]} s (--timeout)")
            if rec["model"] in order:
                recs[rec["model"]] = rec
    out = Path(args.out)
    todo = [] if args.render_only else [n for n in order if n not in recs]
    for i, name in enumerate(todo):
        rec = child(name, args)
        recs[name] = rec
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
        write_doc(out, section(recs, order, args, command))
        print(f"[{i + 1}] {name}: {rec.get('status')} {rec.get('error', '')[:120]} ({rec.get('seconds', '?')} s)",
              file=sys.stderr, flush=True)  # fmt: skip
    write_doc(out, section(recs, order, args, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
