"""Calibration data: the few batches of real inputs that data-driven criteria, repair, sensitivity and
distillation look at (``--data SPEC``).

SPEC is one of

* a file written by ``torch.save``: a tensor ``N x ...`` (or a dict / tuple of such tensors, matching the
  example input's structure), cut along dim 0 into batches of ``--batch-size``;
* a folder of images (png, jpg, bmp, gif, webp, tif), sorted by name, resized to the example input's size and
  normalised with the ImageNet mean and standard deviation unless ``normalize=False`` (``--no-imagenet-norm``);
* a text file (``.txt``) for Hugging Face models: one example per line, tokenised with the model folder's own
  tokenizer (nothing downloaded), only the keys of the example input kept;
* ``FILE.py:FACTORY``: FACTORY() returns any iterable of batches, a ``DataLoader`` for instance; a labelled
  batch ``(inputs, labels)`` gives its inputs.

Only the first ``--calib-batches`` batches are read, in order (reproducible), and held in memory: every user of
calibration data makes several passes over it. Whatever the source, each batch is checked against the example
input (same structure, same number of dims, same dtype family) and the first one is run through the model, so
that a wrong shape is one clear line before any work starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._tensors import call, flat_tensors
from .._util import first_line
from ..errors import SlimnetError
from ..settings import check_data_settings
from .loader import import_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BATCHES = 8
DEFAULT_BATCH_SIZE = 32
#: Tokenised text is cut at this many tokens (or the model's own limit, if smaller).
MAX_TOKENS = 128


@dataclass
class Calibration:
    """Batches of model inputs, each in the example input's structure, and where they came from."""

    batches: list[Any]
    source: str = "python"
    notes: list[str] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(_batch_len(b) for b in self.batches)

    def describe(self) -> dict[str, Any]:
        """What the --json report says about the data."""
        return {"source": self.source, "batches": len(self.batches), "samples": self.samples}

    def __iter__(self) -> Any:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _batch_len(batch: Any) -> int:
    tensors = flat_tensors(batch)
    return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1


def load_data(
    spec: str,
    example: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    calib_batches: int = DEFAULT_BATCHES,
    tokenizer: str | None = None,
    normalize: bool = True,
) -> Calibration:
    """Read ``--data SPEC`` into batches shaped like ``example`` (see the module docstring)."""
    check_data_settings(data=None, batch_size=batch_size, calib_batches=calib_batches)
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        return as_calibration(_from_factory(path, factory), example, calib_batches=calib_batches, source=spec)
    p = Path(spec)
    if not p.exists():
        raise SlimnetError(
            f"--data {spec} does not exist: give a tensor file (torch.save), a folder of images, a text file "
            "or FILE.py:FACTORY"
        )
    if p.is_dir():
        data: Any = _images(p, example, normalize, batch_size * calib_batches)
    elif p.suffix.lower() == ".txt":
        data = _text(p, example, tokenizer, batch_size * calib_batches)
    else:
        data = _tensor_file(p)
    return as_calibration(data, example, batch_size=batch_size, calib_batches=calib_batches, source=spec)


def as_calibration(
    data: Any,
    example: Any,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    calib_batches: int = DEFAULT_BATCHES,
    source: str = "python",
) -> Calibration:
    """Whatever the Python caller has (a Calibration; a tensor, tuple or dict of tensors ``N x ...`` to cut
    into batches; a list or any other iterable of batches, such as a DataLoader) as batches in the example's
    structure."""
    if isinstance(data, Calibration):
        return data
    whole = isinstance(data, torch.Tensor) or (isinstance(data, tuple) and _all_tensors(data))
    if whole or (isinstance(data, Mapping) and _all_tensors(data.values())):
        batches = _cut(data, batch_size, calib_batches)  # rows N x ... (a tuple: like a TensorDataset)
    elif isinstance(data, Iterable) and not isinstance(data, str | bytes):
        batches = []
        for batch in data:
            batches.append(batch)
            if len(batches) >= calib_batches:
                break
    else:
        raise SlimnetError(f"calibration data is a {type(data).__name__}: give a tensor or an iterable of batches")
    if not batches:
        raise SlimnetError(f"calibration data {source} holds no batches")
    return Calibration([model_input(b, example, i, source) for i, b in enumerate(batches)], source)


