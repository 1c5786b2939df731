"""The verifier: the pruned model must compute what the original computes with the dropped channels masked.

The reference is the original with its planned tensors zeroed outside their kept indices. Removing whole
channels is then exact: a removed channel contributes exactly zero downstream in the reference and is absent in
the pruned model. Both run in float64, so the only difference left is summation order. Neither model is copied:
both run as light copies of their module trees holding other tensors (the masked and float64 copies of theirs)
and sharing everything else, so a check costs the tensors it changes and its forward passes.

Tolerance: ``1e-6 * (1 + max|reference|)`` in float64 (``1e-4 * (1 + max|reference|)`` in float32, used for
models of more than 10M parameters, where the float64 copies of the weights cost more than everything else a
shrink does, and for models that cannot run in float64). Scaling by the output's magnitude keeps the check
meaningful for logits of any size; float64 makes the bound about eight orders of magnitude looser than the
rounding error it has to absorb, float32 about two, and both are far below any real mistake (a wrong channel
changes outputs at the scale of the outputs themselves).

Inputs checked: the example input, the same at batch size 2, and (for image-like inputs) a larger image when
the original accepts it; that catches forward code that hard-codes a size that pruning changed. When the
analysis ran on a reduced input (:mod:`slimnet.reduced`: the model's graph holds for any size, and the small
run was checked node by node against the example's shapes), the verifier runs that small input and a batch-2
input a quarter larger instead: the same proof for a few percent of the arithmetic.

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

import copy
import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ._tensors import call, count_params, flat_tensors, map_tensors
from ._util import first_line

TOL64 = 1e-6
TOL32 = 1e-4
#: Above this many parameters the check runs in float32: the float64 copies of the weights (12 bytes per
#: parameter, fresh memory) cost more than the rest of the shrink (docs/shrink-time.md).
F64_PARAMS = 10_000_000
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


def variants(example: Any) -> Inputs:
    """The example, a batch-2 version of it, and a larger image for 4D/5D float inputs."""
    out: Inputs = [("example", example)]
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


def _cast(value: Any, dtype: torch.dtype) -> Any:
    return map_tensors(value, lambda t: t.to(dtype) if t.is_floating_point() else t)


class _Bound:
    """A model run with other tensors in place of some of its own: a copy of its module tree (:func:`_light_copy`)
    that shares every other tensor and attribute, so the masked reference and the float64 copies cost the
    tensors they change, never a copy of the whole model."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        self.model, self.state, self.dtype = model, state, dtype
        self.copy = _light_copy(model, state)

    def swap(self, tensors: dict[str, torch.Tensor], plan: dict[str, Any] | None = None) -> _Bound:
        """The same model and tensors but ``tensors`` (cast, and masked by ``plan`` where it plans them)."""
        state, done = dict(self.state), {}
        for name, t in tensors.items():
            if id(t) not in done:  # tied names share one tensor
                dims = plan["tensors"].get(name) if plan is not None else None
                done[id(t)] = _masked(t, dims, self.dtype) if dims else t.to(self.dtype)
            state[name] = done[id(t)]
        return _Bound(self.model, state, self.dtype)

    def __call__(self, inp: Any) -> list[torch.Tensor]:
        with torch.no_grad():
            out = call(self.copy, _cast(inp, self.dtype))
        return [o.detach() for o in flat_tensors(out)]


def _light_copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """The module tree of ``model`` with the tensors named in ``state`` replaced: each module a shallow copy
    (new parameter, buffer and child dicts; every other attribute shared), a module that appears twice copied
    once. The model itself is not touched. Only for running the copy: nothing of it is returned to the user."""
    made: dict[int, nn.Module] = {}

    def visit(m: nn.Module) -> nn.Module:
        if id(m) not in made:
            new = copy.copy(m)
            made[id(m)] = new
            new.__dict__["_parameters"] = dict(m._parameters)
            new.__dict__["_buffers"] = dict(m._buffers)
            new.__dict__["_modules"] = {k: visit(c) if c is not None else None for k, c in m._modules.items()}
        return made[id(m)]

    root = visit(model)
    for name, t in state.items():
        path, _, attr = name.rpartition(".")
        owner = root.get_submodule(path) if path else root
        if attr in owner._parameters:
            owner._parameters[attr] = t
        elif attr in owner._buffers:
            owner._buffers[attr] = t
    return root


