"""Depth pruning of Hugging Face decoder LMs: ``slimnet shrink hf:DIR --drop-layers N --data text.txt``.

A decoder LM (Llama, Mistral, Qwen2/3, Gemma 1/2/3, Phi-3) is a stack of identical residual blocks in
``model.layers``; many of them barely change the residual stream (ShortGPT, Men et al. 2024), and removing whole
blocks shrinks the model without touching any width, so the result is a standard folder that every runtime loads
(only ``num_hidden_layers`` changes). Layers are ranked on calibration text by

* ``block-influence`` (default): BI = 1 - cos(input, output) of each layer's hidden state, averaged over the
  calibration tokens (padding excluded). It runs LAYER BY LAYER: the model is built with its parameters on the
  meta device, the embeddings computed once, and the hidden states of all calibration batches pushed through one
  decoder layer at a time, each layer's weights read from the safetensors shards and freed after use, so the peak
  is the embeddings, one layer and the hidden states; or
* ``ppl``: the perplexity of the whole model with that one layer skipped (lower: the layer matters less), also
  layer by layer: every layer is read once (per group of batches) and applied to the dense hidden states and to
  each "layer i skipped" branch started before it (the work of one forward pass per layer).

The lowest-scoring layers go. The rewrite is shard by shard: every tensor is read with ``safetensors.safe_open``
(mmap) one at a time, ``model.layers.{i}.`` renumbered, the dropped layers' tensors skipped, and written straight
into new shards (a small safetensors writer: one tensor in memory at a time) with their index; config.json gets
the new ``num_hidden_layers`` and its per-layer lists (``layer_types``) sliced; the tokenizer and the other small
files are copied; ``slimnet_plan.json`` records the dropped layers and the scores under ``depth``.

Verification (always): the written folder is loaded with plain ``AutoModelForCausalLM.from_pretrained`` (no
remote code; above 2 GiB of weights it is run layer by layer from its own config and shards, every tensor
loaded strictly by name and shape) and its logits on the calibration batches are compared with the original's
with the dropped layers replaced by identity, computed layer by layer from the input folder; an exact match is
required. Everything is
written into a temporary folder beside the output and renamed at the end: an error leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SlimnetError, VerificationError

#: model_type values whose CausalLM keeps its decoder blocks in ``model.layers`` (checkpoint keys alike)
SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
RANKS = ("block-influence", "ppl")
#: the file in an output folder that records what slimnet did (other paths write their own entries in it)
PLAN_FILE = "slimnet_plan.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
#: per-layer lists in config.json, sliced with the layers
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
#: weight files never copied into the output (the output's own shards replace them)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".ckpt", ".onnx")


# ------------------------------------------------------------------------------------------ the input folder
@dataclass
class Source:
    """An input folder, read without loading any weight: config.json, and which shard holds each tensor."""

    folder: Path
    config: dict[str, Any]
    weight_map: dict[str, str]
    layers: int
    params: int = 0
    shapes: dict[str, list[int]] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type"))

    def shard_files(self) -> list[str]:
        """The shard file names in the order the index (or the single file) gives them."""
        return list(dict.fromkeys(self.weight_map.values()))


def inspect_folder(folder: str | os.PathLike[str]) -> Source:
    """Check that ``folder`` is a decoder LM depth pruning can rewrite; one line naming what is wrong if not."""
    p = Path(folder)
    name = f"hf:{folder}"
    if not p.is_dir():
        raise SlimnetError(f"{name}: no such directory (give a local Hugging Face model folder)")
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        raise SlimnetError(f"{name} has no config.json: give a folder written by save_pretrained")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise SlimnetError(f"{name}: config.json cannot be read ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise SlimnetError(
            f"{name} is a {model_type!r} model: --drop-layers supports decoder LMs with model.layers "
            f"({', '.join(SUPPORTED)})"
        )
    if "slimnet_plan" in config:
        raise SlimnetError(
            f"{name} was pruned to per-layer widths (its config carries a slimnet plan): drop layers of the "
            "original model instead (--drop-layers with --ratio does both)"
        )
    weight_map = _weight_map(p, name)
    from safetensors import safe_open  # lazy: optional dependency (transformers brings it)

    shapes: dict[str, list[int]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        with safe_open(str(p / shard), framework="pt") as f:
            for key in f.keys():
                shapes[key] = list(f.get_slice(key).get_shape())
    missing = [k for k in weight_map if k not in shapes]
    if missing:
        raise SlimnetError(f"{name}: {INDEX_FILE} names {missing[0]!r}, which no shard holds")
    n_layers = int(config.get("num_hidden_layers") or 0)
    found = {int(m.group(1)) for k in shapes if (m := LAYER_KEY.match(k))}
    if n_layers <= 0 or found != set(range(n_layers)):
        raise SlimnetError(
            f"{name}: config.json says num_hidden_layers={n_layers} but the weights hold model.layers "
            f"{sorted(found)[:8]}: is the folder complete?"
        )
    params = sum(math.prod(s) for s in shapes.values())
    return Source(p, config, weight_map, n_layers, params, shapes)


def _weight_map(p: Path, name: str) -> dict[str, str]:
    if (p / INDEX_FILE).is_file():
        try:
            weight_map = json.loads((p / INDEX_FILE).read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SlimnetError(f"{name}: {INDEX_FILE} cannot be read (no weight_map)") from None
        absent = sorted({f for f in weight_map.values() if not (p / f).is_file()})
        if absent:
            raise SlimnetError(f"{name}: the shard {absent[0]} named in {INDEX_FILE} is missing")
        return dict(weight_map)
    if (p / SINGLE_FILE).is_file():
        from safetensors import safe_open  # lazy: optional dependency

        with safe_open(str(p / SINGLE_FILE), framework="pt") as f:
            return {k: SINGLE_FILE for k in f.keys()}
    raise SlimnetError(
        f"{name} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}): depth pruning reads safetensors "
        "shards; re-save the model with save_pretrained (safetensors is its default)"
    )


def check_drop(source: Source, n: int, rank: str) -> None:
    """N within 0 <= N < num_hidden_layers, a known ranking: before any work."""
    if rank not in RANKS:
        raise SlimnetError(f"--layer-rank {rank!r} is unknown: give one of {', '.join(RANKS)}")
    if n < 0 or n >= source.layers:
        raise SlimnetError(
            f"--drop-layers {n}: the model has {source.layers} decoder layers; give 0 <= N < {source.layers}"
        )


# ------------------------------------------------------------------------------------------ layer by layer
def _torch() -> Any:
    import torch  # lazy: CLI start-up

    return torch


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device, their buffers (rotary frequencies,
    computed at construction and not in the checkpoint) on the CPU: what accelerate's init_empty_weights
    does, without the dependency."""
    torch = _torch()
    old = torch.nn.Module.register_parameter

    def register(module: Any, name: str, param: Any) -> None:
        old(module, name, param)
        if param is not None:
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = old


