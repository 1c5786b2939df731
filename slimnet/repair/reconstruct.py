"""Least-squares reconstruction of the layers that read pruned channels (ThiNet, FLAP): training-free repair that
refits weights, run on the pruned model *after* the verifier has proved the cut exact.

A consumer ``y = W x + b`` (linear, 2-d convolution, Hugging Face Conv1D) that lost some input channels computes
``W_kept x_kept + b``, which is not the original's ``y`` any more. On the calibration data, the kept inputs the
*pruned* model feeds the layer (``X``, one row per sample and output position: a convolution's input is unfolded
into patches) and the *original* model's output of the layer (``Y``, at the output channels the plan keeps) give
the ridge-regularised least-squares problem

    min_{W, c}  ||X W^T + c - Y||^2 + lam ||W||^2,     lam = ridge * mean(diag(X^T X))

solved in float64 by a Cholesky solve of the normal equations ``[X 1]^T [X 1]`` (accumulated batch by batch,
so only ``(d+1)^2`` numbers are held, never the rows; :func:`torch.linalg.lstsq` where the matrix is singular).
The intercept ``c`` is the new bias; a bias-free consumer followed by a BatchNorm puts it into that norm's
``running_mean`` (``bn(z + c) = bn'(z)`` with ``running_mean' = running_mean - c``), one with neither is fitted
without an intercept. Layers are refitted in the order the model calls them, each on inputs that already come
from the refitted layers before it, so errors do not pile up along the network.

The refit weights are what the plan does not describe: the model is intentionally not the masked original any
more (that is why the verifier runs on the cut before), and the report lists every layer that was refit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._tensors import call, eval_mode
from .._util import lookup
from ..groups import Analysis
from ..rank.statistics import WEIGHT_INPUT_DIM
from .steps import removed_inputs

#: Rows x features of one chunk of the design matrix, in float64: bounds the memory of a large feature map.
CHUNK_ELEMENTS = 1 << 22
DEFAULT_RIDGE = 1e-3


@dataclass
class Reconstruction:
    """Which consumers were refit, and each one's relative output error on the calibration data before and after."""

    refit: list[str] = field(default_factory=list)
    into_norm: list[str] = field(default_factory=list)  # "conv -> bn": the intercept went into the norm
    skipped: list[str] = field(default_factory=list)  # "name: why"
    error: dict[str, list[float]] = field(default_factory=dict)  # name -> [before, after]

    def describe(self) -> dict[str, Any]:
        return {
            "refit": self.refit,
            "into_norm": self.into_norm,
            "skipped": self.skipped,
            "output_error": {k: [round(a, 6), round(b, 6)] for k, (a, b) in self.error.items()},
        }


class _Stop(Exception):
    """Raised by a capture hook: the rest of the forward pass is not needed."""


def capture(model: nn.Module, name: str, batch: Any, what: str) -> torch.Tensor:
    """The first input (``what="input"``) or the output of submodule ``name`` when ``model`` runs on ``batch``;
    the forward pass stops right there."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple, out: Any) -> None:
        got.append(args[0] if what == "input" else out)
        raise _Stop

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        with torch.no_grad():
            call(model, batch)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _layout(mod: nn.Module) -> str | None:
    """How ``mod`` turns its input into rows (None: not an affine layer this solver handles)."""
    if isinstance(mod, nn.Linear):
        return "linear"
    if lookup(WEIGHT_INPUT_DIM, type(mod)) == 0 and type(mod).__name__ == "Conv1D":
        return "hf-conv1d"  # transformers' Conv1D: y = x @ W + b, W [in, out]
    if isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros" and mod.padding != "same":
        return "conv2d"
    return None


def _weight_matrix(mod: nn.Module, layout: str) -> torch.Tensor:
    """The weight as ``[out, features]``, features in the order :func:`_rows` lays them out."""
    w = mod.weight.detach()
    return w.t() if layout == "hf-conv1d" else w.reshape(w.shape[0], -1)


def _set_weight(mod: nn.Module, layout: str, matrix: torch.Tensor) -> None:
    with torch.no_grad():
        w = mod.weight
        w.copy_((matrix.t() if layout == "hf-conv1d" else matrix.reshape(w.shape)).to(w))


def _rows(mod: nn.Module, layout: str, x: torch.Tensor) -> Iterable[torch.Tensor]:
    """The layer's input as rows of features (a convolution's patches), in float64 chunks."""
    if layout != "conv2d":
        flat = x.reshape(-1, x.shape[-1])
        step = max(1, CHUNK_ELEMENTS // max(flat.shape[1], 1))
        for i in range(0, flat.shape[0], step):
            yield flat[i : i + step].double()
        return
    padding = 0 if mod.padding == "valid" else mod.padding
    per_sample = x.shape[1] * mod.kernel_size[0] * mod.kernel_size[1]
    positions = max(1, F.conv2d(x[:1], mod.weight[:1], None, mod.stride, padding, mod.dilation).shape[-2:].numel())
    step = max(1, CHUNK_ELEMENTS // (per_sample * positions))
    for i in range(0, x.shape[0], step):
        patches = F.unfold(x[i : i + step], mod.kernel_size, mod.dilation, padding, mod.stride)  # [n, d, L]
        yield patches.transpose(1, 2).reshape(-1, per_sample).double()


def _targets(layout: str, y: torch.Tensor, kept: torch.Tensor | None) -> torch.Tensor:
    """The original layer's output as rows ``[samples x positions, out]`` at the kept output channels."""
    rows = y.movedim(1, -1).reshape(-1, y.shape[1]) if layout == "conv2d" else y.reshape(-1, y.shape[-1])
    return (rows if kept is None else rows[:, kept]).double()


