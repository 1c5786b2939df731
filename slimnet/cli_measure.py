"""``slimnet export`` and ``slimnet bench``: the ONNX file and the numbers, as commands of the main app.

:func:`register` adds both to a typer app, so the core CLI works without this module and tests can build an
app of their own. Errors follow the core CLI's policy (its ``guarded``): one line on stderr, exit code 2 for a
user mistake, a traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import SlimnetError
from .settings import check_counts, parse_backends

MODEL_HELP = "torchvision:NAME, timm:NAME, FILE.py:FACTORY, or a torch.save(model) file."
TRUST_HELP = "Fully unpickle model files (runs code named in the file; only for files you trust)."
DEBUG_HELP = "Show the full traceback on errors."
INPUT_HELP = "Example input saved with torch.save (tensor, tuple or dict of tensors)."
SHAPE_HELP = "Example input shape, e.g. 1,3,224,224 (default: the model's usual size)."


def register(app: typer.Typer) -> None:
    """Add ``export`` and ``bench`` to ``app``."""
    app.command("export")(export_command)
    app.command("bench")(bench_command)


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _fmt(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def _ms(v: float) -> str:
    """Two decimals, three below 1 ms (a tiny model's 0.012 ms must not read 0.01)."""
    return f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _x(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


# ------------------------------------------------------------------------------------------------- export
def export_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the .onnx file."),
    input_file: Optional[str] = typer.Option(None, "--input", help=INPUT_HELP),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help=SHAPE_HELP),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17; 18 if dynamo is needed)."),
    no_dynamic_batch: bool = typer.Option(False, "--no-dynamic-batch", help="Fix the batch size to the example's."),
    simplify: bool = typer.Option(False, "--simplify", help="Fold constants and drop dead nodes (onnxscript)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="state_dict to load into FILE.py:FACTORY."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Export MODEL to ONNX; the file is checked with onnx.checker and compared with torch in onnxruntime."""
    from .cli import check_output, guarded
    from .load import parse_spec

    with guarded(debug):
        from .cli import model_inputs
        from .export import export_onnx

        if opset is not None and not 7 <= opset <= 25:
            raise SlimnetError(f"--opset {opset} is not an ONNX opset torch can write: use 17 or 18")
        out_path = check_output(output, [parse_spec(model).file, weights or "", input_file or ""])
        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        info = export_onnx(
            loaded.model, example, out_path, opset=opset, dynamic_batch=not no_dynamic_batch, simplify=simplify
        )
        info["model"] = model
        if as_json:
            _emit_json(info)
            return
        batches = ", ".join(str(b) for b in info["checked_batches"])
        Console().print(
            f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB, opset {info['opset']}, {info['exporter']} "
            f"exporter{', dynamic batch' if info['dynamic_batch'] else ''}): onnx.checker ok; onnxruntime matches "
            f"torch at batch {batches}, max abs diff {info['max_abs_diff']:.3g} <= {info['tolerance']:.3g}",
            highlight=False,
            soft_wrap=True,
        )


# ------------------------------------------------------------------------------------------------- bench
def bench_command(
    models: list[str] = typer.Argument(..., help="One or more models; the first is the baseline. " + MODEL_HELP),
    batch_size: int = typer.Option(1, "--batch-size", help="Batch size (the example is repeated along dim 0)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs per model and backend."),
    runs: int = typer.Option(50, "--runs", help="Timed runs per model and backend."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch and onnxruntime."),
    backend: list[str] = typer.Option(
        [],
        "--backend",
        help="torch-cpu, ort-cpu, torch-cuda, ort-cuda (repeatable "
        "or comma-separated; default: all, unavailable ones are skipped).",
    ),
    per_layer: bool = typer.Option(False, "--per-layer", help="Show where the MACs go, layer by layer."),
    input_file: Optional[str] = typer.Option(None, "--input", help=INPUT_HELP),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help=SHAPE_HELP),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Params, MACs and latency of each MODEL; with 2+, speedup over the first (theory, per backend) and efficiency.

    Models are timed interleaved (A B A B ...); a backend that cannot run here is skipped, with the reason.
    """
    from .cli import guarded

    with guarded(debug):
        backends = parse_backends(backend)
        check_counts(batch_size=batch_size, warmup=warmup, runs=runs, threads=threads)
        from .api import bench

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
        )
        if as_json:
            _emit_json(report)
        else:
            print_bench(report, per_layer)


def print_bench(report: dict[str, Any], per_layer: bool) -> None:
    """Rich tables: cost, latency, comparison (2+ models), and optionally MACs per layer side by side."""
    console = Console()
    models = report["models"]
    d = report["device"]
    console.print(
        f"{d['cpu']}, {d['threads']} thread(s){', ' + d['gpu'] if d['gpu'] else ''}; torch {d['torch']}, "
        f"onnxruntime {d['onnxruntime']}; batch {report['batch_size']}, {report['warmup']} warm-up + "
        f"{report['runs']} timed runs, models interleaved",
        highlight=False,
        soft_wrap=True,
    )
    console.print(_cost_table(models))
    for m in models:
        if m["skipped_ops"]:
            ops = ", ".join(f"{op} x{n}" for op, n in m["skipped_ops"].items())
            console.print(f"{m['path']}: ops without a MAC handle, not counted: {ops}", highlight=False)
    timed = [b for b in report["backends"] if b not in report["skipped_backends"]]
    if timed:
        console.print(_latency_table(models, timed))
    for b, why in report["skipped_backends"].items():
        console.print(f"{b} skipped: {why}", highlight=False, soft_wrap=True)
    if len(models) > 1:
        console.print(_speedup_table(models, timed))
    if per_layer:
        console.print(_layer_table(models))
    console.print(report["macs_note"], style="dim", highlight=False)


def _cost_table(models: list[dict[str, Any]]) -> Table:
    table = Table(title="theoretical cost")
    for col in ("model", "params", "MACs", "FLOPs", "skipped ops"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in models:
        table.add_row(
            m["path"], _fmt(m["params"]), _fmt(m["macs"]), _fmt(m["flops"]), str(sum(m["skipped_ops"].values()))
        )
    return table


def _latency_table(models: list[dict[str, Any]], backends: list[str]) -> Table:
    table = Table(title="latency, ms (p50 / p90 / min)")
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


def _speedup_table(models: list[dict[str, Any]], backends: list[str]) -> Table:
    table = Table(title=f"speedup over {models[0]['path']} (efficiency = real / theoretical)")
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


def _layer_table(models: list[dict[str, Any]]) -> Table:
    """Each module's own MACs (leaves: all of theirs; containers: e.g. their residual adds), model by model."""
    from .measure import own_macs

    owns = [own_macs(m["per_layer"]) for m in models]
    names: dict[str, None] = {}
    for own in owns:
        names.update(dict.fromkeys(n for n, v in own.items() if v))
    table = Table(title="MACs per layer (own ops)")
    table.add_column("layer")
    for i, m in enumerate(models):
        table.add_column(m["path"] if i == 0 else f"{m['path']}", justify="right")
    for name in names:
        table.add_row(name, *(_fmt(own.get(name)) if name in own else "-" for own in owns))
    top = [m["macs"] - sum(r["macs"] for n, r in m["per_layer"].items() if "." not in n) for m in models]
    if any(top):
        table.add_row("(top-level ops)", *(_fmt(t) for t in top))
    return table
