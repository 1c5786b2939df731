"""What the user asks for, checked once and without importing torch.

The command line calls these checks first, before it loads anything, so that a wrong flag is answered at once;
the API functions call the same checks (:func:`slimnet.plan.decide`, :func:`slimnet.api.shrink`,
:func:`slimnet.api.bench`, :func:`slimnet.latency.time_models`), so that a Python caller gets the same message.

* Pruning: :func:`check_settings` (ratio, head ratio, criterion, round-to).
* Calibration data: :func:`check_data_settings` (counts, the spec, what needs data) and :func:`data_needs`.
* Timing: :func:`check_counts` (batch size, warm-up and timed runs, threads) and :func:`parse_backends`.
* Outputs: :func:`plan_path_for`, where the plan of a pruned model is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import SlimnetError

#: The criteria that read calibration data (:mod:`slimnet.criteria_data`): they need ``--data``.
DATA_CRITERIA = ("taylor", "activation", "apoz", "wanda")
#: The importance criteria of :mod:`slimnet.criteria`.
CRITERIA = ("l1", "l2", "fpgm", "random", "bn-scale", *DATA_CRITERIA)
#: Kept channel counts are rounded to a multiple of this by default (see :mod:`slimnet.plan`).
DEFAULT_ROUND_TO = 8
#: What :mod:`slimnet.latency` can time on: eager torch and onnxruntime, on the CPU and on CUDA.
BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda", "ort-cuda")


# ------------------------------------------------------------------------------------------ pruning
def check_ratio(ratio: float, flag: str = "--ratio") -> None:
    """A fraction to drop: 0 <= R < 1 (NaN refused)."""
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise SlimnetError(f"{flag} {ratio} is out of range: give a fraction to drop, 0 <= R < 1 (e.g. 0.5)")


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise SlimnetError(f"unknown criterion {criterion!r}: choose one of {', '.join(CRITERIA)}")


def check_settings(
    *, ratio: float, criterion: str, round_to: int = DEFAULT_ROUND_TO, head_ratio: float | None = None
) -> None:
    """The pruning settings of ``shrink``, in the order the command line names them."""
    check_ratio(ratio)
    if head_ratio is not None:
        check_ratio(head_ratio, "--head-ratio")
    check_criterion(criterion)
    if round_to < 1:
        raise SlimnetError(f"--round-to {round_to} must be at least 1")


# ------------------------------------------------------------------------------------------ data
def check_data_settings(
    *, data: str | None, batch_size: int, calib_batches: int, needs: Iterable[str] = (), steps: int | None = None
) -> None:
    """Calibration data (``--data``, ``--batch-size``, ``--calib-batches``): the counts, that the spec names
    something that exists, and that whatever needs data (``needs``: "criterion taylor", "--recalibrate-bn", ...)
    has it. The data itself is checked against the model once both are loaded (:mod:`slimnet.data`)."""
    if batch_size < 1:
        raise SlimnetError(f"--batch-size {batch_size} must be at least 1")
    if calib_batches < 1:
        raise SlimnetError(f"--calib-batches {calib_batches} must be at least 1")
    if steps is not None and steps < 1:
        raise SlimnetError(f"--steps {steps} must be at least 1")
    needs = list(needs)
    if data is None:
        if needs:
            raise SlimnetError(f"{needs[0]} needs calibration data: give --data (a tensor file, folder, ...)")
        return
    path, sep, factory = data.rpartition(":")
    target = path if sep and path.endswith(".py") and factory.isidentifier() else data
    if not Path(target).exists():
        raise SlimnetError(
            f"--data {target} does not exist: give a tensor file (torch.save), a folder of images, a text file "
            "or FILE.py:FACTORY"
        )


def data_needs(criterion: str, recalibrate_bn: bool = False, compensate_bias: bool = False) -> list[str]:
    """What in a shrink command needs calibration data."""
    needs = [f"criterion {criterion}"] if criterion in DATA_CRITERIA else []
    return needs + ["--recalibrate-bn"] * recalibrate_bn + ["--compensate-bias"] * compensate_bias


# ------------------------------------------------------------------------------------------ timing
def check_counts(*, batch_size: int | None = 1, warmup: int = 10, runs: int = 50, threads: int | None = None) -> None:
    """The counts of ``bench`` and :func:`slimnet.latency.time_models` (``batch_size=None``: the example's)."""
    if batch_size is not None and batch_size < 1:
        raise SlimnetError(f"--batch-size {batch_size} must be at least 1")
    if runs < 1:
        raise SlimnetError(f"--runs {runs} must be at least 1")
    if warmup < 0:
        raise SlimnetError(f"--warmup {warmup} must be 0 or more")
    if threads is not None and threads < 1:
        raise SlimnetError(f"--threads {threads} must be at least 1")


def parse_backends(values: Iterable[str] = ()) -> list[str]:
    """``--backend a --backend b,c`` -> [a, b, c]; all backends when none is given; unknown names refused."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()] or list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise SlimnetError(f"unknown --backend {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ outputs
def plan_path_for(output: str | os.PathLike[str]) -> Path:
    """``pruned.pt`` -> ``pruned.plan.json`` beside it."""
    p = Path(output)
    return p.with_name(p.stem + ".plan.json") if p.suffix else p.with_name(p.name + ".plan.json")