@dataclass
class Normal:
    """The accumulated normal equations of one layer: ``A = [X 1]^T [X 1]``, ``B = [X 1]^T Y``, ``||Y||^2``."""

    a: torch.Tensor
    b: torch.Tensor
    yy: float = 0.0

    @classmethod
    def of(cls, features: int, outputs: int, device: torch.device) -> Normal:
        z = torch.zeros
        return cls(z(features + 1, features + 1, dtype=torch.float64, device=device),
                   z(features + 1, outputs, dtype=torch.float64, device=device))  # fmt: skip

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        xa = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], 1)
        self.a += xa.t() @ xa
        self.b += xa.t() @ y
        self.yy += float(y.pow(2).sum())

    def error(self, theta: torch.Tensor) -> float:
        """``||[X 1] theta - Y|| / ||Y||`` from the statistics alone (theta: ``[features+1, out]``)."""
        sq = float((theta * (self.a @ theta)).sum() - 2 * (theta * self.b).sum()) + self.yy
        return (max(sq, 0.0) / self.yy) ** 0.5 if self.yy > 0 else max(sq, 0.0) ** 0.5

    def solve(self, ridge: float, intercept: bool) -> torch.Tensor:
        """The ridge least-squares ``theta`` (the last row is the intercept; zero without one)."""
        d = self.a.shape[0] - 1
        n = d + 1 if intercept else d
        a, b = self.a[:n, :n].clone(), self.b[:n]
        if ridge > 0 and d:
            a[range(d), range(d)] += ridge * float(a[range(d), range(d)].mean().clamp_min(1e-12))
        chol, info = torch.linalg.cholesky_ex(a)
        theta = torch.cholesky_solve(b, chol) if int(info) == 0 else torch.linalg.lstsq(a, b).solution
        return theta if intercept else torch.cat([theta, torch.zeros(1, b.shape[1], dtype=b.dtype, device=b.device)])


def call_order(model: nn.Module, names: Iterable[str], batch: Any) -> tuple[list[str], dict[str, int]]:
    """``names`` in the order one forward pass calls them, and how often each is called (not called: absent)."""
    order: list[str] = []
    calls: dict[str, int] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _a: tuple, _o: Any, name: str = name) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in order:
                order.append(name)

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order, calls


