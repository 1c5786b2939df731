"""Masking a layer through its activations instead of copying its weight: the same masked reference, without
the copy.

The verifier's reference is the original with each planned slice of each tensor zeroed (:mod:`slimnet.verify.bound`).
For a convolution or linear layer that costs a masked copy of the weight, the bulk of a large model's
parameters (resnet50: 100 MB in float32, BERT-base 340 MB), made for a few forward passes on small inputs. Yet
a layer whose weight is zeroed along its output dim (0) and its input dim (1) computes

    conv(x, W * m_out * m_in) + b  ==  conv(x * m_in, W) * m_out + b

term for term: every product the masked weight zeroes is zeroed on the other side instead, and nothing else
changes (for a grouped convolution, weight column ``i`` reads input channel ``i`` of every group, so the input
mask is the weight's, repeated per group). So for such a layer the reference runs that right-hand side on the
original, uncopied weight. The bias keeps its own planned mask (a copy as before: it is small), so even a plan
whose bias and weight disagree gives the reference it gave before.

Only plain layers qualify (``nn.Conv1d/2d/3d`` with zero padding and ``nn.Linear``, their exact classes), whose
weight is in the reference's dtype, planned only along dims 0 and 1, and known under no other name (a tied weight
is read by another module). Their weight attribute in the reference is a :class:`Withheld` stand-in of the same
shape on the meta device, which raises :class:`WithheldUsed` when anything computes with it. Code that reads a
layer's weight outside the layer's own forward (``nn.MultiheadAttention`` reads its ``out_proj.weight``, a
model may read ``self.fc.weight.dtype``) therefore cannot silently see the unmasked weight: the reference is
rebuilt with the masked copies (:class:`slimnet.verify.bound.Bound` does it) and the pass runs again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._tensors import keep_vector

#: The layer classes masked through their activations (exact classes: a subclass may compute otherwise).
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class WithheldUsed(RuntimeError):
    """Something outside a masked layer's forward computed with its weight."""


class Withheld(torch.Tensor):
    """The stand-in for a weight the reference does not copy: any torch function or method on it raises."""

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        raise WithheldUsed(f"{getattr(func, '__name__', func)} read a weight that the reference masks in its layer")


@dataclass
class LayerMask:
    """One layer masked through its activations: its weight's state_dict name, the weight, and the 0/1 vectors
    for its output channels and input channels (None: that dim is not planned)."""

    name: str
    weight: torch.Tensor
    out: torch.Tensor | None
    inp: torch.Tensor | None


def layer_masks(model: nn.Module, tensors: dict[str, torch.Tensor], planned: dict[str, dict[str, list[int]]],
                dtype: torch.dtype) -> dict[str, LayerMask]:  # fmt: skip
    """Per module path, the layers of ``model`` that qualify (module docstring) and their masks. ``tensors``:
    every parameter and buffer under every name (:func:`slimnet.verify.bound.tensors_of`)."""
    names = Counter(id(t) for t in tensors.values())
    found: dict[str, LayerMask] = {}
    for path, m in model.named_modules():
        if type(m) not in LAYERS or (type(m) is not nn.Linear and m.padding_mode != "zeros"):
            continue
        name = f"{path}.weight" if path else "weight"
        dims, w = planned.get(name), m._parameters.get("weight")
        if not dims or w is None or tensors.get(name) is not w or names[id(w)] != 1 or w.dtype != dtype:
            continue
        if set(dims) - {"0", "1"} or w.dim() < 2:
            continue
        out = keep_vector(w.shape[0], dims["0"], dtype) if "0" in dims else None
        inp = keep_vector(w.shape[1], dims["1"], dtype) if "1" in dims else None
        if inp is not None and type(m) is not nn.Linear and m.groups > 1:
            inp = inp.repeat(m.groups)  # input channel g * (in / groups) + i is read by weight column i
        found[path] = LayerMask(name, w, out, inp)
    return found


def withheld(weight: torch.Tensor) -> torch.Tensor:
    """The stand-in for ``weight`` (its shape and dtype, no data)."""
    return torch.empty(weight.shape, dtype=weight.dtype, device="meta").as_subclass(Withheld)


def masked_forward(layer: nn.Module, mask: LayerMask) -> Any:
    """``layer``'s forward (a conv or linear of the reference's module tree, whose ``bias`` is already masked) as
    the masked weight would compute it: input channels masked, the weight's own product, output channels
    masked, then the bias."""
    linear = type(layer) is nn.Linear

    def forward(x: torch.Tensor) -> torch.Tensor:
        cdim = -1 if linear else (1 if x.dim() == mask.weight.dim() else 0)  # a batch, or one unbatched sample
        if mask.inp is not None:
            x = x * _along(mask.inp, cdim, x.dim())
        y = torch.nn.functional.linear(x, mask.weight) if linear else layer._conv_forward(x, mask.weight, None)
        if mask.out is not None:
            y = y * _along(mask.out, cdim, y.dim())
        bias = layer.bias
        return y if bias is None else y + bias.reshape(_shape(bias.shape[0], cdim, y.dim()))

    return forward


def _along(vector: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    return vector.reshape(_shape(len(vector), dim, ndim))


def _shape(size: int, dim: int, ndim: int) -> list[int]:
    shape = [1] * ndim
    shape[dim] = size
    return shape
