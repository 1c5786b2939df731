"""MODEL strings and input shapes as the user types them, parsed without importing torch.

The command line checks its arguments with these before it loads anything (a wrong flag is answered in well
under a second), and :mod:`slimnet.load.loader` resolves the parsed spec into a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimnetError


@dataclass(frozen=True)
class Spec:
    """A parsed MODEL string: what kind of source it names, and the local file or folder it reads."""

    kind: str  # "torchvision", "timm", "hf", "ultralytics", "factory", "pickle", "onnx" (bench times it only)
    target: str  # the built-in's name, the hf folder, the .py file, or the pickle file
    factory: str = ""  # FACTORY of FILE.py:FACTORY

    @property
    def file(self) -> str:
        """The local path the spec reads ('' for a built-in): an output must never be written over it."""
        if self.kind == "ultralytics" and self.target.lower().endswith((".yaml", ".yml")):
            return ""  # a model description, read only
        return "" if self.kind in ("torchvision", "timm") else self.target


def parse_spec(spec: str) -> Spec:
    """The one parser of MODEL strings (``torchvision:NAME``, ``timm:NAME``, ``hf:FOLDER``, ``ultralytics:YAML``
    or ``ultralytics:FILE.pt``, ``FILE.py:FACTORY``, a saved file, or an ``.onnx`` file, which only ``bench``
    takes)."""
    for prefix in ("torchvision", "timm", "hf", "ultralytics"):
        if spec.startswith(f"{prefix}:"):
            return Spec(prefix, spec.split(":", 1)[1])
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        return Spec("factory", path, factory)
    if spec.lower().endswith(".onnx"):
        return Spec("onnx", spec)
    return Spec("pickle", spec)


def check_file(path: str) -> Path:
    """A model file that exists, is a file and is not empty (checked before torch is imported, so that a typo
    is answered at once)."""
    p = Path(path)
    if not p.exists():
        raise SlimnetError(
            f"model {path} does not exist: give a file saved with torch.save(model), FILE.py:FACTORY, "
            "or a built-in such as torchvision:resnet50"
        )
    if not p.is_file():
        raise SlimnetError(f"model {path} is not a file")
    if p.stat().st_size == 0:
        raise SlimnetError(f"model file {path} is empty: save the model again with torch.save(model)")
    return p


def not_torch(spec: str) -> SlimnetError:
    """The refusal of an ONNX file where a torch model is needed."""
    return SlimnetError(
        f"{spec} is an ONNX file: slimnet prunes and exports torch models (a torch.save(model) file, "
        "FILE.py:FACTORY, or a built-in such as torchvision:resnet50); slimnet bench times .onnx files too"
    )


def check_model(spec: str, onnx: bool = False) -> Spec:
    """The checks of a MODEL string that need no torch: a file that exists (a ``FILE.py:FACTORY``'s file, a
    saved model, an ``hf:`` folder), and an ``.onnx`` file only where ``onnx`` (``bench``) takes one."""
    parsed = parse_spec(spec)
    if parsed.kind == "onnx" and not onnx:
        raise not_torch(spec)
    if parsed.kind in ("pickle", "onnx"):
        check_file(parsed.target)
    elif parsed.kind == "factory" and not Path(parsed.target).is_file():
        raise SlimnetError(f"model file {parsed.target} does not exist")
    elif parsed.kind == "hf" and not Path(parsed.target).is_dir():
        raise SlimnetError(
            f"hf:{parsed.target}: no such directory (give a local folder with config.json and weights; nothing is "
            "downloaded)"
        )
    return parsed


def default_input_shape(spec: str) -> tuple[int, ...]:
    """The usual image size for a built-in model: 299 for inception, 640 for ultralytics' YOLO, 224 otherwise."""
    name = spec.split(":", 1)[-1].lower()
    if spec.startswith("ultralytics:"):
        return (1, 3, 640, 640)
    if "inception" in name:
        return (1, 3, 299, 299)
    return (1, 3, 224, 224)


def parse_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' -> (1, 3, 224, 224), with an error that says what a shape looks like."""
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise SlimnetError(
            f"--input-shape {text!r} is not a shape: give comma-separated positive integers such as 1,3,224,224"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise SlimnetError(
            f"--input-shape {text!r} is not a shape: give comma-separated positive integers such as 1,3,224,224"
        )
    return shape
