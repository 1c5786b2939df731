"""Distillation of a shrunk decoder LM towards its original, at scale: FSDP2 under torchrun, logit KL in chunks,
resumable DCP checkpoints, a standard Hugging Face folder out.

One optimiser step per global batch of ``batch_size`` windows (:mod:`slimnet.llm.windows`; each of ``world``
ranks runs its ``batch_size / world``): the teacher's final hidden states under ``no_grad``, then the student's
and the chunked KL(teacher || student) at temperature ``T`` (:mod:`slimnet.llm.kl`), scaled by ``T**2`` and
averaged over the rank's tokens; FSDP2 averages the gradients over the ranks, so every step is the step one
process would take on the whole global batch (the tests check 2 processes against 1). AdamW, a linear warm-up
(5% of the steps) then a cosine to zero (:func:`slimnet.repair.distill.schedule`), gradients clipped to a norm.

The held-out windows are scored at the start and at the end (KL at T, both models' perplexity), every rank a
share of them. Checkpoints (:mod:`slimnet.llm.checkpoint`) every ``checkpoint_every`` steps and at the end;
``resume`` goes on from the latest one with the same settings. At the end the student's full state dict is
gathered to rank 0 on the CPU (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``), which writes it
with the student's own ``save_pretrained`` into a temporary folder, copies the student folder's other files
(its ``config.json``, ``slimnet_plan.json``, tokenizer files) over, and renames the folder into place.

Memory: each process loads both models whole on the CPU before sharding them (from_pretrained), so the host
needs ``world`` copies; loading only each rank's shards is not done yet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .._util import first_line, scratch_dir
from ..distributed import World
from ..errors import SlimnetError
from ..repair.distill import schedule
from . import checkpoint
from .fsdp import Distilled, gathered_head, shard
from .kl import CHUNK_TOKENS, eval_sums
from .windows import Windows, tokenize

#: Files of a model folder that hold weights: written anew, never copied from the student's folder.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass(frozen=True)
class LMDistillSettings:
    """What a run (and a resumed run: it must be the same) is made of."""

    window: int = 512
    steps: int = 200
    lr: float = 1e-4
    batch_size: int = 8
    temperature: float = 1.0
    seed: int = 0
    clip: float = 1.0
    weight_decay: float = 0.0
    warmup: int | None = None
    chunk: int = CHUNK_TOKENS

    def warmup_steps(self) -> int:
        return self.warmup if self.warmup is not None else max(1, self.steps // 20)

    def check(self) -> None:
        if self.steps < 1:
            raise SlimnetError(f"--steps {self.steps} must be at least 1")
        if not self.lr > 0:
            raise SlimnetError(f"--lr {self.lr} must be positive")
        if not self.temperature > 0:
            raise SlimnetError(f"--temperature {self.temperature} must be positive")
        if self.batch_size < 1:
            raise SlimnetError(f"--batch-size {self.batch_size} must be at least 1")
        if self.window < 2:
            raise SlimnetError(f"--window {self.window} must be at least 2 tokens")
        if not self.clip > 0:
            raise SlimnetError(f"gradient clipping norm {self.clip} must be positive")


def make_scheduler(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then a cosine to zero at ``steps``."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: schedule(i, steps, warmup))


# ------------------------------------------------------------------------------------------ folders
def _config(spec: str, role: str) -> dict[str, Any]:
    folder = Path(spec)
    if not folder.is_dir():
        raise SlimnetError(f"{role} hf:{spec} is missing: give a local Hugging Face folder (nothing is downloaded)")
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise SlimnetError(f"{role} hf:{spec} has no config.json: give a folder written by save_pretrained")
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise SlimnetError(f"{role} hf:{spec}: config.json cannot be read ({first_line(exc)})") from None


def is_causal_lm(folder: str | Path) -> bool:
    """Whether ``folder`` holds a Hugging Face causal LM (its config lists a ``...ForCausalLM`` architecture)."""
    cfg = Path(folder) / "config.json"
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in archs)


def check_pair(student: str, teacher: str, window: int) -> None:
    """The cheap checks before any model is loaded: both folders exist and are causal LMs of one vocabulary,
    and a window fits the student's positions."""
    s_cfg, t_cfg = _config(student, "the student"), _config(teacher, "--teacher")
    if not is_causal_lm(teacher):
        raise SlimnetError(f"--teacher hf:{teacher} is not a causal LM (config.json lists no ...ForCausalLM)")
    s_vocab, t_vocab = _vocab(s_cfg), _vocab(t_cfg)
    if s_vocab != t_vocab:
        raise SlimnetError(
            f"the student's vocabulary ({s_vocab} tokens) and the teacher's ({t_vocab}) differ: logit distillation "
            "needs the same tokenizer; give the teacher the student was cut from"
        )
    for cfg, who in ((s_cfg, "the student"), (t_cfg, "the teacher")):
        limit = _text_config(cfg).get("max_position_embeddings")
        if limit and window > int(limit):
            raise SlimnetError(
                f"--window {window} is longer than {who}'s max_position_embeddings ({limit}): give a smaller one"
            )


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg.get("text_config") or cfg


