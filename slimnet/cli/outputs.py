"""Where the commands write, checked before anything loads, and how: the plan first, then the model (a
``torch.save`` file or a ``save_pretrained`` folder) through a temporary file renamed at the end; the plan of a
failed save is taken back, so that an error leaves nothing half-written. No torch until a save.

Replacing, the one policy of every command (:class:`Replacing`):

* a command's own input is never an output (:func:`slimnet.cli.common.check_output` refuses before any work);
* an existing output *file* is replaced, and the command says so in one stderr line (``note: replaced ...``;
  ``--quiet`` silences it), so that re-running a command (the README's quick start) just works and nothing is
  replaced unseen; ``--json`` lists them under ``replaced``;
* a model written over an older one leaves the ONNX file exported from that one (``MODEL.onnx`` beside it, as
  ``slimnet export`` names it) describing a model that is gone: a ``warning:`` line says it is stale (even with
  ``--quiet``), ``--json`` lists it under ``stale``;
* a ``save_pretrained`` folder is never replaced: a non-empty folder is refused (a wrong ``-o`` would otherwise
  delete a folder of the user's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .._util import save_atomic
from ..load.spec import check_model, parse_spec
from ..settings import plan_path_for
from .common import check_output, default_output, tell


@dataclass
class Replacing:
    """The outputs of one command as they were before it ran: :meth:`done` says, after the writes, which
    existing files were replaced and which exports of a replaced model are now stale."""

    outputs: list[Path]
    models: list[Path] = field(default_factory=list)  # outputs that are models: their ONNX sibling goes stale
    existed: list[Path] = field(init=False, default_factory=list)
    since: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.existed = [p for p in self.outputs if p.is_file()]

    def done(self, quiet: bool = False) -> dict[str, list[str]]:
        """Print the note and warnings (stderr, one line each) and return the ``--json`` fields."""
        written = {p.resolve() for p in self.outputs}
        stale = []
        for model in self.models:
            onnx = onnx_beside(model)
            if onnx.resolve() not in written and onnx.is_file() and onnx.stat().st_mtime < self.since:
                stale.append(onnx)
        if self.existed and not quiet:
            names = [str(p) for p in self.existed]
            listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            tell(f"note: replaced the existing {listed}")
        for onnx in stale:
            model = next(m for m in self.models if onnx_beside(m) == onnx)
            tell(
                f"warning: {onnx} was exported from an earlier {model.name} and is now stale: run "
                f"`slimnet export {model}` to refresh it"
            )
        return {"replaced": [str(p) for p in self.existed], "stale": [str(p) for p in stale]}


def onnx_beside(model: Path) -> Path:
    """The ONNX file ``slimnet export MODEL`` writes without ``-o``: ``model-slim.pt`` -> ``model-slim.onnx``
    (a folder ``bert-slim`` -> ``bert-slim.onnx``)."""
    return model.with_name((model.name if model.is_dir() else model.stem) + ".onnx")


def write_outputs(
    result: Any, example: Any, stages: Any, out_path: Path, plan_path: Path, onnx_path: Optional[Path], folder: bool
) -> dict[str, Any]:
    """The ONNX file (``--onnx``), the plan and the model, each in its stage; the report says where they went."""
    report = result.report
    if onnx_path is not None:
        with stages("export"):
            from ..exporting.onnx import export_onnx  # lazy: CLI start-up

            report["onnx"] = export_onnx(result.model, example, onnx_path)
    with stages("write"):
        written = save_pruned(result.model, result.plan, out_path, plan_path, folder)
    report["output"], report["plan"] = str(out_path), str(plan_path)
    if written is not None:  # a save_pretrained folder: standard, or needing remote code (and why)
        report["folder"], report["folder_note"] = written["format"], written["note"]
    return report


def shrink_outputs(
    model: str, output: Optional[str], inputs: list[Optional[str]], onnx: Optional[str]
) -> tuple[Path, Path, Optional[Path], bool]:
    """Where ``shrink`` writes (the model, its plan, the ONNX file; a default beside the input without ``-o``),
    checked before anything loads (none may overwrite the model or one of the ``inputs``: weights, input,
    calibration data, recipe, ratio and sensitivity files, nor another output); and whether the model goes to a
    save_pretrained folder."""
    source = check_model(model).file
    output = output or default_output(model, "-slim" if parse_spec(model).kind == "hf" else "-slim.pt")
    folder = wants_folder(output, model)
    given = [source, *(i or "" for i in inputs)]
    out_path = check_output(output, given, folder=folder)
    plan_path = plan_path_for(out_path)
    check_output(str(plan_path), given)
    onnx_path = check_output(onnx, [*given, output, str(plan_path)]) if onnx else None
    return out_path, plan_path, onnx_path, folder


def wants_folder(output: str, model: str) -> bool:
    """A Hugging Face model written with -o NAME (no .pt/.pth suffix) becomes a save_pretrained folder."""
    return parse_spec(model).kind == "hf" and Path(output).suffix.lower() not in (".pt", ".pth", ".bin")


def save_model_atomic(model: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename."""
    import torch  # lazy: CLI start-up

    save_atomic(path, lambda tmp: torch.save(model, tmp))


def save_pruned(
    model: Any, plan: dict[str, Any], out_path: Path, plan_path: Path, folder: bool
) -> Optional[dict[str, Any]]:
    """The plan, then the model (a file, or a save_pretrained folder); the plan is taken back if that fails.
    A folder is a standard transformers one where it can be (:func:`slimnet.load.hf.save_folder`): returns what
    that wrote (``format``, ``note``), None for a file."""
    from .. import plan as plan_mod  # lazy: CLI start-up

    plan_mod.save(plan, plan_path)
    try:
        if folder:
            from ..load.hf import save_folder  # lazy: CLI start-up

            return save_folder(model, plan, out_path)
        elif type(model).__module__.startswith("ultralytics."):  # ultralytics' checkpoint: YOLO(path) loads it
            from ..load.yolo import checkpoint  # lazy: CLI start-up

            save_model_atomic(checkpoint(model, plan), out_path)
        else:
            save_model_atomic(model, out_path)
    except BaseException:
        plan_path.unlink(missing_ok=True)
        raise
    return None
