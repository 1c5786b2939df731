"""Size attributes that a module's forward reads and that pruning changes.

Some forwards hard-code a width through an attribute (Hugging Face GPT-2 splits its fused qkv projection with
``.split(self.split_size, dim=2)``). Traced as a plain int, such a size would freeze the channels it splits;
so each such attribute has one entry here saying how it follows from the module's tensors. The same entry
serves twice: while tracing, the attribute is replaced by that expression of traced tensor shapes (so the
channel rules see a size that follows pruning), and after surgery the surgeon recomputes it from the pruned
tensors. Supporting a new module's size attribute is one entry.

Entries are keyed by qualified class name, so that optional libraries are never imported to build the table.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from .._util import qualname

Getter = Callable[[str], Any]  # tensor name relative to the module -> tensor (or traced proxy)
SizeFn = Callable[[Getter, nn.Module], Any]
#: qualified class name -> {attribute: fn(get, module) -> size}
SIZES: dict[str, dict[str, SizeFn]] = {}


def sizes(qualname: str, **attrs: SizeFn) -> None:
    SIZES.setdefault(qualname, {}).update(attrs)


def entries(m: nn.Module) -> dict[str, SizeFn]:
    """The size attributes of ``m`` (from its class or any base class) that it actually has. An attribute of the
    form ``config.NAME`` is a field of the config object the module keeps (Phi-3 reads its head count there)."""
    out: dict[str, SizeFn] = {}
    for cls in reversed(type(m).__mro__):
        for attr, fn in SIZES.get(qualname(cls), {}).items():
            owner, _, name = attr.rpartition(".")
            if isinstance(getattr(getattr(m, owner, None) if owner else m, name, None), int):
                out[attr] = fn
    return out


def _set(m: nn.Module, attr: str, value: Any) -> None:
    """Set a size attribute; ``config.NAME`` on a copy of the module's config, which the module then keeps alone
    (a config shared by every layer cannot hold one layer's width)."""
    owner, _, name = attr.rpartition(".")
    if not owner:
        m.__dict__[attr] = value
        return
    own = copy.copy(m.__dict__[owner])
    own.__dict__[name] = value
    m.__dict__[owner] = own


@contextlib.contextmanager
def traced_sizes(m: nn.Module, get: Getter) -> Iterator[None]:
    """While tracing ``m``'s forward, its size attributes are expressions of its traced tensors' shapes."""
    fns = entries(m)
    saved = {attr.partition(".")[0]: m.__dict__.get(attr.partition(".")[0]) for attr in fns}
    try:
        for attr, fn in fns.items():
            try:
                _set(m, attr, fn(get, m))
            except Exception:  # noqa: BLE001 - a size that cannot be expressed stays a literal (frozen)
                pass
        yield
    finally:
        for attr, v in saved.items():
            m.__dict__[attr] = v


def recompute(m: nn.Module) -> None:
    """After surgery: set ``m``'s size attributes from its (pruned) tensors."""
    state = dict(m.named_parameters())
    state.update(dict(m.named_buffers()))
    for attr, fn in entries(m).items():
        _set(m, attr, int(fn(lambda name: state[name], m)))


# Hugging Face transformers
# ---------------------------------------------------------------------------------------------------------
_HF = "transformers.models"
# GPT-2: forward splits the fused qkv Conv1D output by split_size (the inner width, c_proj's input).
sizes(
    f"{_HF}.gpt2.modeling_gpt2.GPT2Attention",
    split_size=lambda get, m: get("c_proj.weight").shape[0],
    num_heads=lambda get, m: get("c_proj.weight").shape[0] // m.head_dim,
)
# Phi-3: slices its fused qkv at config.num_attention_heads * head_dim and self.num_key_value_heads * head_dim.
sizes(
    f"{_HF}.phi3.modeling_phi3.Phi3Attention",
    num_key_value_heads=lambda get, m: (
        (get("qkv_proj.weight").shape[0] - get("o_proj.weight").shape[1]) // (2 * m.head_dim)
    ),
    **{"config.num_attention_heads": lambda get, m: get("o_proj.weight").shape[1] // m.head_dim},
)
# BERT, RoBERTa: read by nothing in forward since transformers 5, kept true for users.
for _name in ("bert.modeling_bert.BertSelfAttention", "roberta.modeling_roberta.RobertaSelfAttention"):
    sizes(
        f"{_HF}.{_name}",
        num_attention_heads=lambda get, m: get("query.weight").shape[0] // m.attention_head_size,
        all_head_size=lambda get, m: get("query.weight").shape[0],
    )
sizes(
    f"{_HF}.vit.modeling_vit.ViTAttention",
    num_attention_heads=lambda get, m: get("q_proj.weight").shape[0] // m.head_dim,
)
# DeBERTa-v2: transpose_for_scores(x, self.num_attention_heads) folds the heads into the batch dim.
sizes(
    f"{_HF}.deberta_v2.modeling_deberta_v2.DisentangledSelfAttention",
    num_attention_heads=lambda get, m: get("query_proj.weight").shape[0] // m.attention_head_size,
    all_head_size=lambda get, m: get("query_proj.weight").shape[0],
)
# OPT: view(bsz, -1, self.num_heads, self.head_dim).
sizes(f"{_HF}.opt.modeling_opt.OPTAttention", num_heads=lambda get, m: get("q_proj.weight").shape[0] // m.head_dim)


def _falcon_kv_heads(get: Getter, m: nn.Module) -> Any:
    """Falcon's key/value heads: the new architecture lays its fused qkv out per key/value group (the group's
    query heads, then its key and its value head), so whole groups are what can go; multi-query keeps one."""
    if m.new_decoder_architecture:
        per_group = m.config.num_attention_heads // m.config.num_kv_heads + 2
        return get("query_key_value.weight").shape[0] // m.head_dim // per_group
    if m.multi_query:
        return 1
    return get("dense.weight").shape[1] // m.head_dim


# Falcon: views by self.num_heads (and, for the new architecture, self.num_heads // self.num_kv_heads + 2).
sizes(
    f"{_HF}.falcon.modeling_falcon.FalconAttention",
    num_heads=lambda get, m: get("dense.weight").shape[1] // m.head_dim,
    num_kv_heads=_falcon_kv_heads,
)

# ---------------------------------------------------------------------------------------------------------
# torchvision
# ---------------------------------------------------------------------------------------------------------
# MViT: qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim), then reshape(B, -1, self.output_dim) before
# project. Whole heads go (the pools' LayerNorm(head_dim) and the relative-position tables are per head size).
sizes(
    "torchvision.models.video.mvit.MultiscaleAttention",
    num_heads=lambda get, m: get("qkv.weight").shape[0] // 3 // m.head_dim,
    output_dim=lambda get, m: get("project.0.weight").shape[1],
)

# ---------------------------------------------------------------------------------------------------------
# timm
# ---------------------------------------------------------------------------------------------------------
# ViT/DeiT/BEiT-style attention: reshape(B, N, 3, self.num_heads, self.head_dim), then reshape(B, N, attn_dim).
sizes(
    "timm.layers.attention.Attention",
    num_heads=lambda get, m: get("qkv.weight").shape[0] // 3 // m.head_dim,
    attn_dim=lambda get, m: get("proj.weight").shape[1],
)

# ---------------------------------------------------------------------------------------------------------
# ultralytics
# ---------------------------------------------------------------------------------------------------------
# C2f-style blocks split cv1's output in two halves of self.c channels (C2f.forward_split, used on export; C2PSA,
# PSA, C2fAttn and ELAN blocks in forward): half of cv1's output channels (subclasses such as C3k2 inherit it).
for _name in ("C2", "C2f", "C2fAttn", "RepNCSPELAN4", "PSA", "C2PSA"):
    sizes(f"ultralytics.nn.modules.block.{_name}", c=lambda get, m: get("cv1.conv.weight").shape[0] // 2)
