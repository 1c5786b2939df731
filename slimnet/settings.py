"""What the user asks for, checked once and without importing torch.

The command line calls these checks first, before it loads anything, so that a wrong flag is answered at once;
the API functions call the same checks (:func:`slimnet.allocate.decide.decide`, :func:`slimnet.api.shrink`,
:func:`slimnet.api.bench`, :func:`slimnet.measure.latency.time_models`), so that a Python caller gets the same message.

* Pruning: :func:`check_settings` (ratio, head ratio, criterion, round-to).
* Allocation: :func:`check_target`, :func:`parse_latency`, :func:`check_allocation` (targets, ``--global``,
  ``--max-layer-ratio``, ``--ratios``).
* Calibration data: :func:`check_data_settings` (counts, the spec, what needs data) and :func:`data_needs`.
* Timing: :func:`check_counts` (batch size, warm-up and timed runs, threads) and :func:`parse_backends`.
* Outputs: :func:`plan_path_for`, where the plan of a pruned model is written.
* All of a shrink's choices at once: :class:`ShrinkSettings`, one frozen value checked when it is made, which
  the command line builds (from its flags over a recipe), :func:`slimnet.api.shrink` takes and
  :meth:`slimnet.Planner.plan` plans from; its :meth:`~ShrinkSettings.to_dict` is the recipe YAML's schema and
  what a plan records under ``"settings"``.

A message names a setting both ways, ``ratio=1.5 (--ratio)``, so that it reads right from Python and from the
command line alike.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import SlimnetError

#: The criteria that read calibration data (:mod:`slimnet.rank.data_criteria`): they need ``--data``.
DATA_CRITERIA = ("taylor", "activation", "apoz", "wanda")
#: The importance criteria of :mod:`slimnet.rank.criteria`.
CRITERIA = ("l1", "l2", "fpgm", "random", "bn-scale", *DATA_CRITERIA)
#: Kept channel counts are rounded to a multiple of this by default (see :mod:`slimnet.plan`).
DEFAULT_ROUND_TO = 8
#: ``--global``/latency targets: no group loses more than this share of its units (``--max-layer-ratio``).
#: Global rankings are known to empty whole layers (Torch-Pruning's README adds ``max_pruning_ratio`` for it);
#: 0.8 leaves every group at least a fifth of its width, which keeps accuracy recoverable by fine-tuning.
DEFAULT_MAX_LAYER_RATIO = 0.8
#: What a target can be a fraction of.
TARGET_KINDS = ("macs", "params", "latency")
#: What :mod:`slimnet.measure.latency` can time on: eager torch and onnxruntime, on the CPU and on CUDA.
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
    has it. The data itself is checked against the model once both are loaded (:mod:`slimnet.load.data`)."""
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
    """The counts of ``bench`` and :func:`slimnet.measure.latency.time_models` (``batch_size=None``: the example's)."""
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


# ------------------------------------------------------------------------------------------ one settings object
#: The recipe YAML's keys (``slimnet shrink --recipe``) and the types each accepts: :class:`ShrinkSettings`'s fields,
#: by their command-line names (``global`` is the ``use_global`` field; ``ratios`` may name a file on the way in).
NUMBER = (int, float)
SCHEMA: dict[str, tuple[type, ...]] = {
    "ratio": NUMBER,
    "criterion": (str,),
    "round_to": (int,),
    "ignore": (list, tuple),
    "seed": (int,),
    "prune_norm": (bool,),
    "head_ratio": NUMBER,
    "target_macs": NUMBER,
    "target_params": NUMBER,
    "target_latency": (str, *NUMBER),
    "backend": (str,),
    "threads": (int,),
    "batch_size": (int,),
    "global": (bool,),
    "max_layer_ratio": NUMBER,
    "ratios": (dict, str),
}
#: schema key -> field name, where they differ
FIELD_OF = {"global": "use_global"}


