"""Resumable checkpoints of LM distillation with ``torch.distributed.checkpoint`` (DCP).

``CK/step-00000040/`` holds one checkpoint: the student's parameters and the optimizer's state as each rank's
shards (DCP writes them in parallel and can load them into another number of processes: they are keyed by
parameter name, not by rank), each rank's RNG state (``rng.R``), and ``slimnet.json`` (the step, the scheduler's
state, the number of processes and the settings that a resumed run must share). ``CK/latest`` names the last
complete checkpoint. A checkpoint is written into ``CK/.step-N.tmp`` and renamed once every rank has finished,
and ``latest`` is replaced after that, so a run cut off while saving leaves the previous checkpoint as the
latest; the last :data:`KEEP` checkpoints are kept.

The data order is a function of the seed and the step (:mod:`slimnet.llm.windows`), so step, weights, optimizer
moments, scheduler and RNG are all a resumed run needs to end at the weights of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .._util import first_line
from ..distributed import World
from ..errors import SlimnetError

KEEP = 2
META = "slimnet.json"
LATEST = "latest"


def _name(step: int) -> str:
    return f"step-{step:08d}"


def latest(folder: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The last complete checkpoint in ``folder`` and its ``slimnet.json``, or None."""
    root = Path(folder)
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    if not (path / META).is_file():
        return None
    return path, json.loads((path / META).read_text())


@contextlib.contextmanager
def _quiet(world: World) -> Iterator[None]:
    """DCP warns that it assumes a single process when no process group is up: that is the intent here."""
    with warnings.catch_warnings():
        if world.size == 1:
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        yield


def _barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def _state(model: nn.Module, opt: torch.optim.Optimizer, world: World, rng: bool) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state: dict[str, Any] = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    if rng:  # keyed by rank: DCP writes a tensor that every rank holds under one name only once
        state[f"rng.{world.rank}"] = torch.get_rng_state()
        if world.device.type == "cuda":
            state[f"cuda_rng.{world.rank}"] = torch.cuda.get_rng_state(world.device)
    return state


def save(
    folder: str | Path,
    step: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    scheduler: Any,
    world: World,
    meta: dict[str, Any],
) -> Path:
    """Write step ``step``'s checkpoint (every rank calls this; module docstring)."""
    import torch.distributed.checkpoint as dcp

    root = Path(folder)
    final, tmp = root / _name(step), root / f".{_name(step)}.tmp"
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(world)
    with _quiet(world):
        dcp.save(_state(model, opt, world, rng=True), checkpoint_id=str(tmp))
    _barrier(world)
    if world.main:
        info = {"step": step, "world_size": world.size, "scheduler": scheduler.state_dict(), **meta}
        (tmp / META).write_text(json.dumps(info, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        marker = root / f".{LATEST}.tmp"
        marker.write_text(final.name + "\n")
        os.replace(marker, root / LATEST)
        done = sorted(p for p in root.glob("step-*") if p.is_dir() and p != final)
        for old in done[: max(0, len(done) - (KEEP - 1))]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier(world)
    return final


def load(
    path: Path, info: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer, scheduler: Any, world: World
) -> bool:
    """Load the checkpoint at ``path`` into the (already wrapped) model, the optimizer and the scheduler, and
    this rank's RNG state when the checkpoint was written by as many processes; returns whether the RNG was
    restored (with another number of processes each rank's generator starts afresh)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    same = int(info.get("world_size", 0)) == world.size
    state = _state(model, opt, world, rng=same)
    try:
        with _quiet(world):
            dcp.load(state, checkpoint_id=str(path))
    except Exception as exc:  # noqa: BLE001 - a checkpoint of another model, or damaged files
        raise SlimnetError(
            f"checkpoint {path} does not fit this student ({first_line(exc, limit=200)}): give its own --checkpoint-dir"
        ) from None
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])
    scheduler.load_state_dict(info["scheduler"])
    if same:
        torch.set_rng_state(state[f"rng.{world.rank}"])
        if world.device.type == "cuda":
            torch.cuda.set_rng_state(state[f"cuda_rng.{world.rank}"], world.device)
    return same
