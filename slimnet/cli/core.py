"""``slimnet shrink``, ``apply`` and ``graph``: prune a model, re-apply a saved plan, show the channel groups.

Each command checks its arguments first (settings, MODEL's file, output paths; no torch yet, so a typo is
answered at once), then loads the model and its example input and calls :mod:`slimnet.api`, in named stages whose
progress goes to stderr (:mod:`.progress`). Without ``-o`` the output goes beside the input
(:func:`.common.default_output`). Outputs are written to temporary files and renamed at the end, and the plan of a
failed save is taken back.
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import SlimnetError, VerificationError
from ..llm.families import DATA_CRITERIA, streams_hf
from ..load.spec import check_model, parse_spec
from ..settings import (
    DEFAULT_MAX_LAYER_RATIO,
    DEFAULT_ROUND_TO,
    ShrinkSettings,
    check_data_settings,
    data_needs,
)
from . import allocation as alloc
from . import recipe as recipes
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
    model_inputs,
    output_option,
    say,
    show,
    tell,
)
from .data import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BATCHES,
    CalibBatches,
    CalibBatchSize,
    CompensateBias,
    Data,
    NoImagenetNorm,
    RatiosFrom,
    RecalibrateBn,
    Reconstruct,
    load_calibration,
    repair_lines,
)
from .outputs import Replacing, save_model_atomic, shrink_outputs, write_outputs
from .progress import stages_for

# ------------------------------------------------------------------------------------------ options
PrunedOutput = Annotated[
    Optional[str],
    output_option(
        "Where to write the pruned model (torch.save) (default: beside the input, model.pt -> model-slim.pt; "
        "for a built-in, NAME-slim.pt here); for hf: models a name without .pt is a save_pretrained folder."
    ),
]
Ratio = Annotated[
    float,
    typer.Option("--ratio", "-r", help="Share of each prunable group's channels to drop, 0 <= R < 1 (0.5: half)."),
]
Criterion = Annotated[
    str,
    typer.Option(
        "--criterion", "-c", help="l1, l2, fpgm, random, bn-scale; with --data: taylor, activation, apoz, wanda."
    ),
]
RoundTo = Annotated[int, typer.Option("--round-to", help="Kept channel counts are rounded to a multiple of this.")]
Ignore = Annotated[
    Optional[list[str]], typer.Option("--ignore", help="Glob of module names to leave untouched (repeatable).")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed for the random criterion.")]
PruneNorm = Annotated[
    bool,
    typer.Option(
        "--prune-norm",
        help="Also prune groups normalised by LayerNorm (not exact: the verifier then reports the difference).",
    ),
]
PruneEmbed = Annotated[
    bool,
    typer.Option(
        "--prune-embed",
        help="Transformers: also prune the embedding (residual-stream) width; the same as --prune-norm.",
    ),
]
HeadRatio = Annotated[
    Optional[float], typer.Option("--head-ratio", help="Share of attention heads to drop (default: --ratio).")
]
Onnx = Annotated[Optional[str], typer.Option("--onnx", help="Also export the pruned model to this ONNX file.")]
Recipe = Annotated[
    Optional[str],
    typer.Option(
        "--recipe",
        help="YAML file of settings (ratio, criterion, round_to, ignore, seed, prune_norm, head_ratio, target_macs, "
        "target_params, target_latency, backend, threads, batch_size, global, max_layer_ratio, ratios); "
        "flags given explicitly win.",
    ),
]
Architecture = Annotated[
    str, typer.Argument(help=f"The original architecture: {MODEL_HELP}", metavar="MODEL", show_default=False)
]
PlanFile = Annotated[str, typer.Argument(help="A slimnet.plan/1 JSON file.", metavar="PLAN", show_default=False)]
Members = Annotated[bool, typer.Option("--members", help="List every member tensor of each group.")]
InMemory = Annotated[
    Optional[bool],
    typer.Option(
        "--in-memory/--low-memory",
        help="hf: decoder LMs (Llama, Mistral, Qwen2/3, Gemma, Phi-3) with l1/l2/fpgm and a plain --ratio take the "
        "low-memory path (one layer at a time from safetensors, a standard folder out) by themselves; "
        "--in-memory forces the whole-model path, --low-memory the streamed one.",
    ),
]
DropLayers = Annotated[
    Optional[int],
    typer.Option(
        "--drop-layers",
        help="hf: decoder LMs: remove this many decoder layers, the least influential on --data (a text file); "
        "with --ratio, the width is cut afterwards.",
    ),
]
HiddenRatio = Annotated[
    Optional[float],
    typer.Option(
        "--hidden-ratio",
        help="hf: decoder LMs: remove this share of the residual stream's channels (hidden_size, to a multiple "
        "of 64, or 8, and of the head count), ranked by activation on --data; an approximation (reported as "
        "exact: false, with its KL and top-1 agreement), after --drop-layers and before --ratio.",
    ),
]
LayerRank = Annotated[
    str,
    typer.Option(
        "--layer-rank",
        help="How --drop-layers ranks layers: block-influence (1 - cos of each layer's input and output hidden "
        "states, ShortGPT) or ppl (perplexity with that one layer skipped).",
    ),
]


# ------------------------------------------------------------------------------------------ shrink
def shrink(
    ctx: typer.Context,
    model: Model,
    output: PrunedOutput = None,
    ratio: Ratio = 0.5,
    criterion: Criterion = "l1",
    round_to: RoundTo = DEFAULT_ROUND_TO,
    ignore: Ignore = None,
    seed: Seed = 0,
    prune_norm: PruneNorm = False,
    prune_embed: PruneEmbed = False,
    head_ratio: HeadRatio = None,
    target_macs: alloc.TargetMacs = None,
    target_params: alloc.TargetParams = None,
    target_latency: alloc.TargetLatency = None,
    use_global: alloc.Global = False,
    max_layer_ratio: alloc.MaxLayerRatio = DEFAULT_MAX_LAYER_RATIO,
    ratios: alloc.RatiosFile = None,
    backend: alloc.LatencyBackend = "ort-cpu",
    threads: alloc.LatencyThreads = 1,
    batch_size: alloc.LatencyBatch = 1,
    no_cache: alloc.NoCache = False,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    onnx: Onnx = None,
    recipe: Recipe = None,
    data: Data = None,
    calib_batches: CalibBatches = DEFAULT_BATCHES,
    calib_batch_size: CalibBatchSize = DEFAULT_BATCH_SIZE,
    no_imagenet_norm: NoImagenetNorm = False,
    recalibrate_bn: RecalibrateBn = False,
    compensate_bias: CompensateBias = False,
    reconstruct: Reconstruct = False,
    ratios_from: RatiosFrom = None,
    drop_layers: DropLayers = None,
    layer_rank: LayerRank = "block-influence",
    hidden_ratio: HiddenRatio = None,
    trust_pickle: TrustPickle = False,
    in_memory: InMemory = None,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Prune MODEL: trace, group coupled channels, rank, cut, verify, and save the smaller model and its plan."""
    with guarded(debug), ExitStack() as scratch:
        given = {"ratio": ratio, "criterion": criterion, "round_to": round_to, "ignore": ignore or [], "seed": seed}
        given.update(prune_norm=prune_norm, head_ratio=head_ratio, ratios=ratios, no_cache=no_cache)
        given.update(target_macs=target_macs, target_params=target_params, target_latency=target_latency)
        given.update({"backend": backend, "threads": threads, "batch_size": batch_size, "global": use_global})
        given["max_layer_ratio"] = max_layer_ratio
        s, explicit_ratio = recipes.merged_settings(ctx, recipe, given)
        allocation = alloc.allocation_settings(s, explicit_ratio)
        settings = ShrinkSettings(  # checked here, once, before anything is loaded
            criterion=s["criterion"], round_to=s["round_to"], ignore=s["ignore"], seed=s["seed"],
            prune_norm=s["prune_norm"] or prune_embed, head_ratio=s["head_ratio"], **allocation,
        )  # fmt: skip
        needs = data_needs(s["criterion"], recalibrate_bn, compensate_bias, reconstruct)
        check_data_settings(data=data, batch_size=calib_batch_size, calib_batches=calib_batches, needs=needs)
        inputs = [weights, input_file, data, ratios_from, recipe, ratios]
        out_path, plan_path, onnx_path, folder = shrink_outputs(model, output, inputs, onnx)
        plain = folder and not any(
            [recalibrate_bn, compensate_bias, reconstruct, onnx, weights, input_file, ratios_from, input_shape]
        )
        has_data = data is not None
        streamed = in_memory is False or (in_memory is None and streams_hf(model, settings, plain, has_data))
        if drop_layers is None and hidden_ratio is None and streamed:
            calib = (data, calib_batch_size, calib_batches)
            return shrink_low_memory(model, out_path, settings, plain, as_json, progress is False, plan_path, calib)
        replacing = Replacing([out_path, plan_path, *([onnx_path] if onnx_path else [])], models=[out_path])
        stages, shown = stages_for(progress)
        name = model
        steps = lm_steps(drop_layers, layer_rank, hidden_ratio, data, calib_batch_size, calib_batches, stages)
        done: dict[str, dict[str, Any]] = {}
        if steps:
            targets = any(s.get(k) is not None for k in recipes.TARGET_KEYS)
            width = bool(explicit_ratio or targets or allocation["ratios"])
            model, done = run_lm_steps(steps, model, out_path, width, folder, onnx, scratch, shown)
            if not width:
                report = lm_steps_report(name, done, stages.rounded())
                if as_json:
                    emit_json(report)
                else:
                    for line in lm_steps_lines(report):
                        say(line)
                return
        with shown:
            with stages("load"):
                from .. import api  # lazy: CLI start-up (torch is imported here, inside the "load" stage)
                from ..sensitivity.analysis import load as load_sensitivity  # lazy: CLI start-up

                sens = load_sensitivity(ratios_from) if ratios_from is not None else None
                loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
                calibration = None
                if data is not None:
                    norm = not no_imagenet_norm
                    calibration = load_calibration(
                        data, loaded.model, example, calib_batch_size, calib_batches, norm, [model]
                    )
            result = api.shrink(
                loaded.model,
                example,
                settings=settings,
                model_name=name,
                stages=stages,
                data=calibration,
                recalibrate_bn=recalibrate_bn,
                compensate_bias=compensate_bias,
                reconstruct=reconstruct,
                sensitivity=sens,
            )
            report = write_outputs(result, example, stages, out_path, plan_path, onnx_path, folder)
        for key, step_report in done.items():
            report[key] = step_report[key]
        if folder and done:
            from ..llm.depth import PLAN_FILE, add_plan_entry  # lazy: CLI start-up

            previous = Path(parse_spec(model).target) / PLAN_FILE  # the last step's folder: its entries
            for key in done:
                add_plan_entry(out_path, _plan_entry(key, done[key][key], previous), key=key)
        if "hidden" in done:
            report["exact"] = False  # the residual width is an approximation, whatever the width cut was
        report["timings"] = stages.rounded()
        report.update(replacing.done(quiet=progress is False), **size_fields(report))
        if as_json:
            emit_json(report)
        else:
            print_report(report)


