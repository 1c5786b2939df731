"""What the user asks for, checked once and without importing torch.

The command line calls these checks first, before it loads anything, so that a wrong flag is answered at once;
the API functions call the same checks (:func:`slimnet.plan.decide`, :func:`slimnet.api.shrink`,
:func:`slimnet.api.bench`, :func:`slimnet.latency.time_models`), so that a Python caller gets the same message.

* Pruning: :func:`check_settings` (ratio, head ratio, criterion, round-to).
* Allocation: :func:`check_target`, :func:`parse_latency`, :func:`check_allocation` (targets, ``--global``,
  ``--max-layer-ratio``, ``--ratios``).
* Calibration data: :func:`check_data_settings` (counts, the spec, what needs data) and :func:`data_needs`.
* Timing: :func:`check_counts` (batch size, warm-up and timed runs, threads) and :func:`parse_backends`.
* Outputs: :func:`plan_path_for`, where the plan of a pruned model is written.

A message names a setting both ways, ``ratio=1.5 (--ratio)``, so that it reads right from Python and from the
command line alike.
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
#: ``--global``/latency targets: no group loses more than this share of its units (``--max-layer-ratio``).
#: Global rankings are known to empty whole layers (Torch-Pruning's README adds ``max_pruning_ratio`` for it);
#: 0.8 leaves every group at least a fifth of its width, which keeps accuracy recoverable by fine-tuning.
DEFAULT_MAX_LAYER_RATIO = 0.8
#: What a target can be a fraction of.
TARGET_KINDS = ("macs", "params", "latency")
#: What :mod:`slimnet.latency` can time on: eager torch and onnxruntime, on the CPU and on CUDA.
BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda", "ort-cuda")


def given(flag: str, value: object) -> str:
    """``--round-to`` and 0 -> ``round_to=0 (--round-to)``: the setting as a Python caller and as a command-line
    user typed it (a Python-only name such as ``ratio`` stays ``ratio=0``)."""
    if any(c in flag for c in " :"):  # a phrase such as "--ratios layer1.*:" reads as it is
        return f"{flag} {value}"
    name = f"{flag.lstrip('-').replace('-', '_')}={value}"
    return f"{name} ({flag})" if flag.startswith("--") else name


# ------------------------------------------------------------------------------------------ pruning
def check_ratio(ratio: float, flag: str = "--ratio") -> None:
    """A fraction to drop: 0 <= R < 1 (NaN refused)."""
    if not (0.0 <= ratio < 1.0) or math.isnan(ratio):
        raise SlimnetError(f"{given(flag, ratio)} is out of range: give a fraction to drop, 0 <= R < 1 (e.g. 0.5)")


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise SlimnetError(f"unknown criterion {criterion!r} (--criterion): choose one of {', '.join(CRITERIA)}")


def check_settings(
    *, ratio: float, criterion: str, round_to: int = DEFAULT_ROUND_TO, head_ratio: float | None = None
) -> None:
    """The pruning settings of ``shrink``, in the order the command line names them."""
    check_ratio(ratio)
    if head_ratio is not None:
        check_ratio(head_ratio, "--head-ratio")
    check_criterion(criterion)
    if round_to < 1:
        raise SlimnetError(f"{given('--round-to', round_to)} must be at least 1")


# ------------------------------------------------------------------------------------------ allocation
def check_target(kind: str, wanted: float) -> None:
    """A target is the fraction of the original's MACs, parameters or latency to keep: 0 < F < 1."""
    if kind not in TARGET_KINDS:
        raise SlimnetError(f"unknown target {kind!r}: choose one of {', '.join(TARGET_KINDS)}")
    if not (0.0 < wanted < 1.0) or math.isnan(wanted):
        raise SlimnetError(
            f"--target-{kind} {wanted} is out of range: give the fraction of the original's {kind} to keep, "
            "0 < F < 1 (e.g. 0.5)"
        )


def parse_latency(value: str | float) -> tuple[float | None, float | None]:
    """``--target-latency``: ``0.5`` (a fraction of the original's measured latency) or ``12ms`` / ``0.012s``
    (absolute). Returns (fraction, milliseconds), one of them None."""
    text = str(value).strip().lower()
    for suffix, scale in (("ms", 1.0), ("s", 1000.0)):
        if text.endswith(suffix) and text[: -len(suffix)].strip():
            try:
                ms = float(text[: -len(suffix)]) * scale
            except ValueError:
                break
            if not ms > 0 or math.isinf(ms):
                raise SlimnetError(f"--target-latency {value} must be more than 0 ms")
            return None, ms
    try:
        fraction = float(text)
    except ValueError:
        raise SlimnetError(
            f"--target-latency {value!r} is neither a fraction (0.5: half the original's latency) nor a time (12ms)"
        ) from None
    check_target("latency", fraction)
    return fraction, None


