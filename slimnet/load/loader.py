"""Load a model and its example input from what the user typed.

MODEL is one of
  * ``torchvision:NAME`` / ``timm:NAME``: a built-in architecture, randomly initialised (nothing downloaded);
  * ``ultralytics:yolov8n.yaml`` / ``ultralytics:best.pt``: a YOLO model built from ultralytics' YAML or loaded
    from its checkpoint (see :mod:`slimnet.load.yolo`; nothing downloaded);
  * ``hf:PATH``: a local Hugging Face model folder (config.json and safetensors; nothing downloaded), also one
    that slimnet wrote for a pruned model (see :mod:`slimnet.load.hf`);
  * ``path/to/file.py:FACTORY``: a callable returning the model, optionally with ``--weights state_dict.pt``;
  * a file written by ``torch.save(model)``.

Unpickling a whole module runs code named by the file, so by default a pickle is loaded with torch's
``weights_only`` unpickler. Files whose only classes are ``nn.Module`` subclasses from torch, torchvision,
timm or transformers (what slimnet itself writes for built-in models) load that way without any flag;
anything else needs ``--trust-pickle`` (or ``SLIMNET_TRUST_PICKLE=1``). A trusted pickle's classes are
imported as ``python -m`` would find them: the current folder is importable while the file loads, so a model
saved from a project loads when slimnet runs in that project, whether started as ``slimnet`` or ``python -m``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SlimnetError
from . import yolo
from .spec import check_file, default_input_shape, not_torch, parse_shape, parse_spec

#: Packages whose ``nn.Module`` classes may be rebuilt by the weights-only unpickler without --trust-pickle.
TRUSTED_PACKAGES = ("torch.", "torchvision.", "timm.", "transformers.", "slimnet.")
#: Plain (non-module) globals that torch.save(model) writes for ordinary models and that are safe to allow.
_SAFE_PLAIN = {
    "collections.OrderedDict",
    "torch.Size",
    "torch.nn.parameter.Parameter",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_tensor_v2",
    "builtins.set",
}


@dataclass
class LoadedModel:
    """A model together with where it came from (the spec is recorded in plans and reports)."""

    model: nn.Module
    spec: str
    kind: str  # "torchvision", "timm", "hf", "ultralytics", "factory", "pickle"


def trust_from_env(flag: bool) -> bool:
    """--trust-pickle or SLIMNET_TRUST_PICKLE=1."""
    return flag or os.environ.get("SLIMNET_TRUST_PICKLE", "") not in ("", "0", "false", "False")


def load_input(path: str | None, shape: str | None, spec: str, seed: int = 0) -> Any:
    """The example input: what a file holds (a tensor; a tuple: positional arguments; a dict: keyword arguments;
    a list: one argument that is a list, as torchvision's detection models take; nested as the model needs), or
    a random tensor of a shape."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SlimnetError(f"input file {path} does not exist: give a tensor saved with torch.save")
        try:
            value = torch.load(p, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is the same user error
            raise SlimnetError(
                f"input file {path} could not be read as saved tensors ({type(exc).__name__}): "
                "save a tensor, a tuple of tensors or a dict of tensors with torch.save"
            ) from None
        if _all_tensors(value):
            return value
        inside = f" with {_first_non_tensor(value)} in it" if isinstance(value, (tuple, list, dict)) else ""
        raise SlimnetError(
            f"input file {path} holds a {type(value).__name__}{inside}, not a tensor, tuple, list or dict of "
            "tensors: save e.g. a tensor, (x, mask), [image] (one argument that is a list) or {'input_ids': ...}"
        )
    dims = parse_shape(shape) if shape is not None else default_input_shape(spec)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(dims, generator=gen)


def _all_tensors(value: Any) -> bool:
    """A tensor, or tuples, lists and dicts (nested) of at least one tensor and nothing else."""
    if isinstance(value, torch.Tensor):
        return True
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else None
    return bool(items) and all(_all_tensors(v) for v in items)


def _first_non_tensor(value: Any) -> str:
    if isinstance(value, (tuple, list, dict)):
        items = list(value.values()) if isinstance(value, dict) else list(value)
        if not items:
            return f"an empty {type(value).__name__}"
        return next((_first_non_tensor(v) for v in items if not _all_tensors(v)), "nothing")
    return f"a {type(value).__name__}"


def model_and_input(
    spec: str,
    weights: str | None = None,
    input_file: str | None = None,
    input_shape: str | None = None,
    trust_pickle: bool = False,
) -> tuple[LoadedModel, Any]:
    """MODEL and its example input, as the command line takes them (``--weights``, ``--input``,
    ``--input-shape``, ``--trust-pickle``): the input is checked first, before the model loads; an ``hf:``
    folder without ``--input`` gets token ids or pixels from its config."""
    if parse_spec(spec).kind == "hf" and input_file is None:
        if input_shape is not None:
            raise SlimnetError(
                "--input-shape makes one float tensor; hf: models take a dict: give --input "
                "with e.g. {'input_ids': ..., 'attention_mask': ...} saved with torch.save"
            )
        from .hf import default_input  # lazy: optional dependency (transformers)

        loaded = load_model(spec, weights=weights, trust_pickle=trust_pickle)
        return loaded, default_input(loaded.model)
    example = load_input(input_file, input_shape, spec)  # cheap checks first
    return load_model(spec, weights=weights, trust_pickle=trust_pickle), example


def load_model(
    spec: str, weights: str | None = None, trust_pickle: bool = False, num_classes: int | None = None
) -> LoadedModel:
    """Resolve MODEL into an ``nn.Module`` in eval mode; every failure is a one-line SlimnetError."""
    parsed = parse_spec(spec)
    if parsed.kind == "torchvision":
        model = _torchvision(parsed.target, num_classes)
    elif parsed.kind == "timm":
        model = _timm(parsed.target)
    elif parsed.kind == "hf":
        from .hf import from_pretrained  # lazy: optional dependency (transformers)

        model = from_pretrained(parsed.target)
    elif parsed.kind == "ultralytics":
        model = yolo.load(parsed.target, trust_from_env(trust_pickle))
    elif parsed.kind == "factory":
        model = _factory(parsed.target, parsed.factory)
    elif parsed.kind == "onnx":
        raise not_torch(spec)
    else:
        model = _pickle(parsed.target, trust_from_env(trust_pickle))
    if weights is not None:
        _load_weights(model, weights)
    return LoadedModel(model=model.eval(), spec=spec, kind=parsed.kind)


def _torchvision(name: str, num_classes: int | None) -> nn.Module:
    import torchvision

    names = set(torchvision.models.list_models())
    if name not in names:
        close = sorted(n for n in names if name.split("_")[0] in n)[:5]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise SlimnetError(f"torchvision has no model {name!r}{hint}: see torchvision.models.list_models()")
    kwargs: dict[str, Any] = {"weights": None}
    if "weights_backbone" in inspect.signature(torchvision.models.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None  # detection/segmentation default to ImageNet backbones: nothing downloads
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in ("inception_v3", "googlenet"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    # Seeded, so that the same spec is the same random model: plans re-apply bit for bit, results repeat.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.get_model(name, **kwargs)


def _timm(name: str) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise SlimnetError("timm is not installed: pip install 'slimnet[timm]' to load timm: models") from None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False)
    except RuntimeError as exc:
        raise SlimnetError(f"timm cannot build {name!r}: {exc}") from None


def import_file(path: str, what: str) -> Any:
    """Import a user's ``FILE.py`` (a model factory, a calibration-data factory) as a module; registered under
    its own name so that torch.save(pruned_model) can pickle its classes, and its folder put on sys.path so
    that loading that pickle later finds them again."""
    file = Path(path)
    if not file.is_file():
        raise SlimnetError(f"{what} {path} does not exist")
    module_name = file.stem if file.stem.isidentifier() else "slimnet_user_model"
    if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(file.resolve()):
        module = sys.modules[module_name]
    else:
        loader_spec = importlib.util.spec_from_file_location(module_name, file.resolve())
        if loader_spec is None or loader_spec.loader is None:
            raise SlimnetError(f"{path} cannot be imported as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        sys.path.insert(0, str(file.resolve().parent))
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - the user's file failed to import; say where
            del sys.modules[module_name]
            raise SlimnetError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def _factory(path: str, factory: str) -> nn.Module:
    module = import_file(path, "model file")
    fn = getattr(module, factory, None)
    if fn is None or not callable(fn):
        raise SlimnetError(f"{path} has no callable {factory!r}: give FILE.py:FACTORY where FACTORY returns the model")
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"{path}:{factory}() failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise SlimnetError(f"{path}:{factory}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_torchscript(p: Path) -> bool:
    if not zipfile.is_zipfile(p):
        return False
    try:
        with zipfile.ZipFile(p) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except zipfile.BadZipFile:
        return False


def _safe_module_globals(p: Path) -> list[Any] | None:
    """The classes the checkpoint names, if every one is an nn.Module class from a trusted package."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        names = get_unsafe_globals_in_checkpoint(str(p))
    except Exception:  # noqa: BLE001 - not a torch checkpoint at all: the caller reports that
        return None
    objs: list[Any] = []
    for name in names:
        mod, _, attr = name.rpartition(".")
        if name not in _SAFE_PLAIN and not name.startswith(TRUSTED_PACKAGES):
            return None
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            return None
        if name not in _SAFE_PLAIN and not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
            return None
        objs.append(obj)
    return objs


def _names_code(message: str) -> bool:
    """Whether a weights-only refusal is about a class or function the file names (vs. unreadable bytes)."""
    return any(
        k in message
        for k in (
            "Unsupported global",
            "GLOBAL",
            "Unsupported class",
            "safe_globals",
            "add_safe_globals",
            "REDUCE",
            "not an allowed global",
        )
    )


def _plain_pickle_names_code(p: Path) -> bool:
    """For a plain (non-zip) pickle: does it import or call anything? Parsed, never executed."""
    import pickletools

    if zipfile.is_zipfile(p):
        return False
    try:
        with open(p, "rb") as f:
            return any(
                op.name in ("GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ")
                for op, _, _ in pickletools.genops(f)
            )
    except Exception:  # noqa: BLE001 - unparseable: corrupt, not code
        return False


def _pickle(path: str, trust: bool) -> nn.Module:
    p = check_file(path)
    if _is_torchscript(p):
        raise SlimnetError(
            f"{path} is a TorchScript archive: slimnet prunes eager modules; give the file saved with "
            "torch.save(model) or FILE.py:FACTORY"
        )
    obj: Any
    with warnings.catch_warnings():  # torch.load warns about old pickle protocols: noise before our one line
        warnings.simplefilter("ignore")
        obj = _unpickle(p, path, trust)
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module) and yolo.is_ultralytics(obj["model"]):
        raise SlimnetError(f"{path} is an ultralytics checkpoint: give it as ultralytics:{path}")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SlimnetError(
            f"{path} holds a state_dict, not a model: slimnet needs the architecture too; give FILE.py:FACTORY "
            f"--weights {path}, or save the whole module with torch.save(model)"
        )
    raise SlimnetError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")


def _unpickle(p: Path, path: str, trust: bool) -> Any:
    """torch.load, fully only with trust; otherwise weights-only with trusted module classes allowed."""
    try:
        if trust:
            with _cwd_importable():
                return torch.load(p, weights_only=False, map_location="cpu")
        allowed = _safe_module_globals(p)
        if allowed is not None:
            with torch.serialization.safe_globals(allowed):
                return torch.load(p, weights_only=True, map_location="cpu")
        try:
            return torch.load(p, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as exc:
            if not (_names_code(str(exc)) or _plain_pickle_names_code(p)):
                raise  # corrupt bytes, not a refused class: reported as an unreadable file below
            raise SlimnetError(
                f"{path} needs code to be run to unpickle (classes outside torch, torchvision, timm, transformers "
                "and slimnet): if you trust the file, pass --trust-pickle (or set SLIMNET_TRUST_PICKLE=1)"
            ) from None
    except SlimnetError:
        raise
    except (ModuleNotFoundError, AttributeError) as exc:
        raise SlimnetError(
            f"{path} refers to code that cannot be imported ({exc}): run slimnet from the folder that holds the "
            "model's module, put that folder on PYTHONPATH, or give FILE.py:FACTORY"
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, garbage bytes, wrong protocol...
        raise SlimnetError(
            f"{path} is not a readable torch file ({type(exc).__name__}): it may be truncated or corrupt; "
            "save it again with torch.save(model)"
        ) from None


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current folder on ``sys.path`` while a trusted pickle loads, as ``python -m`` has it (the ``slimnet``
    console script's path starts at its own folder instead). Appended, so it never shadows an installed package;
    taken off again afterwards (what was imported stays imported)."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        yield
        return
    sys.path.append(cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)


def _load_weights(model: nn.Module, weights: str) -> None:
    p = check_file(weights)
    try:
        state = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"--weights {weights} is not a readable state_dict ({type(exc).__name__})") from None
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise SlimnetError(f"--weights {weights} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise SlimnetError(f"--weights {weights} does not fit the model: {detail}") from None
