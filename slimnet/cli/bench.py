"""``slimnet export`` and ``slimnet bench``: the ONNX file and the numbers (:func:`slimnet.api.bench`), with
their tables. Errors follow :func:`slimnet.cli.common.guarded`: one line on stderr, exit code 2 for a user
mistake, a traceback only with ``--debug``.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ..errors import SlimnetError
from ..load.spec import check_model
from ..settings import check_counts, parse_backends
from .common import (
    MODEL_HELP,
    AsJson,
    Debug,
    InputFile,
    InputShape,
    Model,
    PlainTable,
    ShowProgress,
    TrustPickle,
    Weights,
    check_output,
    default_output,
    emit_json,
    fmt,
    guarded,
    human_bytes,
    model_inputs,
    out,
    output_option,
    say,
    show,
)
from .outputs import Replacing
from .progress import stages_for

# ------------------------------------------------------------------------------------------ options
OnnxOutput = Annotated[
    Optional[str], output_option("Where to write the .onnx file (default: beside the input, model.pt -> model.onnx).")
]
Opset = Annotated[Optional[int], typer.Option("--opset", help="ONNX opset (default 17; 18 if dynamo is needed).")]
NoDynamicBatch = Annotated[bool, typer.Option("--no-dynamic-batch", help="Fix the batch size to the example's.")]
DynamicHw = Annotated[
    bool,
    typer.Option(
        "--dynamic-hw",
        help="Leave height and width free too (image inputs N x C x H x W; checked at twice the example's size).",
    ),
]
ExportShape = Annotated[
    Optional[str],
    typer.Option(
        "--input-shape",
        help="Shape of the example the file is traced at, e.g. 1,3,320,320 (default 1,3,224,224; 299 for inception, "
        "640 for ultralytics; hf: from the config). Only the batch stays free, unless --dynamic-hw.",
    ),
]
Simplify = Annotated[bool, typer.Option("--simplify", help="Fold constants and drop dead nodes (onnxscript).")]
Models = Annotated[
    list[str],
    typer.Argument(
        help=f"One or more models; the first is the baseline. {MODEL_HELP[:-1]}, or an .onnx file (timed on "
        "onnxruntime as it is).",
        metavar="MODEL",
        show_default=False,
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Batch size (the example is repeated along dim 0).")]
Warmup = Annotated[int, typer.Option("--warmup", help="Untimed runs per model and backend.")]
Runs = Annotated[
    int, typer.Option("--runs", help="Timed runs per model and backend (more when the timings are noisy).")
]
Budget = Annotated[
    float,
    typer.Option(
        "--budget",
        help="Seconds per backend that bench may spend on extra rounds when the timings look noisy (0: none).",
    ),
]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads for torch and onnxruntime.")]
Backend = Annotated[
    Optional[list[str]],
    typer.Option(
        "--backend",
        help="torch-cpu, ort-cpu, torch-cuda, ort-cuda (repeatable "
        "or comma-separated; default: all, unavailable ones are skipped).",
    ),
]
PerLayer = Annotated[bool, typer.Option("--per-layer", help="Show where the MACs go, layer by layer.")]


def _ms(v: float) -> str:
    """Two decimals, three below 1 ms (a tiny model's 0.012 ms must not read 0.01)."""
    return f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


# ------------------------------------------------------------------------------------------ export
def export_command(
    model: Model,
    output: OnnxOutput = None,
    input_file: InputFile = None,
    input_shape: ExportShape = None,
    opset: Opset = None,
    no_dynamic_batch: NoDynamicBatch = False,
    dynamic_hw: DynamicHw = False,
    simplify: Simplify = False,
    weights: Weights = None,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Export MODEL to ONNX; the file is checked with onnx.checker and compared with torch in onnxruntime."""
    with guarded(debug):
        if opset is not None and not 7 <= opset <= 25:
            raise SlimnetError(f"--opset {opset} is not an ONNX opset torch can write: use 17 or 18")
        source = check_model(model).file
        output = output or default_output(model, ".onnx")
        out_path = check_output(output, [source, weights or "", input_file or ""])
        replacing = Replacing([out_path])
        stages, shown = stages_for(progress)
        with shown:
            with stages("load"):
                from ..exporting.onnx import export_onnx  # lazy: CLI start-up

                loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
            with stages("export"):
                info = export_onnx(loaded.model, example, out_path, opset=opset, dynamic_batch=not no_dynamic_batch,
                                   simplify=simplify, dynamic_hw=dynamic_hw)  # fmt: skip
        info["model"] = model
        info["timings"] = stages.rounded()
        info.update(replacing.done(quiet=progress is False))
        if as_json:
            emit_json(info)
            return
        for line in export_lines(info):
            say(line)


def export_lines(info: dict[str, Any]) -> list[str]:
    """export's text: the size, the input the file was traced at and which of its axes are free, the checks."""
    shapes = " and ".join("x".join(map(str, s)) for s in info.get("input_shapes") or [])
    free = [axis for axis, on in (("batch", info["dynamic_batch"]), ("height and width", info.get("dynamic_hw"))) if on]
    at = f"batch {' and '.join(str(b) for b in info['checked_batches'])}"
    if info.get("dynamic_hw"):
        at += f", and at {' and '.join(info['checked_sizes'])}"
    return [
        f"{human_bytes(info['bytes'])}, opset {info['opset']}, {info['exporter']} exporter; traced at input {shapes} "
        f"({', '.join(free) + ' free' if free else 'every axis fixed'}): onnx.checker ok; onnxruntime matches torch "
        f"at {at}, max abs diff {info['max_abs_diff']:.3g} <= {info['tolerance']:.3g}",
        f"wrote {info['path']}",
    ]


# ------------------------------------------------------------------------------------------ bench
def bench_command(
    models: Models,
    batch_size: BatchSize = 1,
    warmup: Warmup = 10,
    runs: Runs = 50,
    budget: Budget = 30.0,
    threads: Threads = None,
    backend: Backend = None,
    per_layer: PerLayer = False,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Params, MACs and latency of each MODEL; with 2+, speedup over the first (theory, per backend) and efficiency.

    Models are timed interleaved (A B A B ...); noisy timings get more rounds, and the output says so.

    A backend that cannot run here is skipped, with the reason. An .onnx file is timed on onnxruntime as it is.
    """
    with guarded(debug):
        backends = parse_backends(backend or [])
        check_counts(batch_size=batch_size, warmup=warmup, runs=runs, threads=threads)
        if budget < 0:
            raise SlimnetError(f"budget={budget} (--budget) must be 0 or more seconds")
        for m in models:
            check_model(m, onnx=True)
        stages, shown = stages_for(progress)
        with shown:
            with stages("load"):
                from ..measure.bench import bench  # lazy: CLI start-up

            report = bench(
                models,
                backends=backends,
                batch_size=batch_size,
                warmup=warmup,
                runs=runs,
                threads=threads,
                input_file=input_file,
                input_shape=input_shape,
                trust_pickle=trust_pickle,
                per_layer=per_layer,
                budget=budget,
                stages=stages,
            )
        report["timings"] = stages.rounded()
        if as_json:
            emit_json(report)
        else:
            print_bench(report, per_layer)


def print_bench(report: dict[str, Any], per_layer: bool) -> None:
    """Rich tables: cost, latency, comparison (2+ models), and optionally MACs per layer side by side."""
    console = out
    models = report["models"]
    d = report["device"]
    say(
        f"{d['cpu']}, {d['threads']} thread(s){', ' + d['gpu'] if d['gpu'] else ''}; torch {d['torch']}, "
        f"onnxruntime {d['onnxruntime']}; batch {report['batch_size']}, {report['warmup']} warm-up + "
        f"{report['runs']} timed runs, models interleaved"
    )
    show(_cost_table(models))
    for m in models:
        if m["skipped_ops"]:
            ops = ", ".join(f"{op} x{n}" for op, n in m["skipped_ops"].items())
            say(f"{m['path']}: ops without a MAC handle, not counted: {ops}")
        if m.get("macs_counter", "fvcore") != "fvcore":
            say(f"{m['path']}: MACs and params {_counted(m['macs_counter'])}")
        for b, why in m.get("not_timed", {}).items():
            say(f"{m['path']}: not timed on {b}: {why}")
    timed = [b for b in report["backends"] if b not in report["skipped_backends"]]
    if timed:
        show(_latency_table(models, timed))
    for b, why in report["skipped_backends"].items():
        say(f"{b} skipped: {why}")
    for line in noise_lines(report):
        say(line)
    if len(models) > 1:
        show(_speedup_table(models, timed))
    if per_layer:
        show(_layer_table(models))
    console.print(report["macs_note"], style="dim", highlight=False, soft_wrap=True)


def _counted(counter: str) -> str:
    if counter == "onnx":
        return "counted from the ONNX graph (exporter fusions such as folded batch norms cost nothing there)"
    return f"counted by {counter} (its torch twin)"


def noise_lines(report: dict[str, Any]) -> list[str]:
    """One line per backend whose timings looked noisy: what was seen, how many rounds ran, and the outcome."""
    lines = []
    for backend, n in report.get("noise", {}).items():
        if not n["noisy"]:
            continue
        seen = "; ".join(n["noisy"])
        rounds = f"ran {n['rounds']} rounds instead of {report['runs']}" if n["rounds"] > report["runs"] else ""
        if n["settled"]:
            outcome = "the medians settled (within 2% over the last block)"
        else:
            outcome = (
                f"the medians did not settle within the {report.get('budget', 0):g} s budget: take {backend}'s "
                "numbers with care (a quieter machine, --threads 1 or a larger --budget helps)"
            )
        still = f"; still: {'; '.join(n['still'])}" if n["settled"] and n["still"] else ""
        lines.append(f"{backend}: noisy timings ({seen}); {', '.join(x for x in (rounds, outcome) if x)}{still}")
    return lines


def _cost_table(models: list[dict[str, Any]]) -> PlainTable:
    table = PlainTable(title="theoretical cost")
    for col in ("model", "params", "MACs", "FLOPs", "skipped ops"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in models:
        table.add_row(m["path"], fmt(m["params"]), fmt(m["macs"]), fmt(m["flops"]), str(sum(m["skipped_ops"].values())))
    return table


def _latency_table(models: list[dict[str, Any]], backends: list[str]) -> PlainTable:
    table = PlainTable(title="latency, ms (p50 / p90 / min)")
    table.add_column("model")
    for b in backends:
        table.add_column(b, justify="right")
    for m in models:
        cells = []
        for b in backends:
            s = m["latency_ms"].get(b)
            cells.append(" / ".join(_ms(s[k]) for k in ("p50", "p90", "min")) if s else "-")
        table.add_row(m["path"], *cells)
    return table


def _speedup_table(models: list[dict[str, Any]], backends: list[str]) -> PlainTable:
    table = PlainTable(title=f"speedup over {models[0]['path']} (efficiency = real / theoretical)")
    table.add_column("model")
    table.add_column("theoretical", justify="right")
    for b in backends:
        table.add_column(b, justify="right")
    for m in models[1:]:
        cells = []
        for b in backends:
            real, eff = m["speedup"].get(b), m["efficiency"].get(b)
            cells.append(f"{_x(real)} ({eff:.0%})" if real is not None and eff is not None else _x(real))
        table.add_row(m["path"], _x(m["speedup"]["theoretical"]), *cells)
    return table


def _layer_table(models: list[dict[str, Any]]) -> PlainTable:
    """Each module's own MACs (leaves: all of theirs; containers: e.g. their residual adds), model by model."""
    from ..cost.macs import own_macs  # lazy: CLI start-up

    owns = [own_macs(m["per_layer"]) for m in models]
    names: dict[str, None] = {}
    for own in owns:
        names.update(dict.fromkeys(n for n, v in own.items() if v))
    table = PlainTable(title="MACs per layer (own ops)")
    table.add_column("layer")
    for i, m in enumerate(models):
        table.add_column(m["path"] if i == 0 else f"{m['path']}", justify="right")
    for name in names:
        table.add_row(name, *(fmt(own.get(name)) if name in own else "-" for own in owns))
    top = [m["macs"] - sum(r["macs"] for n, r in m["per_layer"].items() if "." not in n) for m in models]
    if any(top):
        table.add_row("(top-level ops)", *(fmt(t) for t in top))
    return table