def check_allocation(
    *,
    targets: dict[str, object],
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO,
    backend: str | None = None,
) -> str | None:
    """At most one target (``{"macs": F, "params": None, "latency": "12ms"}``), each in range; the maximum
    share per group in 0 < R < 1; a latency target's backend known. Returns the target's kind, or None."""
    given = {k: v for k, v in targets.items() if v is not None}
    if len(given) > 1:
        flags = " and ".join(f"--target-{k}" for k in given)
        raise SlimnetError(f"give one target, not {flags}")
    if not (0.0 < max_layer_ratio < 1.0) or math.isnan(max_layer_ratio):
        raise SlimnetError(
            f"--max-layer-ratio {max_layer_ratio} is out of range: give the largest share of its units one group "
            "may lose, 0 < R < 1 (e.g. 0.8)"
        )
    kind = next(iter(given), None)
    if kind == "latency":
        parse_latency(given[kind])  # type: ignore[arg-type]
    elif kind is not None:
        check_target(kind, float(given[kind]))  # type: ignore[arg-type]
    if backend is not None and backend not in BACKENDS:
        raise SlimnetError(f"unknown --backend {backend}: choose from {', '.join(BACKENDS)}")
    return kind


# ------------------------------------------------------------------------------------------ data
def check_data_settings(
    *, data: str | None, batch_size: int, calib_batches: int, needs: Iterable[str] = (), steps: int | None = None
) -> None:
    """Calibration data (``--data``, ``--calib-batch-size``, ``--calib-batches``): the counts, that the spec names
    something that exists, and that whatever needs data (``needs``: "criterion taylor", "--recalibrate-bn", ...)
    has it. The data itself is checked against the model once both are loaded (:mod:`slimnet.data`)."""
    if batch_size < 1:
        raise SlimnetError(f"{given('--calib-batch-size', batch_size)} must be at least 1")
    if calib_batches < 1:
        raise SlimnetError(f"{given('--calib-batches', calib_batches)} must be at least 1")
    if steps is not None and steps < 1:
        raise SlimnetError(f"{given('--steps', steps)} must be at least 1")
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


def data_needs(
    criterion: str, recalibrate_bn: bool = False, compensate_bias: bool = False, reconstruct: bool = False
) -> list[str]:
    """What in a shrink command needs calibration data."""
    needs = [f"criterion {criterion}"] if criterion in DATA_CRITERIA else []
    needs += ["--recalibrate-bn"] * recalibrate_bn + ["--compensate-bias"] * compensate_bias
    return needs + ["--reconstruct"] * reconstruct


# ------------------------------------------------------------------------------------------ timing
def check_counts(*, batch_size: int | None = 1, warmup: int = 10, runs: int = 50, threads: int | None = None) -> None:
    """The counts of ``bench`` and :func:`slimnet.latency.time_models` (``batch_size=None``: the example's)."""
    if batch_size is not None and batch_size < 1:
        raise SlimnetError(f"{given('--batch-size', batch_size)} must be at least 1")
    if runs < 1:
        raise SlimnetError(f"{given('--runs', runs)} must be at least 1")
    if warmup < 0:
        raise SlimnetError(f"{given('--warmup', warmup)} must be 0 or more")
    if threads is not None and threads < 1:
        raise SlimnetError(f"{given('--threads', threads)} must be at least 1")


def parse_backends(values: Iterable[str] = ()) -> list[str]:
    """``--backend a --backend b,c`` -> [a, b, c]; all backends when none is given; unknown names refused."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()] or list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise SlimnetError(f"unknown backend {', '.join(unknown)} (--backend): choose from {', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ outputs
def plan_path_for(output: str | os.PathLike[str]) -> Path:
    """``pruned.pt`` -> ``pruned.plan.json`` beside it."""
    p = Path(output)
    return p.with_name(p.stem + ".plan.json") if p.suffix else p.with_name(p.name + ".plan.json")
