"""Hugging Face models: load a local directory (``hf:PATH``), and save a pruned model so it loads again.

A pruned model has per-layer head counts and hidden sizes that a transformers config cannot state (it has
one ``num_attention_heads``, one ``intermediate_size``). So :func:`save_pretrained` writes the usual
directory (``config.json`` + safetensors, via the model's own ``save_pretrained``) with the plan added to
the config as ``slimnet_plan``; :func:`from_pretrained` builds the original architecture from that config,
applies the plan (the surgeon: shapes only) and then lets transformers load the saved weights (so its
checkpoint key renames apply), refusing any missing, unexpected or mismatched tensor. Nothing is
downloaded: every load is ``local_files_only``. transformers is an optional extra.

transformers' own loaders work too, through its remote-code mechanism: the folder also holds
``slimnet_pruned.py``, a subclass of the original architecture whose ``__init__`` applies the config's plan,
and ``config.json`` maps the Auto classes that build that architecture to it (``auto_map``). So
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` loads the pruned model (slimnet must be
installed). Without ``trust_remote_code`` transformers uses its own class and refuses with a size-mismatch
error: it never loads the pruned weights into the wrong shapes silently.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util import first_line, scratch_dir
from ..errors import SlimnetError

PLAN_KEY = "slimnet_plan"
REMOTE_FILE = "slimnet_pruned.py"
#: The plan beside the weights of a standard folder (whose config.json holds no plan): ``slimnet.plan/1``.
PLAN_FILE = "slimnet_plan.json"
#: Decoder LMs whose transformers config states every width the standard writer changes (one head count, one
#: key/value head count, one MLP width and the head size for all layers): a shrunk one whose layers keep the same
#: widths is written as a plain transformers folder (:func:`standard_widths`, :func:`standard_config`).
STANDARD_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Phi3ForCausalLM",
    }
)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise SlimnetError(
            "transformers is not installed: pip install 'slimnet[transformers]' to use hf: models"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def _model_class(config: Any) -> Any:
    tf = _transformers()
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(tf, name, None)
        if cls is not None:
            return cls
    try:  # no (known) architectures listed: the base model of this config type
        return tf.AutoModel._model_mapping[type(config)]
    except (KeyError, AttributeError):
        raise SlimnetError(
            f"transformers has no model class for config type {type(config).__name__}: "
            "give a folder whose config.json lists its architectures"
        ) from None


def from_pretrained(path: str | os.PathLike) -> nn.Module:
    """Load a model directory written by ``save_pretrained`` (transformers' or :func:`save_pretrained`)."""
    p = Path(path)
    if not p.is_dir():
        raise SlimnetError(
            f"hf:{path}: no such directory (give a local folder with config.json and weights; nothing is downloaded)"
        )
    if not (p / "config.json").is_file():
        raise SlimnetError(f"hf:{path} has no config.json: give a folder written by save_pretrained")
    if not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        raise SlimnetError(
            f"hf:{path} has no weights (no *.safetensors file): give a folder written by save_pretrained"
        )
    tf = _transformers()
    try:
        config = tf.AutoConfig.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a config transformers cannot read is the user's file problem
        raise SlimnetError(f"hf:{path}: transformers cannot read config.json ({first_line(exc)})") from None
    cls = _model_class(config)
    plan = getattr(config, PLAN_KEY, None)
    if plan is not None:
        cls = pruned_class(cls)
    try:
        model, info = cls.from_pretrained(str(p), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"hf:{path}: transformers cannot load the model ({first_line(exc)})") from None
    bad = {k: sorted(v)[:3] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise SlimnetError(
            f"hf:{path}: the weights do not fit the {'pruned ' if plan else ''}architecture "
            f"({bad or info['error_msgs'][:1]}): was the folder edited after saving?"
        )
    if plan is not None:
        model.__class__ = cls.__bases__[0]  # the subclass only adds __init__: keep the picklable original class
    return model.eval()


def pruned_class(base: type) -> type:
    """A subclass of ``base`` whose ``__init__`` applies the plan in its config before the weights load.

    transformers renames checkpoint keys per class (transformers 5's conversion mapping: saving writes the old
    names, e.g. GPT-NeoX's ``embed_out``, and loading maps them back), looked up by class name and skipped for
    classes defined outside transformers; the subclass is registered under the base's mapping so that the
    saved names map back exactly as they would for the base."""

    def __init__(self: Any, config: Any, *args: Any, **kwargs: Any) -> None:
        base.__init__(self, config, *args, **kwargs)
        apply_config_plan(self)

    cls = type(f"Slimnet{base.__name__}", (base,), {"__init__": __init__, "__module__": "slimnet.hf"})
    register_weight_renames(cls)
    return cls


def register_weight_renames(cls: type) -> None:
    """Give ``cls`` (a subclass of a transformers model) the checkpoint key renames of the class it extends."""
    try:
        from transformers import conversion_mapping as cm
    except ImportError:  # transformers < 5 loads keys as saved
        return
    base = next((b for b in cls.__mro__[1:] if b.__module__.startswith("transformers.")), None)
    if base is None:
        return
    model_type = getattr(getattr(base, "config_class", None), "model_type", None)
    renames = cm.get_checkpoint_conversion_mapping(base.__name__)
    if renames is None and model_type:
        renames = cm.get_checkpoint_conversion_mapping(model_type)
    if renames is not None:
        cm.register_checkpoint_conversion_mapping(cls.__name__, renames, overwrite=True)


def apply_config_plan(model: nn.Module) -> nn.Module:
    """Apply the plan stored in ``model.config`` (shapes only; the weights are loaded afterwards)."""
    plan = getattr(model.config, PLAN_KEY, None)
    if plan:
        from ..cut.surgeon import apply_plan

        apply_plan(model, plan)
    return model


_REMOTE_CODE = '''"""Written by slimnet. Lets transformers load this pruned model:
AutoModel...from_pretrained(this_folder, trust_remote_code=True).

{cls} builds the original {base} from config.json, then applies the plan stored there as "slimnet_plan"
(which channels, heads and hidden units each layer keeps: shapes only); transformers then loads the pruned
weights. Needs slimnet (pip install slimnet) besides transformers.
"""

from transformers import {base}

from slimnet.hf import apply_config_plan, register_weight_renames


class {cls}({base}):
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        apply_config_plan(self)


register_weight_renames({cls})
'''


def _auto_classes(model: nn.Module) -> list[str]:
    """The transformers Auto classes that would build ``type(model)`` for this config's model_type."""
    tf = _transformers()
    names = []
    for name in sorted(dir(tf)):
        if not name.startswith("AutoModel"):
            continue
        mapping = getattr(getattr(tf, name, None), "_model_mapping", None)
        table = getattr(mapping, "_model_mapping", None)
        entry = table.get(model.config.model_type) if isinstance(table, dict) else None
        if entry == type(model).__name__ or (isinstance(entry, (tuple, list)) and type(model).__name__ in entry):
            names.append(name)  # an entry may list several classes (DeiT: with and without its teacher)
    return names


def _write_remote_code(model: nn.Module, folder: Path) -> None:
    """slimnet_pruned.py and the config's auto_map (see the module docstring); skipped for classes that
    transformers does not export by name (nothing to subclass from a plain import)."""
    tf = _transformers()
    base = type(model).__name__
    if getattr(tf, base, None) is not type(model):
        return
    cls = f"Slimnet{base}"
    (folder / REMOTE_FILE).write_text(_REMOTE_CODE.format(cls=cls, base=base))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {auto: f"{REMOTE_FILE[:-3]}.{cls}" for auto in _auto_classes(model) or ["AutoModel"]}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))


