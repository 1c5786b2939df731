"""Hugging Face layers, keyed by qualified class name (transformers is never imported to build the table).

Classes keyed here by exact qualified name are also leaves for the tracer
(:func:`slimnet.groups.registry.is_leaf_class`), so each stays one graph node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..interpreter import AtomInterpreter
from ..registry import rule
from .layers import layernorm_ids, linear_module

#: Falcon's Linear computes x @ W.T + b like nn.Linear, with the same tensors.
rule("transformers.models.falcon.modeling_falcon.FalconLinear")(linear_module)


@rule("transformers.pytorch_utils.Conv1D")
def hf_conv1d(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Hugging Face's Conv1D (GPT-2) is a Linear whose weight is stored transposed: [in, out]."""
    x = it.ids_of(args[0])
    w, b = f"{n.target}.weight", f"{n.target}.bias"
    in_atoms = it.per_index(x, -1, it.at_node("merged into one input feature"))
    out_atoms = it.new_atoms(value.shape[-1], str(n.target))
    it.bind(w, 1, out_atoms, "out")
    it.bind(w, 0, in_atoms, "in")
    it.bind(b, 0, out_atoms)
    return it.fill(out_atoms, value.shape, -1)


#: RMSNorm classes of Hugging Face decoders (x / rms(x) * weight over the last dim, weight 1-D): leaves with
#: the LayerNorm rule, so that their width is a (normalised, opt-in) group rather than a reduction that ties
#: every channel into one.
HF_RMSNORMS = [
    f"transformers.models.{m}.modeling_{m}.{c}RMSNorm"
    for m, c in (
        ("llama", "Llama"),
        ("mistral", "Mistral"),
        ("qwen2", "Qwen2"),
        ("qwen3", "Qwen3"),
        ("gemma", "Gemma"),
        ("phi3", "Phi3"),
        ("mixtral", "Mixtral"),
        ("olmo2", "Olmo2"),
        ("granite", "Granite"),
    )
]


@rule(*HF_RMSNORMS)
def hf_rmsnorm(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return it.unknown(n, value)
    return layernorm_ids(it, n, it.ids_of(args[0]), 1, [f"{n.target}.weight"], type(mod).__name__)