def _all_tensors(values: Iterable[Any]) -> bool:
    values = list(values)
    return bool(values) and all(isinstance(v, torch.Tensor) for v in values)


def _cut(data: Any, batch_size: int, calib_batches: int) -> list[Any]:
    """Consecutive slices of ``batch_size`` rows along dim 0 (a dict / tuple: every tensor alike)."""
    tensors = flat_tensors(data)
    n = int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 0
    if any(t.dim() == 0 or t.shape[0] != n for t in tensors):
        raise SlimnetError("calibration tensors must all have the same number of rows (dim 0)")
    starts = range(0, n, batch_size)[:calib_batches]
    if isinstance(data, torch.Tensor):
        return [data[s : s + batch_size] for s in starts]
    if isinstance(data, tuple):
        return [tuple(t[s : s + batch_size] for t in data) for s in starts]
    return [{k: v[s : s + batch_size] for k, v in data.items()} for s in starts]


def model_input(batch: Any, example: Any, index: int = 0, source: str = "data") -> Any:
    """``batch`` in the example's structure: a labelled ``(inputs, labels)`` batch gives its inputs, a dict
    keeps the example's keys (labels dropped), floats take the example's dtype. Anything else is an error."""
    where = f"calibration batch {index} of {source}"
    if isinstance(example, torch.Tensor):
        if isinstance(batch, list | tuple) and batch and isinstance(batch[0], torch.Tensor):
            batch = batch[0]  # (inputs, labels) from a labelled DataLoader
        if not isinstance(batch, torch.Tensor):
            raise SlimnetError(f"{where} is a {type(batch).__name__}; the model takes one tensor")
        return _match(batch, example, where)
    if isinstance(example, dict):
        if not hasattr(batch, "keys"):
            raise SlimnetError(f"{where} is a {type(batch).__name__}; the model takes a dict {sorted(example)}")
        missing = [k for k in example if k not in batch.keys()]
        if missing:
            raise SlimnetError(f"{where} lacks the input {missing[0]!r} (it has {sorted(batch.keys())})")
        return {k: _match(batch[k], example[k], f"{where}, {k!r}") for k in example}
    if isinstance(example, tuple | list):
        if not isinstance(batch, tuple | list) or len(batch) < len(example):
            raise SlimnetError(f"{where} must be a tuple of at least {len(example)} tensors (the model's inputs)")
        return tuple(_match(b, e, f"{where}, input {i}") for i, (b, e) in enumerate(zip(batch, example)))
    raise SlimnetError(f"the example input is a {type(example).__name__}: give a tensor, a tuple or a dict")


