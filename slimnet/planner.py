"""Trace, group and score once; derive plans for any ratio, target or allocation cheaply.

    planner = Planner(model, example)            # runs the model, traces it and groups its channels, once
    planner.plan(ratio=0.3).plan                 # slimnet.plan/1 data
    planner.plan(target_macs=0.5, use_global=True).target.reached
    planner.plan(target_latency=0.5, backend="ort-cpu", threads=1)   # measures a latency table (cached)

The analysis depends on the model and the example only, each criterion's ranking on the weights only, and a
latency table on the machine, backend, threads and input shape: the planner keeps each once, so sweeps and
tools (``tools/coverage.py``, ``tools/allocation.py``) stop re-running them. :func:`slimnet.api.shrink` uses a
planner (``shrink(..., planner=)`` or ``analysis=``) and cuts and verifies the plan it makes.

A latency target closes the loop: the widths chosen from the table are cut (in the exported file, which takes
milliseconds), the result is timed against the original, interleaved, and when it misses the target by more
than half the tolerance the budget is corrected by the ratio of wanted to measured and the widths chosen again
(at most :data:`LATENCY_ROUNDS` times); the plan that landed closest is kept, and its target says both the
predicted and the measured latency.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._tensors import call, in_eval
from ._util import first_line
from .allocate import LATENCY_TOLERANCE, Ranking, TargetResult
from .allocate.decide import Decision, choose, left_whole, rank
from .allocate.decoder import decoder_rules
from .errors import SlimnetError
from .groups import Analysis, analyse, analyse_reduced
from .measure import lut
from .plan import build_plan
from .rank.statistics import Statistics
from .settings import DEFAULT_MAX_LAYER_RATIO, DEFAULT_ROUND_TO, ShrinkSettings, parse_latency, settings_of
from .stages import Stages
from .trace.symbolic import untouched

#: How many times a latency target may be re-aimed after measuring.
LATENCY_ROUNDS = 3


def check_runs(model: nn.Module, example: Any) -> None:
    """Run the original once: an input the model rejects is the user's error, said in one line. The model's
    modules keep their ``__dict__`` (a forward that stores state on itself is left as it was)."""
    try:
        in_eval(model)  # before untouched(): the model stays in eval mode, as graph() and shrink() promise
        with torch.no_grad(), untouched(model):
            call(model, example)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the input/model pairing
        raise SlimnetError(
            f"the model rejects the example input {describe(example)}: {type(exc).__name__}: {first_line(exc)}; "
            "give an example it accepts (--input-shape or --input on the command line)"
        ) from None


def describe(example: Any) -> str:
    """An example's shapes in one line: ``1x3x224x224``, ``{input_ids: 1x16}``, ``[3x224x224]``."""
    if isinstance(example, torch.Tensor):
        return "x".join(str(s) for s in example.shape) or "scalar"
    if isinstance(example, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in example.items()) + "}"
    if isinstance(example, tuple):
        return "(" + ", ".join(describe(v) for v in example) + ")"
    if isinstance(example, list):
        return "[" + ", ".join(describe(v) for v in example) + "]"
    return type(example).__name__


def graph(model: nn.Module, example: Any, stages: Stages | None = None, reduce: bool = True) -> Analysis:
    """The coupled channel groups of ``model``, each prunable or with the reason it is not (``slimnet graph``).

    One analysis serves every ratio, target and criterion: pass it to ``shrink`` as ``analysis=`` (or build a
    :class:`Planner` on it) to prune the same model several ways without tracing it again; ``analysis.cost``
    prices any plan of it.

    Args:
        model: the model to analyse (left untouched; run in eval mode).
        example: an input it accepts: a tensor, a tuple (positional arguments), a dict (keyword arguments) or a
            list (one argument that is a list: ``model([image])``), nested as the model takes them.
        stages: timings and progress (``slimnet.stages.Stages``): ``trace`` and ``groups``.
        reduce: analyse on a small image when the model's graph holds for any size (:mod:`slimnet.trace.reduced`;
            ``analysis.reduced`` is then that input: the same groups and MACs for a fraction of the work); the
            model is otherwise run on the example first, so that an input it rejects is reported as such.

    Returns:
        An ``slimnet.groups.Analysis``: ``analysis.groups`` lists each ``slimnet.groups.Group``
        (``g.describe()`` gives its name, units, members, whether it is prunable and the reason if not).

    Raises:
        SlimnetError: the model rejects the example, or cannot be traced at all (the message names the line).
    """
    stages = stages or Stages()
    in_eval(model)  # left in eval mode, as the analysis always did
    with untouched(model):  # nothing a forward stores on itself while traced or run stays behind
        analysis, gm, why = analyse_reduced(model, example, stages) if reduce else (None, None, "not asked")
    if analysis is not None:
        return analysis
    try:
        analysis = analyse(model, example, gm=gm, stages=stages)
    except Exception:
        # the analysis runs the model (or its graph) on the example, so a separate run first would only cost a
        # forward pass; when it fails, that run says whether the example is what the model rejects
        with stages("trace"):
            check_runs(model, example)
        raise
    analysis.reduced_note = why
    return analysis