@dataclass(frozen=True)
class ShrinkSettings:
    """What a shrink is asked to do, checked once, when it is made (a wrong value raises :class:`SlimnetError`
    here, before any model is loaded or traced), and passed as one value from the command line to
    :func:`slimnet.api.shrink` and :meth:`slimnet.Planner.plan` instead of twenty keywords at each step.

    Frozen, so that a planner or a repair cannot change what the caller asked for; :meth:`to_dict` gives the plain
    data (the recipe YAML's keys; what a plan records under ``"settings"``) and :meth:`from_dict` reads it back,
    refusing unknown keys and wrong types. Each field is described at :func:`slimnet.api.shrink`::

        >>> s = ShrinkSettings(ratio=0.3, criterion="fpgm")
        >>> s.to_dict()["ratio"], ShrinkSettings.from_dict(s.to_dict()) == s
        (0.3, True)
    """

    ratio: float = 0.5
    criterion: str = "l1"
    round_to: int = DEFAULT_ROUND_TO
    ignore: tuple[str, ...] = ()
    seed: int = 0
    prune_norm: bool = False
    head_ratio: float | None = None
    target_macs: float | None = None
    target_params: float | None = None
    target_latency: float | str | None = None
    use_global: bool = False
    max_layer_ratio: float = DEFAULT_MAX_LAYER_RATIO
    ratios: Mapping[str, float] | None = field(default=None, hash=False)
    backend: str = "ort-cpu"
    threads: int = 1
    batch_size: int = 1
    cache: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignore", tuple(self.ignore or ()))
        if self.ratios is not None:
            object.__setattr__(self, "ratios", dict(self.ratios))
        check_settings(ratio=self.ratio, criterion=self.criterion, round_to=self.round_to, head_ratio=self.head_ratio)
        check_allocation(targets=self.targets, max_layer_ratio=self.max_layer_ratio, backend=self.backend)

    @property
    def targets(self) -> dict[str, float | str | None]:
        """``{"macs": F or None, "params": ..., "latency": ...}``: at most one is set."""
        return {"macs": self.target_macs, "params": self.target_params, "latency": self.target_latency}

    @property
    def target_kind(self) -> str | None:
        """``"macs"``, ``"params"``, ``"latency"`` or None (a ratio)."""
        return next((k for k, v in self.targets.items() if v is not None), None)

    def replace(self, **changes: Any) -> ShrinkSettings:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and YAML-ready data under the schema's keys (``global`` for ``use_global``)."""
        data = asdict(self)
        data["ignore"] = list(self.ignore)
        data["global"] = data.pop("use_global")
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "settings") -> ShrinkSettings:
        """Settings from plain data: :meth:`to_dict`'s output or a recipe's mapping (``where`` names it in
        errors). Unknown keys and wrong types are refused, so that a typo cannot pass silently."""
        check_schema(data, where, extra=("cache",))
        names = {f.name for f in fields(cls)}
        kwargs = {FIELD_OF.get(k, k): v for k, v in data.items()}
        return cls(**{k: v for k, v in kwargs.items() if k in names})

    def recorded(self) -> dict[str, Any]:
        """What a plan records under ``"settings"``: :meth:`to_dict` without ``cache``, which says how the
        latency table was found, not what was asked for."""
        data = self.to_dict()
        del data["cache"]
        return data

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order (what :func:`slimnet.api.shrink` also takes as keywords)."""
        return tuple(f.name for f in fields(cls))


def settings_of(settings: ShrinkSettings | None, keywords: Mapping[str, Any]) -> ShrinkSettings:
    """``settings``, or settings made from ``keywords`` (the fields by name): one or the other, so that a keyword
    cannot silently lose to (or override) a settings object."""
    if settings is not None:
        if keywords:
            raise SlimnetError(f"give either settings or its fields as keywords, not both (got {sorted(keywords)})")
        return settings
    unknown = sorted(set(keywords) - set(ShrinkSettings.names()))
    if unknown:
        raise TypeError(f"unknown shrink settings {unknown}: known are {list(ShrinkSettings.names())}")
    return ShrinkSettings(**keywords)


#: the schema's keys that may be left empty (None)
OPTIONAL = ("head_ratio", "target_macs", "target_params", "target_latency", "ratios")


def check_schema(data: Mapping[str, Any], where: str, extra: Iterable[str] = ()) -> None:
    """Every key of ``data`` is one of :data:`SCHEMA`'s (or ``extra``, which take a bool), with a value of a type it
    accepts (None where the key is optional)."""
    extra = tuple(extra)
    unknown = sorted(set(data) - set(SCHEMA) - set(extra))
    if unknown:
        raise SlimnetError(f"{where} has unknown keys {unknown}: allowed are {sorted([*SCHEMA, *extra])}")
    for key, value in data.items():
        kinds = SCHEMA.get(key, (bool,))
        if value is None and key in OPTIONAL:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise SlimnetError(f"{where}: {key} must be a {' or '.join(k.__name__ for k in kinds)}")