def _follower_norm(model: nn.Module, name: str, batch: Any) -> str | None:
    """The BatchNorm that reads ``name``'s output tensor directly, if any (one forward pass)."""
    outs: list[Any] = []
    found: list[str] = []
    handles = [model.get_submodule(name).register_forward_hook(lambda _m, _a, o: outs.append(o))]
    for bn_name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):

            def pre(_m: nn.Module, args: tuple, bn_name: str = bn_name) -> None:
                if args and outs and args[0] is outs[0]:
                    found.append(bn_name)

            handles.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def reconstruct(
    original: nn.Module,
    pruned: nn.Module,
    plan: dict[str, Any],
    analysis: Analysis,
    batches: list[Any],
    ridge: float = DEFAULT_RIDGE,
) -> Reconstruction:
    """Refit, in place in ``pruned``, every consumer of pruned channels so that its output on ``batches`` matches
    the original's (module docstring); ``original`` is left as it was."""
    result = Reconstruction()
    masks = removed_inputs(analysis, plan, original)
    if not masks or not batches:
        return result
    with eval_mode(original, pruned), torch.no_grad():
        order, calls = call_order(pruned, sorted(masks), batches[0])
        missing = [n for n in sorted(masks) if n not in calls]
        result.skipped += [f"{n}: not called as a module on the calibration data" for n in missing]
        for name in order:
            why = _refit(original, pruned, plan, name, batches, ridge, calls[name], result)
            if why:
                result.skipped.append(f"{name}: {why}")
    return result


def _refit(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], name: str, batches: list[Any], ridge: float,
    calls: int, result: Reconstruction,
) -> str | None:  # fmt: skip
    """Refit one consumer; returns why it was left alone, or None."""
    mod = pruned.get_submodule(name)
    layout = _layout(mod)
    if layout is None:
        return f"{type(mod).__name__} is not refit (linear, 2-d convolution with groups=1 and zero padding, Conv1D)"
    if calls != 1:
        return f"called {calls} times in one forward pass (shared weights)"
    kept_list = plan["tensors"].get(f"{name}.weight", {}).get("1" if layout == "hf-conv1d" else "0")
    kept = None if kept_list is None else torch.as_tensor(kept_list, dtype=torch.long)
    bias = getattr(mod, "bias", None)
    norm = None if isinstance(bias, torch.Tensor) else _follower_norm(pruned, name, batches[0])
    intercept = isinstance(bias, torch.Tensor) or norm is not None
    w = _weight_matrix(mod, layout)
    normal = Normal.of(w.shape[1], w.shape[0], w.device)
    for batch in batches:
        y = capture(original, name, batch, "output")
        x = capture(pruned, name, batch, "input")
        target = _targets(layout, y, kept)
        start = 0
        for rows in _rows(mod, layout, x):
            normal.add(rows, target[start : start + rows.shape[0]])
            start += rows.shape[0]
    before = torch.cat([w.double().t(), _offset(original, pruned, name, norm, bias, plan)[None]])
    theta = normal.solve(ridge, intercept)
    _set_weight(mod, layout, theta[:-1].t())
    if isinstance(bias, torch.Tensor):
        bias.copy_(theta[-1].to(bias))
    elif norm is not None:
        _into_norm(original, pruned, norm, theta[-1], plan)
        result.into_norm.append(f"{name} -> {norm}")
    result.refit.append(name)
    result.error[name] = [normal.error(before), normal.error(theta)]
    return None


def _offset(original: nn.Module, pruned: nn.Module, name: str, norm: str | None, bias: Any,
            plan: dict[str, Any]) -> torch.Tensor:  # fmt: skip
    """The layer's current intercept as seen against the original: its bias, or what an earlier repair moved the
    following norm's running mean by."""
    if isinstance(bias, torch.Tensor):
        return bias.detach().double()
    if norm is None:
        return torch.zeros(pruned.get_submodule(name).weight.shape[0], dtype=torch.float64)
    return (_orig_mean(original, norm, plan) - pruned.get_submodule(norm).running_mean.double().cpu()).to(
        pruned.get_submodule(name).weight.device
    )


def _orig_mean(original: nn.Module, norm: str, plan: dict[str, Any]) -> torch.Tensor:
    mean = original.get_submodule(norm).running_mean.double().cpu()
    kept = plan["tensors"].get(f"{norm}.running_mean", {}).get("0")
    return mean if kept is None else mean[torch.as_tensor(kept, dtype=torch.long)]


def _into_norm(original: nn.Module, pruned: nn.Module, norm: str, c: torch.Tensor, plan: dict[str, Any]) -> None:
    """``bn(z + c) == bn'(z)``: the norm subtracts the intercept from the original's running mean."""
    mean = pruned.get_submodule(norm).running_mean
    mean.copy_((_orig_mean(original, norm, plan).to(mean.device) - c.to(mean.device).double()).to(mean))
