"""``slimnet distill hf:SHRUNK --teacher hf:ORIGINAL --data text.txt`` for decoder LMs: the shell over
:mod:`slimnet.llm.distill` that the ``distill`` command hands over to when the student is a Hugging Face causal
LM folder (other models keep :mod:`slimnet.repair.distill`). Runs as is or under ``torchrun --nproc-per-node N
-m slimnet distill ...`` (FSDP2, gloo on the CPU, NCCL on GPUs); rank 0 alone prints and writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..errors import SlimnetError
from ..load.spec import parse_spec
from .common import check_output, emit_json, err, say

#: The default learning rate for decoder LMs (the general path's 1e-3 is for small CNNs and MLPs).
LM_LR = 1e-4
DEFAULT_WINDOW = 512


def is_causal_lm(spec: str) -> bool:
    """Whether MODEL is an ``hf:`` folder of a causal LM (read from its config.json, nothing loaded)."""
    parsed = parse_spec(spec)
    if parsed.kind != "hf":
        return False
    from ..llm.distill import is_causal_lm as causal  # lazy: CLI start-up

    return causal(parsed.target)


def run(
    pruned: str,
    teacher: str,
    output: str,
    data: Optional[str],
    *,
    window: Optional[int],
    steps: int,
    lr: Optional[float],
    batch_size: int,
    temperature: float,
    loss: str,
    seed: int,
    clip: float,
    checkpoint_dir: Optional[str],
    checkpoint_every: Optional[int],
    resume: bool,
    device: Optional[str],
    progress: Optional[bool],
    as_json: bool,
) -> None:
    """The LM path of ``distill`` (errors raised as :class:`SlimnetError`: the caller's ``guarded`` prints)."""
    if data is None:
        raise SlimnetError("distilling a decoder LM needs --data: a UTF-8 text file to cut into windows")
    if loss not in ("auto", "kl"):
        raise SlimnetError(f"--loss {loss}: decoder LMs are distilled with logit KL (give --loss kl or leave it)")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise SlimnetError(f"--checkpoint-every {checkpoint_every} must be at least 1")
    t_spec = parse_spec(teacher)
    if t_spec.kind != "hf":
        raise SlimnetError(f"--teacher {teacher}: give the original as hf:FOLDER, as the student is one")
    student_dir, teacher_dir = parse_spec(pruned).target, t_spec.target
    out_path = check_output(output, [student_dir, teacher_dir, data], folder=True)
    if checkpoint_dir is not None and Path(checkpoint_dir).resolve() == out_path.resolve():
        raise SlimnetError("--checkpoint-dir and -o are one folder: give each its own")

    from .. import distributed  # lazy: CLI start-up
    from ..llm.distill import LMDistillSettings, distill_lm  # lazy: CLI start-up

    settings = LMDistillSettings(window=window or DEFAULT_WINDOW, steps=steps, lr=LM_LR if lr is None else lr,
                                 batch_size=batch_size, temperature=temperature, seed=seed, clip=clip)  # fmt: skip
    settings.check()
    world = distributed.start(device)
    try:
        show = err.is_terminal if progress is None else progress  # as other commands: a terminal, or asked
        report = distill_lm(student_dir, teacher_dir, data, out_path, settings, world=world,
                            checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                            progress=_progress if show else None)  # fmt: skip
    finally:
        distributed.stop(world)
    if report is None:  # not rank 0
        return
    if as_json:
        emit_json(report)
        return
    for line in lines(report):
        say(line)


def _progress(line: str) -> None:
    err.print(line, highlight=False, soft_wrap=True)


def lines(report: dict[str, Any]) -> list[str]:
    """The text output: what ran, the held-out KL and perplexity before and after, where it went."""
    start, end = report["held_out"]["start"], report["held_out"]["end"]
    data = report["data"]
    resumed = f", resumed from step {report['resumed_from']}" if report["resumed_from"] is not None else ""
    procs = f"{report['world_size']} process{'es' * (report['world_size'] != 1)}"
    procs += " (FSDP2)" if report["sharding"] == "fsdp2" else " (unsharded)"
    where = f"{data['held_out_windows']} held-out windows x {data['window']} tokens"
    return [
        f"distilled {report['steps']} steps ({report['tokens_per_step']} tokens each) on {procs}{resumed} in "
        f"{report['seconds']:.1f} s; loss {report['loss_why']}, {report['schedule']}",
        f"{where}: KL {start['kl']:.4f} -> {end['kl']:.4f}, perplexity {start['student_perplexity']:.2f} -> "
        f"{end['student_perplexity']:.2f} (teacher {end['teacher_perplexity']:.2f})",
        f"wrote {report['output']}",
    ]
