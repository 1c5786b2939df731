"""Widths for Llama-style decoder LMs (Llama, Mistral, Qwen2/3, Gemma/Gemma2, Phi-3): what makes a shrunk LM a
*standard* transformers folder (:func:`slimnet.load.hf.save_pretrained`), which states one head count, one key/value
head count and one MLP width for all layers.

The channel analysis already gives what the config can state: a heads group per layer whose units are whole
key/value groups (a key/value head with the query heads it serves, so the GQA ratio stays), an MLP group per layer,
and, the layers being alike, a uniform ratio keeps the same counts in every layer. Two rules are added here:

* an MLP whose width is a multiple of 64 keeps a multiple of 64 (or of ``--round-to`` where that is larger), the
  width inference kernels and tensor-parallel shards expect (:attr:`slimnet.groups.Group.round_to`);
* a ratio that would leave a layer no key/value group is refused, instead of quietly keeping one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..errors import SlimnetError
from ..groups import Analysis, Group
from ..load.hf import is_standard_decoder
from .counts import resolve_ratios

#: An LLM's MLP keeps a multiple of this many hidden units (when its original width is one).
MLP_MULTIPLE = 64


def mark_decoder_groups(analysis: Analysis, model: nn.Module) -> bool:
    """Give the MLP groups of a Llama-style decoder their rounding floor; True when ``model`` is one."""
    if not is_standard_decoder(model):
        return False
    mark_mlp_groups(analysis.groups)
    return True


def mark_mlp_groups(groups: Sequence[Group]) -> None:
    """The MLP groups among ``groups`` (a decoder's) whose width is a multiple of 64 keep a multiple of 64: the
    rule both the in-memory planner and the low-memory path (:mod:`slimnet.llm.shrink`) apply."""
    for g in groups:
        if g.kind == "channels" and _is_mlp(g) and len(g.units) % MLP_MULTIPLE == 0:
            g.round_to = MLP_MULTIPLE


def _is_mlp(group: Group) -> bool:
    """The group of one layer's MLP hidden units: it owns the input dim of that layer's ``mlp.down_proj``."""
    return any(t.endswith(".mlp.down_proj.weight") and d == 1 for t, d in group.members)


def check_whole_kv_groups(
    groups: Sequence[Group], ratio: float, head_ratio: float | None, ratios: Mapping[str, float] | None
) -> None:
    """A uniform share that keeps no key/value group of some layer is the user's error (one line): attention is
    cut in whole key/value groups, and a layer needs at least one."""
    pinned = resolve_ratios(ratios, groups) if ratios else {}
    for g in groups:
        if g.kind != "heads" or g.reason is not None:
            continue
        r = pinned.get(g.name, head_ratio if head_ratio is not None else ratio)
        n = len(g.units)
        if int(math.floor(n * (1.0 - r) + 0.5)) == 0:
            most = f"{1.0 - 0.5 / n:.4g}"
            if g.name in pinned:
                flag, fix = "--ratios", f"give {g.name} a share of at most {most} in --ratios"
            elif head_ratio is not None:
                flag, fix = "--head-ratio", f"give --head-ratio at most {most}"
            else:
                flag, fix = "--ratio", f"give --head-ratio at most {most} for attention (or a smaller --ratio)"
            raise SlimnetError(
                f"{flag} {r} leaves none of the {n} key/value groups of {g.name} (attention is cut in whole "
                f"key/value groups, a key/value head with its query heads): {fix}"
            )


def decoder_rules(analysis: Analysis, model: nn.Module, settings: Any) -> None:
    """Both rules for one plan (``settings``: a :class:`slimnet.settings.ShrinkSettings`); the GQA check only for a
    uniform share (a target or a global ranking keeps every group's floor of one unit)."""
    if not mark_decoder_groups(analysis, model):
        return
    if settings.target_kind is None and not settings.use_global:
        check_whole_kv_groups(analysis.groups, settings.ratio, settings.head_ratio, settings.ratios)