@dataclass
class Planned:
    """One plan and how it was made: the decisions per group and what a target or global ranking reached."""

    plan: dict[str, Any]
    decisions: list[Decision]
    target: TargetResult | None


class Planner:
    """The analysis, rankings and latency tables of one model and example, made once and reused by every plan."""

    def __init__(self, model: nn.Module, example: Any, analysis: Analysis | None = None,
                 stages: Stages | None = None, reduce: bool = True) -> None:  # fmt: skip
        self.model, self.example = in_eval(model), example
        self.stages = stages or Stages()
        self.analysis = analysis if analysis is not None else graph(model, example, self.stages, reduce)
        self._rankings: dict[tuple[str, int, int], tuple[Statistics | None, Ranking]] = {}
        self._tables: dict[tuple, lut.Built] = {}
        self._templates: dict[int, lut.Template] = {}

    def ranking(self, criterion: str = "l1", seed: int = 0, stats: Statistics | None = None) -> Ranking:
        """Every group that can be pruned, ranked by ``criterion`` (computed once per criterion, seed and
        statistics: ``stats`` is what a data-driven criterion reads, :func:`slimnet.repair.calibrate.statistics`)."""
        key = (criterion, seed, id(stats))
        if key not in self._rankings:
            groups = [g for g in self.analysis.groups if g.reason is None]
            self._rankings[key] = (stats, rank(groups, self.model, criterion, seed, stats))  # stats kept: id stays
        return self._rankings[key][1]

    def template(self, batch_size: int = 1) -> lut.Template:
        """The model exported once for latency tables and measurements at ``batch_size``."""
        if batch_size not in self._templates:
            self._templates[batch_size] = lut.export_template(self.model, self.example, batch_size)
        return self._templates[batch_size]

    def latency_table(self, *, backend: str = "ort-cpu", threads: int = 1, batch_size: int = 1,
                      round_to: int = DEFAULT_ROUND_TO, max_layer_ratio: float | None = DEFAULT_MAX_LAYER_RATIO,
                      ignore: list[str] | None = None, prune_norm: bool = False, cache: bool = True,
                      progress: bool = False) -> lut.Built:  # fmt: skip
        """The latency table of the groups these settings prune (from the cache when it has it)."""
        decisions = left_whole(self.analysis, self.model, ignore, prune_norm)
        groups = [d.group for d in decisions if d.reason is None]
        key = (backend, threads, batch_size, round_to, max_layer_ratio, tuple(g.id for g in groups), cache)
        if key not in self._tables:
            template = (lambda: self.template(batch_size)) if backend.startswith("ort") else None
            self._tables[key] = lut.table_for(
                self.model, self.example, self.analysis, groups, backend=backend, threads=threads,
                batch_size=batch_size, round_to=round_to, max_layer_ratio=max_layer_ratio, cache=cache,
                progress=progress, template=template,
            )  # fmt: skip
        return self._tables[key]

    def plan(
        self,
        settings: ShrinkSettings | None = None,
        *,
        progress: bool = False,
        model_name: str = "",
        stats: Statistics | None = None,
        sensitivity: dict[str, Any] | None = None,
        **keywords: Any,
    ) -> Planned:
        """A plan for these settings: a :class:`slimnet.settings.ShrinkSettings`, or its fields as keywords
        (``planner.plan(ratio=0.3)``; see :func:`slimnet.api.shrink` for each of them), not both. ``stats``: what a
        data-driven criterion reads, from :func:`slimnet.repair.calibrate.statistics`. The settings were checked
        when they were made, so nothing here checks them again."""
        settings = settings_of(settings, keywords)
        decoder_rules(self.analysis, self.model, settings)  # decoder LMs: MLP widths in 64s, whole KV groups
        kind = settings.target_kind
        choice: dict[str, Any] = dict(ratio=settings.ratio, criterion=settings.criterion, round_to=settings.round_to)
        choice.update(ignore=list(settings.ignore), seed=settings.seed, prune_norm=settings.prune_norm)
        choice.update(head_ratio=settings.head_ratio, use_global=settings.use_global, ratios=settings.ratios)
        choice.update(max_layer_ratio=settings.max_layer_ratio, check=False)
        choice["ranking"] = self.ranking(settings.criterion, settings.seed, stats)
        name = model_name or type(self.model).__name__
        if sensitivity is not None and kind not in ("macs", "params"):
            raise SlimnetError("a sensitivity file allocates towards a target: give --target-macs or --target-params")
        if kind == "latency":
            timing = dict(backend=settings.backend, threads=settings.threads, batch_size=settings.batch_size)
            return self._latency(choice, settings, timing, progress, name)
        target = (kind, float(settings.targets[kind])) if kind else None  # type: ignore[arg-type]
        decisions, result = choose(self.analysis, self.model, target=target, sensitivity=sensitivity, **choice)
        return Planned(self._plan_of(decisions, result, choice, settings, name), decisions, result)

    def _plan_of(self, decisions: list[Decision], result: TargetResult | None, choice: dict[str, Any],
                 settings: ShrinkSettings, name: str) -> dict[str, Any]:  # fmt: skip
        plan = build_plan(
            self.analysis,
            decisions,
            model_name=name,
            criterion=choice["criterion"],
            ratio=round(result.ratio, 6) if result else choice["ratio"],
            round_to=choice["round_to"],
            seed=choice["seed"],
            head_ratio=choice["head_ratio"],
        )
        floors = [g.round_to for g in self.analysis.groups if g.round_to > choice["round_to"]]
        if floors:  # a decoder LM's MLP rounds to 64 (slimnet.allocate.decoder): said beside round_to
            plan["mlp_round_to"] = max(floors)
        mode = result.mode if result else "uniform"
        plan["allocation"] = mode
        if mode != "uniform":
            plan["max_layer_ratio"] = choice["max_layer_ratio"]
        if choice["ratios"]:
            plan["ratios"] = dict(choice["ratios"])
        if result is not None and result.kind != "units":
            plan["target"] = result.report()
        if self.analysis.pieces:
            plan["pieces"] = list(self.analysis.pieces)  # what `slimnet apply` verifies piece by piece
        if self.analysis.taps:
            plan["taps"] = list(self.analysis.taps)  # whose outputs `slimnet apply` compares
        plan["settings"] = settings.recorded()  # everything asked for, under the recipe schema's names
        return plan

    def _latency(self, choice: dict[str, Any], settings: ShrinkSettings, timing: dict[str, Any], progress: bool,
                 name: str) -> Planned:  # fmt: skip
        """Choose from the table, cut, measure, re-aim (see the module docstring)."""
        wanted = settings.target_latency
        fraction, ms = parse_latency(wanted)  # type: ignore[arg-type]
        built = self.latency_table(**timing, round_to=settings.round_to, max_layer_ratio=settings.max_layer_ratio,
                                   ignore=list(settings.ignore), prune_norm=settings.prune_norm, cache=settings.cache,
                                   progress=progress)  # fmt: skip
        template = self.template(timing["batch_size"]) if timing["backend"].startswith("ort") else None
        if fraction is None:
            original = lut.measure(self.model, self.example, [], template=template, **timing)[0]
            fraction = min(ms / original, 1.0 - 1e-9)  # type: ignore[operator]
            if fraction <= 0:
                raise SlimnetError(f"--target-latency {wanted} is out of range")
        aim, tried = fraction, []
        for _ in range(LATENCY_ROUNDS):
            try:
                decisions, result = choose(self.analysis, self.model, target=("latency", aim), table=built.table,
                                           **choice)  # fmt: skip
            except SlimnetError:
                if not tried:
                    raise
                break  # the re-aimed budget is out of reach: keep what was measured
            plan = self._plan_of(decisions, result, choice, settings, name)
            original, cut = lut.measure(self.model, self.example, [plan], template=template, **timing)
            tried.append((abs(cut / original - fraction), plan, decisions, result, original, cut))
            if abs(cut / original - fraction) <= 0.5 * LATENCY_TOLERANCE * fraction:
                break
            aim = min(max(aim * fraction / (cut / original), 1e-6), 1.0 - 1e-6)
        _, plan, decisions, result, original, cut = min(tried, key=lambda t: t[0])
        result.reached, result.within = cut / original, abs(cut / original - fraction) <= LATENCY_TOLERANCE * fraction
        result.wanted = fraction
        result.details.update(
            measured_ms=round(cut, 4),
            measured_original_ms=round(original, 4),
            predicted_fraction=round(result.details["predicted_ms"] / built.table.model_ms, 6),  # type: ignore[operator]
            rounds=len(tried),
            backend=timing["backend"],
            threads=timing["threads"],
            batch_size=timing["batch_size"],
            table=built.report(),
        )
        if ms is not None:
            result.details["wanted_absolute_ms"] = ms
        result.note = (
            f"measured {cut / original:.3f} of the original ({cut:.3g} ms of {original:.3g} ms, "
            f"{'within' if result.within else 'outside'} {LATENCY_TOLERANCE:.0%} of {fraction:.3f}); predicted "
            f"{result.details['predicted_fraction']:.3f}; latency table "
            + (
                f"read from the cache in {built.seconds:.1f} s (measuring it took {built.table.seconds:.1f} s)"
                if built.cached
                else f"measured in {built.table.seconds:.1f} s"
            )  # fmt: skip
        )
        plan["target"] = result.report()
        return Planned(plan, decisions, result)
