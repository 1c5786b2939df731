"""The verifier: the pruned model must compute what the original computes with the dropped channels masked.

The reference is the original with its planned tensors zeroed outside their kept indices. Removing whole
channels is then exact: a removed channel contributes exactly zero downstream in the reference and is absent in
the pruned model. Both run in float64, so the only difference left is summation order. Neither model is copied:
both run as light copies of their module trees holding other tensors (the masked and float64 copies of theirs)
and sharing everything else, so a check costs the tensors it changes and its forward passes (and where the
reference needs no cast, a plain convolution or linear layer masks its activations instead of a copy of its
weight: :mod:`slimnet.verify.layer_masks`).

Tolerance: ``1e-6 * (1 + max|reference|)`` in float64 (``1e-4 * (1 + max|reference|)`` in float32, used for
models of more than 10M parameters, where the float64 copies of the weights cost more than everything else a
shrink does, and for models that cannot run in float64). Scaling by the output's magnitude keeps the check
meaningful for logits of any size; float64 makes the bound about eight orders of magnitude looser than the
rounding error it has to absorb, float32 about two, and both are far below any real mistake (a wrong channel
changes outputs at the scale of the outputs themselves).

Inputs checked: the example input, the same at batch size 2, and (for image-like inputs) a larger image when
the original accepts it; that catches forward code that hard-codes a size that pruning changed. The batch-2
input's first sample is the example itself, so where the larger image is refused (ViT's fixed image size, token
ids) one batch-2 pass checks both (:func:`variants`). When the analysis ran on a reduced input
(:mod:`slimnet.trace.reduced`: the model's graph holds for any size, and the small run was checked node by node
against the example's shapes), the verifier runs that small input and a batch-2 input slightly larger instead
(the smallest size that keeps every dim above 1): the same proof for a few percent of the arithmetic.

Constant tensors. A tensor whose elements are all equal (a freshly initialised BatchNorm's weight, bias and
running statistics, torchvision ViT's zero-initialised classifier) hides wrong cuts: keeping the wrong channels
of a constant tensor computes the same numbers, and a zero classifier makes every output zero whatever happened
before it. Randomly initialised built-in models are full of them. So when the original holds constant tensors,
the check runs a second time, on the first input in float32, with those tensors (and only those: the rest keep
their scale) replaced by seeded noise in both models, the pruned model's copy sliced by the plan. That is still a
proof about this plan: the surgery never looks at weight values, so a cut that is exact for every value of
those tensors is exact for theirs. Trained models rarely hold constant tensors, so they pay nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._tensors import FILL_ROWS, count_params, filled_if_empty, flat_tensors, in_eval, map_tensors, only_empty
from .._util import first_line
from ..trace.symbolic import untouched
from .bound import Bound, cast_state, tensors_of
from .layer_masks import layer_masks
from .noise import _noise_for, constant_tensors, randomise

TOL64 = 1e-6
TOL32 = 1e-4
#: Above this many parameters the check runs in float32: the float64 copies of the weights (12 bytes per
#: parameter, fresh memory) cost more than the rest of the shrink (docs/shrink-time.md).
F64_PARAMS = 10_000_000

#: How a piece's outputs are named when it got only empty batches and was compared on a filled one instead.
FILLED = f"(on {FILL_ROWS} seeded random rows: it got an empty batch) "

__all__ = ["VerifyResult", "constant_tensors", "randomise", "variants", "verify"]
Inputs = list[tuple[str, Any]]


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
    #: max abs difference and tolerance (float32, first input)
    randomised: int = 0
    randomised_diff: float | None = None
    randomised_tolerance: float | None = None
    #: what was compared: the model's outputs, or (for a model analysed piece by piece) each traced piece's
    #: outputs on the inputs the masked original gave it
    compared: str = "model outputs"


#: The label of the batch-2 input whose first sample is the example: checking it checks the example too.
HOLDS_EXAMPLE = "batch 2 (the example and one more sample)"


def variants(example: Any) -> Inputs:
    """The inputs to check, in the order to try them: for 4D/5D float inputs a larger batch-2 input first; the
    example at batch size 2 (when every tensor has batch size 1, the example itself is its first sample:
    :data:`HOLDS_EXAMPLE`, so one pass checks both where the larger input is refused); then the example alone.
    For a list of images (torchvision's detectors take ``model([image])``): the example, and two images, the
    first larger. :func:`_covered` says which of them a check already made redundant."""
    gen = torch.Generator().manual_seed(1234)
    tensors = flat_tensors(example)
    holds = all(t.dim() == 0 or t.shape[0] == 1 for t in tensors)

    def batch2(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        if holds:  # the example, then a random sample (ids and masks: the example's again)
            more = torch.randn(t.shape, generator=gen, dtype=t.dtype) if t.is_floating_point() else t
            return torch.cat([t, more])
        if t.is_floating_point():
            return torch.randn((2,) + tuple(t.shape[1:]), generator=gen, dtype=t.dtype)
        return t

    same_size = (HOLDS_EXAMPLE if holds else "batch 2", map_tensors(example, batch2))
    images = _more_images(example, gen)
    if images is not None:  # a list of images (torchvision's detectors): two, one larger, instead of one
        first = next(t for t in flat_tensors(images) if t.dim() >= 3)
        return [("example", example), (f"2 images, the first {'x'.join(map(str, first.shape))}", images)]
    if len(tensors) == 1 and tensors[0].is_floating_point() and tensors[0].dim() in (4, 5):
        t = tensors[0]
        shape = (2, t.shape[1]) + tuple(s + 32 for s in t.shape[2:])
        bigger = torch.randn(shape, generator=gen, dtype=t.dtype)
        larger = (f"batch 2, size {'x'.join(map(str, shape))}", map_tensors(example, lambda _: bigger))
        return [larger, same_size, ("example", example)] if holds else [("example", example), larger, same_size]
    return [same_size, ("example", example)] if holds else [("example", example), same_size]


def _covered(label: str, checked: list[str]) -> bool:
    """Whether checking ``label`` would add nothing to the inputs already ``checked``: a batch-2 input of the
    example's size after a larger batch-2 one, the example after the batch-2 input holding it."""
    if label in ("batch 2", HOLDS_EXAMPLE):
        return any(c.startswith("batch 2, size") for c in checked)
    return label == "example" and HOLDS_EXAMPLE in checked


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


def _reference(original: nn.Module, plan: dict[str, Any], dtype: torch.dtype) -> Bound:
    """The original with the plan's dropped slices zeroed, in ``dtype``; tensors that need neither share the
    original's storage, and plain convolutions and linear layers whose weight needs no cast are masked through
    their activations instead of a masked copy of the weight (:mod:`slimnet.verify.layer_masks`)."""
    tensors, planned = tensors_of(original), plan["tensors"]
    layers = layer_masks(original, tensors, planned, dtype)  # masked through their activations: no copy
    withheld = {lm.name for lm in layers.values()}
    copied = {name: dims for name, dims in planned.items() if name not in withheld}
    return Bound(original, cast_state(tensors, dtype, copied), dtype, layers, planned)


def _candidate(pruned: nn.Module, dtype: torch.dtype) -> Bound:
    """The pruned model in ``dtype``."""
    return Bound(pruned, cast_state(tensors_of(pruned), dtype), dtype)


@torch.no_grad()
def verify(
    original: nn.Module,
    pruned: nn.Module,
    plan: dict[str, Any],
    example: Any,
    inputs: Inputs | None = None,
    precision: torch.dtype | None = None,
    pieces: list[str] | None = None,
    taps: list[str] | None = None,
) -> VerifyResult:
    """Compare ``pruned`` with the masked ``original`` on several inputs, then again with the original's
    constant tensors randomised (module docstring); neither argument is modified. ``inputs``: ``[(label,
    input), ...]`` to check instead of the example's variants: the reduced inputs of an analysis that proved
    them equivalent (``Analysis.checks``); with constant tensors, the first is checked with the model's values
    and the others with the constants randomised. ``precision``: float64 or float32 (default: float64 up to
    F64_PARAMS parameters). Tensors the check does not change are shared with the models, never copied.

    ``pieces``: the submodules a model analysed piece by piece was traced as. Everything pruned lies inside
    them and their inputs and outputs keep their shapes, so the code between them (a detector's anchors,
    score thresholds, top-k, NMS) is the same function in both models; it is not compared through, since
    top-k and NMS break ties between equal scores either way. Each piece's outputs are compared instead, on
    the inputs the masked original gave it (and the pruned model must still run whole).

    ``taps``: for a model that traced whole but ends in such tie-breaking code (RetinaNet, FCOS), the submodules
    whose outputs are compared, both models run whole (:func:`_tapped`); the model's outputs where no tap keeps
    its shape."""
    original, pruned = in_eval(original), in_eval(pruned)  # left in eval mode, as before
    with untouched(original), untouched(pruned):  # the light copies share lists a forward may append to
        return _verify(original, pruned, plan, example, inputs, precision, pieces or None, taps or None)


def _verify(original: nn.Module, pruned: nn.Module, plan: dict[str, Any], example: Any, inputs: Inputs | None,
            precision: torch.dtype | None, pieces: list[str] | None,
            taps: list[str] | None) -> VerifyResult:  # fmt: skip
    constants = constant_tensors(original)
    if inputs is None:
        main = variants(example)
        recheck = [("example", example)]  # the cheapest input, with the constants randomised
    elif constants:  # real values on the small input, the larger one (different batch and size) randomised
        main, recheck = inputs[:1], inputs[1:]
    else:
        main, recheck = inputs, []
    reference, candidate, tol_scale, k, first = _bind(original, pruned, plan, main, precision)
    result = _compare(reference, candidate, main[k:], tol_scale, None if pieces or taps else first, pieces, taps)
    if not result.passed or not constants:
        return result
    try:
        noise_ref, noise_cand = _noise_for(original, pruned, plan, constants)
    except AssertionError as exc:  # the pruned model's tensors do not have the shapes the plan gives
        return VerifyResult(float("inf"), result.tolerance, False, result.dtype, result.inputs, error=str(exc))
    # the same tensors with the constants swapped for noise; float32's tolerance: a wrong cut moves outputs by
    # far more than that
    second = _compare(reference.swap(noise_ref, plan), candidate.swap(noise_cand), recheck, TOL32, None, pieces, taps)
    second.randomised = len(constants)
    if not second.passed:
        second.error = (
            f"{second.error}, with the {len(constants)} constant-initialised tensors of the original "
            "(norm weights, biases, zero classifier...) randomised in both models"
        )
        return second
    result.randomised = len(constants)
    result.randomised_diff, result.randomised_tolerance = second.max_abs_diff, second.tolerance
    if inputs is not None:
        result.inputs += [f"{label} (constants randomised)" for label in second.inputs]
    return result


def _bind(original: nn.Module, pruned: nn.Module, plan: dict[str, Any], inputs: Inputs,
          precision: torch.dtype | None) -> tuple[Bound, Bound, float, int, list[torch.Tensor]]:  # fmt: skip
    """The masked reference and the candidate in ``precision`` (by default float64 up to F64_PARAMS parameters,
    else float32; float32 too for models that cannot run in float64), the tolerance scale, the position of the
    first input the reference accepts (a larger image may be refused) and the reference's outputs on it (running
    it is how a model shows that it cannot run in float64). When the reference refuses every input in float32,
    the last one's error (the example's) is raised."""
    if precision is None:
        precision = torch.float64 if count_params(original) <= F64_PARAMS else torch.float32
    precisions = ((torch.float64, TOL64),) if precision is torch.float64 else ()
    for dtype, tol_scale in precisions + ((torch.float32, TOL32),):
        reference = _reference(original, plan, dtype)
        for k, (_, inp) in enumerate(inputs):
            try:
                first = reference(inp)
            except Exception:  # noqa: BLE001 - refused: the next input, then float32, then the example's error
                if dtype is torch.float32 and k == len(inputs) - 1:
                    raise
                continue
            return reference, _candidate(pruned, dtype), tol_scale, k, first
    raise AssertionError("unreachable")


def _compare(reference: Bound, candidate: Bound, inputs: Inputs, tol_scale: float,
             first: list[torch.Tensor] | None, pieces: list[str] | None = None,
             taps: list[str] | None = None) -> VerifyResult:  # fmt: skip
    """Both models on every input (``first``: the reference's outputs on the first, already computed), or each
    piece's outputs (:func:`verify`'s ``pieces``)."""
    worst, tol, checked, filled = 0.0, 0.0, [], []
    dtype, compared = str(reference.dtype), _compared(pieces, taps)

    def failed(diff: float, error: str) -> VerifyResult:
        return VerifyResult(diff, tol, False, dtype, list(checked), error=error, compared=compared)

    for k, (label, inp) in enumerate(inputs):
        if _covered(label, checked):
            continue
        try:
            pairs = _outputs(reference, candidate, inp, pieces, first if k == 0 else None, taps)
        except _ReferenceFailed:  # the original itself rejects this input: nothing to compare
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
            if FILLED in where and where not in filled:
                filled.append(where)
    if filled:
        names = ", ".join(w.split("'s ")[0].removeprefix("piece ") for w in filled)
        compared += (
            f"; a piece that got only empty batches ({names}: nothing detected) is compared on {FILL_ROWS} "
            "seeded random rows instead, as the analysis read it"
        )
    return VerifyResult(worst, tol, True, dtype, checked, compared=compared)


def _difference(ref: list[torch.Tensor], got: list[torch.Tensor], tol_scale: float) -> tuple[float, float]:
    """Max abs difference, and the tolerance scaled by the reference's magnitude."""
    scale = max((float(r.abs().max()) for r in ref if r.numel() and r.is_floating_point()), default=0.0)
    diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
    return diff, tol_scale * (1.0 + scale)


class _ReferenceFailed(Exception):
    """The masked original rejected an input (a larger image it cannot take): that input is skipped."""


def _compared(pieces: list[str] | None, taps: list[str] | None = None) -> str:
    if taps:
        return (
            f"the outputs of {', '.join(taps)} (both models run whole), which the model's code turns into its "
            "outputs by breaking ties (top-k, thresholds, NMS); the model's outputs where none keeps its shape"
        )
    if not pieces:
        return "model outputs"
    names = ", ".join(pieces[:6]) + (f" and {len(pieces) - 6} more" if len(pieces) > 6 else "")
    return (
        f"the outputs of the {len(pieces)} traced pieces ({names}), each on the inputs the masked original gave "
        "it; the model's own outputs, computed from them by code that did not trace (thresholds, top-k, NMS), "
        "are not compared, and the pruned model is run whole"
    )


Outputs = list[tuple[str, list[torch.Tensor], list[torch.Tensor]]]  # (where, reference tensors, pruned tensors)


def _outputs(reference: Bound, candidate: Bound, inp: Any, pieces: list[str] | None,
             first: list[torch.Tensor] | None, taps: list[str] | None = None) -> Outputs:  # fmt: skip
    """What to compare on one input: the two models' outputs, every call of every piece (the pruned piece
    run on the reference piece's inputs), or the taps' outputs. Raises :class:`_ReferenceFailed` when the
    reference rejects it."""
    if taps:
        return _tapped(reference, candidate, inp, taps)
    try:
        if not pieces:
            ref = first if first is not None else reference(inp)
        else:
            calls, _ = reference.calls(inp, pieces)
    except Exception as exc:  # noqa: BLE001 - any failure of the original on this input
        raise _ReferenceFailed from exc
    if not pieces:
        return [("", ref, candidate(inp))]
    pairs: Outputs = [_piece_pair(reference, candidate, *c) for c in calls]
    candidate(inp)  # the whole pruned model still runs (its outputs may differ by ties)
    return pairs


def _piece_pair(reference: Bound, candidate: Bound, path: str, args: tuple, kwargs: dict,
                ref: list[torch.Tensor]) -> tuple[str, list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """One call of one piece: the pruned piece on the reference piece's inputs. A call that only got empty
    batches (a mask head when nothing was detected) would compare nothing, so both pieces run on the filled
    batch the analysis read the piece on (:func:`slimnet._tensors.filled_if_empty`, the same seed) instead,
    where the reference takes it."""
    if only_empty((args, kwargs)):
        filled = filled_if_empty((args, kwargs))
        try:
            ref_filled = reference.piece(path, *filled) if filled is not None else None
        except Exception:  # noqa: BLE001 - the piece needs its empty batch (its groups were left whole)
            ref_filled = None
        if ref_filled is not None:
            return f"piece {path}'s {FILLED}", ref_filled, candidate.piece(path, *filled)
    return f"piece {path}'s ", ref, candidate.piece(path, args, kwargs)


def _tapped(reference: Bound, candidate: Bound, inp: Any, taps: list[str]) -> Outputs:
    """Every call of every tap, both models run whole on ``inp``: the calls whose outputs keep their shapes in
    the pruned model (a tap whose output channels were cut is not one), provided the last call is among them
    (everything pruned lies upstream of it or inside it); else the model's outputs, as without taps."""
    try:
        ref_calls, ref_out = reference.calls(inp, taps)
    except Exception as exc:  # noqa: BLE001 - any failure of the original on this input
        raise _ReferenceFailed from exc
    cand_calls, cand_out = candidate.calls(inp, taps)
    same = [
        (f"{path}'s ", ref, got)
        for (path, _, _, ref), (*_, got) in zip(ref_calls, cand_calls)
        if len(ref) == len(got) and all(a.shape == b.shape for a, b in zip(ref, got))
    ]
    if len(ref_calls) != len(cand_calls) or not same or same[-1][1] is not ref_calls[-1][3]:
        return [("", ref_out, cand_out)]
    return same
