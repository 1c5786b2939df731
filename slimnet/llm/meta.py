"""The model on the meta device, and the channel analysis of one decoder layer reused for every layer.

The meta model (built from ``config.json``, no weight in memory) gives the state_dict names, shapes and dtypes,
which of them are parameters, and the decoder layer class. The analysis is slimnet's own
(:func:`slimnet.groups.analyse`), run on ONE decoder layer of that class built for real on a *proxy* config: the
folder's config with the residual-stream width (``hidden_size``) cut to a few channels and ``head_dim`` stated.
The analysis runs values alongside its id tensors, so it cannot run on meta tensors; the stream width is the one
dimension no group the path prunes lives along (the in-memory path leaves it whole: it is normalised by every
RMSNorm), so shrinking it keeps every pruned index exact while the layer weighs kilobytes instead of the
hundreds of megabytes of a 7B layer. The groups found are renamed into each layer (``model.layers.{i}.``); the
tests check the result against the in-memory analysis of the whole model, index for index.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util import first_line
from ..errors import SlimnetError
from ..groups import Group, analyse
from ..groups.model import UnitList

#: Tokens of the example the layer is analysed on (any length works: nothing in a decoder layer fixes it).
TOKENS = 5


@dataclass
class MetaModel:
    """What the folder's model is, without its weights."""

    config: Any  # the transformers config
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    params: set[str]  # state_dict names that are parameters (what the criteria score)
    prefix: str  # the decoder layers' state_dict prefix, "model.layers."
    n_layers: int
    layer_class: type
    rotary_class: type | None
    tied: dict[str, str]  # alias -> canonical name of tied parameters (lm_head.weight -> model.embed_tokens.weight)


def _transformers() -> Any:
    from ..load.hf import _transformers as tf  # the one place that imports transformers and quiets it

    return tf()


def load_config(folder: Path) -> Any:
    tf = _transformers()
    try:
        return tf.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot read is the user's file problem
        raise SlimnetError(f"hf:{folder}: transformers cannot read config.json ({first_line(exc)})") from None


def meta_model(folder: Path) -> MetaModel:
    """Build the folder's causal LM on the meta device and describe it."""
    tf = _transformers()
    config = load_config(folder)
    try:
        with torch.device("meta"):
            model = tf.AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"hf:{folder}: transformers cannot build the model ({first_line(exc)})") from None
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.endswith("layers")]
    if len(lists) != 1 or not len(lists[0][1]):
        raise SlimnetError(f"hf:{folder}: found no single list of decoder layers in {type(model).__name__}")
    name, layers = lists[0]
    classes = {type(m) for m in layers}
    if len(classes) != 1:
        raise SlimnetError(f"hf:{folder}: the decoder layers are of several classes: use --in-memory")
    rotary = next((type(m) for n, m in model.named_modules() if n.endswith("rotary_emb")), None)
    state = model.state_dict(keep_vars=True)
    canon: dict[int, str] = {}
    tied = {}
    for key, t in state.items():
        first = canon.setdefault(id(t), key)
        if first != key:
            tied[key] = first
    return MetaModel(
        config=config,
        shapes={k: tuple(v.shape) for k, v in state.items()},
        dtypes={k: v.dtype for k, v in state.items()},
        params={n for n, _ in model.named_parameters(remove_duplicate=False)},
        prefix=f"{name}.",
        n_layers=len(layers),
        layer_class=classes.pop(),
        rotary_class=rotary,
        tied=tied,
    )


def head_dim_of(config: Any) -> int:
    """The attention head width as the layers compute it (``head_dim`` when the config states it)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def _proxy_width(config: Any) -> int:
    """A small residual-stream width for the proxy layer that equals no other dimension of the layer (a size
    that coincides with another could hide a coupling or make one up)."""
    hd = head_dim_of(config)
    taken = {hd, config.num_attention_heads * hd, config.num_key_value_heads * hd, config.intermediate_size, TOKENS}
    width = 24
    while width in taken:
        width += 8
    return width


def layer_groups(meta: MetaModel) -> tuple[list[Group], dict[str, tuple[int, ...]]]:
    """The groups of one decoder layer (member names relative to the layer: ``self_attn.q_proj.weight``) and
    the proxy layer's shapes, from slimnet's analysis of one proxy layer (see the module docstring)."""
    config = copy.deepcopy(meta.config)
    config.head_dim = head_dim_of(meta.config)
    config.hidden_size = _proxy_width(meta.config)
    config.num_hidden_layers = 1
    config._attn_implementation = getattr(meta.config, "_attn_implementation", None) or "sdpa"
    torch.manual_seed(0)
    try:
        with torch.device("cpu"):
            layer = meta.layer_class(config, 0).eval()
            rotary = meta.rotary_class(config=config) if meta.rotary_class is not None else None
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"cannot build one {meta.layer_class.__name__} to analyse ({first_line(exc)})") from None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, TOKENS, config.hidden_size, generator=gen)
    pos = torch.arange(TOKENS)[None].expand(2, -1)
    example: dict[str, Any] = {"hidden_states": x, "attention_mask": None, "position_ids": pos}
    if rotary is not None:
        example["position_embeddings"] = rotary(x, pos)
    analysis = analyse(layer, example)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    return analysis.groups, shapes


def renamed(group: Group, prefix: str) -> Group:
    """``group`` with every member tensor name prefixed (one decoder layer's group, placed in layer ``prefix``);
    the same units, indices and order."""
    members = [(prefix + t, d) for t, d in group.members]
    index = {(prefix + t, d): group.member_index((t, d)) for t, d in group.members}
    roles = {(prefix + t, d): r for (t, d), r in group.roles.items()}
    roots = [u.root for u in group.units]
    units = UnitList(index, roots)
    return Group(id=group.id, name=prefix + group.name, units=units, members=members, reason=group.reason,
                 normalised=group.normalised, roles=roles, kind=group.kind, index=index)  # fmt: skip
