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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._util import first_line, scratch_dir
from ..errors import SlimnetError

PLAN_KEY = "slimnet_plan"
REMOTE_FILE = "slimnet_pruned.py"


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


def save_pretrained(model: nn.Module, plan: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``model`` (pruned by ``plan``) as a transformers directory whose config carries the plan.

    Written to a temporary folder beside ``path`` and renamed at the end: an error leaves nothing behind."""
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimnetError(f"output {path} exists and is not an empty folder: give a new folder name")
    with scratch_dir(out) as work:
        tmp = work / out.name
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
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    return out


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