def shrink_low_memory(
    model: str, out_path: Path, settings: ShrinkSettings, plain: bool, as_json: bool, quiet: bool,
    plan_path: Optional[Path], calib: tuple[Optional[str], int, int] = (None, 0, 0),
) -> None:  # fmt: skip
    """``slimnet shrink hf:FOLDER`` on the low-memory path (:func:`slimnet.llm.shrink.shrink_folder`): per-layer
    progress on stderr (unless ``quiet``), then the summary on stdout, or the ``--json`` report: its own fields
    and those of the in-memory report that apply (``params_before``, ``exact``, ``timings``, ``kept_share``...;
    ``macs`` is ``[null, null]``: nothing is traced), so a script reads either path's report alike."""
    if not model.startswith("hf:"):
        raise SlimnetError(f"--low-memory shrinks a Hugging Face folder (hf:FOLDER), not {model}")
    if not plain:
        raise SlimnetError(
            "--low-memory writes a standard Hugging Face folder from --ratio (and --data for wanda, activation, "
            "apoz) alone: repairs, --onnx, --weights, --input and a .pt output need --in-memory"
        )
    from ..llm.shrink import check_settings_streamable, shrink_folder  # lazy: CLI start-up

    data, batch_size, n_batches = calib
    check_settings_streamable(settings, with_data=data is not None)
    batches = None
    if data is not None and settings.criterion in DATA_CRITERIA:
        from ..llm.depth import inspect_folder, text_batches  # lazy: CLI start-up

        batches = text_batches(inspect_folder(model[3:]), data, batch_size, n_batches)
    replacing = Replacing([*([plan_path] if plan_path is not None else [])])
    report = shrink_folder(model[3:], out_path, settings, model_name=model, log=None if quiet else tell,
                           batches=batches)  # fmt: skip
    if plan_path is not None:  # beside the folder too, as the in-memory path writes it
        tmp = Path(plan_path).with_name(f".{Path(plan_path).name}.tmp")
        shutil.copyfile(Path(out_path) / "slimnet_plan.json", tmp)
        os.replace(tmp, plan_path)
    before, after = report["params"]
    report.update(params_before=before, params_after=after, macs=[None, None], macs_before=None, macs_after=None)
    report["macs_note"] = "not counted on the low-memory path (nothing is traced): give --in-memory for MACs"
    report.update(exact=bool(report["verified"]), verify_compared="each decoder layer against its masked original")
    report["timings"] = {"total": report["seconds"]}
    report.update(replacing.done(quiet=quiet), **size_fields(report))
    if as_json:
        emit_json(report)
        return
    say(
        f"slimnet shrink {model} (low-memory path, {report['layers']} layers): params {before:,} -> {after:,} "
        f"({before / max(after, 1):.2f}x); per layer heads {report['heads'][0]} -> {report['heads'][1]}, key/value "
        f"heads {report['kv_heads'][0]} -> {report['kv_heads'][1]}, MLP {report['intermediate'][0]} -> "
        f"{report['intermediate'][1]}; criterion {report['criterion']}, ratio {report['ratio']}, round-to "
        f"{report['round_to']}; took {report['seconds']:.1f} s"
    )
    if report["verified"]:
        say(
            f"verified layer by layer against the masked original: max abs diff {report['max_abs_diff']:.3g} "
            f"(tolerance {report['tolerance']:.3g})"
        )
    say(f"wrote {report['output']} (a standard Hugging Face folder; plan in {report['plan']})")


