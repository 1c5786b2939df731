"""Recipes: ``slimnet shrink --recipe FILE``, a YAML mapping of the shrink command's settings under the flags given
explicitly. A typo is an error, not a silently ignored key. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .._util import first_line
from ..errors import SlimnetError

NUMBER = (int, float)
RECIPE_KEYS: dict[str, tuple[type, ...]] = {
    "ratio": NUMBER,
    "criterion": (str,),
    "round_to": (int,),
    "ignore": (list,),
    "seed": (int,),
    "prune_norm": (bool,),
    "head_ratio": NUMBER,
    "target_macs": NUMBER,
    "target_params": NUMBER,
    "target_latency": (str, *NUMBER),
    "backend": (str,),
    "threads": (int,),
    "batch_size": (int,),
    "global": (bool,),
    "max_layer_ratio": NUMBER,
    "ratios": (dict, str),
}
#: recipe key -> the shrink command's parameter, where they differ
PARAMS = {"global": "use_global"}


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
    for key, kinds in RECIPE_KEYS.items():
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise SlimnetError(f"recipe {path}: {key} must be a {' or '.join(k.__name__ for k in kinds)}")
        if key == "ratios" and isinstance(value, str):
            value = str((p.parent / value).resolve()) if not Path(value).is_absolute() else value
        if not _explicit(ctx, key):
            merged[key] = value
    return merged


def merged_settings(ctx: typer.Context, recipe: str | None, given: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Flags over recipe over defaults, and whether --ratio was asked for (a flag, or a recipe whose ratio no
    target flag overrides). A target flag replaces the recipe's ratio and targets; a --ratio flag its targets."""
    data = recipe_settings(ctx, recipe, given) if recipe is not None else dict(given)
    flag_ratio = _explicit(ctx, "ratio")
    flag_target = any(given[k] is not None for k in TARGET_KEYS)
    if recipe is None:
        return data, flag_ratio
    if flag_target:
        data["ratio"] = given["ratio"]
        data.update({k: given[k] for k in TARGET_KEYS})
    elif flag_ratio:
        data.update({k: None for k in TARGET_KEYS})
    return data, flag_ratio or (not flag_target and "ratio" in _recipe_keys(recipe))


TARGET_KEYS = ("target_macs", "target_params", "target_latency")


def _explicit(ctx: typer.Context, key: str) -> bool:
    source = ctx.get_parameter_source(PARAMS.get(key, key))
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _recipe_keys(path: str) -> set[str]:
    import yaml  # lazy: CLI start-up

    return set(yaml.safe_load(Path(path).read_text()) or {})
