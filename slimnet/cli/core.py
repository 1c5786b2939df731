"""``slimnet shrink``, ``apply`` and ``graph``: prune a model, re-apply a saved plan, show the channel groups.

Each command checks its arguments first (settings, output paths; no torch yet), then loads the model and its
example input and calls :mod:`slimnet.api`. Outputs are written to temporary files and renamed at the end, and the
plan of a failed save is taken back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .._util import first_line, save_atomic
from ..errors import SlimnetError, VerificationError
from ..settings import DEFAULT_ROUND_TO, check_settings, plan_path_for
from ..spec import parse_spec
from .common import (
    MODEL_HELP,
    AsJson,
    Debug,
    InputFile,
    InputShape,
    Model,
    TrustPickle,
    Weights,
    check_output,
    emit_json,
    fmt,
    guarded,
    model_inputs,
    out,
    output_option,
)

# ------------------------------------------------------------------------------------------ options
PrunedOutput = Annotated[
    str,
    output_option(
        "Where to write the pruned model (torch.save); for hf: models a name without .pt is a save_pretrained folder."
    ),
]
Ratio = Annotated[float, typer.Option("--ratio", "-r", help="Fraction of each group's channels to drop, 0 <= R < 1.")]
Criterion = Annotated[str, typer.Option("--criterion", "-c", help="l1, l2, fpgm, random or bn-scale.")]
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
    Optional[float], typer.Option("--head-ratio", help="Fraction of attention heads to drop (default: --ratio).")
]
Onnx = Annotated[Optional[str], typer.Option("--onnx", help="Also export the pruned model to this ONNX file.")]
Recipe = Annotated[
    Optional[str],
    typer.Option(
        "--recipe",
        help="YAML file of settings (ratio, criterion, round_to, ignore, seed, prune_norm); "
        "flags given explicitly win.",
    ),
]
Architecture = Annotated[str, typer.Argument(help=f"The original architecture: {MODEL_HELP}")]
PlanFile = Annotated[str, typer.Argument(help="A slimnet.plan/1 JSON file.")]
Members = Annotated[bool, typer.Option("--members", help="List every member tensor of each group.")]


# ------------------------------------------------------------------------------------------ shrink
def shrink(
    ctx: typer.Context,
    model: Model,
    output: PrunedOutput,
    ratio: Ratio = 0.5,
    criterion: Criterion = "l1",
    round_to: RoundTo = DEFAULT_ROUND_TO,
    ignore: Ignore = None,
    seed: Seed = 0,
    prune_norm: PruneNorm = False,
    prune_embed: PruneEmbed = False,
    head_ratio: HeadRatio = None,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    onnx: Onnx = None,
    recipe: Recipe = None,
    trust_pickle: TrustPickle = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Prune MODEL: trace, group coupled channels, rank, cut, verify, and save the smaller model and its plan."""
    with guarded(debug):
        given = {"ratio": ratio, "criterion": criterion, "round_to": round_to, "ignore": ignore or []}
        given.update(seed=seed, prune_norm=prune_norm)
        s = recipe_settings(ctx, recipe, given) if recipe is not None else given
        check_settings(ratio=s["ratio"], criterion=s["criterion"], round_to=s["round_to"], head_ratio=head_ratio)
        folder = wants_folder(output, model)
        source = parse_spec(model).file
        out_path = check_output(output, [source, weights or "", input_file or ""], folder=folder)
        plan_path = plan_path_for(out_path)
        check_output(str(plan_path), [source])
        onnx_path = check_output(onnx, [source, output]) if onnx else None
        from .. import api  # lazy: CLI start-up

        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        result = api.shrink(
            loaded.model,
            example,
            ratio=s["ratio"],
            criterion=s["criterion"],
            round_to=s["round_to"],
            ignore=s["ignore"],
            seed=s["seed"],
            prune_norm=s["prune_norm"] or prune_embed,
            model_name=model,
            head_ratio=head_ratio,
        )
        report = result.report
        if onnx_path is not None:
            from ..export import export_onnx  # lazy: CLI start-up

            report["onnx"] = export_onnx(result.model, example, onnx_path)
        save_pruned(result.model, result.plan, out_path, plan_path, folder)
        report["output"], report["plan"] = str(out_path), str(plan_path)
        if as_json:
            emit_json(report)
        else:
            print_report(report)


def wants_folder(output: str, model: str) -> bool:
    """A Hugging Face model written with -o NAME (no .pt/.pth suffix) becomes a save_pretrained folder."""
    return parse_spec(model).kind == "hf" and Path(output).suffix.lower() not in (".pt", ".pth", ".bin")