Step = tuple[str, str, Any]  # (report key, option, step(model, dest) -> report)


def lm_steps(
    drop_layers: Optional[int], layer_rank: str, hidden_ratio: Optional[float], data: Optional[str],
    batch_size: int, calib_batches: int, stages: Any,
) -> list[Step]:  # fmt: skip
    """The folder-to-folder cuts of a decoder LM asked for, in their order: depth (:mod:`slimnet.llm.depth`),
    then the residual width (:mod:`slimnet.llm.hidden`); the width cut, if any, runs on the last one's output."""
    steps: list[Step] = []
    if drop_layers is not None:
        from ..llm.depth import shrink_depth  # lazy: CLI start-up

        steps.append(("depth", "--drop-layers", lambda m, d: shrink_depth(
            m, drop_layers, layer_rank, data, batch_size, calib_batches, d, stages)))  # fmt: skip
    if hidden_ratio is not None:
        from ..llm.hidden import shrink_hidden  # lazy: CLI start-up

        steps.append(("hidden", "--hidden-ratio", lambda m, d: shrink_hidden(
            m, hidden_ratio, data, batch_size, calib_batches, d, stages)))  # fmt: skip
    return steps


def run_lm_steps(
    steps: list[Step], model: str, out_path: Path, width: bool, folder: bool, onnx: Optional[str],
    scratch: ExitStack, shown: Any,
) -> tuple[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """Run ``steps`` one after the other, each on the folder the previous wrote: the last into ``out_path``
    unless a width cut follows (``width``), the others into a scratch folder beside it (gone at the end). The
    model the width cut reads, and each step's report by key."""
    flags = " and ".join(flag for _, flag, _ in steps)
    if not width and onnx:
        raise SlimnetError(f"--onnx with {flags} alone: export the written folder, or add --ratio")
    if parse_spec(model).kind != "hf":
        raise SlimnetError(f"{flags} needs a Hugging Face decoder LM (hf:FOLDER); {model} is not one")
    if not (folder or width):
        raise SlimnetError(f"{flags} writes a Hugging Face folder: give -o NAME without .pt")
    from .._util import scratch_dir  # lazy: CLI start-up

    work = scratch.enter_context(scratch_dir(out_path))
    done: dict[str, dict[str, Any]] = {}
    for i, (key, _flag, step) in enumerate(steps):
        dest = out_path if i == len(steps) - 1 and not width else work / key
        with shown:
            done[key] = step(model, dest)
        model = f"hf:{dest}"
    return model, done


def _plan_entry(key: str, described: dict[str, Any], previous: Path) -> dict[str, Any]:
    """The slimnet_plan.json entry of an LM step, as its own folder recorded it (the report holds less)."""
    import json

    if previous.is_file():
        entry = json.loads(previous.read_text()).get(key)
        if entry is not None:
            return {k: v for k, v in entry.items() if k != "previous"}
    return {k: described[k] for k in ("dropped", "scores", "rank") if k in described}


def lm_steps_report(model: str, done: dict[str, dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    """The ``--json`` report of ``--drop-layers`` / ``--hidden-ratio`` without a width cut: the last step's
    report, each step's object (``depth``, ``hidden``), params from the first input to the output."""
    reports = list(done.values())
    report = {**reports[-1], "model": model}
    report["params"] = [reports[0]["params"][0], reports[-1]["params"][1]]
    report["params_before"], report["params_after"] = report["params"]
    report["exact"] = all(r["exact"] for r in reports)
    for key, r in done.items():
        report[key] = r[key]
    report["timings"] = timings
    return report


def lm_steps_lines(report: dict[str, Any]) -> list[str]:
    """The text report of ``--drop-layers`` / ``--hidden-ratio`` without a width cut."""
    lines = step_lines(report)
    p = report["params"]
    lines.append(f"params {fmt(p[0])} -> {fmt(p[1])} ({_times(p[0], p[1])})")
    lines.append(took(report.get("timings") or {}))
    lines.append(f"wrote {report['output']} (what was cut recorded in {report['plan']})")
    return lines


def step_lines(report: dict[str, Any]) -> list[str]:
    """The lines of the LM steps in ``report`` (depth, then residual width)."""
    lines = []
    if report.get("depth"):
        from ..llm.depth import report_lines  # lazy: CLI start-up

        lines += report_lines(report)
    if report.get("hidden"):
        from ..llm.hidden import report_lines as hidden_lines  # lazy: CLI start-up

        lines += hidden_lines(report)
    return lines


def _times(a: Optional[float], b: Optional[float]) -> str:
    """How many times smaller: 2.87M MACs -> 844K is ``3.40x`` (the word "ratio" is kept for the share dropped)."""
    return f"{a / b:.2f}x" if a and b else "-"


def size_fields(report: dict[str, Any]) -> dict[str, Any]:
    """Fields added to shrink's ``--json`` (the old ones stay): the kept share of the original's params and MACs
    (0.29: 29% kept) and how many times smaller the model is (3.40), each named for what it is."""
    p, m = report["params"], report["macs"]
    kept = {k: round(v[1] / v[0], 6) if v[0] and v[1] is not None else None for k, v in (("params", p), ("macs", m))}
    times = {k: round(v[0] / v[1], 6) if v[0] and v[1] else None for k, v in (("params", p), ("macs", m))}
    return {"kept_share": kept, "times_smaller": times}


def print_report(report: dict[str, Any]) -> None:
    table = PlainTable(title=f"slimnet shrink: {report.get('model')}", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("smaller", justify="right")
    p, m = report["params"], report["macs"]
    table.add_row("params", fmt(p[0]), fmt(p[1]), _times(p[0], p[1]))
    table.add_row("MACs", fmt(m[0]), fmt(m[1]), _times(m[0], m[1]))
    show(table)
    say(
        f"groups: {report['groups']} found, {report['pruned_groups']} pruned, {len(report['skipped'])} left whole; "
        f"criterion {report['criterion']}, ratio {report['ratio']} (share of the prunable channels dropped), "
        f"round-to {report['round_to']}"
        + (f" (MLP widths: {report['mlp_round_to']}, a decoder LM)" if report.get("mlp_round_to") else "")
    )
    verdict = "exact" if report.get("exact") else "approximate (normalised groups pruned on request)"
    say(
        f"verified ({verdict}): max abs diff {report['max_abs_diff']:.3g} <= tolerance "
        f"{report['tolerance']:.3g} on {', '.join(report['verify_inputs'])}"
    )
    if report.get("verify_randomised"):
        say(
            f"  and again with the model's {report['verify_randomised']} constant tensors (fresh norms, zero "
            f"biases or classifier), where a wrong cut could hide, randomised: max abs diff "
            f"{report['verify_randomised_diff']:.3g} (float32)"
        )
    if report["skipped"]:
        skipped = PlainTable(title="left whole", show_header=True)
        skipped.add_column("group")
        skipped.add_column("reason")
        for s in report["skipped"]:
            skipped.add_row(s["group"], s["reason"])
        show(skipped)
    alloc.print_target(report)
    for line in step_lines(report):  # --drop-layers / --hidden-ratio before the width cut
        say(line)
    for line in repair_lines(report):
        say(line)
    say(took(report.get("timings") or {}))
    if report.get("output"):
        say(f"wrote {report['output']} and {report['plan']}")
    if report.get("folder") == "standard":
        say("  a standard transformers folder: AutoModelForCausalLM.from_pretrained loads it, no remote code")
    elif report.get("folder_note"):
        say(f"  not a standard transformers folder: {report['folder_note']}")


def took(timings: dict[str, float]) -> str:
    """``took 14.2 s: load 3.1, trace 1.4, ... (seconds)``: the whole command, stage by stage."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    return f"took {sum(timings.values()):.1f} s: {parts} (seconds per stage)" if timings else "took -"


# ------------------------------------------------------------------------------------------ apply
def apply(
    model: Architecture,
    plan: PlanFile,
    output: Annotated[
        Optional[str],
        output_option("Where to write the pruned model (default: beside the input, model.pt -> model-slim.pt)."),
    ] = None,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Apply a saved plan to a fresh (e.g. trained) instance of the architecture, verify it, save the result."""
    with guarded(debug):
        source = check_model(model).file
        if not Path(plan).is_file():
            raise SlimnetError(f"plan {plan} does not exist")
        output = output or default_output(model, "-slim.pt")
        out_path = check_output(output, [source, plan, weights or "", input_file or ""])
        replacing = Replacing([out_path], models=[out_path])
        stages, shown = stages_for(progress)
        with shown:
            with stages("load"):
                from .. import api  # lazy: CLI start-up
                from .. import plan as plan_mod  # lazy: CLI start-up
                from .._tensors import count_params  # lazy: CLI start-up

                the_plan = plan_mod.load(plan)
                loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
            with stages("trace"):
                api.check_runs(loaded.model, example)
            with stages("cut"):
                pruned, result = api.apply(loaded.model, the_plan, example)
            if result is not None and not result.passed:
                raise VerificationError(f"verification failed: {result.error}; nothing was written")
            with stages("write"):
                save_model_atomic(pruned, out_path)
        report = apply_report(model, plan, out_path, [count_params(loaded.model), count_params(pruned)], the_plan)
        report.update(
            max_abs_diff=result.max_abs_diff if result else None,
            tolerance=result.tolerance if result else None,
            verified=bool(result and result.passed),
            timings=stages.rounded(),
        )
        report.update(replacing.done(quiet=progress is False))
        if as_json:
            emit_json(report)
        else:
            say(
                f"applied {plan} to {model}: {report['tensors']} tensors cut, params "
                f"{fmt(report['params_before'])} -> {fmt(report['params_after'])}; verified, max abs diff "
                f"{report['max_abs_diff']:.3g}"
            )
            say(took(report["timings"]))
            say(f"wrote {out_path}")


def apply_report(model: str, plan: str, out_path: Path, params: list[int], the_plan: dict[str, Any]) -> dict[str, Any]:
    """The ``apply --json`` object, before the verification's fields (a contract: fields are only added)."""
    return {
        "model": model,
        "plan": plan,
        "output": str(out_path),
        "params": params,
        "params_before": params[0],
        "params_after": params[1],
        "tensors": len(the_plan["tensors"]),
    }


# ------------------------------------------------------------------------------------------ graph
def graph(
    model: Model,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    members: Members = False,
    trust_pickle: TrustPickle = False,
    progress: ShowProgress = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Show the coupled channel groups of MODEL: members, channels, and why a group cannot be pruned."""
    with guarded(debug):
        check_model(model)
        stages, shown = stages_for(progress)
        with shown:
            with stages("load"):
                from .. import api  # lazy: CLI start-up

                loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
            groups = [g.describe() for g in api.graph(loaded.model, example, stages).groups]
        prunable = sum(1 for g in groups if g["prunable"])
        if as_json:
            emit_json({"model": model, "groups": groups, "prunable": prunable, "timings": stages.rounded()})
            return
        table = PlainTable(title=f"channel groups of {model}")
        for col in ("id", "group", "units", "members" if members else "member dims", "prunable / why not"):
            table.add_column(col)
        for g in groups:
            mem = ", ".join(g["members"]) if members else str(len(g["members"]))
            why = "yes" if g["prunable"] else g["reason"]
            if g["prunable"] and g["normalised"]:
                why = f"only with --prune-norm ({g['normalised']})"
            table.add_row(str(g["id"]), g["name"], str(g["units"]), mem, why)
        show(table)
        hint = "" if members else " (member dims: the tensor dimensions each group slices; --members lists them)"
        say(f"{len(groups)} groups, {prunable} prunable{hint}")
