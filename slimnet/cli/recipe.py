"""Recipes: ``slimnet shrink --recipe FILE``, a YAML mapping of the shrink command's settings under the flags given
explicitly. A typo is an error, not a silently ignored key. No torch here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .._util import first_line
from ..errors import SlimnetError
from ..settings import FIELD_OF, SCHEMA, check_schema

#: the recipe's keys and the types each takes: the settings schema, one definition (:mod:`slimnet.settings`)
RECIPE_KEYS = SCHEMA
#: recipe key -> the shrink command's parameter, where they differ
PARAMS = FIELD_OF


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
    check_schema(data, f"recipe {path}")
    merged = dict(current)
    for key, value in data.items():
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
