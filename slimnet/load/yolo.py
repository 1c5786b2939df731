"""Ultralytics YOLO models (the ``ultralytics`` extra): build or load them without downloading anything, and
write a pruned one in ultralytics' own checkpoint format, so that ``YOLO("pruned.pt")`` loads it and ultralytics'
own ``val``, ``predict`` and ``export`` take it from there.

Nothing of a YOLO model is replaced: its ``C2f``, ``Conv`` and ``Detect`` modules keep their classes and only
their tensors (and the size attributes of torch's layers) shrink, so the pickled model is ultralytics' code as
ultralytics wrote it. The heads' outputs (box distribution and class channels, mask coefficients and prototypes,
keypoints) are model outputs, which slimnet never prunes: their layout is the same after pruning.

``ultralytics:yolov8n.yaml`` builds a model from one of ultralytics' YAML files (or a YAML path), randomly
initialised; ``ultralytics:best.pt`` loads a checkpoint with ultralytics' loader, restricted to its allow-list of
ultralytics and torch classes unless ``--trust-pickle`` is given. Before ultralytics is imported, its online checks,
automatic pip installs and analytics are switched off (``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SlimnetError

#: Environment ultralytics reads at import: no network checks, no automatic pip installs, quiet.
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0", "YOLO_VERBOSE": "0"}


def _ultralytics() -> Any:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import ultralytics  # lazy: optional dependency
    except ImportError:
        raise SlimnetError(
            "ultralytics is not installed: pip install 'slimnet[ultralytics]' to load ultralytics: models"
        ) from None
    return ultralytics


def is_ultralytics(model: nn.Module) -> bool:
    """An ultralytics model (``DetectionModel``, ``SegmentationModel``...), by its class's package."""
    return type(model).__module__.startswith("ultralytics.")


def load(target: str, trust: bool = False) -> nn.Module:
    """``yolov8n.yaml`` (built from ultralytics' YAML, random weights, seeded) or a ``.pt`` checkpoint."""
    _ultralytics()
    if Path(target).suffix.lower() in (".yaml", ".yml"):
        return _build(target)
    if not Path(target).is_file():
        raise SlimnetError(
            f"ultralytics checkpoint {target} does not exist (slimnet downloads nothing): give a local .pt file, "
            "or a YAML such as ultralytics:yolov8n.yaml"
        )
    from ultralytics.cfg import DEFAULT_CFG_DICT  # lazy: optional dependency
    from ultralytics.nn.tasks import torch_safe_load  # lazy: optional dependency

    try:
        ckpt, _ = torch_safe_load(target, safe_only=not trust)
    except Exception as exc:  # noqa: BLE001 - whatever the loader says, in one line
        hint = "" if trust else " (if you trust the file and it needs other classes, pass --trust-pickle)"
        raise SlimnetError(f"ultralytics cannot load {target}: {type(exc).__name__}: {exc}{hint}") from None
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if not isinstance(model, nn.Module):
        raise SlimnetError(f"{target} is not an ultralytics checkpoint (no 'model' in it)")
    model.args = {**DEFAULT_CFG_DICT, **(ckpt.get("train_args") or {})}  # as ultralytics' own loader sets them
    return model.float().eval()


def _build(cfg: str) -> nn.Module:
    import torch  # lazy: loaded with the model only
    from ultralytics import YOLO  # lazy: optional dependency

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return YOLO(cfg, verbose=False).model.float().eval()
    except Exception as exc:  # noqa: BLE001 - an unknown YAML name, a malformed file
        raise SlimnetError(f"ultralytics cannot build {cfg}: {type(exc).__name__}: {exc}") from None


def checkpoint(model: nn.Module, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """``model`` in ultralytics' checkpoint layout (what ``Model.save`` writes, in float32 so that the saved
    weights are exactly the verified ones; ultralytics' loader casts to float anyway), with the plan beside it."""
    ultralytics = _ultralytics()
    return {
        "model": model,
        "ema": None,
        "train_args": dict(getattr(model, "args", None) or {}),
        "date": dt.datetime.now().astimezone().isoformat(),
        "version": ultralytics.__version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "slimnet_plan": plan,
    }
