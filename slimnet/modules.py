"""Modules that the surgeon puts in place of ones that cannot represent their pruned shape.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so once whole heads are
removed (inner width < embed_dim) it would split the projections wrongly. :class:`SlimMultiheadAttention`
keeps the same parameters and call signature with an explicit head size.

Speed: when no attention weights are asked for (``need_weights=False``, what torchvision's ViT encoder and
``nn.TransformerEncoderLayer`` pass) the attention runs in ``F.scaled_dot_product_attention``, the fused kernel
that ``nn.MultiheadAttention``'s own fast path uses; the explicit ``softmax(q k^T / sqrt(d)) v`` with separate
matmuls made a pruned vit_b_16 slower than the original on a GPU in float16 (docs/speed.md). Self-attention
(``query is key is value``) projects q, k and v with one packed matmul. Asking for the weights keeps the
explicit path, which is the only one that has them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SlimMultiheadAttention(nn.Module):
    """Packed-projection multi-head attention whose inner width is ``num_heads * head_dim`` (any value).

    ``in_proj_weight`` is ``[3 * inner, embed_dim]`` (q, k and v rows in that order), or None with separate
    ``q_proj_weight [inner, embed_dim]``, ``k_proj_weight [inner, kdim]`` and ``v_proj_weight [inner, vdim]`` as
    ``nn.MultiheadAttention`` holds them when ``kdim``/``vdim`` differ from ``embed_dim``.
    """

    #: Class-wide switch: False runs the explicit path even without weights (tools/bench_attention.py times both;
    #: a class attribute, so pickles of either version carry nothing of it).
    fused: bool = True

    def __init__(
        self,
        src: nn.MultiheadAttention,
        in_proj_weight: torch.Tensor | None,
        in_proj_bias: torch.Tensor | None,
        out_proj: nn.Linear,
        head_dim: int,
        *,
        q_proj_weight: torch.Tensor | None = None,
        k_proj_weight: torch.Tensor | None = None,
        v_proj_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self._qkv_same_embed_dim = in_proj_weight is not None
        if in_proj_weight is None and (q_proj_weight is None or k_proj_weight is None or v_proj_weight is None):
            raise ValueError("SlimMultiheadAttention needs in_proj_weight or all of q/k/v_proj_weight")
        ref = in_proj_weight if in_proj_weight is not None else q_proj_weight
        self.embed_dim = ref.shape[1]
        self.kdim = self.embed_dim if k_proj_weight is None else k_proj_weight.shape[1]
        self.vdim = self.embed_dim if v_proj_weight is None else v_proj_weight.shape[1]
        self.head_dim = head_dim
        self.num_heads = ref.shape[0] // ((3 if in_proj_weight is not None else 1) * head_dim)
        self.batch_first = src.batch_first
        self.dropout = src.dropout
        for name, t in (
            ("in_proj_weight", in_proj_weight),
            ("in_proj_bias", in_proj_bias),
            ("q_proj_weight", q_proj_weight),
            ("k_proj_weight", k_proj_weight),
            ("v_proj_weight", v_proj_weight),
        ):
            if t is None:
                self.register_parameter(name, None)
            else:
                setattr(self, name, t if isinstance(t, nn.Parameter) else nn.Parameter(t))
        self.out_proj = out_proj

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Pickles of the first version (packed weights only, no kdim/vdim) get what this one added."""
        super().__setstate__(state)
        params = self.__dict__.setdefault("_parameters", {})
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            params.setdefault(name, None)
        self.__dict__.setdefault("_qkv_same_embed_dim", True)
        self.__dict__.setdefault("kdim", self.embed_dim)
        self.__dict__.setdefault("vdim", self.embed_dim)

    def _project(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, same: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as ``[B, heads, T, head_dim]`` (inputs batch first)."""
        inner = self.num_heads * self.head_dim
        b = self.in_proj_bias
        bsz = query.shape[0]
        if same and self._qkv_same_embed_dim:  # one [B, T, 3 * inner] matmul instead of three
            # the head count follows the tensor and the head size is fixed: what slimnet's analysis reads as whole
            # heads, so that a pruned model can be shrunk again
            qkv = F.linear(query, self.in_proj_weight, b).reshape(bsz, query.shape[1], 3, -1, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v
        bq, bk, bv = (None, None, None) if b is None else b.split(inner)
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.split(inner)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        q, k, v = (t.reshape(bsz, t.shape[1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        return q, k, v

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        same = query is key and key is value  # before the transposes below make three tensors of one
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._project(query, key, value, same)
        bsz, tq, tk = q.shape[0], q.shape[2], k.shape[2]
        # is_causal is a hint that attn_mask is the causal mask (as in nn.MultiheadAttention): a given mask is used;
        # without one the causal mask is SDPA's own, or built here when a padding mask has to be added to it
        if is_causal and attn_mask is None and key_padding_mask is not None:
            attn_mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril().logical_not()
        causal = is_causal and attn_mask is None
        mask = _merge_masks(attn_mask, key_padding_mask, bsz, self.num_heads, tq, tk, q.dtype)
        p = self.dropout if self.training else 0.0
        if not need_weights and self.fused:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
            attn = None
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
            if causal:
                tril = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
                scores = scores.masked_fill(~tril, float("-inf"))
            if mask is not None:
                scores = scores + mask
            attn = torch.softmax(scores, dim=-1)
            if p > 0:
                attn = F.dropout(attn, p)
            out = attn @ v
        out = self.out_proj(out.transpose(1, 2).reshape(bsz, tq, -1))  # -1: the width follows the heads
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights or attn is None:
            return out, None
        return out, attn.mean(1) if average_attn_weights else attn


def _merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    bsz: int,
    heads: int,
    tq: int,
    tk: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = not attended; float: added) as one additive float mask that
    broadcasts to ``[B, H, Tq, Tk]`` (the form both paths take; SDPA's own bool masks mean the opposite)."""
    mask = None
    if attn_mask is not None:
        m = attn_mask
        if m.dtype == torch.bool:
            m = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        m = m.to(dtype)
        mask = m.reshape(bsz, heads, tq, tk) if m.dim() == 3 else m.reshape(1, 1, tq, tk)
    if key_padding_mask is not None:
        k = key_padding_mask
        if k.dtype == torch.bool:
            k = torch.zeros(k.shape, dtype=dtype, device=k.device).masked_fill(k, float("-inf"))
        k = k.to(dtype).reshape(bsz, 1, 1, tk)
        mask = k if mask is None else mask + k
    return mask