def _vocab(cfg: dict[str, Any]) -> int | None:
    return _text_config(cfg).get("vocab_size")


def tokenizer_for(student: str, teacher: str) -> Any:
    """The tokenizer of the student's folder, else the teacher's (a shrunk folder may have none); when both
    have one, their vocabularies must agree."""
    from ..load.data import load_tokenizer

    found = [f for f in (student, teacher) if any((Path(f) / n).is_file() for n in TOKENIZER_FILES)]
    if not found:
        raise SlimnetError("neither the student's nor the teacher's folder holds a tokenizer to read --data with")
    toks = [load_tokenizer(f) for f in found]
    if len(toks) == 2 and toks[0].get_vocab() != toks[1].get_vocab():
        raise SlimnetError("the student's and the teacher's tokenizers have different vocabularies: give the pair")
    return toks[0]


def _load(folder: str, dtype: torch.dtype) -> tuple[Any, torch.dtype]:
    from ..load.hf import from_pretrained

    lm = from_pretrained(folder)
    saved = next((p.dtype for p in lm.parameters() if p.is_floating_point()), torch.float32)
    return lm.to(dtype), saved


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Run:
    """Everything one process holds while distilling."""

    student: Distilled
    teacher: Distilled
    windows: Windows
    world: World
    settings: LMDistillSettings
    sharding: str


