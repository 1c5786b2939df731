"""The data side of the command line: calibration options shared by ``shrink``, ``sensitivity`` and
``distill``, and those two commands. Thin shells over :mod:`slimnet.sensitivity.analysis` and
:mod:`slimnet.repair.distill`;
under ``torchrun`` rank 0 alone prints and writes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._util import save_atomic
from ..errors import RepairWarning, SlimnetError
from ..load.spec import parse_spec
from ..settings import DEFAULT_ROUND_TO, check_data_settings, check_settings
from .common import (
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
    emit_json,
    guarded,
    model_inputs,
    output_option,
    say,
    show,
    tell,
)
from .outputs import Replacing
from .progress import wanted as progress_wanted

#: the text output says it once, in :func:`repair_lines` (``--json``: ``repair_warnings``)
warnings.filterwarnings("ignore", category=RepairWarning)


# ------------------------------------------------------------------------------------------ options
def _builtin_text(value: Optional[str]) -> Optional[str]:
    """``builtin:NAME`` (a text shipped with slimnet, :mod:`slimnet.llm.texts`) -> its path; the rest as given."""
    if value is None or not value.startswith("builtin:"):
        return value
    from ..llm.texts import resolve_text  # lazy: CLI start-up (cheap, but only when named)

    try:
        return resolve_text(value)
    except SlimnetError as exc:  # one line, as guarded() says it (a callback runs before the command's guard)
        tell(f"error: {exc}")
        raise typer.Exit(exc.exit_code) from None


Data = Annotated[
    Optional[str],
    typer.Option(
        "--data",
        help="Calibration data: a tensor file N x ... (torch.save), a folder of images, a text file (hf: models; "
        "builtin:shakespeare-calib is shipped) or FILE.py:FACTORY returning batches (a DataLoader).",
        callback=_builtin_text,
    ),
]
CalibBatches = Annotated[int, typer.Option("--calib-batches", help="How many batches of --data to use.")]
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", "--calib-batch-size", help="Rows per calibration batch (tensor files, images, text)."),
]
#: shrink's name for it: there ``--batch-size`` is the batch latency targets are measured at, as in ``bench``
CalibBatchSize = Annotated[
    int, typer.Option("--calib-batch-size", help="Rows per calibration batch (tensor files, images, text).")
]
NoImagenetNorm = Annotated[
    bool, typer.Option("--no-imagenet-norm", help="Images: scale to [0, 1] only, without ImageNet mean/std.")
]
RecalibrateBn = Annotated[
    bool, typer.Option("--recalibrate-bn", help="After the verified cut, re-estimate BatchNorm statistics on --data.")
]
CompensateBias = Annotated[
    bool,
    typer.Option(
        "--compensate-bias", help="After the verified cut, fold removed channels' mean into the next layer's bias."
    ),
]
Reconstruct = Annotated[
    bool,
    typer.Option(
        "--reconstruct",
        help="After the verified cut, refit the layers that read pruned channels by least squares on --data "
        "(their outputs match the original's; the weights are then not what apply rebuilds from the plan).",
    ),
]
RatiosFrom = Annotated[
    Optional[str],
    typer.Option(
        "--ratios-from", help="A sensitivity JSON: a share to drop per group, meeting --target-macs/--target-params."
    ),
]
Criterion = Annotated[str, typer.Option("--criterion", "-c", help="How each group's units are ranked.")]
RoundTo = Annotated[int, typer.Option("--round-to", help="Kept channel counts are rounded to a multiple of this.")]

DEFAULT_BATCHES = 8
DEFAULT_BATCH_SIZE = 32


def repair_lines(report: dict[str, Any]) -> list[str]:
    """What shrink's text output says about the repairs: fidelity after each step on held-out calibration data,
    the steps taken back, and that repaired weights are not what ``apply`` rebuilds from the plan."""
    steps = report.get("fidelity")
    if not steps:
        return []
    where = report.get("fidelity_data") or {}
    data = (
        f"{where['held_out_batches']} held-out calibration batch{'es' * (where['held_out_batches'] != 1)}"
        if where.get("held_out")
        else "the calibration data (one batch: nothing held out)"
    )
    reverted = set(report.get("repairs_reverted") or [])
    chain = " -> ".join(f"{k} {v:.4f}" + (" (reverted)" if k in reverted else "") for k, v in steps.items())
    metric = report.get("fidelity_metric", "")
    best = "1.0" if metric == "top1-agreement" else "0.0"
    lines = [f"fidelity ({metric} with the original on {data}; {best} = identical): {chain}"]
    lines += [f"warning: {w}" for w in report.get("repair_warnings") or []]
    kept = report.get("weights_refit") or []
    if kept:
        rec = (report.get("repairs") or {}).get("reconstruct") if "reconstruct" in kept else None
        detail = f" ({len(rec['refit'])} layers refit by least squares)" if rec else ""
        lines.append(
            f"repaired after the verified cut: {', '.join(kept)}{detail}; the verifier checked the cut before "
            "repair, and the saved weights are not what `slimnet apply` rebuilds from the plan"
        )
    return lines


def tokenizer_folder(*specs: str) -> str | None:
    """The first ``hf:`` folder among ``specs`` that holds a tokenizer (a pruned folder has none: its
    teacher's does)."""
    for spec in specs:
        parsed = parse_spec(spec)
        folder = Path(parsed.target)
        if parsed.kind == "hf" and any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            return str(folder)
    return None


def load_calibration(
    spec: str, model: Any, example: Any, batch_size: int, calib_batches: int, normalize: bool, specs: list[str]
) -> Any:
    """``--data`` read and checked against the loaded model (one line on any mismatch, before any work)."""
    from ..load.data import check_data, load_data  # lazy: CLI start-up

    calibration = load_data(
        spec,
        example,
        batch_size=batch_size,
        calib_batches=calib_batches,
        tokenizer=tokenizer_folder(*specs),
        normalize=normalize,
    )
    check_data(model, calibration)
    return calibration


# ------------------------------------------------------------------------------------------ sensitivity
def sensitivity(
    model: Model,
    output: Annotated[str, output_option("Where to write the sensitivity JSON.")],
    data: Data = None,
    ratios: Annotated[
        str, typer.Option("--ratios", help="Shares of each group's channels to drop, e.g. 0.1,0.3,0.5,0.7.")
    ] = "0.1,0.3,0.5,0.7",
    criterion: Criterion = "l1",
    round_to: RoundTo = DEFAULT_ROUND_TO,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Also draw the curves to this PNG.")] = None,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="fidelity: agreement with the original on --data (default); ppl: perplexity on --text (causal "
            "LMs; lower is better).",
        ),
    ] = "fidelity",
    text: Annotated[
        Optional[str],
        typer.Option("--text", help="With --metric ppl: the text (a UTF-8 file or builtin:shakespeare-eval)."),
    ] = None,
    window: Annotated[int, typer.Option("--window", help="With --metric ppl: tokens per window.")] = 512,
    max_windows: Annotated[
        int, typer.Option("--max-windows", help="With --metric ppl: windows per measurement (each cut runs them).")
    ] = 8,
    recalibrate_bn: RecalibrateBn = False,
    compensate_bias: CompensateBias = False,
    calib_batches: CalibBatches = DEFAULT_BATCHES,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    no_imagenet_norm: NoImagenetNorm = False,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Cut each prunable group alone at each ratio and record how far the model moves (agreement with the
    original on --data, or with --metric ppl perplexity on --text), each cut repaired first with
    --recalibrate-bn / --compensate-bias; runs under torchrun --nproc-per-node N, each rank a share of the groups."""
    with guarded(debug):
        check_settings(ratio=0.0, criterion=criterion, round_to=round_to)
        check_metric(metric, text, window, max_windows)
        check_data_settings(data=data, batch_size=batch_size, calib_batches=calib_batches, needs=["sensitivity"])
        source = parse_spec(model).file
        inputs = [source, data or "", weights or "", input_file or ""]
        out_path = check_output(output, inputs)
        plot_path = check_output(plot, [*inputs, output]) if plot else None
        replacing = Replacing([out_path, *([plot_path] if plot_path else [])])
        from .. import distributed
        from ..sensitivity import report as sensitivity_report  # lazy: CLI start-up
        from ..sensitivity.analysis import parse_ratios, save  # lazy: CLI start-up
        from ..sensitivity.analysis import sensitivity as sweep  # lazy: CLI start-up

        if plot_path is not None:
            sensitivity_report.pyplot()  # a missing matplotlib is said now, not after the sweep
        steps = parse_ratios(ratios)
        world = distributed.start("cpu")
        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        calibration = load_calibration(
            data, loaded.model, example, batch_size, calib_batches, not no_imagenet_norm, [model]
        )
        listener = _progress if world.main and progress_wanted(progress) else None
        measure, about = (None, None) if text is None else perplexity_metric(loaded.model, model, text, window,
                                                                          max_windows)  # fmt: skip
        result = sweep(loaded.model, example, calibration, ratios=steps, criterion=criterion, round_to=round_to,
                       model_name=model, world=world, progress=listener, recalibrate_bn=recalibrate_bn,
                       compensate_bias=compensate_bias, metric=measure, higher_is_better=False)  # fmt: skip
        distributed.stop(world)
        if result is None:
            return
        if about is not None:
            result = {**result, "metric": "perplexity", "perplexity": about}
        if plot_path is not None:  # the plot first: a failed plot leaves no sensitivity file behind
            sensitivity_report.plot(result, plot_path)
        save(result, out_path)
        replaced = replacing.done(quiet=progress is False)
        if as_json:
            emit_json({**result, "output": str(out_path), "plot": str(plot_path) if plot_path else None, **replaced})
            return
        _print_sensitivity(result, sensitivity_report)
        say(f"wrote {out_path}" + (f" and {plot_path}" if plot_path else ""))


def check_metric(metric: str, text: Optional[str], window: int, max_windows: int) -> None:
    """``--metric`` and the options that go with it, before anything loads."""
    if metric not in ("fidelity", "ppl"):
        raise SlimnetError(f"--metric {metric!r} is not known: give fidelity (the default) or ppl")
    if metric == "ppl" and text is None:
        raise SlimnetError("--metric ppl needs --text: a UTF-8 text file or builtin:shakespeare-eval")
    if metric == "fidelity" and text is not None:
        raise SlimnetError("--text is only read with --metric ppl: add --metric ppl or leave --text out")
    if metric == "ppl":
        from ..measure.perplexity import windows  # lazy: CLI start-up

        windows(0, window, None, max_windows)  # the options' own checks


def perplexity_metric(model: Any, spec: str, text: str, window: int, max_windows: int) -> tuple[Any, dict[str, Any]]:
    """``metric(model) -> perplexity`` on ``text`` (tokenised once, with MODEL's folder's tokenizer), and what
    the result records of how it was measured (window, windows, tokens: the numbers are comparable only so)."""
    from ..llm.texts import resolve_text  # lazy: CLI start-up
    from ..load.data import load_tokenizer  # lazy: CLI start-up
    from ..measure import perplexity as ppl  # lazy: CLI start-up

    ppl.check_causal_lm(model, spec)
    folder = tokenizer_folder(spec)
    if folder is None:
        raise SlimnetError(f"--metric ppl: {spec} has no tokenizer files to read --text with (tokenizer.json)")
    ids = ppl.tokenize(ppl.read_text(resolve_text(text)), load_tokenizer(folder))
    probe = ppl.windows(len(ids), window, None, max_windows)
    if not probe:
        raise SlimnetError(f"--text {text} has {len(ids)} tokens, fewer than one --window of {window}")
    about = {"text": text, "window": window, "stride": window, "windows": len(probe),
             "tokens": sum(w.end - w.first for w in probe)}  # fmt: skip
    return (lambda m: ppl.perplexity(m, ids, window=window, max_windows=max_windows)["perplexity"]), about


def _progress(done: int, total: int, group: str) -> None:
    tell(f"sensitivity: {done}/{total} groups ({group})")


def _print_sensitivity(result: dict[str, Any], report: Any) -> None:
    table = PlainTable(title=f"sensitivity of {result['model']} ({result['criterion']}, {result['metric']})")
    for col in report.header(result):
        table.add_column(col)
    for row in report.rows(result):
        table.add_row(*row)
    show(table)
    worst = ", ".join(r["group"] for r in report.worst(result))
    say(f"most sensitive at ratio {result['ratios'][-1]:g}: {worst}")


# ------------------------------------------------------------------------------------------ distill
def distill(
    pruned: Annotated[str, typer.Argument(help="The pruned model (a file or hf: folder written by shrink).")],
    teacher: Annotated[str, typer.Option("--teacher", help="The original model, as given to shrink.")],
    output: Annotated[str, output_option("Where to write the tuned model (a name without .pt: hf folder).")],
    data: Data = None,
    steps: Annotated[int, typer.Option("--steps", help="Most optimiser steps (one calibration batch each).")] = 200,
    lr: Annotated[
        Optional[float],
        typer.Option("--lr", help="AdamW peak learning rate (warm-up, then cosine); default 1e-3, 1e-4 for LMs."),
    ] = None,
    temperature: Annotated[
        Optional[float], typer.Option("--temperature", help="Softmax temperature for logits (default 2; 1 for LMs).")
    ] = None,
    loss: Annotated[
        str,
        typer.Option("--loss", help="auto (by output kind), kl (softmax), bce (sigmoid outputs), mse (raw outputs)."),
    ] = "auto",
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many held-out evaluations with no gain (0: never).")
    ] = 6,
    eval_every: Annotated[
        Optional[int], typer.Option("--eval-every", help="Steps between held-out evaluations (default: steps/20).")
    ] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda if any).")] = None,
    calib_batches: CalibBatches = DEFAULT_BATCHES,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    no_imagenet_norm: NoImagenetNorm = False,
    window: Annotated[
        Optional[int], typer.Option("--window", help="Decoder LMs: tokens per training window (default 512).")
    ] = None,
    checkpoint_dir: Annotated[
        Optional[str], typer.Option("--checkpoint-dir", help="Decoder LMs: where resumable checkpoints go.")
    ] = None,
    checkpoint_every: Annotated[
        Optional[int], typer.Option("--checkpoint-every", help="Decoder LMs: steps between checkpoints (steps/10).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Decoder LMs: go on from the last checkpoint in --checkpoint-dir.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Decoder LMs: seed of the window order.")] = 0,
    clip: Annotated[float, typer.Option("--clip", help="Decoder LMs: gradient norm clipping.")] = 1.0,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Train PRUNED to match the original's outputs on unlabelled --data; the best student on held-out batches
    (the start included) is written: KL on logits, BCE on sigmoid outputs, MSE otherwise. A Hugging Face
    causal LM (hf:FOLDER) is distilled at scale instead: windows of --window tokens of a text file, logit KL in
    chunks, FSDP2 under torchrun, resumable checkpoints (slimnet.cli.distill_lm)."""
    with guarded(debug):
        from . import distill_lm  # lazy: CLI start-up

        if distill_lm.is_causal_lm(pruned):
            distill_lm.run(pruned, teacher, output, data, window=window, steps=steps, lr=lr,
                           batch_size=batch_size, temperature=1.0 if temperature is None else temperature,
                           loss=loss, seed=seed, clip=clip, checkpoint_dir=checkpoint_dir,
                           checkpoint_every=checkpoint_every, resume=resume, device=device, progress=progress,
                           as_json=as_json)  # fmt: skip
            return
        lr = 1e-3 if lr is None else lr
        temperature = 2.0 if temperature is None else temperature
        check_data_settings(data=data, batch_size=batch_size, calib_batches=calib_batches, needs=["distill"])
        if device not in (None, "cpu", "cuda"):
            raise SlimnetError(f"--device {device}: give cpu or cuda")
        if eval_every is not None and eval_every < 1:
            raise SlimnetError(f"--eval-every {eval_every} must be at least 1")
        from ..repair.distill import check_steps  # lazy: CLI start-up

        check_steps(steps, lr, temperature, patience, loss)
        folder = parse_spec(pruned).kind == "hf" and Path(output).suffix.lower() not in (".pt", ".pth", ".bin")
        inputs = [parse_spec(pruned).file, parse_spec(teacher).file, data or "", input_file or ""]
        out_path = check_output(output, inputs, folder)
        replacing = Replacing([out_path], models=[out_path])
        from .. import distributed  # lazy: CLI start-up
        from ..load.data import example_from  # lazy: CLI start-up
        from ..load.loader import load_model  # lazy: CLI start-up
        from ..repair.distill import distill as run  # lazy: CLI start-up

        world = distributed.start(device)
        given = input_file is not None or input_shape is not None or parse_spec(teacher).kind == "hf"
        from_data = None if given or data is None else example_from(data)
        if from_data is not None:  # no --input: the data's first row is the example
            original = load_model(teacher, trust_pickle=trust_pickle)
            example = from_data
        else:
            original, example = model_inputs(teacher, None, input_file, input_shape, trust_pickle)
        student = load_model(pruned, trust_pickle=trust_pickle).model
        calibration = load_calibration(
            data, original.model, example, batch_size, calib_batches, not no_imagenet_norm, [pruned, teacher]
        )
        result = run(student, original.model, calibration, steps=steps, lr=lr, temperature=temperature,
                     loss=loss, patience=patience, log_every=eval_every, world=world,
                     progress=progress_wanted(progress))  # fmt: skip
        distributed.stop(world)
        if world.main:
            _save_tuned(result.model.cpu(), out_path, folder)
            report = {**result.report(), "output": str(out_path), "calibration": calibration.describe()}
            report.update(replacing.done(quiet=progress is False))
            if as_json:
                emit_json(report)
            else:
                for line in distill_lines(report):
                    say(line)


def distill_lines(report: dict[str, Any]) -> list[str]:
    """distill's text output: the loss and why, the held-out fidelity before and after, where it stopped."""
    held = report["held_out"]
    where = f"{held['batches']} held-out batch{'es' * (held['batches'] != 1)}" if held["disjoint"] else (
        "the one calibration batch (nothing held out)"
    )  # fmt: skip
    stop = f", stopped early at step {report['steps_run']}" if report["stopped_early"] else ""
    lines = [
        f"distilled {report['steps_run']}/{report['steps']} steps in {report['seconds']:.1f} s{stop}; loss "
        f"{report['loss']} ({report['loss_why']}), lr {report['lr']:g} with {report['schedule']}",
        f"{report['metric']} on {where}: {report['before']:.4f} at the start -> {report['after']:.4f} at step "
        f"{report['best_step']} (the best evaluation, kept)",
    ]
    if report["kept_start"]:
        lines.append("warning: no step beat the starting student on held-out data: it is written unchanged")
    lines.append(f"wrote {report['output']}")
    return lines


def _save_tuned(model: Any, out_path: Path, folder: bool) -> None:
    if folder:
        from ..load.hf import PLAN_KEY, save_pretrained  # lazy: optional dependency (transformers)

        save_pretrained(model, getattr(model.config, PLAN_KEY, None) or {"tensors": {}}, out_path)
        return
    import torch  # lazy: CLI start-up

    save_atomic(out_path, lambda tmp: torch.save(model, tmp))
