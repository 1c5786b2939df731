"""Sensitivity analysis: each prunable group cut alone at each ratio, and how far the model moves.

For every prunable group and every ratio, the group (and only it) keeps the units the criterion ranks highest,
the cut is made by the surgeon (the same pruned copy ``shrink`` makes, so the number is the real one), and the
pruned model is compared with the original on the calibration data (:mod:`slimnet.repair.fidelity`: top-1 agreement
for classifiers, relative error otherwise, or any ``metric(model) -> float``). The MACs of each cut come from
the analysis' cost model. The result is plain data, format ``slimnet.sensitivity/1``::

    {"format": "slimnet.sensitivity/1", "model": ..., "criterion": "l1", "round_to": 8,
     "metric": "top1-agreement", "higher_is_better": true, "baseline": 1.0, "macs": 4.1e9,
     "ratios": [0.1, 0.3, 0.5, 0.7], "calibration": {...}, "repairs": [],
     "groups": [{"group": "layer1.0.conv1", "id": 3, "kind": "channels", "units": 64,
                 "points": [{"ratio": 0.1, "kept": 56, "value": 0.998, "loss": 0.002, "macs": 4.0e9}, ...]}]}

``loss`` is how much worse than the original a point is (``baseline - value`` when higher is better), which
is what an allocation minimises (:mod:`slimnet.allocate.sensitivity`). The file holds no timings, so the same
command gives the same bytes. Under ``torchrun --nproc-per-node N`` each rank sweeps every N-th group and rank 0
merges (:mod:`slimnet.distributed`): the same JSON as one process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .._util import write_atomic
from ..allocate.decide import Decision, decide
from ..cut.surgeon import pruned_copy
from ..distributed import World, gather
from ..errors import SlimnetError
from ..groups import Analysis, analyse
from ..plan import build_plan
from ..rank.statistics import Loss
from ..repair import calibrate
from ..repair.fidelity import Reference, fidelity, reference
from ..repair.steps import compensate_bias, recalibrate_bn
from ..settings import DEFAULT_ROUND_TO, check_ratio, check_settings

FORMAT = "slimnet.sensitivity/1"
DEFAULT_RATIOS = (0.1, 0.3, 0.5, 0.7)
Progress = Callable[[int, int, str], None]  # (done, total, group)


def parse_ratios(text: str | Sequence[float]) -> list[float]:
    """``"0.1,0.3"`` (or a list) -> sorted distinct ratios, each a fraction to drop."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()] if isinstance(text, str) else list(text)
    except ValueError:
        raise SlimnetError(f"--ratios {text!r} is not a list of numbers: give e.g. 0.1,0.3,0.5,0.7") from None
    if not values:
        raise SlimnetError("--ratios is empty: give e.g. 0.1,0.3,0.5,0.7")
    for v in values:
        check_ratio(v, "--ratios entry")
    return sorted(set(values))


def sensitivity(
    model: nn.Module,
    example: Any,
    data: Any,
    *,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    criterion: str = "l1",
    round_to: int = DEFAULT_ROUND_TO,
    ignore: list[str] | None = None,
    prune_norm: bool = False,
    seed: int = 0,
    loss: Loss | None = None,
    metric: Callable[[nn.Module], float] | None = None,
    higher_is_better: bool = True,
    analysis: Analysis | None = None,
    model_name: str = "",
    world: World | None = None,
    progress: Progress | None = None,
    recalibrate_bn: bool = False,
    compensate_bias: bool = False,
) -> dict[str, Any] | None:
    """The sweep (module docstring). ``metric``: any ``metric(pruned_model) -> float`` instead of the default,
    ``higher_is_better`` its direction. ``recalibrate_bn`` / ``compensate_bias``: each cut is repaired before it
    is measured (:mod:`slimnet.repair.steps`), so that the sweep measures what a repaired pipeline will deploy. With a
    ``world`` of several ranks, rank 0 returns the merged result and the others None."""
    ratios = parse_ratios(ratios)
    check_settings(ratio=0.0, criterion=criterion, round_to=round_to)
    world = world or World()
    model = model.eval()
    calibration = calibrate.prepare(model, example, data, criterion)
    if calibration is None:
        raise SlimnetError("sensitivity needs calibration data: give --data")
    analysis = analysis or analyse(model, example)
    stats = calibrate.statistics(model, analysis, criterion, calibration, loss, seed)
    ref = reference(model, calibration.batches)
    settings = {"criterion": criterion, "round_to": round_to, "ignore": ignore, "seed": seed, "prune_norm": prune_norm}
    whole = decide(analysis, model, ratio=0.0, stats=stats, **settings)
    groups = [d.group for d in whole if d.reason is None]
    if not groups:
        raise SlimnetError("the model has no prunable group to measure")
    mine = groups[world.rank :: world.size]
    sweep = _Sweep(model, analysis, ref, (metric, higher_is_better), stats, settings)
    sweep.repairs = ("compensate_bias",) * compensate_bias + ("recalibrate_bn",) * recalibrate_bn
    rows = []
    for i, g in enumerate(mine):
        rows.append(sweep.group(g, ratios))
        if progress is not None:
            progress(i + 1, len(mine), g.name)
    parts = gather(world, rows)
    if parts is None:
        return None
    merged = sorted((row for part in parts for row in part), key=lambda r: r["id"])
    custom = metric is not None
    return {
        "format": FORMAT,
        "model": model_name or type(model).__name__,
        "criterion": criterion,
        "round_to": round_to,
        "metric": "custom" if custom else ref.metric,
        "higher_is_better": higher_is_better if custom else ref.higher_is_better,
        "baseline": sweep.baseline,
        "macs": sweep.full_macs,
        "ratios": ratios,
        "calibration": calibration.describe(),
        "repairs": list(sweep.repairs),
        "groups": merged,
    }


