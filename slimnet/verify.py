"""The verifier: the pruned model must compute what the original computes with the dropped channels masked.

The reference is a copy of the original whose planned tensors are zeroed outside their kept indices. Removing
whole channels is then exact: a removed channel contributes exactly zero downstream in the reference and is
absent in the pruned model. Both run in float64, so the only difference left is summation order.

Tolerance: ``1e-6 * (1 + max|reference|)`` in float64 (``1e-4 * (1 + max|reference|)`` in float32, used
for models that cannot run in float64 and for models of more than 100M parameters, where float64 copies would
triple the memory). Scaling by the output's magnitude keeps the check meaningful for logits of any size, and
float64 makes the bound about eight orders of magnitude looser than the rounding error it has to absorb, yet
far below any real mistake (a wrong channel changes outputs at the scale of the outputs themselves).

Inputs checked: the example input, the same at batch size 2, and (for image-like inputs) a larger image when
the original accepts it; that catches forward code that hard-codes a size that pruning changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .surgeon import mask_plan
from .trace import call, flat_tensors, map_tensors

TOL64 = 1e-6
TOL32 = 1e-4
BIG_PARAMS = 100_000_000


@dataclass
class VerifyResult:
    """Max abs difference over all checked inputs, the tolerance, and which inputs were checked."""

    max_abs_diff: float
    tolerance: float
    passed: bool
    dtype: str
    inputs: list[str] = field(default_factory=list)
    error: str | None = None


def variants(example: Any) -> list[tuple[str, Any]]:
    """The example, a batch-2 version of it, and a larger image for 4D/5D float inputs."""
    out: list[tuple[str, Any]] = [("example", example)]
    gen = torch.Generator().manual_seed(1234)

    def batch2(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        if t.is_floating_point():
            return torch.randn((2,) + tuple(t.shape[1:]), generator=gen, dtype=t.dtype)
        return torch.cat([t, t[:1]]) if t.shape[0] == 1 else t

    tensors = flat_tensors(example)
    if len(tensors) == 1 and tensors[0].is_floating_point() and tensors[0].dim() in (4, 5):
        t = tensors[0]
        shape = (2, t.shape[1]) + tuple(s + 32 for s in t.shape[2:])
        bigger = torch.randn(shape, generator=gen, dtype=t.dtype)
        out.append((f"batch 2, size {'x'.join(map(str, shape))}", map_tensors(example, lambda _: bigger)))
        out.append(("batch 2", map_tensors(example, batch2)))  # only used if the larger size is rejected
    else:
        out.append(("batch 2", map_tensors(example, batch2)))
    return out


def _run(model: nn.Module, inp: Any, dtype: torch.dtype) -> list[torch.Tensor]:
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    with torch.no_grad():
        return [o.detach() for o in flat_tensors(call(model, map_tensors(inp, cast)))]


def masked_view(original: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """A copy of ``original`` that shares every unplanned tensor with it and holds masked copies of the planned
    ones: the reference costs the planned tensors only, not a whole second model."""
    state = original.state_dict(keep_vars=True)
    planned = {id(state[n]) for n in plan["tensors"]}
    memo: dict[int, Any] = {id(t): t for t in state.values() if id(t) not in planned}
    return mask_plan(copy.deepcopy(original, memo=memo), plan).eval()


def verify(original: nn.Module, pruned: nn.Module, plan: dict[str, Any], example: Any) -> VerifyResult:
    """Compare ``pruned`` with the masked ``original`` on several inputs; neither argument is modified.

    Models of more than BIG_PARAMS parameters are checked in their own precision against a reference that
    shares the unplanned tensors, so that shrinking holds about two extra copies of the weights at most."""
    if sum(p.numel() for p in original.parameters()) > BIG_PARAMS:
        with torch.no_grad():
            return _compare(masked_view(original, plan), pruned.eval(), example, torch.float32, TOL32)
    reference = mask_plan(copy.deepcopy(original), plan).eval()
    candidate = copy.deepcopy(pruned).eval()
    for dtype, tol_scale in ((torch.float64, TOL64), (torch.float32, TOL32)):
        try:
            ref_model = reference.to(dtype)
            cand_model = candidate.to(dtype)
            _run(ref_model, example, dtype)
        except (RuntimeError, TypeError, NotImplementedError):
            if dtype is torch.float64:
                continue
            raise
        return _compare(ref_model, cand_model, example, dtype, tol_scale)
    raise AssertionError("unreachable")


def _compare(reference: nn.Module, candidate: nn.Module, example: Any, dtype: torch.dtype,
             tol_scale: float) -> VerifyResult:
    worst, tol, checked = 0.0, 0.0, []
    for label, inp in variants(example):
        if label == "batch 2" and any(c.startswith("batch 2") for c in checked):
            continue  # the larger batch-2 input already covered it
        try:
            ref = _run(reference, inp, dtype)
        except Exception:  # noqa: BLE001 - the original itself rejects this input: nothing to compare
            if label == "example":
                raise
            continue
        try:
            got = _run(candidate, inp, dtype)
        except Exception as exc:  # noqa: BLE001 - the pruned model breaks where the original does not
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            return VerifyResult(float("inf"), tol, False, str(dtype), checked + [label],
                                error=f"pruned model fails on input {label}: {first}")
        if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            return VerifyResult(float("inf"), tol, False, str(dtype), checked + [label],
                                error=f"pruned model's outputs have other shapes on input {label}")
        scale = max((float(r.abs().max()) for r in ref if r.numel() and r.is_floating_point()), default=0.0)
        diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
        this_tol = tol_scale * (1.0 + scale)
        checked.append(label)
        if diff > this_tol or diff != diff:
            return VerifyResult(diff, this_tol, False, str(dtype), checked,
                                error=f"outputs differ by {diff:.3g} on input {label} (tolerance {this_tol:.3g})")
        worst, tol = max(worst, diff), max(tol, this_tol)
    return VerifyResult(worst, tol, True, str(dtype), checked)
