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

Constant tensors. A tensor whose elements are all equal (a freshly initialised BatchNorm's weight, bias and
running statistics, torchvision ViT's zero-initialised classifier) hides wrong cuts: keeping the wrong channels
of a constant tensor computes the same numbers, and a zero classifier makes every output zero whatever happened
before it. Randomly initialised built-in models are full of them. So when the original holds constant tensors,
the check runs a second time, on the example input in float32, with those tensors (and only those: the rest keep their
scale) replaced by seeded noise in both models, the pruned model's copy sliced by the plan. That is still a
proof about this plan: the surgery never looks at weight values, so a cut that is exact for every value of
those tensors is exact for theirs. Trained models rarely hold constant tensors, so they pay nothing for it.
"""

from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._tensors import call, count_params, flat_tensors, map_tensors
from ._util import first_line
from .surgeon import mask_plan

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
    #: how many constant tensors were randomised for the second check (0: the model had none), and that check's
    #: max abs difference and tolerance (float32, example input)
    randomised: int = 0
    randomised_diff: float | None = None
    randomised_tolerance: float | None = None
    #: what was compared: the model's outputs, or (for a model analysed piece by piece) each traced piece's
    #: outputs on the inputs the masked original gave it
    compared: str = "model outputs"


def variants(example: Any) -> list[tuple[str, Any]]:
    """The example, and a batch-2 version of it: for 4D/5D float inputs a larger one, for a list of images
    (torchvision's detectors take ``model([image])``) two images, the first larger."""
    out: list[tuple[str, Any]] = [("example", example)]
    gen = torch.Generator().manual_seed(1234)

    def batch2(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        if t.is_floating_point():
            return torch.randn((2,) + tuple(t.shape[1:]), generator=gen, dtype=t.dtype)
        return torch.cat([t, t[:1]]) if t.shape[0] == 1 else t

    tensors = flat_tensors(example)
    images = _more_images(example, gen)
    if images is not None:  # a list of images (torchvision's detectors): two, one larger, instead of one
        first = next(t for t in flat_tensors(images) if t.dim() >= 3)
        out.append((f"2 images, the first {'x'.join(map(str, first.shape))}", images))
    elif len(tensors) == 1 and tensors[0].is_floating_point() and tensors[0].dim() in (4, 5):
        t = tensors[0]
        shape = (2, t.shape[1]) + tuple(s + 32 for s in t.shape[2:])
        bigger = torch.randn(shape, generator=gen, dtype=t.dtype)
        out.append((f"batch 2, size {'x'.join(map(str, shape))}", map_tensors(example, lambda _: bigger)))
        out.append(("batch 2", map_tensors(example, batch2)))  # only used if the larger size is rejected
    else:
        out.append(("batch 2", map_tensors(example, batch2)))
    return out


def _more_images(example: Any, gen: torch.Generator) -> Any:
    """``example`` with each list of images (float tensors of at least 3 dims) replaced by two new ones, the
    first 32 px larger; None when it holds no such list."""
    found = False

    def grow(value: Any) -> Any:
        nonlocal found
        if isinstance(value, list) and value and all(_is_image(v) for v in value):
            found = True
            shape = tuple(value[0].shape)
            bigger = shape[:-2] + tuple(s + 32 for s in shape[-2:])
            return [torch.randn(s, generator=gen, dtype=value[0].dtype) for s in (bigger, shape)]
        if isinstance(value, (tuple, list)):
            return type(value)(grow(v) for v in value)
        if isinstance(value, dict):
            return {k: grow(v) for k, v in value.items()}
        return value

    grown = grow(example)
    return grown if found else None


def _is_image(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 3


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


def verify(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], example: Any, pieces: list[str] | None = None
) -> VerifyResult:
    """Compare ``pruned`` with the masked ``original`` on several inputs, then again with the original's
    constant tensors randomised (module docstring); neither argument is modified.

    ``pieces``: the submodules a model analysed piece by piece was traced as. Everything pruned lies inside
    them and their inputs and outputs keep their shapes, so the code between them (a detector's anchors,
    score thresholds, top-k, NMS) is the same function in both models; it is not compared through, since
    top-k and NMS break ties between equal scores either way. Each piece's outputs are compared instead, on
    the inputs the masked original gave it (and the pruned model must still run whole).

    Models of more than BIG_PARAMS parameters are checked in their own precision against a reference that
    shares the unplanned tensors, so that shrinking holds about two extra copies of the weights at most."""
    result = _verify_once(original, pruned, plan, example, pieces=pieces)
    constants = constant_tensors(original)
    if not result.passed or not constants:
        return result
    try:
        noisy_original, noisy_pruned = _randomised(original, pruned, plan, constants)
    except AssertionError as exc:  # the pruned model's tensors do not have the shapes the plan gives
        return VerifyResult(float("inf"), result.tolerance, False, result.dtype, result.inputs, error=str(exc))
    second = _verify_once(noisy_original, noisy_pruned, plan, example, example_only=True, pieces=pieces)
    second.randomised = len(constants)
    if not second.passed:
        second.error = (
            f"{second.error}, with the {len(constants)} constant-initialised tensors of the original "
            "(norm weights, biases, zero classifier...) randomised in both models"
        )
        return second
    result.randomised = len(constants)
    result.randomised_diff, result.randomised_tolerance = second.max_abs_diff, second.tolerance
    return result


def _verify_once(
    original: nn.Module,
    pruned: nn.Module,
    plan: dict[str, Any],
    example: Any,
    example_only: bool = False,
    pieces: list[str] | None = None,
) -> VerifyResult:
    """One check; ``example_only`` (the re-check with randomised constants) runs the example alone in float32:
    sizes that a forward hard-codes do not depend on weight values, so the first check has covered them, and a
    wrong cut moves outputs by far more than float32's tolerance."""
    if count_params(original) > BIG_PARAMS:
        with torch.no_grad():
            reference = masked_view(original, plan)
            return _compare(reference, pruned.eval(), example, (torch.float32, TOL32), example_only, pieces)
    reference = mask_plan(copy.deepcopy(original), plan).eval()
    candidate = copy.deepcopy(pruned).eval()
    precisions = ((torch.float32, TOL32),) if example_only else ((torch.float64, TOL64), (torch.float32, TOL32))
    for dtype, tol_scale in precisions:
        try:
            ref_model = reference.to(dtype)
            cand_model = candidate.to(dtype)
            _run(ref_model, example, dtype)
        except (RuntimeError, TypeError, NotImplementedError):
            if dtype is torch.float64:
                continue
            raise
        return _compare(ref_model, cand_model, example, (dtype, tol_scale), example_only, pieces)
    raise AssertionError("unreachable")


def constant_tensors(model: nn.Module) -> list[str]:
    """State-dict names of floating parameters and norm running statistics of more than one element whose
    elements are all equal (tied names listed once)."""
    state = model.state_dict(keep_vars=True)
    names = []
    for name in _noisy_names(model):
        flat = state[name].detach().reshape(-1)
        if flat.numel() > 1 and bool((flat == flat[0]).all()):
            names.append(name)
    return names


def _noise(name: str, t: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Seeded by the tensor's name (and ``seed``): around the tensor's mean, at a scale that keeps activations
    in range: 1/sqrt(fan-in) for weight matrices and kernels, 0.1 for vectors (0.1 of the mean's size when that
    is above 1); running variances stay positive."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
    value = float(t.double().mean())
    z = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    if name.endswith("running_var"):
        return (abs(value) or 1.0) * (0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
    if t.dim() >= 2:
        return value + z / math.sqrt(max(1, t.numel() // t.shape[0]))
    return value + 0.1 * z * max(abs(value), 1.0)


def randomise(model: nn.Module, names: list[str] | None = None, seed: int = 0) -> nn.Module:
    """Replace tensors of ``model`` in place with seeded noise (see :func:`_noise`): the ``names`` given, or every
    floating parameter and norm running statistic. A wrong cut cannot hide behind a randomised tensor, which is
    what the verifier's second check does with constant tensors, and what tests and tools use to make every
    channel of a freshly initialised model distinguishable."""
    state = model.state_dict(keep_vars=True)
    chosen = names if names is not None else _noisy_names(model)
    with torch.no_grad():
        for name in chosen:
            t = state[name]
            t.copy_(_noise(name, t, seed).to(t.dtype))
    return model


def _noisy_names(model: nn.Module) -> list[str]:
    """Floating parameters and norm running statistics, each tensor once."""
    buffers = {n for n, _ in model.named_buffers() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")}
    params = {n for n, _ in model.named_parameters()}
    names, seen = [], set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen or (name not in params and name not in buffers) or not t.is_floating_point():
            continue
        seen.add(id(t))
        names.append(name)
    return names


def _randomised(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], names: list[str]
) -> tuple[nn.Module, nn.Module]:
    """Copies of both models (sharing every other tensor with them) whose constant tensors hold the same
    noise, sliced by the plan on the pruned side."""
    source = original.state_dict(keep_vars=True)
    out = []
    for model, slice_it in ((original, False), (pruned, True)):
        state = model.state_dict(keep_vars=True)
        targets = {id(state[n]) for n in names if n in state}
        memo: dict[int, Any] = {id(t): t for t in state.values() if id(t) not in targets}
        twin = copy.deepcopy(model, memo=memo).eval()
        twin_state = twin.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in names:
                if name not in twin_state:
                    continue
                noise = _noise(name, source[name])
                if slice_it:
                    for dim_s, idx in plan["tensors"].get(name, {}).items():
                        noise = noise.index_select(int(dim_s), torch.as_tensor(idx, dtype=torch.long))
                target = twin_state[name]
                if tuple(noise.shape) != tuple(target.shape):
                    raise AssertionError(f"{name}: planned shape {tuple(noise.shape)} != {tuple(target.shape)}")
                target.copy_(noise.to(target.dtype))
        out.append(twin)
    return out[0], out[1]


def _compare(
    reference: nn.Module,
    candidate: nn.Module,
    example: Any,
    precision: tuple[torch.dtype, float],
    example_only: bool = False,
    pieces: list[str] | None = None,
) -> VerifyResult:
    """Run both models on the inputs (:func:`variants`) and compare their outputs, or each piece's."""
    dtype, tol_scale = precision
    worst, tol, checked = 0.0, 0.0, []
    compared = _compared(pieces)

    def failed(diff: float, error: str) -> VerifyResult:
        return VerifyResult(diff, tol, False, str(dtype), list(checked), error=error, compared=compared)

    for label, inp in variants(example)[:1] if example_only else variants(example):
        if label == "batch 2" and any(c.startswith("batch 2") for c in checked):
            continue  # the larger batch-2 input already covered it
        try:
            pairs = _outputs(reference, candidate, inp, dtype, pieces)
        except _ReferenceFailed:  # the original itself rejects this input: nothing to compare
            if label == "example":
                raise
            continue
        except Exception as exc:  # noqa: BLE001 - the pruned model breaks where the original does not
            checked.append(label)
            return failed(float("inf"), f"pruned model fails on input {label}: {first_line(exc)}")
        checked.append(label)
        for where, ref, got in pairs:
            if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
                return failed(float("inf"), f"pruned model's {where}outputs have other shapes on input {label}")
            diff, this_tol = _difference(ref, got, tol_scale)
            if diff > this_tol or diff != diff:
                tol = this_tol
                return failed(diff, f"{where}outputs differ by {diff:.3g} on input {label} (tolerance {this_tol:.3g})")
            worst, tol = max(worst, diff), max(tol, this_tol)
    return VerifyResult(worst, tol, True, str(dtype), checked, compared=compared)


def _difference(ref: list[torch.Tensor], got: list[torch.Tensor], tol_scale: float) -> tuple[float, float]:
    """Max abs difference, and the tolerance scaled by the reference's magnitude."""
    scale = max((float(r.abs().max()) for r in ref if r.numel() and r.is_floating_point()), default=0.0)
    diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
    return diff, tol_scale * (1.0 + scale)


class _ReferenceFailed(Exception):
    """The masked original rejected an input (a larger image it cannot take): that input is skipped."""


def _compared(pieces: list[str] | None) -> str:
    if not pieces:
        return "model outputs"
    names = ", ".join(pieces[:6]) + (f" and {len(pieces) - 6} more" if len(pieces) > 6 else "")
    return (
        f"the outputs of the {len(pieces)} traced pieces ({names}), each on the inputs the masked original gave "
        "it; the model's own outputs, computed from them by code that did not trace (thresholds, top-k, NMS), "
        "are not compared, and the pruned model is run whole"
    )


Outputs = list[tuple[str, list[torch.Tensor], list[torch.Tensor]]]  # (where, reference tensors, pruned tensors)


def _outputs(
    reference: nn.Module, candidate: nn.Module, inp: Any, dtype: torch.dtype, pieces: list[str] | None
) -> Outputs:
    """What to compare on one input: the two models' outputs, or every call of every piece (the pruned piece
    run on the reference piece's inputs). Raises :class:`_ReferenceFailed` when the reference rejects it."""
    if not pieces:
        try:
            ref = _run(reference, inp, dtype)
        except Exception as exc:  # noqa: BLE001
            raise _ReferenceFailed from exc
        return [("", ref, _run(candidate, inp, dtype))]
    calls: list[tuple[str, tuple, dict, list[torch.Tensor]]] = []
    hooks = []
    for path in pieces:

        def record(_m: nn.Module, a: tuple, kw: dict, out: Any, path: str = path) -> None:
            calls.append((path, a, kw, [o.detach() for o in flat_tensors(out)]))

        hooks.append(reference.get_submodule(path).register_forward_hook(record, with_kwargs=True))
    try:
        _run(reference, inp, dtype)
    except Exception as exc:  # noqa: BLE001
        raise _ReferenceFailed from exc
    finally:
        for h in hooks:
            h.remove()
    pairs: Outputs = []
    with torch.no_grad():
        for path, a, kw, ref in calls:
            got = [o.detach() for o in flat_tensors(candidate.get_submodule(path)(*a, **kw))]
            pairs.append((f"piece {path}'s ", ref, got))
    _run(candidate, inp, dtype)  # the whole pruned model still runs (its outputs may differ by ties)
    return pairs
