"""The allocation options of ``slimnet shrink`` (targets, ``--global``, ``--ratios``, latency tables): declared
once, checked before torch is imported, and printed after the run. No torch here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .._util import first_line
from ..errors import SlimnetError
from ..settings import BACKENDS, check_counts, check_ratio
from .common import say

TargetMacs = Annotated[
    Optional[float],
    typer.Option("--target-macs", help="Kept share of the original's MACs to reach (0 < F < 1), instead of --ratio."),
]
TargetParams = Annotated[
    Optional[float],
    typer.Option("--target-params", help="Kept share of the original's parameters to reach, instead of --ratio."),
]
TargetLatency = Annotated[
    Optional[str],
    typer.Option(
        "--target-latency",
        help="Latency to reach on --backend: a fraction of the original's measured latency (0.5) or a time "
        "(12ms). Widths are chosen from a latency table measured on this machine (cached).",
    ),
]
Global = Annotated[
    bool,
    typer.Option(
        "--global", help="Rank all groups' units together (scores normalised per group) instead of one share each."
    ),
]
MaxLayerRatio = Annotated[
    float,
    typer.Option(
        "--max-layer-ratio",
        help="With --global or --target-latency: the largest share of one group's channels dropped.",
    ),
]
RatiosFile = Annotated[
    Optional[str],
    typer.Option(
        "--ratios", help="YAML or JSON file: group name or module glob -> share to drop (e.g. 'layer1.*: 0.3')."
    ),
]
LatencyBackend = Annotated[
    str, typer.Option("--backend", help=f"Where --target-latency is measured: {', '.join(BACKENDS)}.")
]
LatencyThreads = Annotated[int, typer.Option("--threads", help="Threads for --target-latency (default 1).")]
LatencyBatch = Annotated[int, typer.Option("--batch-size", help="Batch size for --target-latency (default 1).")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Measure the latency table again instead of reading it.")]


def load_ratios(path: str | Path) -> dict[str, float]:
    """A ``--ratios`` file: a YAML (or JSON, which is YAML) mapping of group names or globs to shares."""
    import yaml  # lazy: CLI start-up

    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"--ratios {path} does not exist")
    try:
        data = json.loads(p.read_text()) if p.suffix.lower() == ".json" else yaml.safe_load(p.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise SlimnetError(
            f"--ratios {path} is not valid {p.suffix.lstrip('.').upper() or 'YAML'}: {first_line(exc)}"
        ) from None
    return check_ratios(data, f"--ratios {path}")


def check_ratios(data: Any, where: str) -> dict[str, float]:
    """A mapping of names to shares in 0 <= R < 1."""
    if not isinstance(data, dict) or not data:
        raise SlimnetError(f"{where} must be a mapping of group names or globs to shares, such as 'layer1.*: 0.3'")
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SlimnetError(f"{where}: {key}: {value!r} must be a share to drop, 0 <= R < 1")
        check_ratio(float(value), f"{where}: {key}:")
    return {str(k): float(v) for k, v in data.items()}


def allocation_settings(s: dict[str, Any], explicit_ratio: bool) -> dict[str, Any]:
    """Turn the allocation settings (merged flags and recipe) into :class:`slimnet.settings.ShrinkSettings`'s
    fields, refusing what only the command line can get wrong (--ratio beside a target; the values themselves are
    checked once, by ShrinkSettings). ``explicit_ratio``: --ratio was given (on the command line or in the recipe)."""
    targets = {"macs": s.get("target_macs"), "params": s.get("target_params"), "latency": s.get("target_latency")}
    kind = next((k for k, v in targets.items() if v is not None), None)  # checked with the rest in ShrinkSettings
    check_counts(batch_size=s["batch_size"], threads=s["threads"])
    if kind is not None and explicit_ratio:
        raise SlimnetError(f"--ratio and --target-{kind} both say how much to drop: give one of them")
    ratios = s.get("ratios")
    if isinstance(ratios, str):
        ratios = load_ratios(ratios)
    elif ratios is not None:
        ratios = check_ratios(ratios, "recipe ratios")
    ratio = s["ratio"]
    if ratios and not explicit_ratio and kind is None and not s["global"]:
        ratio = 0.0  # a --ratios file is the whole allocation: the groups it does not name stay whole
    return {
        "ratio": ratio,
        "target_macs": s.get("target_macs"),
        "target_params": s.get("target_params"),
        "target_latency": s.get("target_latency"),
        "use_global": s["global"],
        "max_layer_ratio": s["max_layer_ratio"],
        "ratios": ratios,
        "backend": s["backend"],
        "threads": s["threads"],
        "batch_size": s["batch_size"],
        "cache": not s["no_cache"],
    }


#: what a target's kind keeps a share of, in the text output
KEPT = {"macs": "MACs", "params": "parameters", "units": "prunable channels"}


def print_target(report: dict[str, Any]) -> None:
    """What a target or global ranking reached, after the main table."""
    t = report.get("target")
    imp = report.get("importance_kept") or {}
    if imp and (t is not None or report.get("global")):
        say(f"importance kept: {imp['share']:.3f} of the prunable groups' (scores of the kept units)")
    if t is None:
        g = report.get("global")
        if g:
            say(f"global ranking: {g['note']}")
        return
    mark = "within tolerance" if t["within_tolerance"] else "outside tolerance"
    if t["kind"] != "latency":
        say(
            f"target ({t['allocation']}): kept share of {KEPT.get(t['kind'], t['kind'])} {t['wanted']} wanted, "
            f"{t['reached']:.4f} reached ({mark}: {t['note']})"
        )
        return
    table = t["table"]
    say(
        f"target (latency, {t['backend']}, {t['threads']} thread(s), batch {t['batch_size']}): {t['wanted']:.3f} "
        f"of the original wanted; predicted {t['predicted_fraction']:.3f}, measured {t['reached']:.3f} "
        f"({t['measured_ms']:.3g} ms of {t['measured_original_ms']:.3g} ms; {mark}; {t['rounds']} round(s))"
    )
    cached = (
        f"read from {table['path']} in {table['seconds']:.1f} s (saved {table['saved_seconds']:.1f} s)"
        if table["cached"]
        else f"measured in {table['build_seconds']:.1f} s" + (f", cached at {table['path']}" if table["path"] else "")
    )
    say(f"latency table of {table['groups']} groups {cached}")