class _Stub:
    """Stands in for every decoder layer while the model's own forward runs (so its masks, position
    embeddings and per-layer-type choices are the model's own): records what each layer is called with and
    passes the hidden state through, or, in the head pass, puts the final hidden state in at layer 0."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self.final: Any = None

    def module(self, index: int, like: Any) -> Any:
        torch = _torch()
        stub = self

        class Layer(torch.nn.Module):
            def forward(self, hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
                if stub.final is not None:
                    return stub.final if index == 0 else hidden_states
                stub.calls.append((hidden_states if index == 0 else None, args, kwargs))
                return hidden_states

        layer = Layer()
        if hasattr(like, "attention_type"):
            layer.attention_type = like.attention_type
        return layer


class Streamed:
    """The model of ``source`` with only its non-layer tensors loaded (embeddings, final norm, head); each
    decoder layer is loaded from the shards when it runs and freed afterwards."""

    def __init__(self, source: Source) -> None:
        torch = _torch()
        from ..load.hf import _transformers

        tf = _transformers()
        self.source = source
        config = tf.AutoConfig.from_pretrained(str(source.folder), local_files_only=True)
        with _parameters_on_meta():
            model = tf.AutoModelForCausalLM.from_config(config)
        outer = {k: v for k, v in source.weight_map.items() if not LAYER_KEY.match(k)}
        unexpected = model.load_state_dict(self._read(outer), strict=False, assign=True).unexpected_keys
        if unexpected:
            raise SlimnetError(f"hf:{source.folder}: the model has no tensor {unexpected[0]} (an unexpected layout)")
        head, embed = model.get_output_embeddings(), model.get_input_embeddings()
        if head is not None and head.weight.is_meta and getattr(config, "tie_word_embeddings", False):
            head.weight = embed.weight
        self.layers = list(model.model.layers)
        bad = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith("model.layers.")]
        if bad:
            raise SlimnetError(f"hf:{source.folder}: the checkpoint lacks {bad[0]} (an unexpected layout)")
        self.stub = _Stub()
        model.model.layers = torch.nn.ModuleList(self.stub.module(i, ly) for i, ly in enumerate(self.layers))
        self.model = model.eval()
        self.dtype = embed.weight.dtype

    def _read(self, keys: dict[str, str], strip: str = "") -> dict[str, Any]:
        from safetensors import safe_open  # lazy: optional dependency

        out = {}
        for shard in dict.fromkeys(keys.values()):
            with safe_open(str(self.source.folder / shard), framework="pt") as f:
                for k in keys:
                    if keys[k] == shard:
                        out[k[len(strip) :]] = f.get_tensor(k)
        return out

    @contextmanager
    def layer(self, i: int) -> Iterator[Any]:
        """Decoder layer ``i`` with its weights read from the shards; back on the meta device afterwards."""
        torch = _torch()
        prefix = f"model.layers.{i}."
        layer = self.layers[i]
        keys = {k: v for k, v in self.source.weight_map.items() if k.startswith(prefix)}
        layer.load_state_dict(self._read(keys, prefix), strict=True, assign=True)
        try:
            yield layer.eval()
        finally:
            for mod in layer.modules():
                for name, p in mod._parameters.items():
                    if p is not None:
                        mod._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=False)

    def record(self, batch: dict[str, Any]) -> tuple[Any, list[tuple[tuple[Any, ...], dict[str, Any]]]]:
        """The embeddings of ``batch`` (layer 0's input) and what the model calls each layer with."""
        self.stub.calls, self.stub.final = [], None
        self.model.model(**batch, use_cache=False)  # the decoder without its head: no logits computed
        calls, self.stub.calls = self.stub.calls, []
        if len(calls) != len(self.layers):
            raise SlimnetError(f"hf:{self.source.folder}: the model did not call each decoder layer once")
        return calls[0][0], [(a, k) for _, a, k in calls]

    def logits(self, batch: dict[str, Any], final: Any) -> Any:
        """The model's head (final norm, lm_head, any soft-capping) on the last layer's output ``final``."""
        self.stub.final = final
        try:
            return self.model(**batch, use_cache=False).logits
        finally:
            self.stub.final = None

    def hidden(self, batches: list[dict[str, Any]], layers: list[int], each: Any = None) -> list[Any]:
        """The calibration hidden states after ``layers`` (in order; the others skipped), one layer in memory
        at a time; ``each(i, inputs, outputs)`` sees every layer's input and output hidden states."""
        recorded = [self.record(b) for b in batches]
        states = [h for h, _ in recorded]
        for i in layers:
            with self.layer(i) as layer:
                outs = []
                for (_, calls), h in zip(recorded, states):
                    args, kwargs = calls[i]
                    outs.append(layer(h, *args, **kwargs))
            if each is not None:
                each(i, states, outs)
            states = outs
        return states


def block_influence(source: Source, batches: list[dict[str, Any]]) -> dict[int, float]:
    """ShortGPT's BI of every layer: 1 - cos(input, output) per token, averaged over non-padding tokens."""
    torch = _torch()
    scores: dict[int, float] = {}

    def each(i: int, ins: list[Any], outs: list[Any]) -> None:
        total, count = 0.0, 0
        for h, o, b in zip(ins, outs, batches):
            cos = torch.nn.functional.cosine_similarity(h.float(), o.float(), dim=-1)
            mask = _mask(b, cos).bool()
            total += float(torch.where(mask, 1 - cos, 0.0).sum())  # where: a padding row may be NaN
            count += int(mask.sum())
        scores[i] = total / max(count, 1)

    with torch.inference_mode():
        Streamed(source).hidden(batches, list(range(source.layers)), each)
    return scores


def _mask(batch: dict[str, Any], like: Any) -> Any:
    m = batch.get("attention_mask")
    return (m if m is not None else _torch().ones_like(like)).to(like.dtype)


def perplexity_without(
    source: Source, batches: list[dict[str, Any]], budget: int = 1 << 30
) -> tuple[dict[int, float], float]:
    """The model's perplexity on the data with each one layer skipped, and the dense model's, layer by layer.

    Every layer is read once per group of batches: at layer ``j`` the dense hidden states go on through it and
    a new branch, "layer ``j`` skipped", starts from its input; the branches started earlier go through it too.
    So the groups are sized for ``num_hidden_layers + 1`` copies of their hidden states to fit in ``budget``
    bytes (at least one batch a group); the work is that of one forward pass per layer, as in memory."""
    torch = _torch()
    streamed = Streamed(source)
    n = source.layers
    nll, dense, count = dict.fromkeys(range(n), 0.0), 0.0, 0
    with torch.inference_mode():
        for group in _groups(batches, budget // (n + 1), int(streamed.model.config.hidden_size), streamed.dtype):
            recorded = [streamed.record(b) for b in group]
            states = [h for h, _ in recorded]
            branches: dict[int, list[Any]] = {}
            for j in range(n):
                with streamed.layer(j) as layer:

                    def step(hs: list[Any], j: int = j, layer: Any = layer, rec: Any = recorded) -> list[Any]:
                        return [layer(h, *r[1][j][0], **r[1][j][1]) for h, r in zip(hs, rec)]

                    branches = {i: step(hs) for i, hs in branches.items()}
                    branches[j] = states  # layer j skipped: its input goes on to layer j + 1
                    states = step(states)
            for k, b in enumerate(group):
                total, tokens = _nll(streamed.logits(b, states[k]), b)
                dense, count = dense + total, count + tokens
                for i in range(n):
                    nll[i] += _nll(streamed.logits(b, branches[i][k]), b)[0]
    scores = {i: math.exp(v / max(count, 1)) for i, v in nll.items()}
    return scores, math.exp(dense / max(count, 1))


def _groups(batches: list[dict[str, Any]], budget: int, hidden: int, dtype: Any) -> Iterator[list[dict[str, Any]]]:
    """Consecutive batches whose hidden states fit in ``budget`` bytes (one batch at least)."""
    size = _torch().empty((), dtype=dtype).element_size() * hidden
    group: list[dict[str, Any]] = []
    used = 0
    for b in batches:
        need = b["input_ids"].numel() * size
        if group and used + need > budget:
            yield group
            group, used = [], 0
        group.append(b)
        used += need
    if group:
        yield group


def _nll(logits: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Summed cross-entropy of each real token predicted from the real token before it, and their count."""
    torch = _torch()
    target = batch["input_ids"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, reduction="none")
    mask = _mask(batch, batch["input_ids"]).bool()
    mask = mask[:, 1:] & mask[:, :-1]
    return float(torch.where(mask, loss, 0.0).sum()), int(mask.sum())


def choose(scores: dict[int, float], n: int) -> list[int]:
    """The ``n`` lowest-scoring layers (ties: the later layer first, as deeper layers are the usual
    redundant ones), in ascending index order."""
    order = sorted(scores, key=lambda i: (scores[i], -i))
    return sorted(order[:n])


# ------------------------------------------------------------------------------------------ the rewrite
def _out_shards(source: Source, dropped: set[int]) -> dict[str, str]:
    """Input shard -> output shard name, for the shards that keep at least one tensor."""
    used = {source.weight_map[k] for k in _kept_keys(source, dropped)}
    keep = [s for s in source.shard_files() if s in used]
    if not (source.folder / INDEX_FILE).is_file():
        return {SINGLE_FILE: SINGLE_FILE}
    n = len(keep)
    return {s: f"model-{j + 1:05d}-of-{n:05d}.safetensors" for j, s in enumerate(keep)}


def _kept_keys(source: Source, dropped: set[int]) -> list[str]:
    return [k for k in source.weight_map if not ((m := LAYER_KEY.match(k)) and int(m.group(1)) in dropped)]


def renamed(key: str, new_index: dict[int, int]) -> str:
    """``model.layers.{old}.rest`` -> ``model.layers.{new}.rest``; other keys unchanged."""
    m = LAYER_KEY.match(key)
    return f"model.layers.{new_index[int(m.group(1))]}.{m.group(2)}" if m else key


def write_dropped(source: Source, dropped: list[int], dest: Path, plan_entry: dict[str, Any]) -> int:
    """Write the folder without ``dropped`` into ``dest`` (an empty folder); the number of params kept."""
    gone = set(dropped)
    kept_layers = [i for i in range(source.layers) if i not in gone]
    new_index = {old: new for new, old in enumerate(kept_layers)}
    names = _out_shards(source, gone)
    weight_map, total, params = {}, 0, 0
    kept = set(_kept_keys(source, gone))
    for shard, out_name in names.items():
        keys = [k for k in source.weight_map if source.weight_map[k] == shard and k in kept]
        mapping = {k: renamed(k, new_index) for k in keys}
        total += _copy_tensors(source.folder / shard, mapping, dest / out_name)
        weight_map.update({new: out_name for new in mapping.values()})
        params += sum(math.prod(source.shapes[k]) for k in keys)
    if (source.folder / INDEX_FILE).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (dest / "config.json").write_text(json.dumps(dropped_config(source, kept_layers), indent=2) + "\n")
    copy_small_files(source, dest)
    add_plan_entry(dest, plan_entry, previous=source.folder / PLAN_FILE)
    return params


def copy_small_files(source: Source, dest: Path) -> None:
    """Every plain file of the input folder that is neither weights nor written anew (tokenizer files,
    generation_config.json, chat template...), copied into ``dest``."""
    for f in sorted(source.folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.name not in ("config.json", INDEX_FILE, PLAN_FILE):
            if not f.name.lower().endswith(WEIGHT_SUFFIXES):
                shutil.copy2(f, dest / f.name)


def dropped_config(source: Source, kept_layers: list[int]) -> dict[str, Any]:
    """config.json with the new layer count and its per-layer lists sliced. A list transformers derives
    when config.json lacks it (``layer_types`` from Qwen2's ``max_window_layers`` or Gemma 3's sliding
    pattern) is written out explicitly, sliced, so each kept layer keeps its attention type."""
    cfg = dict(source.config)
    derived = _derived_lists(source)
    for key in PER_LAYER_KEYS:
        values = cfg.get(key, derived.get(key))
        if isinstance(values, list) and len(values) == source.layers:
            cfg[key] = [values[i] for i in kept_layers]
    cfg["num_hidden_layers"] = len(kept_layers)
    return cfg


def _derived_lists(source: Source) -> dict[str, Any]:
    from ..load.hf import _transformers

    try:
        config = _transformers().AutoConfig.from_pretrained(str(source.folder), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot read is the user's file problem
        raise SlimnetError(f"hf:{source.folder}: transformers cannot read config.json ({exc})") from None
    return {k: list(getattr(config, k)) for k in PER_LAYER_KEYS if isinstance(getattr(config, k, None), list)}


def add_plan_entry(folder: Path, entry: dict[str, Any], previous: Path | None = None, key: str = "depth") -> None:
    """Record ``entry`` as ``key`` (``depth``; ``hidden`` for :mod:`slimnet.llm.hidden`) in ``folder``'s
    slimnet_plan.json, keeping what is already there (or, for a new folder, what ``previous`` held)."""
    plan_file = folder / PLAN_FILE
    source = plan_file if plan_file.is_file() else previous
    plan: dict[str, Any] = {}
    if source is not None and source.is_file():
        try:
            plan = json.loads(source.read_text())
        except ValueError:
            plan = {}
    if key in plan:
        entry = {**entry, "previous": plan[key]}
    plan[key] = entry
    plan_file.write_text(json.dumps(plan, indent=2) + "\n")


def _copy_tensors(
    src: Path,
    mapping: dict[str, str],
    dest: Path,
    shape_of: Callable[[str, list[int]], list[int]] | None = None,
    transform: Callable[[str, Any], Any] | None = None,
) -> int:
    """A safetensors file holding ``src``'s tensors ``mapping`` keys, under the new names: header first (the
    shapes and dtypes are in ``src``'s header), then each tensor's bytes, one tensor in memory at a time.
    ``shape_of(key, shape)`` / ``transform(key, tensor)``: a tensor's new shape and the tensor cut to it (same
    dtype; :mod:`slimnet.llm.hidden` slices the residual axis this way). Returns the bytes of tensor data
    written."""
    from safetensors import safe_open  # lazy: optional dependency

    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        order = sorted(mapping, key=lambda k: mapping[k])
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        sizes = {}
        for k in order:
            sl = f.get_slice(k)
            shape, dtype = list(sl.get_shape()), sl.get_dtype()
            width = _DTYPE_BYTES.get(dtype) or f.get_tensor(k).element_size()
            shape = shape_of(k, shape) if shape_of is not None else shape
            sizes[k] = math.prod(shape) * width
            header[mapping[k]] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + sizes[k]]}
            offset += sizes[k]
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(dest, "wb") as out:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            for k in order:
                t = f.get_tensor(k)
                t = (transform(k, t) if transform is not None else t).contiguous()
                data = t.reshape(-1).view(_torch().uint8).numpy().tobytes() if t.numel() else b""
                if len(data) != sizes[k]:
                    raise SlimnetError(f"{src}: tensor {k} holds {len(data)} bytes, its header says {sizes[k]}")
                out.write(data)
                del t, data
    return offset


_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


# ------------------------------------------------------------------------------------------ verification
def _stored_dtype(source: Source) -> Any:
    """The dtype the embeddings are stored in: the model runs in it, as its own loader would."""
    from safetensors import safe_open  # lazy: optional dependency

    key = next((k for k in source.weight_map if k.endswith("embed_tokens.weight")), next(iter(source.weight_map)))
    with safe_open(str(source.folder / source.weight_map[key]), framework="pt") as f:
        name = f.get_slice(key).get_dtype()
    torch = _torch()
    return {"BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}.get(name, torch.float32)


def _load_plain(tf: Any, folder: Path, dtype: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` as any user would call it (no remote code, offline)."""
    try:
        model = tf.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - transformers' own refusal, as one line
        raise SlimnetError(f"hf:{folder}: transformers cannot load the model ({str(exc).splitlines()[0]})") from None
    return model.eval()


def verify_dropped(
    source: Source, folder: Path, dropped: list[int], batches: list[dict[str, Any]], how: str = "auto"
) -> tuple[float, str]:
    """Max abs difference between the logits of ``folder`` and the original's with the ``dropped`` layers
    skipped (computed layer by layer from the input folder), over the non-padding tokens of ``batches``; and
    how ``folder`` was run: ``plain`` (``AutoModelForCausalLM.from_pretrained``, in memory: the proof that
    standard transformers loads it) or ``layer-by-layer`` (built from its config, every tensor loaded strictly
    by name and shape, one layer in memory at a time). ``auto``: plain up to :data:`PLAIN_VERIFY_BYTES` of
    weights."""
    torch = _torch()
    from ..load.hf import _transformers

    kept = [i for i in range(source.layers) if i not in set(dropped)]
    written = inspect_folder(folder)
    if written.layers != len(kept):
        raise VerificationError(f"the written folder holds {written.layers} layers, not {len(kept)}")
    if how == "auto":
        size = sum(math.prod(s) for s in written.shapes.values()) * _element_size(source)
        how = "plain" if size <= PLAIN_VERIFY_BYTES else "layer-by-layer"
    with torch.inference_mode():
        reference = Streamed(source)
        finals = reference.hidden(batches, kept)
        if how == "plain":
            model = _load_plain(_transformers(), folder, reference.dtype)

            def run(_i: int, b: dict[str, Any]) -> Any:
                return model(**b, use_cache=False).logits
        else:
            streamed = Streamed(written)
            outs = streamed.hidden(batches, list(range(written.layers)))

            def run(i: int, b: dict[str, Any]) -> Any:
                return streamed.logits(b, outs[i])

        worst = 0.0
        for i, (b, final) in enumerate(zip(batches, finals)):
            got, ref = run(i, b), reference.logits(b, final)
            mask = _mask(b, got[..., 0]).bool()
            worst = max(worst, float((got.float() - ref.float()).abs()[mask].max()))
    return worst, how


#: verification loads the written model whole with plain transformers up to this many bytes of weights
PLAIN_VERIFY_BYTES = 2 << 30


def _element_size(source: Source) -> int:
    return int(_torch().empty((), dtype=_stored_dtype(source)).element_size())


# ------------------------------------------------------------------------------------------ the command
@dataclass
class DepthResult:
    """What ``--drop-layers`` did: the report's ``depth`` object, and the params before and after."""

    dropped: list[int]
    scores: dict[int, float]
    rank: str
    layers: tuple[int, int]
    params: tuple[int, int]
    max_abs_diff: float
    tokens: int
    dense_ppl: float | None = None
    verified_by: str = "plain"

    def plan_entry(self) -> dict[str, Any]:
        """The ``depth`` entry of slimnet_plan.json."""
        return {"dropped": self.dropped, "scores": {str(i): s for i, s in self.scores.items()}, "rank": self.rank}

    def describe(self) -> dict[str, Any]:
        """The ``depth`` object of the --json report."""
        out = {
            **self.plan_entry(),
            "layers_before": self.layers[0],
            "layers_after": self.layers[1],
            "dropped_scores": {str(i): self.scores[i] for i in self.dropped},
            "max_abs_diff": self.max_abs_diff,
            "exact": self.max_abs_diff == 0.0,
            "tokens": self.tokens,
            "verified_by": self.verified_by,
        }
        if self.dense_ppl is not None:
            out["dense_ppl"] = self.dense_ppl
        return out


def text_batches(source: Source, data: str, batch_size: int, calib_batches: int) -> list[dict[str, Any]]:
    """``--data`` tokenised with the folder's tokenizer (as every slimnet command reads text data)."""
    torch = _torch()
    from ..load.data import load_data

    example = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    has_tokenizer = any((source.folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    cal = load_data(
        data,
        example,
        batch_size=batch_size,
        calib_batches=calib_batches,
        tokenizer=str(source.folder) if has_tokenizer else None,
    )
    return list(cal.batches)


def drop_layers(
    source: Source,
    n: int,
    batches: list[dict[str, Any]],
    dest: Path,
    rank: str = "block-influence",
    stages: Any = None,
    verify: str = "auto",
) -> DepthResult:
    """Rank the layers on ``batches``, write the folder without the ``n`` lowest into ``dest`` (created here,
    in a temporary folder beside it renamed at the end), verify it; the result for the report."""
    from .._util import scratch_dir

    check_drop(source, n, rank)
    stage = stages if stages is not None else _no_stage
    with stage("rank"):
        dense = None
        if rank == "ppl":
            scores, dense = perplexity_without(source, batches)
        else:
            scores = block_influence(source, batches)
        dropped = choose(scores, n)
    tokens = sum(int(_mask(b, b["input_ids"]).sum()) for b in batches)
    with scratch_dir(dest) as work:
        tmp = work / dest.name
        tmp.mkdir()
        with stage("write"):
            entry = {"dropped": dropped, "scores": {str(i): s for i, s in scores.items()}, "rank": rank}
            params = write_dropped(source, dropped, tmp, entry)
        with stage("verify"):
            diff, how = verify_dropped(source, tmp, dropped, batches, verify)
        if diff != 0.0:
            raise VerificationError(
                f"verification failed: the logits differ from the original's with layers {dropped} skipped by "
                f"{diff:.3g} (an exact match is expected); nothing was written"
            )
        if dest.exists():
            dest.rmdir()  # an empty folder (checked before)
        os.replace(tmp, dest)
    return DepthResult(
        dropped, scores, rank, (source.layers, source.layers - n), (source.params, params), diff, tokens, dense, how
    )


def shrink_depth(
    model: str, n: int, rank: str, data: str | None, batch_size: int, calib_batches: int, dest: Path, stages: Any
) -> dict[str, Any]:
    """``shrink MODEL --drop-layers N``: the checks (in the "load" stage), the depth cut into the folder ``dest``,
    and the --json report (the shrink report's fields that apply, and ``depth``)."""
    from ..load.spec import parse_spec

    spec = parse_spec(model)
    if spec.kind != "hf":
        raise SlimnetError(f"--drop-layers needs a Hugging Face decoder LM (hf:FOLDER); {model} is not one")
    with stages("load"):
        source = inspect_folder(spec.target)
        check_drop(source, n, rank)
        if data is None:
            raise SlimnetError(
                "--drop-layers ranks the layers on calibration text: give --data FILE.txt (one example per line, "
                "tokenised with the model folder's tokenizer)"
            )
        batches = text_batches(source, data, batch_size, calib_batches)
    result = drop_layers(source, n, batches, dest, rank, stages)
    return {
        "model": model,
        "output": str(dest),
        "plan": str(dest / PLAN_FILE),
        "params": list(result.params),
        "max_abs_diff": result.max_abs_diff,
        "tolerance": 0.0,
        "exact": result.max_abs_diff == 0.0,
        "verified": True,
        "verify_inputs": [data],
        "depth": result.describe(),
    }


@contextmanager
def _no_stage(_name: str) -> Iterator[None]:
    yield


def report_lines(report: dict[str, Any]) -> list[str]:
    """The text report of a depth cut (the --json report's ``depth`` object in words)."""
    d = report["depth"]
    how = "block influence (1 - cos of input and output)" if d["rank"] == "block-influence" else "perplexity"
    if d["rank"] == "ppl" and d.get("dense_ppl") is not None:
        how += f" with the layer skipped (dense {d['dense_ppl']:.4g})"
    dropped = ", ".join(f"{i} ({d['scores'][str(i)]:.4g})" for i in d["dropped"]) or "none"
    scores = ", ".join(f"{i}: {s:.4g}" for i, s in d["scores"].items())
    by = {"plain": "plain AutoModelForCausalLM", "layer-by-layer": "loaded layer by layer"}
    return [
        f"dropped {len(d['dropped'])} of {d['layers_before']} decoder layers, ranked by {how} on {d['tokens']} "
        f"tokens: layer {dropped}",
        f"  scores of all layers (lowest go): {scores}",
        f"verified (exact): max abs diff {d['max_abs_diff']:.3g} between the logits of the written folder "
        f"({by.get(d.get('verified_by'), 'plain AutoModelForCausalLM')}) and the original's with those layers skipped",
    ]