def _tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer under every name it has (tied ones under each, as the same object)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return dict(named)


def _state(tensors: dict[str, torch.Tensor], make: Any) -> dict[str, torch.Tensor]:
    """``make(name, tensor)`` for every name, once per tensor (tied names get the same object), keeping only
    the tensors ``make`` changed."""
    done: dict[int, torch.Tensor] = {}
    out = {}
    for name, t in tensors.items():
        if id(t) not in done:
            done[id(t)] = make(name, t)
        if done[id(t)] is not t:
            out[name] = done[id(t)]
    return out


def _masked(t: torch.Tensor, dims: dict[str, list[int]], dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype``, zero outside the kept indices of each planned dim: one multiplication by a
    broadcast 0/1 mask, so the copy, the cast and the masking are one pass over the tensor."""
    mask = torch.ones((), dtype=dtype)
    for dim_s, idx in dims.items():
        dim = int(dim_s)
        keep = np.zeros(t.shape[dim])
        keep[np.asarray(idx, dtype=np.int64)] = 1.0
        shape = [1] * t.dim()
        shape[dim] = -1
        mask = mask * torch.from_numpy(keep).to(dtype).reshape(shape)
    return torch.mul(t, mask)


def _reference(original: nn.Module, plan: dict[str, Any], dtype: torch.dtype) -> _Bound:
    """The original with the plan's dropped slices zeroed, in ``dtype``; tensors that need neither share the
    original's storage."""

    def make(name: str, t: torch.Tensor) -> torch.Tensor:
        if name in plan["tensors"]:
            return _masked(t, plan["tensors"][name], dtype if t.is_floating_point() else t.dtype)
        return t.to(dtype) if t.is_floating_point() else t

    return _Bound(original, _state(_tensors_of(original), make), dtype)


def _candidate(pruned: nn.Module, dtype: torch.dtype) -> _Bound:
    """The pruned model in ``dtype``."""
    return _Bound(pruned, _state(_tensors_of(pruned), lambda _, t: t.to(dtype) if t.is_floating_point() else t), dtype)


@torch.no_grad()
def verify(
    original: nn.Module,
    pruned: nn.Module,
    plan: dict[str, Any],
    example: Any,
    inputs: Inputs | None = None,
    precision: torch.dtype | None = None,
) -> VerifyResult:
    """Compare ``pruned`` with the masked ``original`` on several inputs, then again with the original's
    constant tensors randomised (module docstring); neither argument is modified. ``inputs``: ``[(label,
    input), ...]`` to check instead of the example's variants: the reduced inputs of an analysis that proved
    them equivalent (``Analysis.checks``); with constant tensors, the first is checked with the model's values
    and the others with the constants randomised. ``precision``: float64 or float32 (default: float64 up to
    F64_PARAMS parameters). Tensors the check does not change are shared with the models, never copied."""
    original, pruned = original.eval(), pruned.eval()
    constants = constant_tensors(original)
    if inputs is None:
        main, recheck = variants(example), variants(example)[:1]
    elif constants:  # real values on the small input, the larger one (different batch and size) randomised
        main, recheck = inputs[:1], inputs[1:]
    else:
        main, recheck = inputs, []
    reference, candidate, tol_scale, first = _bind(original, pruned, plan, main[0][1], precision)
    result = _compare(reference, candidate, main, tol_scale, first)
    if not result.passed or not constants:
        return result
    try:
        noise_ref, noise_cand = _noise_for(original, pruned, plan, constants)
    except AssertionError as exc:  # the pruned model's tensors do not have the shapes the plan gives
        return VerifyResult(float("inf"), result.tolerance, False, result.dtype, result.inputs, error=str(exc))
    # the same tensors with the constants swapped for noise; float32's tolerance: a wrong cut moves outputs by
    # far more than that
    second = _compare(reference.swap(noise_ref, plan), candidate.swap(noise_cand), recheck, TOL32, None)
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


def _bind(original: nn.Module, pruned: nn.Module, plan: dict[str, Any], first_input: Any,
          precision: torch.dtype | None) -> tuple[_Bound, _Bound, float, list[torch.Tensor]]:  # fmt: skip
    """The masked reference and the candidate in ``precision`` (by default float64 up to F64_PARAMS parameters,
    else float32; float32 too for models that cannot run in float64), the tolerance scale, and the reference's
    outputs on the first input (running it is how a model shows that it cannot run in float64)."""
    if precision is None:
        precision = torch.float64 if count_params(original) <= F64_PARAMS else torch.float32
    precisions = ((torch.float64, TOL64),) if precision is torch.float64 else ()
    for dtype, tol_scale in precisions + ((torch.float32, TOL32),):
        reference = _reference(original, plan, dtype)
        try:
            first = reference(first_input)
        except (RuntimeError, TypeError, NotImplementedError):
            if dtype is torch.float64:
                continue
            raise
        return reference, _candidate(pruned, dtype), tol_scale, first
    raise AssertionError("unreachable")


def constant_tensors(model: nn.Module) -> list[str]:
    """State-dict names of floating parameters and norm running statistics of more than one element whose
    elements are all equal (tied names listed once)."""
    state = model.state_dict(keep_vars=True)
    names = []
    for name in _noisy_names(model):
        flat = state[name].detach().reshape(-1)
        # the first elements settle it for nearly every trained or random tensor without reading the rest
        if flat.numel() > 1 and bool((flat[:16] == flat[0]).all()) and bool((flat == flat[0]).all()):
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


def _noise_for(
    original: nn.Module, pruned: nn.Module, plan: dict[str, Any], names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same seeded noise for both models' constant tensors, sliced by the plan on the pruned side (an
    AssertionError when the pruned model's tensor has another shape). Keyed by state_dict name; a tied name
    finds its tensor's noise through any of its names."""
    source = original.state_dict(keep_vars=True)
    cand_tensors = pruned.state_dict(keep_vars=True)
    names_of: dict[int, list[str]] = {}
    for alias, t in source.items():
        names_of.setdefault(id(t), []).append(alias)
    ref: dict[str, torch.Tensor] = {}
    cand: dict[str, torch.Tensor] = {}
    for name in names:
        noise = _noise(name, source[name].detach()).to(source[name].dtype)
        sliced = noise
        for dim_s, idx in plan["tensors"].get(name, {}).items():
            sliced = sliced.index_select(int(dim_s), torch.as_tensor(idx, dtype=torch.long))
        for alias in names_of[id(source[name])]:
            ref[alias] = noise
            if alias in cand_tensors:
                if tuple(sliced.shape) != tuple(cand_tensors[alias].shape):
                    shape = tuple(cand_tensors[alias].shape)
                    raise AssertionError(f"{alias}: planned shape {tuple(sliced.shape)} != {shape}")
                cand[alias] = sliced
    return ref, cand


def _compare(reference: _Bound, candidate: _Bound, inputs: Inputs, tol_scale: float,
             first: list[torch.Tensor] | None) -> VerifyResult:  # fmt: skip
    """Both models on every input (``first``: the reference's outputs on the first, already computed)."""
    worst, tol, checked = 0.0, 0.0, []
    dtype = str(reference.dtype)
    for k, (label, inp) in enumerate(inputs):
        if label == "batch 2" and any(c.startswith("batch 2") for c in checked):
            continue  # the larger batch-2 input already covered it
        try:
            ref = first if k == 0 and first is not None else reference(inp)
        except Exception:  # noqa: BLE001 - the original itself rejects this input: nothing to compare
            continue
        try:
            got = candidate(inp)
        except Exception as exc:  # noqa: BLE001 - the pruned model breaks where the original does not
            error = f"pruned model fails on input {label}: {first_line(exc)}"
            return VerifyResult(float("inf"), tol, False, dtype, checked + [label], error=error)
        if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            error = f"pruned model's outputs have other shapes on input {label}"
            return VerifyResult(float("inf"), tol, False, dtype, checked + [label], error=error)
        scale = max((float(r.abs().max()) for r in ref if r.numel() and r.is_floating_point()), default=0.0)
        diff = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref, got) if a.numel()), default=0.0)
        this_tol = tol_scale * (1.0 + scale)
        checked.append(label)
        if diff > this_tol or diff != diff:
            error = f"outputs differ by {diff:.3g} on input {label} (tolerance {this_tol:.3g})"
            return VerifyResult(diff, this_tol, False, dtype, checked, error=error)
        worst, tol = max(worst, diff), max(tol, this_tol)
    return VerifyResult(worst, tol, True, dtype, checked)
