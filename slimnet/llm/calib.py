"""Calibration statistics of a decoder LM one layer at a time, for the low-memory path's data criteria
(``slimnet shrink hf:DIR --criterion wanda --data calib.txt``; also ``activation`` and ``apoz``).

As Wanda and SliceGPT do: the calibration batches' hidden states go through one decoder layer at a time (its
weights read from the safetensors shards and freed afterwards, :class:`slimnet.llm.depth.Streamed`); the
channel statistics of the layer's prunable modules are summed as the in-memory path's hooks sum them
(:func:`slimnet.rank.statistics.collect_activations`, run on the one layer), and the layer's *original* outputs
are the next layer's inputs, so every layer sees what it sees in the whole model and the statistics are those
the in-memory path collects. What is held at once: the non-layer tensors (embeddings, final norm, head), one
layer, and the hidden states of the calibration batches (batches x tokens x hidden_size floats).

    stats = LayerStatistics(Path("llama"), batches)
    for i in range(n_layers):
        s = stats.layer(i, {"model.layers.%d.mlp.down_proj" % i})  # a Statistics keyed by full module names
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SlimnetError
from ..rank.statistics import Statistics, collect_activations
from .depth import Streamed, inspect_folder
from .families import DATA_CRITERIA as STREAMED_DATA_CRITERIA  # noqa: F401 - the name shrink.py reads


class _Run(nn.Module):
    """Calls the decoder layer on calibration batch ``i``'s hidden states with the arguments the model gave it."""

    def __init__(self, layer: nn.Module, states: list[Any], calls: list[Any]) -> None:
        super().__init__()
        self.layer = layer
        self.states, self.calls, self.outs = states, calls, [None] * len(states)

    def forward(self, i: int) -> Any:
        args, kwargs = self.calls[i]
        out = self.layer(self.states[i], *args, **kwargs)
        self.outs[i] = out[0] if isinstance(out, tuple) else out
        return self.outs[i]


class LayerStatistics:
    """The calibration batches pushed through the model of ``folder`` one decoder layer at a time; call
    :meth:`layer` for layers 0, 1, 2, ... in order."""

    def __init__(self, folder: Path, batches: list[dict[str, Any]]) -> None:
        if not batches:
            raise SlimnetError("the calibration data gave no batch")
        self.streamed = Streamed(inspect_folder(folder))
        with torch.inference_mode():
            recorded = [self.streamed.record(b) for b in batches]
        self.states = [h for h, _ in recorded]
        self.calls = [c for _, c in recorded]
        self.prefix = "model.layers."
        self.next = 0

    def layer(self, i: int, modules: set[str]) -> Statistics:
        """Statistics of ``modules`` (full names, ``model.layers.{i}.mlp.down_proj``) of layer ``i``; its
        outputs become layer ``i + 1``'s inputs."""
        if i != self.next:
            raise SlimnetError(f"layer statistics are computed in order: layer {i} asked for, {self.next} due")
        here = f"{self.prefix}{i}."
        local = {"layer." + m[len(here) :] for m in modules if m.startswith(here)}
        with self.streamed.layer(i) as layer:
            run = _Run(layer, self.states, [self.calls[b][i] for b in range(len(self.states))])
            stats = collect_activations(run, list(range(len(self.states))), local)
            self.states = list(run.outs)
        self.next += 1
        return _rekeyed(stats, "layer.", here)


def _rekeyed(stats: Statistics, old: str, new: str) -> Statistics:
    def key(k: str) -> str:
        return new + k[len(old) :] if k.startswith(old) else k

    return Statistics(
        inputs={key(k): v for k, v in stats.inputs.items()},
        outputs={key(k): v for k, v in stats.outputs.items()},
        input_scale={key(k): v for k, v in stats.input_scale.items()},
        importance={key(k): v for k, v in stats.importance.items()},
        taylor_mode=stats.taylor_mode,
    )
