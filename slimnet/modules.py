"""Modules that the surgeon puts in place of ones that cannot represent their pruned shape.

``nn.MultiheadAttention`` derives its head size from ``embed_dim // num_heads``, so once whole heads are
removed (inner width < embed_dim) it would split the projections wrongly. :class:`SlimMultiheadAttention`
keeps the same parameters and call signature with an explicit head size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class SlimMultiheadAttention(nn.Module):
    """Packed-projection multi-head attention whose inner width is ``num_heads * head_dim`` (any value)."""

    def __init__(
        self,
        src: nn.MultiheadAttention,
        in_proj_weight: torch.Tensor,
        in_proj_bias: torch.Tensor | None,
        out_proj: nn.Linear,
        head_dim: int,
    ) -> None:
        super().__init__()
        self.embed_dim = in_proj_weight.shape[1]
        self.head_dim = head_dim
        self.num_heads = in_proj_weight.shape[0] // (3 * head_dim)
        self.batch_first = src.batch_first
        self.dropout = src.dropout
        is_param = isinstance(in_proj_weight, nn.Parameter)
        self.in_proj_weight = in_proj_weight if is_param else nn.Parameter(in_proj_weight)
        if in_proj_bias is None:
            self.register_parameter("in_proj_bias", None)
        else:
            self.in_proj_bias = in_proj_bias if isinstance(in_proj_bias, nn.Parameter) else nn.Parameter(in_proj_bias)
        self.out_proj = out_proj

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
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        inner = self.num_heads * self.head_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else b.split(inner)
        wq, wk, wv = w.split(inner)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
        bsz, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        q, k, v = (t.reshape(bsz, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        mask = _merge_masks(attn_mask, key_padding_mask, bsz, self.num_heads, tq, tk, q.dtype)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if is_causal and mask is None:
            causal = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(bsz, tq, inner)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = attn.mean(1) if average_attn_weights else attn
        return out, weights


def _merge_masks(
    attn_mask: torch.Tensor | None,
    key_padding_mask: torch.Tensor | None,
    bsz: int,
    heads: int,
    tq: int,
    tk: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks as one additive mask of shape [B, H, Tq, Tk]."""
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