def save_pretrained(
    model: nn.Module, plan: dict[str, Any], path: str | os.PathLike, standard: bool | None = None
) -> Path:
    """Write ``model`` (pruned by ``plan``) as a transformers directory (:func:`save_folder`); returns its path."""
    return Path(save_folder(model, plan, path, standard)["path"])


def save_folder(
    model: nn.Module, plan: dict[str, Any], path: str | os.PathLike, standard: bool | None = None
) -> dict[str, Any]:
    """Write ``model`` (pruned by ``plan``) as a transformers directory, one of two kinds:

    * ``"standard"``: a Llama-style decoder (:data:`STANDARD_ARCHITECTURES`) whose layers all keep the same
      widths, in whole key/value groups: config.json states the new widths (:func:`standard_config`), the plan
      goes to :data:`PLAN_FILE` beside the weights, and any runtime that reads transformers folders loads it
      (``AutoModelForCausalLM.from_pretrained(folder)``, no remote code);
    * ``"remote-code"``: everything else: config.json keeps the original sizes and carries the plan, with
      ``slimnet_pruned.py`` to apply it (see the module docstring).

    ``standard``: None picks the standard kind where it can (the report's ``note`` says why not), True insists
    (an error saying why not), False always writes the remote-code kind. Returns ``{"path", "format", "note"}``.
    Written to a temporary folder beside ``path`` and renamed at the end: an error leaves nothing behind."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimnetError(f"output {path} exists and is not an empty folder: give a new folder name")
    widths, why = None, "asked for the remote-code folder"
    if standard is not False:
        if is_standard_decoder(model):
            widths, why = standard_widths(model.config.to_dict(), plan)
        else:
            why = f"{type(model).__name__} is not one of the decoders the standard writer knows"
        if widths is None and standard:
            raise SlimnetError(f"cannot write a standard transformers folder: {why}")
    with scratch_dir(out) as work:
        tmp = work / out.name
        if widths is not None:
            _write_standard(model, plan, widths, tmp)
        else:
            _write_remote(model, plan, tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    if widths is not None:
        return {"path": str(out), "format": "standard", "note": None}
    note = None if standard is False else f"{why}: loading it needs trust_remote_code (and slimnet)"
    return {"path": str(out), "format": "remote-code", "note": note}


def _write_remote(model: nn.Module, plan: dict[str, Any], tmp: Path) -> None:
    setattr(
        model.config,
        PLAN_KEY,
        {"format": plan.get("format"), "model": plan.get("model"), "tensors": plan["tensors"]},
    )
    model.save_pretrained(str(tmp))
    cfg = json.loads((tmp / "config.json").read_text())
    if PLAN_KEY not in cfg:  # a config class that drops unknown attributes: write it ourselves
        cfg[PLAN_KEY] = getattr(model.config, PLAN_KEY)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    _write_remote_code(model, tmp)


def _write_standard(model: nn.Module, plan: dict[str, Any], widths: Mapping[str, int], tmp: Path) -> None:
    from .. import plan as plan_mod

    if hasattr(model.config, PLAN_KEY):  # left by an earlier remote-code save of this model
        delattr(model.config, PLAN_KEY)
    model.save_pretrained(str(tmp))
    cfg = standard_config(json.loads((tmp / "config.json").read_text()), widths)
    (tmp / "config.json").write_text(config_text(cfg))
    plan_mod.save(plan, tmp / PLAN_FILE)


def config_text(config: Mapping[str, Any]) -> str:
    """config.json's text as the standard writers write it (sorted keys, 2-space indent, a final newline): the
    same dict is the same bytes from either path."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def is_standard_decoder(model: nn.Module) -> bool:
    """Whether ``model`` is (a subclass of) one of :data:`STANDARD_ARCHITECTURES`, by class name (no import)."""
    return any(c.__name__ in STANDARD_ARCHITECTURES for c in type(model).__mro__)