class _Sweep:
    """Cuts one group at a time and measures it (the state every point of the sweep shares)."""

    def __init__(self, model: nn.Module, analysis: Analysis, ref: Reference, metric: tuple, stats: Any, settings: dict):
        self.model, self.analysis, self.ref = model, analysis, ref
        self.metric, higher = metric  # a custom metric(model) and its direction, or (None, _): the reference's
        self.stats, self.settings = stats, settings
        self.higher = ref.higher_is_better if self.metric is None else higher
        self.baseline = fidelity(model, ref, self.metric) if self.metric is not None else ref.perfect
        cost = analysis.cost
        self.full_macs = int(cost.macs()) if cost is not None else None
        self.repairs: tuple[str, ...] = ()

    def group(self, g: Any, ratios: list[float]) -> dict[str, Any]:
        points = [self.point(g, r) for r in ratios]
        return {"group": g.name, "id": g.id, "kind": g.kind, "units": len(g.units), "points": points}

    def point(self, g: Any, ratio: float) -> dict[str, Any]:
        decisions = decide(
            self.analysis, self.model, ratio=0.0, ratios={g.name: ratio}, stats=self.stats, **self.settings
        )
        d = next(d for d in decisions if d.group.id == g.id)
        if d.pruned:
            value = fidelity(self._cut(decisions), self.ref, self.metric)
        else:
            value = self.baseline
        return {
            "ratio": ratio,
            "kept": len(d.keep),
            "value": value,
            "loss": self._loss(value),
            "macs": self._macs(decisions),
        }

    def _cut(self, decisions: list[Decision]) -> nn.Module:
        """The pruned copy, repaired as asked."""
        plan = build_plan(self.analysis, decisions, model_name="", criterion="", ratio=0.0, round_to=1, seed=0)
        pruned = pruned_copy(self.model, plan).eval()
        if "compensate_bias" in self.repairs:
            compensate_bias(self.model, pruned, plan, self.analysis, self.ref.batches)
        if "recalibrate_bn" in self.repairs:
            recalibrate_bn(pruned, self.ref.batches)
        return pruned

    def _loss(self, value: float) -> float:
        return max(0.0, (self.baseline - value) if self.higher else (value - self.baseline))

    def _macs(self, decisions: list[Decision]) -> int | None:
        cost = self.analysis.cost
        return int(cost.macs(cost.keep_vector([d.keep for d in decisions]))) if cost is not None else None


# ------------------------------------------------------------------------------------------ files
def save(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Deterministic JSON (sorted keys, fixed float text), written atomically."""
    write_atomic(Path(path), (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A sensitivity file, checked for its format."""
    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"sensitivity file {path} does not exist: make one with slimnet sensitivity")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SlimnetError(f"sensitivity file {path} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("groups"), list):
        raise SlimnetError(f"{path} is not a {FORMAT} file (made by slimnet sensitivity)")
    return data
