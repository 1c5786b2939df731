"""The two models of LM distillation, each wrapped with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Each causal LM sits in a :class:`Distilled` wrapper whose forward ends at the final hidden states (the decoder
with its last norm, no output head) and, for the student, goes on to the chunked KL against the teacher's
hidden states and head (:mod:`slimnet.llm.kl`). The loss is computed *inside* the student's root forward because
FSDP2 gathers a group's parameters around its module's forward and backward only: the output head and the
embeddings belong to the root group, and using them outside that forward would read the shards.

Sharding (:func:`shard`): one ``fully_shard`` per decoder layer (a layer's parameters gathered just for its
forward and again for its backward, then freed), then the wrapper as root (embeddings, last norm, output
head). The teacher is sharded the same way, frozen, in eval mode and always run under ``no_grad``; its head is
read by the student's loss between ``unshard()`` and ``reshard()`` of its root (:func:`gathered_head`). On CUDA
the student computes in bf16 with float32 master weights and gradients reduced in float32 (FSDP2's
MixedPrecisionPolicy); on the CPU everything is float32. With one process nothing is wrapped: the same modules
run plainly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..distributed import World
from .kl import CHUNK_TOKENS, Head, kl_sum


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM: ``get_decoder().layers`` (Llama, Mistral, Qwen, Gemma, Phi-3), else
    every module whose class name ends in ``DecoderLayer``."""
    decoder = lm.get_decoder() if hasattr(lm, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return list(layers)
    return [m for m in lm.modules() if type(m).__name__.endswith("DecoderLayer")]


class Distilled(nn.Module):
    """A causal LM whose forward returns its final hidden states or, given the teacher's, the KL sum."""

    def __init__(self, lm: nn.Module, temperature: float = 1.0, chunk: int = CHUNK_TOKENS) -> None:
        super().__init__()
        self.lm = lm
        self.temperature, self.chunk = temperature, chunk

    def head(self) -> Head:
        out = self.lm.get_output_embeddings()
        cap = getattr(self.lm.config, "final_logit_softcapping", None)
        return Head(out.weight, getattr(out, "bias", None), float(cap) if cap else None)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        decoder = self.lm.get_decoder()
        return decoder(input_ids=ids, use_cache=False).last_hidden_state

    def forward(self, ids: torch.Tensor, teacher: tuple[torch.Tensor, Head] | None = None) -> torch.Tensor:
        hidden = self.hidden(ids)
        if teacher is None:
            return hidden
        t_hidden, t_head = teacher
        return kl_sum(hidden, self.head(), t_hidden, t_head, self.temperature, self.chunk)


def shard(model: Distilled, world: World, train: bool) -> str:
    """Wrap ``model`` with FSDP2 (module docstring) when there are several processes; returns how: ``"fsdp2"``
    or ``"none"``."""
    if world.size == 1:
        return "none"
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # lazy: only under torchrun

    policy = MixedPrecisionPolicy()
    if train and world.device.type == "cuda":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in decoder_layers(model.lm):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return "fsdp2"


@contextlib.contextmanager
def gathered_head(model: Distilled) -> Iterator[Head]:
    """The output head of ``model``, its root group gathered while the block runs (FSDP2: outside the root's
    forward the head is a shard), as it is with one process."""
    gather = hasattr(model, "unshard")
    if gather:
        model.unshard()  # type: ignore[operator]
    try:
        yield model.head()
    finally:
        if gather:
            model.reshard()  # type: ignore[operator]
