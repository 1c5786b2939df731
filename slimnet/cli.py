"""The command line: a thin typer shell over :mod:`slimnet.api`.

Every command prints a rich table, or with ``--json`` exactly one JSON object on stdout. Every user error is
one line on stderr and a non-zero exit (2 for bad input, 3 for a failed verification, 130 for Ctrl-C), with
the traceback only under ``--debug``. Outputs are written to temporary files and renamed at the end, so an
error or an interrupt never leaves a half-written file, and the input is never modified.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from ._util import first_line, save_atomic
from .errors import SlimnetError
from .settings import check_settings
from .spec import parse_spec

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="slimnet: shrink PyTorch models into physically smaller dense ones, with every cut verified.",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

TRUST_HELP = "Fully unpickle a model file (runs code named in the file; only for files you trust)."
DEBUG_HELP = "Show the full traceback on errors."


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slimnet {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """slimnet: shrink PyTorch models into physically smaller dense ones, with every cut verified."""


@contextlib.contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn every failure into one line and an exit code (tracebacks only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except SlimnetError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: nothing was written", highlight=False)
        raise typer.Exit(130) from None
    except MemoryError:
        err.print("error: out of memory: try a smaller --input-shape", highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - a bug in slimnet; still one line unless --debug
        if debug:
            raise
        first = first_line(exc, "")
        err.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {first} (run again with --debug for the "
            "traceback, and please report it)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None


def check_output(output: str, inputs: list[str], suffixes: tuple[str, ...] = (), folder: bool = False) -> Path:
    """The output path must differ from every input (a FILE.py:FACTORY spec's file included), and its folder
    must exist and be writable."""
    p = Path(output)
    for i in inputs:
        if i and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise SlimnetError(f"output {output} is the input: give another -o so that the input stays untouched")
        if i and Path(i).resolve() == p.resolve():
            raise SlimnetError(f"output {output} is the input: give another -o so that the input stays untouched")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise SlimnetError(f"output folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise SlimnetError(f"output folder {parent} is not writable")
    if p.is_dir() and not folder:
        raise SlimnetError(f"output {output} is a folder: give a file name such as model-slim.pt")
    if folder and p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise SlimnetError(f"output {output} exists and is not an empty folder: give a new folder name")
    return p


def save_model_atomic(model: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename."""
    import torch

    save_atomic(path, lambda tmp: torch.save(model, tmp))


def model_inputs(
    model: str, weights: Optional[str], input_file: Optional[str], input_shape: Optional[str], trust_pickle: bool
) -> tuple[Any, Any]:
    from .load import model_and_input

    return model_and_input(model, weights, input_file, input_shape, trust_pickle)


def wants_folder(output: str, model: str) -> bool:
    """A Hugging Face model written with -o NAME (no .pt/.pth suffix) becomes a save_pretrained folder."""
    return model.startswith("hf:") and Path(output).suffix.lower() not in (".pt", ".pth", ".bin")


def _emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def _fmt(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"slimnet shrink: {report.get('model')}", show_header=True)
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("ratio", justify="right")
    p, m = report["params"], report["macs"]
    table.add_row("params", _fmt(p[0]), _fmt(p[1]), _ratio(p[0], p[1]))
    table.add_row("MACs (fvcore)", _fmt(m[0]), _fmt(m[1]), _ratio(m[0], m[1]))
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


RECIPE_KEYS = {"ratio": float, "criterion": str, "round_to": int, "ignore": list, "seed": int, "prune_norm": bool}


def recipe_settings(ctx: typer.Context, path: str, current: dict[str, Any]) -> dict[str, Any]:
    """Merge a recipe (plain YAML mapping) under the flags given on the command line; unknown keys are an error,
    so that a typo cannot pass silently."""
    import yaml

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


@app.command()
def shrink(
    ctx: typer.Context,
    model: str = typer.Argument(
        ..., help="torchvision:NAME, timm:NAME, hf:FOLDER, FILE.py:FACTORY, or a torch.save(model) file."
    ),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        help="Where to write the pruned model (torch.save); for "
        "hf: models a name without .pt is a save_pretrained folder.",
    ),
    ratio: float = typer.Option(0.5, "--ratio", "-r", help="Fraction of each group's channels to drop, 0 <= R < 1."),
    criterion: str = typer.Option("l1", "--criterion", "-c", help="l1, l2, fpgm, random or bn-scale."),
    round_to: int = typer.Option(8, "--round-to", help="Kept channel counts are rounded to a multiple of this."),
    ignore: list[str] = typer.Option([], "--ignore", help="Glob of module names to leave untouched (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the random criterion."),
    prune_norm: bool = typer.Option(
        False,
        "--prune-norm",
        help="Also prune groups normalised by LayerNorm (not exact: the verifier then reports the difference).",
    ),
    prune_embed: bool = typer.Option(
        False,
        "--prune-embed",
        help="Transformers: also prune the embedding (residual-stream) width; the same as --prune-norm.",
    ),
    head_ratio: Optional[float] = typer.Option(
        None, "--head-ratio", help="Fraction of attention heads to drop (default: --ratio)."
    ),
    weights: Optional[str] = typer.Option(None, "--weights", help="state_dict to load into FILE.py:FACTORY."),
    input_file: Optional[str] = typer.Option(None, "--input", help="Example input saved with torch.save."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Example input shape, e.g. 1,3,224,224."),
    onnx: Optional[str] = typer.Option(None, "--onnx", help="Also export the pruned model to this ONNX file."),
    recipe: Optional[str] = typer.Option(
        None,
        "--recipe",
        help="YAML file of settings (ratio, criterion, "
        "round_to, ignore, seed, prune_norm); flags given explicitly win.",
    ),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Prune MODEL: trace, group coupled channels, rank, cut, verify, and save the smaller model and its plan."""
    with guarded(debug):
        from . import api
        from . import plan as plan_mod

        if recipe is not None:
            settings = recipe_settings(
                ctx,
                recipe,
                {
                    "ratio": ratio,
                    "criterion": criterion,
                    "round_to": round_to,
                    "ignore": ignore,
                    "seed": seed,
                    "prune_norm": prune_norm,
                },
            )
            ratio, criterion, round_to = settings["ratio"], settings["criterion"], settings["round_to"]
            ignore, seed, prune_norm = settings["ignore"], settings["seed"], settings["prune_norm"]

        check_settings(ratio=ratio, criterion=criterion, round_to=round_to, head_ratio=head_ratio)
        folder = wants_folder(output, model)
        out_path = check_output(output, [parse_spec(model).file, weights or "", input_file or ""], folder=folder)
        plan_path = plan_mod.plan_path_for(out_path)
        check_output(str(plan_path), [parse_spec(model).file])
        onnx_path = check_output(onnx, [parse_spec(model).file, output]) if onnx else None
        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        result = api.shrink(
            loaded.model,
            example,
            ratio=ratio,
            criterion=criterion,
            round_to=round_to,
            ignore=ignore,
            seed=seed,
            prune_norm=prune_norm or prune_embed,
            model_name=model,
            head_ratio=head_ratio,
        )
        report = result.report
        if onnx_path is not None:
            from .export import export_onnx

            report["onnx"] = export_onnx(result.model, example, onnx_path)
        plan_mod.save(result.plan, plan_path)
        try:
            if folder:
                from .hf import save_pretrained

                save_pretrained(result.model, result.plan, out_path)
            else:
                save_model_atomic(result.model, out_path)
        except BaseException:
            plan_path.unlink(missing_ok=True)
            raise
        report["output"], report["plan"] = str(out_path), str(plan_path)
        if as_json:
            _emit_json(report)
        else:
            print_report(report)


@app.command()
def apply(
    model: str = typer.Argument(..., help="The original architecture: torchvision:NAME, FILE.py:FACTORY or a file."),
    plan: str = typer.Argument(..., help="A slimnet.plan/1 JSON file."),
    output: str = typer.Option(..., "-o", "--output", help="Where to write the pruned model."),
    weights: Optional[str] = typer.Option(None, "--weights", help="state_dict to load into FILE.py:FACTORY."),
    input_file: Optional[str] = typer.Option(None, "--input", help="Example input saved with torch.save."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Example input shape, e.g. 1,3,224,224."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Apply a saved plan to a fresh instance of the same architecture, verify it, and save the result."""
    with guarded(debug):
        from . import api
        from . import plan as plan_mod
        from ._tensors import count_params
        from .errors import VerificationError

        out_path = check_output(output, [parse_spec(model).file, plan, weights or ""])
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
            _emit_json(report)
        else:
            out.print(
                f"applied {plan} to {model}: {report['tensors']} tensors cut, params "
                f"{_fmt(report['params'][0])} -> {_fmt(report['params'][1])}; verified, max abs diff "
                f"{report['max_abs_diff']:.3g}; wrote {out_path}"
            )


@app.command()
def graph(
    model: str = typer.Argument(..., help="torchvision:NAME, timm:NAME, FILE.py:FACTORY, or a torch.save(model) file."),
    weights: Optional[str] = typer.Option(None, "--weights", help="state_dict to load into FILE.py:FACTORY."),
    input_file: Optional[str] = typer.Option(None, "--input", help="Example input saved with torch.save."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Example input shape, e.g. 1,3,224,224."),
    members: bool = typer.Option(False, "--members", help="List every member tensor of each group."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    debug: bool = typer.Option(False, "--debug", help=DEBUG_HELP),
) -> None:
    """Show the coupled channel groups of MODEL: members, channels, and why a group cannot be pruned."""
    with guarded(debug):
        from . import api

        loaded, example = model_inputs(model, weights, input_file, input_shape, trust_pickle)
        analysis = api.graph(loaded.model, example)
        groups = [g.describe() for g in analysis.groups]
        if as_json:
            _emit_json({"model": model, "groups": groups, "prunable": sum(1 for g in groups if g["prunable"])})
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
        out.print(f"{len(groups)} groups, {sum(1 for g in groups if g['prunable'])} prunable")


def _register_extras() -> None:
    """export and bench live in their own module; the core works without them."""
    try:
        from .cli_measure import register
    except ImportError:  # pragma: no cover - only while that module is absent
        return
    register(app)


_register_extras()