def standard_config(config: Mapping[str, Any], widths: Mapping[str, int]) -> dict[str, Any]:
    """config.json of a shrunk Llama-style decoder, loadable without remote code.

    ``config``: the original's config.json as a dict; ``widths``: what every layer keeps, as
    :func:`standard_widths` returns it (``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``,
    ``head_dim``). ``head_dim`` is written explicitly: the transformers default, ``hidden_size //
    num_attention_heads``, changes with the head count while the heads themselves do not. The plan and the
    remote-code keys (``slimnet_plan``, ``auto_map``) are dropped. One function for every writer of this folder (the
    in-memory :func:`save_folder` and the streaming path of :mod:`slimnet.llm`), so that both write the same file:
    ``config_text(standard_config(config, standard_widths(config, plan)[0]))`` beside the weights, and the plan
    (``slimnet.plan.save``) as :data:`PLAN_FILE`. ``config`` is what transformers writes for the original
    (``save_pretrained``'s config.json, as the in-memory path reads it back), not necessarily the file it came from."""
    out = {k: v for k, v in config.items() if k not in (PLAN_KEY, "auto_map")}
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "head_dim"):
        out[key] = int(widths[key])
    return out


_LAYER = re.compile(r"^(?P<layer>(?:.+\.)?layers\.(?P<i>\d+))\.(?P<tensor>[^.]+\.[^.]+\.(?:weight|bias))$")
#: The tensors of a layer the standard folder may see cut, and the dim: what config.json can state.
_CUT_DIMS = {
    **{f"self_attn.{p}_proj.{w}": 0 for p in ("q", "k", "v", "qkv") for w in ("weight", "bias")},
    "self_attn.o_proj.weight": 1,
    **{f"mlp.{p}_proj.weight": 0 for p in ("gate", "up", "gate_up")},
    "mlp.down_proj.weight": 1,
}