def distill_lm(
    student: str,
    teacher: str,
    text: str,
    output: str | Path,
    settings: LMDistillSettings,
    *,
    world: World | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Distil the causal LM in folder ``student`` towards ``teacher`` on ``text`` and write the student as a
    Hugging Face folder at ``output`` (module docstring). Every rank calls it; rank 0 gets the report, the
    others None. ``progress``: where rank 0 says how it goes (None: silent)."""
    world = world or World()
    settings.check()
    check_pair(student, teacher, settings.window)
    out = Path(output)
    found = _to_resume(checkpoint_dir, resume, settings)
    if settings.batch_size % world.size:
        raise SlimnetError(
            f"--batch-size {settings.batch_size} does not divide among {world.size} processes: give a multiple"
        )
    windows = Windows(tokenize(text, tokenizer_for(student, teacher)), settings.window, f"--data {text}")
    say = progress if world.main and progress is not None else (lambda _line: None)

    torch.manual_seed(settings.seed)
    train_dtype = torch.float32
    t_dtype = torch.bfloat16 if world.device.type == "cuda" else torch.float32
    s_lm, saved_dtype = _load(student, train_dtype)
    t_lm, _ = _load(teacher, t_dtype)
    for p in t_lm.parameters():
        p.requires_grad_(False)
    s_model = Distilled(s_lm, settings.temperature, settings.chunk).to(world.device)
    t_model = Distilled(t_lm, settings.temperature, settings.chunk).to(world.device).eval()
    sharding = shard(s_model, world, train=True)
    shard(t_model, world, train=False)
    run = Run(s_model, t_model, windows, world, settings, sharding)

    opt = torch.optim.AdamW(s_model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = make_scheduler(opt, settings.steps, settings.warmup_steps())
    first, rng_restored = 0, None
    if found is not None:
        rng_restored = checkpoint.load(found[0], found[1], s_model, opt, sched, world)
        first = int(found[1]["step"])
    meta = {"settings": asdict(settings), "student": str(student), "teacher": str(teacher)}
    every = checkpoint_every or max(1, settings.steps // 10)

    t0 = time.perf_counter()
    start = {"step": first, **evaluate(run)}
    say(_held_line(f"held-out at step {first}", start, windows))
    history: list[dict[str, float]] = []
    log_every = max(1, settings.steps // 20)
    s_model.train()
    for step in range(first, settings.steps):
        lr = opt.param_groups[0]["lr"]
        loss, norm = train_step(run, opt, step)
        sched.step()
        history.append({"step": step + 1, "loss": loss, "grad_norm": norm, "lr": lr})
        done = step + 1
        if checkpoint_dir is not None and (done % every == 0 or done == settings.steps):
            checkpoint.save(checkpoint_dir, done, s_model, opt, sched, world, meta)
        if done % log_every == 0 or done == settings.steps:
            elapsed = time.perf_counter() - t0
            eta = elapsed / (done - first) * (settings.steps - done)
            say(f"distill: step {done}/{settings.steps} loss {loss:.4g} lr {history[-1]['lr']:.3g} "
                f"{elapsed:.0f} s, ETA {eta:.0f} s")  # fmt: skip
    s_model.eval()
    end = {"step": settings.steps, **evaluate(run)}
    say(_held_line(f"held-out at step {settings.steps}", end, windows))
    _write(run, student, out, saved_dtype)
    if not world.main:
        return None
    return {
        "student": str(student),
        "teacher": str(teacher),
        "output": str(out),
        "world_size": world.size,
        "sharding": sharding,
        "steps": settings.steps,
        "resumed_from": first if found is not None else None,
        "rng_restored": rng_restored,
        "seconds": round(time.perf_counter() - t0, 2),
        "loss": "kl",
        "loss_why": f"logit KL(teacher || student) at temperature {settings.temperature:g}, x T^2",
        "schedule": f"warm-up {settings.warmup_steps()} steps + cosine",
        "tokens_per_step": settings.batch_size * settings.window,
        "data": windows.describe(),
        "held_out": {"start": start, "end": end},
        "history": history,
        "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
        "settings": asdict(settings),
    }


def _to_resume(
    checkpoint_dir: str | Path | None, resume: bool, settings: LMDistillSettings
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to go on from (None: start afresh); refused: --resume without one, a folder that holds
    checkpoints without --resume (a new run would mix its checkpoints with an old one's), other settings."""
    if checkpoint_dir is None:
        if resume:
            raise SlimnetError("--resume needs the --checkpoint-dir the run wrote its checkpoints to")
        return None
    found = checkpoint.latest(checkpoint_dir)
    if resume and found is None:
        raise SlimnetError(f"--resume: {checkpoint_dir} holds no checkpoint: run without --resume to start")
    if not resume and found is not None:
        raise SlimnetError(
            f"--checkpoint-dir {checkpoint_dir} already holds checkpoints: give --resume to go on from "
            f"{found[0].name}, or a new folder"
        )
    if found is not None:
        _same_settings(found[1], settings)
    return found


def _same_settings(info: dict[str, Any], settings: LMDistillSettings) -> None:
    before = info.get("settings") or {}
    for key, value in asdict(settings).items():
        if key in before and before[key] != value:
            flag = "--" + key.replace("_", "-")
            raise SlimnetError(
                f"--resume: {flag} {value} differs from the checkpoint's {before[key]}: resume with the same "
                "settings (or start a new --checkpoint-dir)"
            )


def _all_mean(value: torch.Tensor, world: World) -> float:
    value = value.detach().clone()
    if world.size > 1:
        dist.all_reduce(value)
        value /= world.size
    return float(value)


def train_step(run: Run, opt: torch.optim.Optimizer, step: int) -> tuple[float, float]:
    """One optimiser step on this rank's share of step ``step``'s global batch: ``(mean loss, grad norm)``."""
    world, s = run.world, run.settings
    ids = run.windows.batch(step, world.rank, world.size, s.batch_size, s.seed).to(world.device)
    with torch.no_grad():
        t_hidden = run.teacher(ids)
    with gathered_head(run.teacher) as head:
        kl = run.student(ids, (t_hidden, head))
        loss = kl * (s.temperature**2) / ids.numel()
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.student.parameters(), s.clip)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    opt.step()
    opt.zero_grad(set_to_none=True)
    return _all_mean(loss, world), float(norm)


