"""The pruned model's ``config.json`` when every decoder layer keeps the same widths: the folder's own config
with the new head counts and MLP width, and ``head_dim`` written out (a config that leaves it implicit computes
``hidden_size // num_attention_heads``, which is wrong once heads are dropped). transformers, vLLM and llama.cpp
then build the pruned shapes from it with no remote code. One function, so that the in-memory path can write the
same folder through it.
"""

from __future__ import annotations

from typing import Any

from ..load.hf import standard_config as hf_standard_config


def standard_config(
    config: dict[str, Any], *, heads: int, kv_heads: int, intermediate: int, head_dim: int
) -> dict[str, Any]:
    """``config`` (``config.json`` as plain data) for a model whose every layer has ``heads`` query heads,
    ``kv_heads`` key/value heads of ``head_dim`` channels and an MLP of ``intermediate`` channels: the in-memory
    writer's :func:`slimnet.load.hf.standard_config`, so that both paths write the same file."""
    widths = {"num_attention_heads": heads, "num_key_value_heads": kv_heads, "intermediate_size": intermediate}
    return hf_standard_config(config, {**widths, "head_dim": head_dim})