def standard_widths(config: Mapping[str, Any], plan: Mapping[str, Any]) -> tuple[dict[str, int] | None, str]:
    """What every layer of a Llama-style decoder keeps under ``plan``, when config.json can state it.

    ``config``: the original's config.json as a dict; ``plan``: a ``slimnet.plan/1`` plan of that model. Returns
    ``(widths, "")`` with ``widths`` the keys :func:`standard_config` writes, or ``(None, why)`` where the plan cuts
    what a config cannot state: layers that keep different widths, heads cut inside (a kept row of a head without
    the others), query heads kept without their key/value head (or the reverse), or any other tensor cut (the
    residual stream, a norm). Read from the plan alone, so that the streaming path can call it too."""
    try:
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        inner = int(config["intermediate_size"])
        n_layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"config.json lacks {exc} or it is not a number"
    layers: dict[int, dict[str, dict[str, list[int]]]] = {}
    prefix = None
    for name, dims in plan.get("tensors", {}).items():
        m = _LAYER.match(name)
        if m is None or _CUT_DIMS.get(m["tensor"]) is None or set(dims) != {str(_CUT_DIMS[m["tensor"]])}:
            what = ", ".join(f"dim {d}" for d in dims)
            return None, f"the plan cuts {name} ({what}), which config.json cannot state (only head and MLP widths)"
        prefix = m["layer"].rsplit(".", 1)[0]
        layers.setdefault(int(m["i"]), {})[m["tensor"]] = dims
    if prefix is None:
        return {"num_attention_heads": heads, "num_key_value_heads": kv, "intermediate_size": inner,
                "head_dim": head_dim}, ""  # fmt: skip
    seen: dict[tuple[int, int, int], list[int]] = {}
    for i in range(n_layers):
        try:
            w = _layer_widths(layers.get(i, {}), heads, kv, head_dim, inner)
        except ValueError as exc:
            return None, f"layer {i}: {exc}"
        seen.setdefault(w, []).append(i)
    if len(seen) > 1:
        parts = "; ".join(f"{_span(ix)}: {h} heads, {k} key/value heads, MLP {m}" for (h, k, m), ix in seen.items())
        return None, f"the layers keep different widths ({parts})"
    ((h, k, m),) = seen
    return {"num_attention_heads": h, "num_key_value_heads": k, "intermediate_size": m, "head_dim": head_dim}, ""


def _span(ix: list[int]) -> str:
    """``layer 3``, ``layers 0-11``, ``layers 1,5``."""
    if len(ix) == 1:
        return f"layer {ix[0]}"
    run = len(ix) > 2 and ix == list(range(ix[0], ix[-1] + 1))
    return f"layers {ix[0]}-{ix[-1]}" if run else f"layers {','.join(map(str, ix))}"


