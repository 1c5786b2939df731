"""The plan: which indices of which state_dict tensors survive. Plain data, the boundary between choosing
(criteria, allocation) and cutting (the surgeon).

Format ``slimnet.plan/1``::

    {"format": "slimnet.plan/1", "model": "...", "criterion": "fpgm", "ratio": 0.5,
     "tensors": {"layer1.0.conv1.weight": {"0": [0, 3, 4, ...]}, ...}}

Keys are the original model's ``state_dict()`` names; only tensors whose shape changes are listed; each changed
dim (a string) maps to the ascending indices it keeps. Extra fields (``round_to``, ``seed``, ``version``,
``groups``) may be added; readers ignore what they do not know.

Rounding (``--round-to N``, default 8): a group of ``n`` units keeps ``round(n * (1 - ratio))`` units, rounded
to the nearest multiple of N (halves up), and never fewer than N. Groups of at most N units cannot be rounded
meaningfully; they keep ``round(n * (1 - ratio))`` units, at least one. A unit of several channels (a group of
a grouped conv, a PixelShuffle block) counts its channels: the multiple is taken over channels.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._util import write_atomic
from ._version import __version__
from .errors import SlimnetError
from .settings import plan_path_for as plan_path_for  # re-exported: the plan file's place is part of the format

if TYPE_CHECKING:  # what build_plan reads; choosing lives in slimnet.allocate.decide
    from .allocate.decide import Decision
    from .groups import Analysis

FORMAT = "slimnet.plan/1"


def build_plan(
    analysis: Analysis,
    decisions: list[Decision],
    *,
    model_name: str,
    criterion: str,
    ratio: float,
    round_to: int,
    seed: int,
    head_ratio: float | None = None,
) -> dict[str, Any]:
    """Turn decisions into the plain ``slimnet.plan/1`` data."""
    dropped: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    for d in decisions:
        if not d.pruned:
            continue
        gone = np.ones(len(d.group.units), dtype=bool)
        gone[d.keep] = False
        for member in d.group.members:
            flat, starts = d.group.member_index(member)
            owner = np.repeat(np.arange(len(gone)), np.diff(starts))  # the unit of each index in ``flat``
            dropped[member].append(flat[gone[owner]])
    tensors: dict[str, dict[str, list[int]]] = {}
    for (name, dim), drop in sorted(dropped.items()):
        mask = np.ones(analysis.shapes[name][dim], dtype=bool)
        mask[np.concatenate(drop)] = False
        kept = np.flatnonzero(mask).tolist()
        for alias in analysis.aliases.get(name, [name]):
            tensors.setdefault(alias, {})[str(dim)] = kept
    extra = {"head_ratio": head_ratio} if head_ratio is not None else {}
    return {
        "format": FORMAT,
        "model": model_name,
        "criterion": criterion,
        "ratio": ratio,
        **extra,
        "round_to": round_to,
        "seed": seed,
        "version": __version__,
        "tensors": {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in sorted(tensors.items())},
    }


def dumps(plan: dict[str, Any]) -> str:
    """Deterministic text, one tensor per line: the same plan is always the same bytes, and diffs read well."""
    head = {k: v for k, v in plan.items() if k != "tensors"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f" {json.dumps(k)}: {json.dumps(v)},")
    lines.append(' "tensors": {')
    items = list(plan.get("tensors", {}).items())
    for i, (name, dims) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"  {json.dumps(name)}: {json.dumps(dims, separators=(', ', ': '))}{comma}")
    lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def save(plan: dict[str, Any], path: str | os.PathLike[str]) -> None:
    write_atomic(Path(path), dumps(plan).encode())


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"plan {path} does not exist")
    try:
        plan = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimnetError(f"plan {path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    validate(plan, str(path))
    return plan


def validate(plan: Any, where: str = "plan") -> None:
    """Check the structure of a plan (not yet whether it fits a model: the surgeon checks that)."""
    if not isinstance(plan, dict) or plan.get("format") != FORMAT:
        raise SlimnetError(f"{where} is not a {FORMAT} plan (its 'format' field is missing or different)")
    tensors = plan.get("tensors")
    if not isinstance(tensors, dict):
        raise SlimnetError(f"{where} has no 'tensors' mapping")
    for name, dims in tensors.items():
        if not isinstance(dims, dict):
            raise SlimnetError(f"{where}: entry {name!r} must map dims to index lists")
        for dim, idx in dims.items():
            if not str(dim).isdigit() or not isinstance(idx, list) or not all(isinstance(i, int) for i in idx):
                raise SlimnetError(f"{where}: entry {name!r} dim {dim!r} must be a list of ints")
            if idx != sorted(set(idx)) or not idx:
                raise SlimnetError(f"{where}: entry {name!r} dim {dim} must list ascending, distinct indices")