def save_model_atomic(model: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename."""
    import torch  # lazy: CLI start-up

    save_atomic(path, lambda tmp: torch.save(model, tmp))


def save_pruned(model: Any, plan: dict[str, Any], out_path: Path, plan_path: Path, folder: bool) -> None:
    """The plan, then the model (a file, or a save_pretrained folder); the plan is taken back if that fails."""
    from .. import plan as plan_mod  # lazy: CLI start-up

    plan_mod.save(plan, plan_path)
    try:
        if folder:
            from ..hf import save_pretrained  # lazy: CLI start-up

            save_pretrained(model, plan, out_path)
        elif type(model).__module__.startswith("ultralytics."):  # ultralytics' checkpoint: YOLO(path) loads it
            from ..yolo import checkpoint  # lazy: CLI start-up

            save_model_atomic(checkpoint(model, plan), out_path)
        else:
            save_model_atomic(model, out_path)
    except BaseException:
        plan_path.unlink(missing_ok=True)
        raise


RECIPE_KEYS = {"ratio": float, "criterion": str, "round_to": int, "ignore": list, "seed": int, "prune_norm": bool}


def recipe_settings(ctx: typer.Context, path: str, current: dict[str, Any]) -> dict[str, Any]:
    """Merge a recipe (plain YAML mapping) under the flags given on the command line; unknown keys are an error,
    so that a typo cannot pass silently."""
    import yaml  # lazy: CLI start-up

    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"recipe {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SlimnetError(f"recipe {path} is not valid YAML: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise SlimnetError(f"recipe {path} must be a mapping of settings such as 'ratio: 0.5'")
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise SlimnetError(f"recipe {path} has unknown keys {unknown}: allowed are {sorted(RECIPE_KEYS)}")
    merged = dict(current)
    for key, kind in RECIPE_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise SlimnetError(f"recipe {path}: {key} must be a {kind.__name__}")
        source = ctx.get_parameter_source(key)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            merged[key] = value
    return merged


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"slimnet shrink: {report.get('model')}", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    p, m = report["params"], report["macs"]
    table.add_row("params", fmt(p[0]), fmt(p[1]), _ratio(p[0], p[1]))
    table.add_row("MACs (fvcore)", fmt(m[0]), fmt(m[1]), _ratio(m[0], m[1]))
    out.print(table)
    out.print(
        f"groups: {report['groups']} found, {report['pruned_groups']} pruned, {len(report['skipped'])} left whole; "
        f"criterion {report['criterion']}, ratio {report['ratio']}, round-to {report['round_to']}"
    )
    verdict = "exact" if report.get("exact") else "approximate (normalised groups pruned on request)"
    out.print(
        f"verified ({verdict}): max abs diff {report['max_abs_diff']:.3g} <= tolerance "
        f"{report['tolerance']:.3g} on {', '.join(report['verify_inputs'])}; {report.get('seconds', 0):.1f} s"
    )
    if report.get("verify_randomised"):
        out.print(
            f"  and again with the model's {report['verify_randomised']} constant tensors (fresh norms, zero "
            f"biases or classifier), where a wrong cut could hide, randomised: max abs diff "
            f"{report['verify_randomised_diff']:.3g} (float32)"
        )
    if report["skipped"]:
        skipped = Table(title="left whole", show_header=True)
        skipped.add_column("group")
        skipped.add_column("reason")
        for s in report["skipped"]:
            skipped.add_row(s["group"], s["reason"])
        out.print(skipped)
    if report.get("output"):
        out.print(f"wrote {report['output']} and {report['plan']}")


# ------------------------------------------------------------------------------------------ apply
def apply(
    model: Architecture,
    plan: PlanFile,
    output: Annotated[str, output_option("Where to write the pruned model.")],
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    trust_pickle: TrustPickle = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Apply a saved plan to a fresh instance of the same architecture, verify it, and save the result."""
    with guarded(debug):
        out_path = check_output(output, [parse_spec(model).file, plan, weights or ""])
        from .. import api  # lazy: CLI start-up
        from .. import plan as plan_mod  # lazy: CLI start-up
        from .._tensors import count_params  # lazy: CLI start-up

        the_plan = plan_mod.load(plan)
        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        api.check_runs(loaded.model, example)
        pruned, result = api.apply(loaded.model, the_plan, example)
        if result is not None and not result.passed:
            raise VerificationError(f"verification failed: {result.error}; nothing was written")
        save_model_atomic(pruned, out_path)
        report = {
            "model": model,
            "plan": plan,
            "output": str(out_path),
            "params": [count_params(loaded.model), count_params(pruned)],
            "tensors": len(the_plan["tensors"]),
            "max_abs_diff": result.max_abs_diff if result else None,
            "tolerance": result.tolerance if result else None,
            "verified": bool(result and result.passed),
        }
        if as_json:
            emit_json(report)
        else:
            out.print(
                f"applied {plan} to {model}: {report['tensors']} tensors cut, params "
                f"{fmt(report['params'][0])} -> {fmt(report['params'][1])}; verified, max abs diff "
                f"{report['max_abs_diff']:.3g}; wrote {out_path}"
            )


# ------------------------------------------------------------------------------------------ graph
def graph(
    model: Model,
    weights: Weights = None,
    input_file: InputFile = None,
    input_shape: InputShape = None,
    members: Members = False,
    trust_pickle: TrustPickle = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Show the coupled channel groups of MODEL: members, channels, and why a group cannot be pruned."""
    with guarded(debug):
        from .. import api  # lazy: CLI start-up

        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        groups = [g.describe() for g in api.graph(loaded.model, example).groups]
        prunable = sum(1 for g in groups if g["prunable"])
        if as_json:
            emit_json({"model": model, "groups": groups, "prunable": prunable})
            return
        table = Table(title=f"channel groups of {model}")
        for col in ("id", "group", "units", "members", "prunable / why not"):
            table.add_column(col)
        for g in groups:
            mem = ", ".join(g["members"]) if members else f"{len(g['members'])} tensors dims"
            why = "yes" if g["prunable"] else g["reason"]
            if g["prunable"] and g["normalised"]:
                why = f"only with --prune-norm ({g['normalised']})"
            table.add_row(str(g["id"]), g["name"], str(g["units"]), mem, why)
        out.print(table)
        out.print(f"{len(groups)} groups, {prunable} prunable")
