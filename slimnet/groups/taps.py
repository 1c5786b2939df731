"""Where a model that traced whole turns its outputs out of tie-breaking code (RetinaNet and FCOS select their
detections with top-k and NMS), the verifier compares the outputs of the model's parts instead.

Two equal scores may come out in either order, and a score a rounding error away from a threshold may fall on
either side: a correct cut can change such a model's detections, and a check on them would blame it. The parts
(the root's children that hold parameters: a detector's backbone and head) keep everything that can be pruned, and
the head's outputs are computed from all of it; :func:`slimnet.verify.verifier.verify` compares those (``taps``), with
both
models run whole.
"""

from __future__ import annotations

import torch
from torch import fx, nn

#: Functions and methods that pick elements by their values' order or by a threshold on them.
TIE_BREAKING = {torch.topk, torch.sort, torch.argsort, torch.argmax, torch.argmin, torch.nonzero, torch.unique}
TIE_BREAKING_METHODS = {"topk", "sort", "argsort", "argmax", "argmin", "nonzero", "unique"}


def breaks_ties(gm: fx.GraphModule) -> bool:
    """Whether the graph holds an op that selects by order (top-k, sort, arg-max) or suppression (NMS)."""
    for n in gm.graph.nodes:
        if n.op == "call_function" and (n.target in TIE_BREAKING or "nms" in getattr(n.target, "__name__", "")):
            return True
        if n.op == "call_method" and n.target in TIE_BREAKING_METHODS:
            return True
    return False


def taps_of(model: nn.Module, gm: fx.GraphModule) -> list[str]:
    """The root's children that hold parameters, when the graph breaks ties (else none: the outputs are
    compared, as usual)."""
    if not breaks_ties(gm):
        return []
    return [name for name, child in model.named_children() if next(child.parameters(), None) is not None]
