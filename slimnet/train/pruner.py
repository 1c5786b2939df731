"""Pruning inside a training loop: :class:`Pruner` cuts the user's own model, in place, when its schedule says so.

    pruner = slimnet.Pruner(model, example, target_macs=0.5, criterion="l1", schedule="agp", steps=5,
                            start=300, every=60)
    for step, batch in enumerate(loader):
        loss = ...; loss.backward(); optimizer.step(); optimizer.zero_grad()
        pruner.step(step, optimizer=optimizer, ema=ema)      # cuts when the schedule says so

Five cuts, the first at step 300, one every 60 steps; the last leaves half the original's MACs, and the AGP
curve (:mod:`slimnet.train.schedules`) decides how much each cut takes. Unlike :func:`slimnet.api.shrink`, which returns
a pruned copy, the Pruner cuts ``model`` itself: that is the point inside a loop, where the optimizer, an EMA,
LR schedulers, hooks and the trainer all hold this very model.

Each cut:

1. ranks the surviving units of the current model (the original's analysis, computed once, narrowed to the
   current widths: :mod:`slimnet.train.cuts`) with the criterion (:mod:`slimnet.rank.importance`);
2. chooses how many units each group keeps for this cut's level (:mod:`slimnet.allocate`: a uniform share, or
   the share that reaches the level's fraction of the original's MACs or parameters); only surviving units can
   stay, so every cut keeps a subset of the previous one;
3. builds the plan of this cut relative to the current model, verifies it against the current model (masked
   current vs cut current, :func:`slimnet.verify.verifier.verify`) and refuses the cut, changing nothing, if it is not
   exact (or if optimizer state cannot be carried through it);
4. applies it in place keeping every parameter object (:func:`slimnet.cut.surgeon.apply_plan` with
   ``keep_objects=True``), slices the optimizer's state and the EMA copy with the same plan
   (:mod:`slimnet.train.optim_state`), and records the cut in :attr:`Pruner.history`.

The cumulative plan is kept relative to the original (:attr:`Pruner.plan`: ``slimnet.plan/1``, what ``slimnet
apply`` re-applies). :meth:`Pruner.state_dict` holds the schedule position, the kept units and the Taylor
sums; :meth:`Pruner.load_state_dict` on a Pruner built on a fresh original model re-applies the plan, after which
the model's and the optimizer's own state_dicts load, and training resumes bit for bit.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import plan as plans
from .._tensors import like_model
from ..allocate import for_target, uniform_counts
from ..allocate.decide import decide
from ..cut.surgeon import apply_plan, pruned_copy
from ..errors import SlimnetError, VerificationError
from ..groups import Analysis
from ..planner import graph
from ..rank.importance import make_scorer
from ..settings import DEFAULT_ROUND_TO, check_ratio
from ..verify.verifier import verify
from .cuts import cumulative_plan, incremental_plan, narrowed
from .optim_state import check_ema, check_optimizer, ema_module, slice_optimizer, unwrap
from .schedules import Schedule, goal

FORMAT = "slimnet.pruner/1"


@dataclass
class Cut:
    """What one cut did: where in the schedule, how far, what the model costs after it, and its check."""

    index: int  # 1-based cut number
    step: int
    level: float  # the schedule's level (fraction of the target quantity removed)
    macs: int | None  # the model's MACs after the cut (None: no cost model)
    macs_fraction: float | None  # of the original's
    params: int
    params_fraction: float
    units_kept: int  # over all prunable groups
    max_abs_diff: float | None  # verification of this cut (None: nothing cut, or verify=False)
    sliced_state: int  # optimizer state tensors sliced
    seconds: float

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class Pruner:
    """Gradual structured pruning of ``model`` in place, driven by :meth:`step` (module docstring).

    ``example``: an input the model accepts (on the model's device), for the analysis and every cut's check.
    One of ``ratio`` (the channel share each prunable group drops), ``target_macs`` / ``target_params`` (the
    fraction of the original's MACs / parameters to keep). ``schedule``: ``agp``, ``exponential``, ``linear``,
    ``one-shot`` (:mod:`slimnet.train.schedules`) with ``steps`` cuts, the first at training step ``start``, one every
    ``every`` steps. ``criterion``: a magnitude criterion or ``taylor`` (the training gradients, averaged over the
    ``window`` steps before each cut, default ``every``). ``round_to``, ``head_ratio``, ``ignore``,
    ``prune_norm``, ``seed``: as in :func:`slimnet.api.shrink`. ``verify=False`` skips each cut's check (not
    recommended). ``analysis``: :func:`slimnet.api.graph` of this model and example, if already computed."""

    def __init__(
        self,
        model: nn.Module,
        example: Any,
        *,
        ratio: float | None = None,
        target_macs: float | None = None,
        target_params: float | None = None,
        criterion: str = "l1",
        schedule: str | Schedule = "agp",
        steps: int = 5,
        start: int = 0,
        every: int = 100,
        window: int | None = None,
        round_to: int = DEFAULT_ROUND_TO,
        head_ratio: float | None = None,
        ignore: list[str] | None = None,
        prune_norm: bool = False,
        seed: int = 0,
        verify: bool = True,
        data: Any = None,
        analysis: Analysis | None = None,
    ) -> None:
        self.model, self.example, self.verify = model, example, verify
        self.kind, self.final = goal(ratio, target_macs, target_params)
        if head_ratio is not None:
            check_ratio(head_ratio, "head_ratio")
        if round_to < 1:
            raise SlimnetError(f"round_to={round_to} must be at least 1")
        self.schedule = schedule if isinstance(schedule, Schedule) else Schedule(schedule, steps, start, every)
        self.window = self.schedule.every if window is None else int(window)
        self.settings = {
            "goal": self.kind, "final": self.final, "criterion": criterion, "round_to": round_to,
            "head_ratio": head_ratio, "ignore": list(ignore or []), "prune_norm": prune_norm, "seed": seed,
            "schedule": self.schedule.describe(),
        }  # fmt: skip
        with self._quiet():
            self.analysis = analysis if analysis is not None else graph(model, like_model(example, model))
            decisions = decide(
                self.analysis, model, ratio=0.0, criterion="random", ignore=ignore, prune_norm=prune_norm
            )
        self.reasons = {d.group.id: d.reason for d in decisions}
        self.prunable = [g for g in self.analysis.groups if self.reasons[g.id] is None]
        params = {n for n, _ in model.named_parameters()}
        members = {t for g in self.prunable for t, _ in g.members if t in params}
        self.scorer = make_scorer(criterion, members, seed, data)
        self.kept: dict[int, list[int]] = {g.id: list(range(len(g.units))) for g in self.analysis.groups}
        self.cuts_done, self.last_step = 0, -1
        self.history: list[Cut] = []
        self._optimizers: list[Any] = []
        self._emas: list[Any] = []
        self._hooks: list[Any] = []
        self._full_macs = self._cost("macs")
        self._full_params = sum(p.numel() for p in _unique_params(model))
        self._plan = self._cumulative()
        self._check_reachable()

    # ---------------------------------------------------------------------------------------------- the loop
    def step(self, step: int, optimizer: Any = None, ema: Any = None) -> Cut | None:
        """Call once per training step, after ``optimizer.step()``: cuts when the schedule says so (every cut
        that is due, at once, when steps were skipped) and returns what it did, else None. ``optimizer`` (its
        state is sliced at each cut; with ``taylor`` its steps are watched) and ``ema`` (cut the same way) are
        remembered, so later calls may leave them out."""
        self.attach(optimizer, ema)
        self.last_step = int(step)
        due = self.schedule.due(self.last_step, self.cuts_done)
        if due == self.cuts_done:
            return None
        return self._cut_to(due)

    def observe(self) -> None:
        """Gather this step's gradients for ``taylor`` (call after ``loss.backward()``, before ``zero_grad``);
        the optimizer given to :meth:`step` does this by itself, within the window before each cut."""
        self.scorer.observe(self.model)

    @property
    def done(self) -> bool:
        return self.cuts_done >= self.schedule.steps

    @property
    def next_cut(self) -> int | None:
        """The training step of the next cut (None when the schedule is done)."""
        return None if self.done else self.schedule.cut_steps[self.cuts_done]

    @property
    def plan(self) -> dict[str, Any]:
        """The ``slimnet.plan/1`` of every cut so far, relative to the original model; its ``schedule`` field says
        how far along the schedule it is (``ratio`` is the channel share dropped when ``ratio=`` drives it)."""
        level = self.schedule.level(self.cuts_done, self.final)
        ratio = round(level, 6) if self.kind == "ratio" else 0.0
        schedule = {"goal": self.kind, "final": self.final, "level": round(level, 6), "cuts_done": self.cuts_done}
        return {**self._plan, "ratio": ratio, "schedule": {**schedule, **self.schedule.describe()}}

    def _cumulative(self) -> dict[str, Any]:
        return cumulative_plan(
            self.analysis, self.kept, self.reasons, model_name=type(self.model).__name__,
            criterion=self.settings["criterion"], ratio=0.0, round_to=self.settings["round_to"],
            seed=self.settings["seed"], head_ratio=self.settings["head_ratio"],
        )  # fmt: skip

    def save_plan(self, path: str | Path) -> None:
        plans.save(self.plan, path)

    def close(self) -> None:
        """Stop watching optimizers (their step hooks are removed)."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._optimizers = [], []

    # ---------------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The schedule position, the units kept (and the plan they make), the history and the Taylor sums."""
        names = {g.id: g.name for g in self.analysis.groups}
        return {
            "format": FORMAT,
            "settings": self.settings,
            "cuts_done": self.cuts_done,
            "last_step": self.last_step,
            "kept": {names[gid]: list(k) for gid, k in self.kept.items() if self.reasons[gid] is None},
            "plan": self.plan,
            "history": [c.describe() for c in self.history],
            "scorer": self.scorer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any], optimizer: Any = None, ema: Any = None) -> None:
        """Resume: cut the model to the saved units (build this Pruner on a fresh original model, the same way
        as the saved one; then load the model's, the optimizer's and the EMA's own state_dicts)."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise SlimnetError(f"not a {FORMAT} state (was it saved by Pruner.state_dict()?)")
        for key, value in state["settings"].items():
            if self.settings.get(key) != value:
                raise SlimnetError(
                    f"the saved pruner has {key}={value!r}, this one {self.settings.get(key)!r}: build the Pruner "
                    "with the settings it was saved with"
                )
        by_name = {g.name: g for g in self.prunable}
        after = dict(self.kept)
        for name, kept in state["kept"].items():
            if name not in by_name or (kept and max(kept) >= len(by_name[name].units)):
                raise SlimnetError(f"the saved pruner's group {name} is not in this model: is it the same model?")
            after[by_name[name].id] = sorted(int(i) for i in kept)
        self.attach(optimizer, ema)
        self._transition(after)
        self.cuts_done, self.last_step = int(state["cuts_done"]), int(state["last_step"])
        self.history = [Cut(**c) for c in state["history"]]
        self.scorer.load_state_dict(state.get("scorer", {}))

    # ---------------------------------------------------------------------------------------------- a cut
    def _cut_to(self, k: int) -> Cut:
        t0 = time.perf_counter()
        level = self.schedule.level(k, self.final)
        head = self.settings["head_ratio"]
        head_level = None if head is None else self.schedule.level(k, head)
        with self._quiet():
            orders = self._orders()
            counts = self._counts(orders, level, head_level)
        after = dict(self.kept)
        for g in self.prunable:
            n = min(counts[g.id], len(self.kept[g.id]))
            after[g.id] = sorted(int(i) for i in orders[g.id][:n])
        diff, sliced = self._transition(after)
        self.cuts_done = k
        self.scorer.reset()
        cut = self._record(k, level, diff, sliced, time.perf_counter() - t0)
        self.history.append(cut)
        return cut

    def _orders(self) -> dict[int, np.ndarray]:
        """Each prunable group's unit positions (original numbering), most important first: the survivors by
        score (ties keep the earlier unit), then the units already cut."""
        current = narrowed(self.analysis, self.kept, self._plan)
        tensors = self.model.state_dict()
        params = {n for n, _ in self.model.named_parameters(remove_duplicate=False)}
        orders = {}
        for g in current.groups:
            if self.reasons[g.id] is not None:
                continue
            survivors = np.asarray(self.kept[g.id], dtype=np.int64)
            ranked = survivors[np.argsort(-self.scorer.scores(g, tensors, params), kind="stable")]
            gone = np.setdiff1d(np.arange(len(self.analysis.groups[g.id].units)), survivors)
            orders[g.id] = np.concatenate([ranked, gone])
        return orders

    def _counts(self, orders: dict[int, np.ndarray], level: float, head_level: float | None) -> dict[int, int]:
        round_to = self.settings["round_to"]
        if self.kind == "ratio" or level <= 0.0:
            return uniform_counts(self.prunable, max(level, 0.0), round_to, head_level)
        return for_target(self.analysis, self.prunable, orders, self.kind, 1.0 - level, round_to, head_level).counts

    def _transition(self, after: dict[int, list[int]]) -> tuple[float | None, int]:
        """Cut the model (and the optimizers' state, the EMA) from ``self.kept`` to ``after``; verified first,
        nothing changed if anything is refused. Returns the verification's max difference and how many optimizer
        state tensors were sliced."""
        fields = {"model_name": type(self.model).__name__, "criterion": "", "ratio": 0.0, "round_to": 1, "seed": 0}
        current = narrowed(self.analysis, self.kept, self._plan)
        step = incremental_plan(current, self.kept, after, self.reasons, **fields)
        if not step["tensors"]:
            self._set_kept(after)
            return None, 0
        state = self.model.state_dict(keep_vars=True)
        shapes = {n: tuple(state[n].shape) for n in step["tensors"]}
        targets = {id(state[n]): (state[n], shapes[n], dims) for n, dims in step["tensors"].items()}
        for opt in self._optimizers:
            check_optimizer(opt, targets)
        emas = [ema_module(e) for e in self._emas]
        for e in emas:
            check_ema(e, shapes)
        diff = self._verify(step, after) if self.verify else None
        with torch.no_grad():
            apply_plan(self.model, step, keep_objects=True)
            sliced = sum(slice_optimizer(opt, targets) for opt in self._optimizers)
            for e in emas:
                apply_plan(e, step, keep_objects=True)
        self._set_kept(after)
        return diff, sliced

    def _set_kept(self, after: dict[int, list[int]]) -> None:
        self.kept = after
        self._plan = self._cumulative()

    def _verify(self, step: dict[str, Any], after: dict[int, list[int]]) -> float:
        with self._quiet():
            cut = pruned_copy(self.model, step)
            result = verify(self.model, cut, step, like_model(self.example, self.model))
        approximate = any(
            self.analysis.groups[gid].normalised and len(after[gid]) < len(self.kept[gid]) for gid in after
        )
        if not result.passed and not approximate:
            raise VerificationError(f"the cut is not exact: {result.error}; the model was left as it was")
        return result.max_abs_diff

    def _record(self, k: int, level: float, diff: float | None, sliced: int, seconds: float) -> Cut:
        macs, params = self._cost("macs", self.kept), sum(p.numel() for p in _unique_params(self.model))
        return Cut(
            index=k, step=self.last_step, level=round(level, 6), macs=macs,
            macs_fraction=None if macs is None or not self._full_macs else round(macs / self._full_macs, 6),
            params=params, params_fraction=round(params / max(self._full_params, 1), 6),
            units_kept=sum(len(self.kept[g.id]) for g in self.prunable), max_abs_diff=diff, sliced_state=sliced,
            seconds=round(seconds, 3),
        )  # fmt: skip

    # ---------------------------------------------------------------------------------------------- helpers
    def _cost(self, kind: str, kept: Mapping[int, list[int]] | None = None) -> int | None:
        cost = self.analysis.cost
        if cost is None or (kind == "macs" and not cost.complete):
            return None
        keep = None if kept is None else cost.keep_vector([kept[g.id] for g in self.analysis.groups])
        return cost.macs(keep) if kind == "macs" else cost.params(keep)

    def _check_reachable(self) -> None:
        """A target the model cannot reach is refused now, not at the last cut."""
        if self.kind == "ratio":
            return
        orders = {g.id: np.arange(len(g.units)) for g in self.prunable}
        with self._quiet():
            end = for_target(
                self.analysis, self.prunable, orders, self.kind, 1.0 - self.final, self.settings["round_to"]
            )
        if not end.within:
            warnings.warn(
                f"target_{self.kind}={1.0 - self.final:g}: the last cut will reach {end.reached:.3f}, the closest that "
                f"one share for every group allows with round_to={self.settings['round_to']}",
                stacklevel=3,
            )

    def attach(self, optimizer: Any = None, ema: Any = None) -> None:
        """Carry ``optimizer``'s state and ``ema`` through every cut from now on (:meth:`step` does this with
        what it is given); with ``taylor``, the optimizer's steps are watched from now on. Wrapped optimizers
        (Lightning's, Hugging Face Accelerate's) are unwrapped."""
        optimizer = unwrap(optimizer)
        if optimizer is not None and not any(o is optimizer for o in self._optimizers):
            self._optimizers.append(optimizer)
            if getattr(self.scorer, "watches_gradients", False):
                self._hooks.append(optimizer.register_step_pre_hook(self._before_optimizer_step))
        if ema is not None and not any(e is ema for e in self._emas):
            self._emas.append(ema)

    def _before_optimizer_step(self, *_: Any) -> None:
        upcoming = self.last_step + 1
        if self.next_cut is not None and upcoming > self.next_cut - self.window:
            self.scorer.observe(self.model)

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Analysis and checks leave the model's train/eval mode and the global random state as they were, so a
        run with cuts draws the same dropout masks and batches as one without."""
        training = self.model.training
        devices = sorted({p.device.index or 0 for p in self.model.parameters() if p.is_cuda})
        with torch.random.fork_rng(devices=devices):
            try:
                yield
            finally:
                self.model.train(training)


def _unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.parameters())  # parameters() lists a tied parameter once