def _kept(cut: Mapping[str, Mapping[str, list[int]]], tensor: str, size: int) -> list[int]:
    dims = cut.get(tensor)
    return list(dims[str(_CUT_DIMS[tensor])]) if dims else list(range(size))


def _layer_widths(
    cut: Mapping[str, Mapping[str, list[int]]], heads: int, kv: int, head_dim: int, inner: int
) -> tuple[int, int, int]:
    """(query heads, key/value heads, MLP width) one layer keeps; ValueError saying what no config can state."""
    q_size, kv_size = heads * head_dim, kv * head_dim
    if any(t.startswith("self_attn.qkv_proj.") for t in cut):  # Phi-3: q, k, v rows fused, in that order
        rows = _kept(cut, "self_attn.qkv_proj.weight", q_size + 2 * kv_size)
        q = [r for r in rows if r < q_size]
        k = [r - q_size for r in rows if q_size <= r < q_size + kv_size]
        v = [r - q_size - kv_size for r in rows if r >= q_size + kv_size]
        if "self_attn.qkv_proj.bias" in cut and _kept(cut, "self_attn.qkv_proj.bias", 0) != rows:
            raise ValueError("the fused qkv bias keeps other rows than its weight")
    else:
        q = _kept(cut, "self_attn.q_proj.weight", q_size)
        k = _kept(cut, "self_attn.k_proj.weight", kv_size)
        v = _kept(cut, "self_attn.v_proj.weight", kv_size)
        for p, rows in (("q", q), ("k", k), ("v", v)):
            if f"self_attn.{p}_proj.bias" in cut and _kept(cut, f"self_attn.{p}_proj.bias", 0) != rows:
                raise ValueError(f"{p}_proj's bias keeps other rows than its weight")
    if k != v or _kept(cut, "self_attn.o_proj.weight", q_size) != q:
        raise ValueError("the key and value heads (or the query heads and o_proj's columns) differ")
    q_heads, kv_heads = _whole_heads(q, head_dim), _whole_heads(k, head_dim)
    per = heads // kv
    if q_heads != [g * per + j for g in kv_heads for j in range(per)]:
        raise ValueError(f"query heads {q_heads} are not the {per} heads of each kept key/value head {kv_heads}")
    if any(t.startswith("mlp.gate_up_proj.") for t in cut):  # Phi-3: gate rows, then up rows
        rows = _kept(cut, "mlp.gate_up_proj.weight", 2 * inner)
        gate, up = [r for r in rows if r < inner], [r - inner for r in rows if r >= inner]
    else:
        gate, up = _kept(cut, "mlp.gate_proj.weight", inner), _kept(cut, "mlp.up_proj.weight", inner)
    if not gate == up == _kept(cut, "mlp.down_proj.weight", inner):
        raise ValueError("the MLP's gate, up and down projections keep different hidden units")
    return len(q_heads), len(kv_heads), len(gate)


def _whole_heads(rows: list[int], head_dim: int) -> list[int]:
    heads = sorted({r // head_dim for r in rows})
    if rows != [h * head_dim + j for h in heads for j in range(head_dim)]:
        raise ValueError("a head is cut inside (its head_dim rows must stay whole)")
    return heads


def default_input(model: nn.Module, seq_len: int = 16) -> dict[str, torch.Tensor]:
    """A plausible example input from the config: token ids for text models, pixels for vision ones."""
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    if hasattr(cfg, "image_size") and hasattr(cfg, "num_channels"):
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        return {"pixel_values": torch.randn(1, cfg.num_channels, size, size, generator=gen)}
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab <= 0:
        raise SlimnetError("cannot make an example input for this model: give --input with a dict of tensors")
    n = min(seq_len, int(getattr(cfg, "max_position_embeddings", seq_len) or seq_len))
    ids = torch.randint(0, vocab, (1, n), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
