"""MODEL strings and input shapes as the user types them, parsed without importing torch.

The command line checks its arguments with these before it loads anything (a wrong flag is answered in well
under a second), and :mod:`slimnet.load` resolves the parsed spec into a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SlimnetError


@dataclass(frozen=True)
class Spec:
    """A parsed MODEL string: what kind of source it names, and the local file or folder it reads."""

    kind: str  # "torchvision", "timm", "hf", "ultralytics", "factory", "pickle"
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
    or ``ultralytics:FILE.pt``, ``FILE.py:FACTORY``, or a saved file)."""
    for prefix in ("torchvision", "timm", "hf", "ultralytics"):
        if spec.startswith(f"{prefix}:"):
            return Spec(prefix, spec.split(":", 1)[1])
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        return Spec("factory", path, factory)
    return Spec("pickle", spec)


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