def _match(t: Any, like: torch.Tensor, where: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise SlimnetError(f"{where} is a {type(t).__name__}, not a tensor")
    shape = "x".join(str(s) for s in t.shape)
    if t.dim() != like.dim():
        want = "x".join(["N", *(str(s) for s in like.shape[1:])])
        raise SlimnetError(f"{where} has shape {shape}; the model takes {want}")
    if t.is_floating_point() != like.is_floating_point():
        raise SlimnetError(f"{where} holds {t.dtype}; the model takes {like.dtype}")
    return t.to(like.dtype) if t.dtype != like.dtype else t


def check_data(model: nn.Module, calibration: Calibration) -> None:
    """Run the first batch through the model: a shape the model rejects is one line, before any work."""
    batch = calibration.batches[0]
    try:
        with torch.no_grad():
            call(model.eval(), batch)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the data/model pairing
        shapes = ", ".join("x".join(str(s) for s in t.shape) for t in flat_tensors(batch))
        raise SlimnetError(
            f"the model rejects calibration batch 0 of {calibration.source} (shape {shapes}): "
            f"{type(exc).__name__}: {first_line(exc)}"
        ) from None


# ------------------------------------------------------------------------------------------ sources
def example_from(spec: str) -> Any | None:
    """The first row of ``--data SPEC`` as an example input, for a command given no ``--input``: a tensor file's
    first row (each tensor's, for a dict or tuple), a factory's first batch's first row; None for images and
    text, whose shape comes from the model."""
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        first = next(iter(_from_factory(path, factory)), None)
        if isinstance(first, list | tuple) and len(first) == 2 and isinstance(first[1], torch.Tensor):
            first = first[0]  # (inputs, labels)
    else:
        p = Path(spec)
        if not p.is_file() or p.suffix.lower() == ".txt":
            return None
        first = _tensor_file(p)
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return first[:1]
    if isinstance(first, Mapping):
        return {k: v[:1] for k, v in first.items()}
    return tuple(v[:1] for v in first)


def _from_factory(path: str, factory: str) -> Any:
    module = import_file(path, "data file")
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise SlimnetError(f"{path} has no callable {factory!r}: FACTORY must return an iterable of batches")
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed; say where
        raise SlimnetError(f"{path}:{factory}() failed: {type(exc).__name__}: {first_line(exc)}") from None


def _tensor_file(p: Path) -> Any:
    try:
        value = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user error
        raise SlimnetError(
            f"--data {p} could not be read as saved tensors ({type(exc).__name__}): save a tensor N x ... "
            "with torch.save, or give a folder of images, a .txt file or FILE.py:FACTORY"
        ) from None
    if isinstance(value, list):
        value = tuple(value)
    ok = isinstance(value, torch.Tensor) or (isinstance(value, dict | tuple) and _all_tensors(flat_tensors(value)))
    if not ok:
        raise SlimnetError(f"--data {p} holds a {type(value).__name__}, not a tensor (N x ...) or a dict of them")
    return value


def _images(folder: Path, example: Any, normalize: bool, limit: int) -> torch.Tensor:
    """Up to ``limit`` images of the folder as one N x C x H x W tensor of the example's size."""
    try:
        from PIL import Image  # lazy: optional dependency (the data extra)
    except ImportError:
        raise SlimnetError("a folder of images needs Pillow: pip install 'slimnet[data]'") from None
    if not isinstance(example, torch.Tensor) or example.dim() != 4:
        raise SlimnetError(f"--data {folder} is a folder of images; the model's example input is not N x C x H x W")
    channels, height, width = example.shape[1:]
    if channels not in (1, 3):
        raise SlimnetError(f"--data {folder}: images give 1 or 3 channels; the model takes {channels}")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise SlimnetError(f"--data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    rows = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert("RGB" if channels == 3 else "L").resize((width, height), Image.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except Exception as exc:  # noqa: BLE001 - PIL's own errors, or a plugin's (ultralytics patches Image.open)
            raise SlimnetError(f"--data: image {f} cannot be read ({type(exc).__name__}: {first_line(exc)})") from None
        rows.append(data.view(height, width, channels).permute(2, 0, 1))
    x = torch.stack(rows).float() / 255.0
    if normalize and channels == 3:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x


def _text(path: Path, example: Any, tokenizer: str | None, limit: int) -> dict[str, torch.Tensor]:
    """Up to ``limit`` non-empty lines, tokenised with the model folder's tokenizer, padded to the longest."""
    if not isinstance(example, dict) or "input_ids" not in example:
        raise SlimnetError(f"--data {path} is a text file: it needs a Hugging Face text model (hf:FOLDER)")
    if tokenizer is None:
        raise SlimnetError(f"--data {path} is a text file: the model's folder has no tokenizer to read it with")
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()][:limit]
    except UnicodeDecodeError:
        raise SlimnetError(f"--data {path} is not UTF-8 text") from None
    if not lines:
        raise SlimnetError(f"--data {path} holds no lines of text")
    tok = load_tokenizer(tokenizer)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # decoder LMs ship no pad token; padding is masked out anyway
    cap = min(MAX_TOKENS, int(getattr(tok, "model_max_length", MAX_TOKENS) or MAX_TOKENS))
    enc = tok(lines, padding=True, truncation=True, max_length=cap, return_tensors="pt")
    return {k: enc[k] for k in enc.keys()}


def load_tokenizer(folder: str) -> Any:
    """The tokenizer saved in a Hugging Face model folder (offline), or a one-line error."""
    try:
        from transformers import AutoTokenizer  # lazy: optional dependency (transformers)
    except ImportError:
        raise SlimnetError("text data needs transformers: pip install 'slimnet[transformers]'") from None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - a folder without tokenizer files, or unreadable ones
        raise SlimnetError(f"no tokenizer could be read from {folder}: {first_line(exc)}") from None
