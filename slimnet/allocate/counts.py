"""How many units a group may keep: the rounding rule, the floor under every cut, the uniform share, and the
per-group shares of a ``--ratios`` file resolved to group names.

A group of ``n`` units rounds its kept count to a *step*: ``--round-to N`` channels, i.e. ``N / gcd(N, c)`` units
when each unit has ``c`` channels (a grouped conv's group, an attention head). Its *floor* is the fewest units any
allocation leaves it: one step (a group of at most one step keeps at least one unit) and, for the global and
latency allocations, ``n x (1 - max_layer_ratio)`` rounded up to a step.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Mapping, Sequence

from ..errors import SlimnetError
from ..groups import Group
from ..settings import check_ratio


def keep_count(n: int, ratio: float, round_to: int, unit_channels: int = 1) -> int:
    """How many of ``n`` units a group keeps (see :mod:`slimnet.plan` for the rounding rule)."""
    target = n * (1.0 - ratio)
    step = max(1, round_to // math.gcd(round_to, unit_channels)) if round_to > 1 else 1
    if n <= step:
        return max(1, min(n, int(math.floor(target + 0.5))))
    k = int(math.floor(target / step + 0.5)) * step
    return max(step, min(n, k))


def unit_channels(group: Group) -> int:
    """Channels per unit in the group's first member (a grouped conv's group, a head's width...)."""
    first = group.members[0]
    return max(1, len(group.units[0].members[first]))


def round_to_of(group: Group, round_to: int) -> int:
    """The multiple ``group`` rounds to: ``round_to``, or the group's own floor where that is larger (a decoder
    LM's MLP: :attr:`slimnet.groups.Group.round_to`)."""
    return max(round_to, group.round_to)


def step_of(group: Group, round_to: int) -> int:
    """Units per rounding step."""
    round_to = round_to_of(group, round_to)
    return max(1, round_to // math.gcd(round_to, unit_channels(group))) if round_to > 1 else 1


def floor_of(group: Group, round_to: int, max_layer_ratio: float | None = None) -> int:
    """The fewest units an allocation leaves ``group``: one step (one unit for a group of at most one step), and
    with ``max_layer_ratio`` at least ``n x (1 - max_layer_ratio)``, rounded up to a step."""
    n, step = len(group.units), step_of(group, round_to)
    lowest = step if n > step else 1
    if max_layer_ratio is not None:
        need = math.ceil(n * (1.0 - max_layer_ratio) - 1e-9)
        lowest = max(lowest, -(-need // step) * step if n > step else need)
    return max(1, min(n, lowest))


def round_count(group: Group, k: float, round_to: int, lowest: int) -> int:
    """``k`` units rounded to the nearest step (halves up), within ``lowest .. n``."""
    n, step = len(group.units), step_of(group, round_to)
    r = int(math.floor(k + 0.5)) if n <= step else int(math.floor(k / step + 0.5)) * step
    return max(lowest, min(n, r))


def uniform_counts(
    groups: Sequence[Group],
    ratio: float,
    round_to: int,
    head_ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
) -> dict[int, int]:
    """Units kept per group id: ``ratio`` of every group dropped (``head_ratio`` for heads groups, a group's own
    entry in ``ratios`` for the groups it names)."""
    counts = {}
    for g in groups:
        r = head_ratio if (head_ratio is not None and g.kind == "heads") else ratio
        r = ratios.get(g.name, r) if ratios else r
        counts[g.id] = keep_count(len(g.units), r, round_to_of(g, round_to), unit_channels(g))
    return counts


def resolve_ratios(
    spec: Mapping[str, float], groups: Sequence[Group], left_whole: Mapping[str, str] | None = None
) -> dict[str, float]:
    """A ``--ratios`` mapping (group name or glob over group names -> share to drop) as group name -> share.

    A group's name is the module that produces its channels (``layer1.0.conv1``), so module globs
    (``layer1.*``) select groups. Where several keys match a group the last one in the mapping wins, except that
    an exact name beats every glob. A key that matches no group is an error naming the closest group; so is one
    that matches only groups left whole (``left_whole``: name -> reason)."""
    names = [g.name for g in groups]
    left_whole = dict(left_whole or {})
    exact: dict[str, float] = {}
    globbed: dict[str, float] = {}
    for key, ratio in spec.items():
        if not isinstance(key, str) or isinstance(ratio, bool) or not isinstance(ratio, (int, float)):
            raise SlimnetError(f"--ratios: {key!r}: {ratio!r} must map a group name or glob to a number")
        check_ratio(float(ratio), f"--ratios {key}:")
        hits = [n for n in names if n == key] or [n for n in names if fnmatch.fnmatchcase(n, key)]
        if not hits:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.0)
            hint = f"; the closest group is {close[0]!r}" if close else ""
            raise SlimnetError(f"--ratios: {key!r} names no group{hint} (see `slimnet graph` for the names)")
        usable = [n for n in hits if n not in left_whole]
        if not usable:
            raise SlimnetError(f"--ratios: group {hits[0]!r} cannot be pruned ({left_whole[hits[0]]}): drop {key!r}")
        target = exact if key in names else globbed
        target.update({n: float(ratio) for n in usable})
    return {**globbed, **exact}
