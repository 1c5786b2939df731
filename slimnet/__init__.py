"""slimnet: physically smaller, verified-exact structured pruning for PyTorch models.

The Python API, one function per command of the ``slimnet`` command line::

    import torch, torchvision, slimnet

    model = torchvision.models.resnet50()                  # your trained model
    x = torch.randn(1, 3, 224, 224)                        # an input it accepts
    result = slimnet.shrink(model, x, ratio=0.5, criterion="fpgm")
    result.model                                           # the smaller nn.Module, verified exact
    result.report["params_before"], result.report["params_after"]
    slimnet.export(result.model, x, "resnet50-slim.onnx")  # ONNX, checked against onnxruntime
    slimnet.bench([model, ("slim", result.model)], x, backends=["ort-cpu"])["speedup"]

* :func:`shrink` (``slimnet shrink``): prune and verify; :func:`apply` (``slimnet apply``): cut another instance
  as a saved plan says; :func:`graph` (``slimnet graph``): the coupled channel groups and why some cannot be
  pruned; :func:`export` (``slimnet export``): ONNX; :func:`bench` (``slimnet bench --json``): MACs, latency and
  speedups; :class:`Planner`: plans for any ratio, MACs/params/latency target or global ranking from one
  analysis; :class:`Pruner`: gradual pruning inside a training loop.
* Every user error raises :class:`SlimnetError` (a verification failure :class:`VerificationError`), with a
  message that names the problem and what to do.

``import slimnet`` stays light (no torch): the functions are imported on first use, so that the command line
starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import SlimnetError, VerificationError

#: name -> (module, attribute): what ``slimnet.NAME`` imports on first use.
_LAZY = {
    "shrink": ("slimnet.api", "shrink"),
    "apply": ("slimnet.api", "apply"),
    "graph": ("slimnet.api", "graph"),
    "bench": ("slimnet.measure.bench", "bench"),
    "export": ("slimnet.exporting.onnx", "export_onnx"),
    "ShrinkResult": ("slimnet.api", "ShrinkResult"),
    "Stages": ("slimnet.stages", "Stages"),
    "Pruner": ("slimnet.train.pruner", "Pruner"),  # gradual pruning inside a training loop
    "Planner": ("slimnet.planner", "Planner"),  # plans for any ratio or target from one analysis
}

__all__ = [
    "Planner",
    "Pruner",
    "ShrinkResult",
    "SlimnetError",
    "Stages",
    "VerificationError",
    "__version__",
    "apply",
    "bench",
    "export",
    "graph",
    "shrink",
]

if TYPE_CHECKING:  # what the names are, for type checkers and documentation tools
    from .api import ShrinkResult, apply, graph, shrink
    from .exporting.onnx import export_onnx as export
    from .measure.bench import bench
    from .planner import Planner
    from .stages import Stages
    from .train.pruner import Pruner


def __getattr__(name: str) -> Any:
    """``slimnet.shrink`` and the rest, imported on first use (``import slimnet`` does not import torch)."""
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module 'slimnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
