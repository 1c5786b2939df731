"""When the verifier rejects a plan: find the groups whose cuts are wrong, and leave them whole.

The channel rules should never produce a wrong cut; the verifier is there for the day one does (a rule that
misreads an op, a forward that reads a size from somewhere the analysis did not see). Refusing the whole model
then punishes the user for slimnet's bug, so :func:`slimnet.api.shrink` asks this module which groups are to
blame, leaves them whole with a reason that says so, plans again and verifies again; a wrong cut can never get
through, because the final plan passes the same verifier as any other.

:func:`find_culprits` bisects the pruned groups: a half whose cuts alone fail verification is searched further,
down to single groups; when neither half fails alone but both together do (cuts that are only wrong in
combination), the whole set is blamed. Each probe is one pruned copy and one verification.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..allocate.decide import Decision
from ..cut.surgeon import pruned_copy
from ..groups import Analysis
from ..plan import build_plan
from .verifier import verify

#: What a group whose cut failed verification is told; the verifier's own error follows it.
BUG = "its cut failed verification, so it is left whole (a bug in slimnet's channel rules: please report it"


def fails(model: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]) -> bool:
    """Whether cutting only these decisions' groups fails verification (a crash while cutting or checking
    counts as failing)."""
    plan = build_plan(analysis, decisions, model_name="", criterion="", ratio=0.0, round_to=1, seed=0)
    try:
        pruned = pruned_copy(model, plan)
        checks, pieces, taps = analysis.checks, analysis.pieces, analysis.taps
        checked = verify(model, pruned, plan, example, inputs=checks, pieces=pieces, taps=taps)
        return not checked.passed
    except Exception:  # noqa: BLE001 - a crash during the re-check blames the groups cut in it
        return True


def find_culprits(model: nn.Module, example: Any, analysis: Analysis, decisions: list[Decision]) -> list[Decision]:
    """The pruned decisions to blame for a failed verification of all of them (empty when the pruned groups
    pass on their own, which means the failure lies elsewhere)."""
    pruned = [d for d in decisions if d.pruned]

    def search(ds: list[Decision]) -> list[Decision]:
        if len(ds) == 1:
            return ds
        halves = (ds[: len(ds) // 2], ds[len(ds) // 2 :])
        bad = [d for half in halves if fails(model, example, analysis, half) for d in search(half)]
        return bad or ds  # neither half fails alone: only the combination does, so all of it goes

    if not pruned or not fails(model, example, analysis, pruned):
        return []
    return search(pruned)


def leave_whole(analysis: Analysis, culprits: list[Decision], error: str | None) -> Analysis:
    """The analysis with the culprits' groups left whole, each with :data:`BUG` and the verifier's error."""
    detail = (error or "verification failed").strip().splitlines()[0][:240]
    why = f"{BUG}: {detail})"
    ids = {d.group.id for d in culprits}
    groups = [dataclasses.replace(g, reason=why) if g.id in ids else g for g in analysis.groups]
    return dataclasses.replace(analysis, groups=groups)
