"""Which Hugging Face folders the low-memory path takes, decided from ``config.json`` alone (no torch).

The path relies on three facts that hold for Llama-style decoders and are checked, not assumed, later on: the
decoder layers sit in one ``ModuleList`` and run the same code, every coupled group the in-memory analysis
prunes lies inside one layer (attention heads in whole key/value groups, MLP channels), and nothing outside the
layers changes shape (embeddings, final norm and ``lm_head`` keep the residual-stream width). Families whose
layers differ from one another (Gemma 2/3's sliding and global layers, mixtures of experts) are left to the
in-memory path until they are tested here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SlimnetError

#: ``model_type`` values the low-memory path is tested on (tests/test_llm_lowmem.py), each with the note that
#: says how its layers are cut (for errors and the report).
FAMILIES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "gemma": "Gemma",
    "phi3": "Phi-3 (fused qkv_proj, gate_up_proj)",
}

#: Criteria read from the weights alone: one decoder layer's tensors are all they need.
WEIGHT_CRITERIA = ("l1", "l2", "fpgm")


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face folder as plain data; one-line errors for a missing or broken file."""
    path = folder / "config.json"
    if not path.is_file():
        raise SlimnetError(f"hf:{folder} has no config.json: give a folder written by save_pretrained")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimnetError(f"hf:{folder}: config.json is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SlimnetError(f"hf:{folder}: config.json is not a JSON object")
    return data


def family_of(folder: Path) -> str | None:
    """The folder's ``model_type`` when the low-memory path knows it, else None (nothing raised: the caller then
    takes the in-memory path)."""
    try:
        model_type = read_config(folder).get("model_type")
    except SlimnetError:
        return None
    return model_type if model_type in FAMILIES else None


def check_family(folder: Path) -> str:
    """The folder's ``model_type``, or a one-line error naming the families the low-memory path takes."""
    model_type = read_config(folder).get("model_type")
    if model_type not in FAMILIES:
        known = ", ".join(FAMILIES)
        raise SlimnetError(
            f"hf:{folder}: architecture {model_type!r} is not one the low-memory path knows ({known}): use --in-memory"
        )
    return str(model_type)


def weight_files(folder: Path) -> list[Path]:
    """The folder's safetensors shards (what the path streams), or a one-line error when it has none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SlimnetError(
            f"hf:{folder} has no *.safetensors weights: the low-memory path streams safetensors shards (save the "
            "model with save_pretrained(safe_serialization=True)), or use --in-memory"
        )
    return files


#: the criteria the low-memory path reads from calibration data, one layer at a time (slimnet.llm.calib)
DATA_CRITERIA = ("activation", "apoz", "wanda")


def streams(folder: Path, settings: Any, plain: bool, data: bool = False) -> bool:
    """Whether ``slimnet shrink hf:FOLDER`` takes the low-memory path by itself: a known family, a weight
    criterion (or, with calibration ``data``, an activation criterion), a uniform ratio, and nothing else asked
    (``plain``: no repair, ONNX, weights or input given) that only the in-memory path does."""
    return (
        plain
        and family_of(folder) is not None
        and any(folder.glob("*.safetensors"))  # else the in-memory loader says what is missing
        and settings.criterion in (DATA_CRITERIA if data else WEIGHT_CRITERIA)
        and settings.target_kind is None
        and not settings.use_global
        and not settings.ratios
        and not settings.ignore
        and not settings.prune_norm
    )


def streams_hf(model: str, settings: Any, plain: bool, data: bool = False) -> bool:
    """:func:`streams` for a MODEL string of the command line (only ``hf:FOLDER`` can stream)."""
    return model.startswith("hf:") and streams(Path(model[3:]), settings, plain, data)