@torch.no_grad()
def evaluate(run: Run, rows: int = 4) -> dict[str, float]:
    """KL(teacher || student) per token at T and both perplexities on the held-out windows (every rank its
    share, ``rows`` windows per forward, the sums added up across ranks)."""
    world = run.world
    ids, counted = run.windows.held_share(world.rank, world.size)
    weights = torch.tensor([1.0] * counted + [0.0] * (len(ids) - counted))
    sums = torch.zeros(5, dtype=torch.float64)
    for lo in range(0, len(ids), rows):
        batch = ids[lo : lo + rows].to(world.device)
        t_hidden = run.teacher(batch)
        s_hidden = run.student(batch)
        with gathered_head(run.teacher) as t_head, gathered_head(run.student) as s_head:
            sums += eval_sums(s_hidden, s_head, t_hidden, t_head, batch, weights[lo : lo + rows].to(world.device),
                              run.settings.temperature, run.settings.chunk)  # fmt: skip
    if world.size > 1:
        dist.all_reduce(sums)
    kl, s_nll, t_nll, kl_n, nll_n = sums.tolist()
    return {
        "kl": kl / max(kl_n, 1.0),
        "student_perplexity": math.exp(min(s_nll / max(nll_n, 1.0), 700.0)),
        "teacher_perplexity": math.exp(min(t_nll / max(nll_n, 1.0), 700.0)),
    }


def _held_line(what: str, res: dict[str, Any], windows: Windows) -> str:
    where = f"{len(windows.held)} windows x {windows.window} tokens" + ("" if windows.disjoint else ", trained on")
    return (
        f"{what} ({where}): KL {res['kl']:.4f}, perplexity {res['student_perplexity']:.2f} "
        f"(teacher {res['teacher_perplexity']:.2f})"
    )


# ------------------------------------------------------------------------------------------ the output
def _write(run: Run, student: str, out: Path, dtype: torch.dtype) -> None:
    """Gather the student's full state dict to rank 0 on the CPU and write it as the student's folder
    (module docstring); every rank calls this."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(run.student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    failed: list[Any] = [None]
    if run.world.main:
        weights = {k.removeprefix("lm."): v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
        try:
            save_folder(run.student.lm, weights, student, out)
        except Exception as exc:  # noqa: BLE001 - told to every rank below, then raised again on rank 0
            failed[0] = first_line(exc)
            if run.world.size == 1:
                raise
            dist.broadcast_object_list(failed, src=0)
            raise
    if run.world.size > 1:
        dist.broadcast_object_list(failed, src=0)  # the other ranks stop with rank 0 instead of waiting for it
        if failed[0] is not None:
            raise SlimnetError(f"rank 0 could not write {out}: {failed[0]}")


def _tied_keys(model: Any) -> set[str]:
    """The parameters that share another's tensor in this model (the head tied to the embeddings):
    transformers 5 lists the ties in force (``all_tied_weights_keys``), older versions the possible ones."""
    if hasattr(model, "all_tied_weights_keys"):
        return set(model.all_tied_weights_keys or {})
    if not getattr(model.config, "tie_word_embeddings", False):
        return set()
    return set(getattr(model, "_tied_weights_keys", None) or [])


def save_folder(lm: Any, weights: dict[str, torch.Tensor], student: str, out: Path) -> Path:
    """``weights`` written by ``save_pretrained`` of a shell of the student's class (built on the meta device:
    no second copy in memory), with the student folder's other files copied over; temp folder, then rename."""
    from ..load.hf import PLAN_KEY, pruned_class

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimnetError(f"output {out} exists and is not an empty folder: give a new folder name")
    cls = type(lm)
    if getattr(lm.config, PLAN_KEY, None):
        cls = pruned_class(cls)  # the plan's shapes, applied by __init__
    with torch.device("meta"):
        shell = cls(lm.config)
    tied = _tied_keys(shell)
    weights = {k: v for k, v in weights.items() if k not in tied}  # one tensor each: tied again below
    missing, unexpected = shell.load_state_dict(weights, strict=False, assign=True)
    if unexpected or [k for k in missing if k not in tied]:
        raise RuntimeError(f"the gathered weights do not fit the student (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")  # fmt: skip
    if tied and hasattr(shell, "tie_weights"):
        shell.tie_weights()  # assign=True gave the head a tensor of its own: share the embeddings' again
    if getattr(lm.config, PLAN_KEY, None):
        shell.__class__ = cls.__bases__[0]
    with scratch_dir(out) as work:
        tmp = work / out.name
        shell.save_pretrained(str(tmp))
        for f in Path(student).iterdir():
            if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    return out
