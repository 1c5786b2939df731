"""Verification layer by layer: each cut decoder layer, built from the *new* config (the standard folder's
widths), against the original layer with the dropped channels zeroed (:func:`slimnet.cut.surgeon.mask_plan`,
the in-memory verifier's reference), on the same hidden states. Equal outputs prove that the cut is exact for
that layer and that the written config builds the layer the tensors fit; layers compose, so the model is exact.

The hidden states are random (N(0, 1), a few tokens; the weight criteria need no data) and both layers run in
float32, one after the other, so the check holds one float32 copy of a layer at a time beside the layer's own
tensors (0.8 GB for a 7B layer). Tolerance: :data:`RELATIVE` of the reference's largest magnitude; a wrong cut
is off by the size of the output, summation order by ~1e-6 of it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..cut.surgeon import mask_plan
from .meta import MetaModel

#: Tokens of the verification hidden states.
TOKENS = 8
#: Largest difference allowed, as a share of the reference output's largest magnitude.
RELATIVE = 1e-4


@dataclass
class LayerCheck:
    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class LayerVerifier:
    """Runs one decoder layer at a time in the original and the cut widths (see the module docstring)."""

    def __init__(self, meta: MetaModel, widths: Mapping[str, int], head_dim: int) -> None:
        self.meta = meta
        self.config = copy.deepcopy(meta.config)
        self.config._attn_implementation = "sdpa"
        self.cut_config = copy.deepcopy(self.config)
        self.cut_config.num_attention_heads = widths["heads"]
        self.cut_config.num_key_value_heads = widths["kv_heads"]
        self.cut_config.intermediate_size = widths["intermediate"]
        self.cut_config.head_dim = head_dim
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(1, TOKENS, self.config.hidden_size, generator=gen)
        self.pos = torch.arange(TOKENS)[None]
        rotary = meta.rotary_class(config=self.config) if meta.rotary_class is not None else None
        self.position_embeddings = rotary(self.x, self.pos) if rotary is not None else None

    def _run(self, config: Any, layer_idx: int, tensors: Mapping[str, torch.Tensor],
             plan: Mapping[str, Any] | None = None) -> torch.Tensor:  # fmt: skip
        """One layer of ``config`` holding float32 copies of ``tensors`` (local names), masked by ``plan`` when
        given, run on the hidden states; the copies are gone when it returns."""
        with torch.device("meta"):
            layer = self.meta.layer_class(config, layer_idx)
        copies = {k: v.to(torch.float32, copy=True) for k, v in tensors.items()}  # masked in place: not the input
        layer.load_state_dict(copies, strict=True, assign=True)
        del copies
        if plan is not None:
            mask_plan(layer, plan)
        kwargs: dict[str, Any] = {"attention_mask": None, "position_ids": self.pos}
        if self.position_embeddings is not None:
            kwargs["position_embeddings"] = self.position_embeddings
        with torch.no_grad():
            out = layer.eval()(self.x, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def check(self, layer_idx: int, original: Mapping[str, torch.Tensor], cut: Mapping[str, torch.Tensor],
              plan: Mapping[str, Any]) -> LayerCheck:  # fmt: skip
        """The cut layer ``layer_idx`` (its tensors, full names) against its masked original."""
        prefix = f"{self.meta.prefix}{layer_idx}."
        n = len(prefix)
        local_plan = {"tensors": {k[n:]: v for k, v in plan.items() if k.startswith(prefix)}}
        ref = self._run(self.config, layer_idx, {k[n:]: v for k, v in original.items()}, local_plan)
        got = self._run(self.cut_config, layer_idx, {k[n:]: v for k, v in cut.items()})
        diff = float((ref - got).abs().max())
        return LayerCheck(diff, RELATIVE * max(1.0, float(ref.abs().max())))
