"""Export a (pruned) model to ONNX and prove that the file computes what the module computes (``slimnet export``;
:func:`export_onnx` is ``slimnet.export`` at the top level).

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) at opset 17, with the dynamo
exporter (opset 18) only as a fallback when the TorchScript one fails or is gone. Measured on torch 2.14.1 /
onnxruntime 1.32 (2-core CPU), exporting from a batch-1 example with a dynamic batch axis and running the file at
batch 1 and 3: resnet18, mobilenet_v2, efficientnet_b0, regnet_y_400mf, convnext_tiny, vit_b_16, a head-pruned
vit_b_16, swin_t, maxvit_t and an nn.TransformerEncoder.

* TorchScript exported all ten; every file matched torch within 2.4e-7 at both batch sizes; 0.4-20 s each.
* dynamo with ``Dim("batch")`` failed to export swin_t and convnext_tiny, and for vit_b_16 and the encoder it
  *silently* fixed the batch at 1 (the files refused batch 3); with ``Dim.DYNAMIC`` those two files accepted
  batch 3 and then failed inside a Reshape. Only from a batch-2 example did all ten work, and 1.5-10x slower
  (mobilenet_v2 17 s against 3 s, swin_t 113 s against 12 s), which matters for ``slimnet bench``, which
  exports every model it times on onnxruntime.

The TorchScript exporter is deprecated upstream, hence the fallback (from a batch-2 example); the report says
which exporter wrote the file. Either way it is checked (``onnx.checker``) and run in onnxruntime at the example
batch and at the example batch + 2 (what catches a silently fixed batch); one that disagrees is deleted.

Tolerance: ``max|onnx - torch| <= tolerance x (1 + max|torch output|)``, ``tolerance = 1e-4`` by default: float32
kernels reorder sums, so the error grows with the outputs; a wrong graph is off by O(output).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._tensors import PositionalCall, as_args, batch_input, eval_mode, flat_tensors, map_tensors
from .._util import first_line, scratch_dir
from ..errors import SlimnetError

DEFAULT_OPSET = 17
DYNAMO_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
#: Above this many bytes of weights the tensors go to one ``OUT.onnx.data`` file beside the graph (protobuf's
#: 2 GB limit); below it the .onnx file is self-contained.
EXTERNAL_DATA_BYTES = 2**31 - 2**24


def export_onnx(
    model: nn.Module,
    example_input: Any,
    path: str | os.PathLike[str],
    *,
    opset: int | None = None,
    dynamic_batch: bool = True,
    simplify: bool = False,
    tolerance: float | None = None,
    dynamic_hw: bool = False,
) -> dict[str, Any]:
    """Write ``model`` to ``path`` as ONNX, check it, and compare it with torch in onnxruntime (``slimnet export``;
    ``slimnet.export`` at the top level).

    Args:
        model: the model to export (a pruned one or any other; left untouched, run in eval mode).
        example_input: an input it accepts: a tensor, a tuple of tensors (positional arguments) or a dict of
            tensors (keyword arguments; their names become the ONNX input names).
        path: the ``.onnx`` file to write (its folder must exist); weights above 2 GB go to ``PATH.data``.
        opset: the ONNX opset; default 17 (18 if the dynamo fallback writes the file; the result says which).
        dynamic_batch: leave the batch dimension free (checked by running the file at two batch sizes);
            False fixes it to the example's.
        simplify: fold constants and drop dead nodes (onnxscript's optimizer).
        tolerance: the file must match torch within ``tolerance x (1 + max|torch output|)`` (default 1e-4).
        dynamic_hw: also leave height and width free in every N x C x H x W input (checked by running the file
            at twice the example's height and width, where torch must run too).

    Returns:
        ``{"path", "opset", "exporter", "bytes", "max_abs_diff", "tolerance", "inputs", "outputs", "checker",
        "dynamic_batch", "checked_batches", "external_data", "simplified", "input_shapes", "dynamic_hw",
        "checked_sizes"}``: what was written (``input_shapes``: the example's, the size the file was traced at;
        ``checked_sizes``: the H x W it was run at), and how closely onnxruntime's outputs matched torch's.

    Raises:
        SlimnetError: the folder does not exist, the export fails, or the file disagrees with torch; no file is
            left behind.
    """
    out = Path(path)
    if not out.resolve().parent.is_dir():
        raise SlimnetError(f"output folder {out.resolve().parent} does not exist: create it first")
    rel = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    args, keys = as_args(example_input)
    with eval_mode(model):
        wrapped = PositionalCall(model, keys).eval()
        n_outputs = _count_outputs(wrapped, args)
        input_names = list(keys) if keys else _names("input", len(args))
        output_names = _names("output", n_outputs)
        free = _free_dims(wrapped, example_input, input_names, output_names, dynamic_hw)
        with scratch_dir(out) as work:
            tmp = work / out.name
            exporter, used_opset = _export(wrapped, args, tmp, input_names, output_names, opset, dynamic_batch, free)
            external = _consolidate(tmp, out.name, _weight_bytes(model))
            simplified = _simplify(tmp) if simplify and not external else False
            _check(tmp)
            diff, bound, batches = _parity(wrapped, example_input, tmp, input_names, rel, dynamic_batch)
            sizes = [_hw(args)]
            if dynamic_hw:
                d2, b2 = _parity_once(wrapped, _doubled_hw(example_input), tmp, input_names, rel)
                diff, bound = max(diff, d2), max(bound, b2)
                sizes.append(_hw(as_args(_doubled_hw(example_input))[0]))
            _move_into_place(work, out, external)
    return {
        "path": str(out),
        "opset": used_opset,
        "exporter": exporter,
        "bytes": _size(out, external),
        "max_abs_diff": diff,
        "tolerance": bound,
        "inputs": input_names,
        "outputs": output_names,
        "checker": "ok",
        "dynamic_batch": dynamic_batch,
        "checked_batches": batches,
        "external_data": external,
        "simplified": simplified,
        "input_shapes": [list(t.shape) for t in args],
        "dynamic_hw": dynamic_hw,
        "checked_sizes": sizes,
    }


def _images(args: tuple[torch.Tensor, ...]) -> list[bool]:
    """Which inputs are images (floating N x C x H x W): those whose height and width ``dynamic_hw`` frees."""
    return [t.dim() == 4 and t.is_floating_point() for t in args]


def _hw(args: tuple[torch.Tensor, ...]) -> str:
    """The first image input's ``HxW`` ("" without one)."""
    return next((f"{t.shape[2]}x{t.shape[3]}" for t, im in zip(args, _images(args)) if im), "")


def _doubled_hw(example: Any) -> Any:
    """The example with every image input resized (bilinear) to twice its height and width: a size that keeps
    whatever the original was a multiple of (a stride-32 network's 224 -> 448)."""

    def grow(t: torch.Tensor) -> torch.Tensor:
        if t.dim() != 4 or not t.is_floating_point():
            return t
        size = (2 * t.shape[2], 2 * t.shape[3])
        return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)

    return map_tensors(example, grow)


def _free_dims(
    wrapped: nn.Module, example: Any, input_names: list[str], output_names: list[str], hw: bool
) -> dict[str, dict[int, str]]:
    """The ONNX axes left free besides the batch: with ``hw``, each image input's dims 2 and 3, and each output
    dim that changes when torch runs at twice the height and width (a segmentation map's, not a classifier's)."""
    if not hw:
        return {}
    args, _ = as_args(example)
    images = _images(args)
    if not any(images):
        shapes = ", ".join("x".join(map(str, t.shape)) for t in args)
        raise SlimnetError(f"--dynamic-hw frees the height and width of an N x C x H x W input; the input is {shapes}")
    free = {n: {2: "height", 3: "width"} for n, im in zip(input_names, images) if im}
    bigger = _doubled_hw(example)
    try:
        with torch.no_grad():
            small, large = flat_tensors(wrapped(*args)), flat_tensors(wrapped(*as_args(bigger)[0]))
    except Exception as exc:  # noqa: BLE001 - the model's own error at another size
        raise SlimnetError(
            f"--dynamic-hw: the model itself does not run at {_hw(as_args(bigger)[0])} ({type(exc).__name__}: "
            f"{first_line(exc)}): it takes one size; export without --dynamic-hw"
        ) from None
    for name, a, b in zip(output_names, small, large):
        dims = {d: f"{name}_dim{d}" for d in range(1, a.dim()) if a.dim() == b.dim() and a.shape[d] != b.shape[d]}
        if dims:
            free[name] = dims
    return free


def _count_outputs(wrapped: nn.Module, args: tuple[torch.Tensor, ...]) -> int:
    """Run the model once: an example it rejects, or an output without tensors, is the user's to fix."""
    try:
        with torch.no_grad():
            n = len(wrapped(*args))
    except Exception as exc:  # noqa: BLE001 - whatever the forward raised, say it in one line
        first = first_line(exc, "")
        raise SlimnetError(
            f"the model rejects the example input ({type(exc).__name__}: {first}): give the right "
            "--input-shape or --input"
        ) from None
    if n == 0:
        raise SlimnetError("the model returns no tensors: there is nothing to export")
    return n


def _names(stem: str, n: int) -> list[str]:
    """``input`` for one, ``input_0, input_1, ...`` for several."""
    return [stem] if n == 1 else [f"{stem}_{i}" for i in range(n)]


def _weight_bytes(model: nn.Module) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _batch_dims(args: tuple[torch.Tensor, ...], dynamic: bool) -> list[bool]:
    """Which inputs get a dynamic dim 0: those whose dim 0 is the first input's (the batch), when asked."""
    if not dynamic or not args or args[0].dim() == 0:
        return [False] * len(args)
    batch = args[0].shape[0]
    return [t.dim() > 0 and t.shape[0] == batch for t in args]


def _export(
    wrapped: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int | None,
    dynamic: bool,
    free: dict[str, dict[int, str]] | None = None,
) -> tuple[str, int]:
    """TorchScript exporter first, dynamo second; returns (exporter, opset) or raises one SlimnetError. ``free``:
    more free axes by input/output name (:func:`_free_dims`)."""
    errors = []
    for exporter in ("torchscript", "dynamo"):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if exporter == "torchscript":
                    used = opset or DEFAULT_OPSET
                    _export_torchscript(wrapped, args, tmp, input_names, output_names, used, dynamic, free or {})
                else:
                    used = max(opset or DYNAMO_OPSET, DYNAMO_OPSET)
                    _export_dynamo(wrapped, args, tmp, input_names, output_names, used, dynamic, free or {})
            return exporter, _file_opset(tmp, used)
        except Exception as exc:  # noqa: BLE001 - exporters raise anything; we try the next, then report both
            first = first_line(exc, "")
            errors.append(f"{exporter}: {type(exc).__name__}: {first}")
            for leftover in tmp.parent.iterdir():
                leftover.unlink()
    raise SlimnetError(f"ONNX export failed ({'; '.join(errors)})")


def _export_torchscript(
    wrapped: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic: bool,
    free: dict[str, dict[int, str]],
) -> None:
    axes: dict[str, dict[int, str]] = {}
    flags = _batch_dims(args, dynamic)
    for name, flag in zip(input_names, flags):
        if flag:
            axes[name] = {0: "batch"}
    if any(flags):
        with torch.no_grad():
            outs = wrapped(*args)
        batch = args[0].shape[0]
        axes.update({n: {0: "batch"} for n, t in zip(output_names, outs) if t.dim() > 0 and t.shape[0] == batch})
    for name, dims in free.items():
        axes[name] = {**axes.get(name, {}), **dims}
    torch.onnx.export(
        wrapped,
        args,
        str(tmp),
        dynamo=False,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=axes or None,
        do_constant_folding=True,
    )


def _export_dynamo(
    wrapped: nn.Module,
    args: tuple[torch.Tensor, ...],
    tmp: Path,
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic: bool,
    free: dict[str, dict[int, str]],
) -> None:
    """From a batch of at least 2: with batch 1, torch.export specialises the batch of attention models."""
    flags = _batch_dims(args, dynamic)
    shapes = None
    hw = [free.get(n, {}) for n in input_names]
    if any(flags) or any(hw):
        batch = torch.export.Dim("batch")
        shapes = tuple(
            {**({0: batch} if f else {}), **{d: torch.export.Dim.AUTO for d in dims}} or None
            for f, dims in zip(flags, hw)
        )
        if any(flags) and args[0].shape[0] == 1:
            args = tuple(batch_input(t, 2) if f else t for t, f in zip(args, flags))
    # The wrapper's forward(*args) takes one varargs tuple, so its shapes nest one level down.
    program = torch.onnx.export(
        wrapped,
        args,
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=(shapes,) if shapes else None,
        verbose=False,
    )
    program.save(str(tmp), external_data=False)


def _file_opset(path: Path, fallback: int) -> int:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), fallback)


def _consolidate(tmp: Path, final_name: str, weight_bytes: int) -> bool:
    """Self-contained below 2 GB; otherwise one ``final_name.data`` file of tensors beside the graph (the
    exporters would otherwise write one file per tensor). Returns whether external data is used."""
    import onnx

    extra = [p for p in tmp.parent.iterdir() if p != tmp]
    if weight_bytes <= EXTERNAL_DATA_BYTES and not extra:
        return False
    proto = onnx.load(str(tmp), load_external_data=True)
    for p in extra:
        p.unlink()
    onnx.save_model(
        proto,
        str(tmp),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{final_name}.data",
        size_threshold=1024,
    )
    return (tmp.parent / f"{final_name}.data").is_file()  # False when every tensor was small enough to stay inline


def _simplify(tmp: Path) -> bool:
    """Constant folding and dead-node removal with onnxscript's optimizer (the parity check below still runs)."""
    import onnx
    from onnxscript import optimizer

    try:
        proto = optimizer.optimize(onnx.load(str(tmp)))
    except Exception as exc:  # noqa: BLE001 - the optimizer is a nicety; say why it was not applied
        raise SlimnetError(f"--simplify failed ({type(exc).__name__}: {first_line(exc)}): export without it") from None
    onnx.save_model(proto, str(tmp))
    return True


def _check(tmp: Path) -> None:
    """onnx.checker on the path, so that models with external data (over 2 GB) are checked too."""
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError and others
        first = first_line(exc)
        raise SlimnetError(f"onnx.checker rejected the exported file: {first}") from None


def _parity(
    wrapped: nn.Module, example: Any, tmp: Path, input_names: list[str], rel: float, dynamic: bool
) -> tuple[float, float, list[int]]:
    """Run torch and onnxruntime on the example (and on batch+2 when the batch is dynamic); returns (max diff,
    absolute bound, batches checked) or raises naming the difference."""
    args, _ = as_args(example)
    batches = [None]
    if dynamic and any(_batch_dims(args, True)):
        batches.append(args[0].shape[0] + 2)
    try:
        session = ort_session(tmp, "CPUExecutionProvider", torch.get_num_threads())
    except Exception as exc:  # noqa: BLE001
        raise SlimnetError(f"onnxruntime cannot load the exported file: {first_line(exc)}") from None
    worst, bound, checked = 0.0, 0.0, []
    for b in batches:
        inputs = batch_input(example, b)
        diff, scale, batch = _compare_once(wrapped, session, input_names, inputs)
        bound = max(bound, rel * (1.0 + scale))
        worst = max(worst, diff)
        checked.append(batch)
        if diff > rel * (1.0 + scale):
            raise SlimnetError(
                f"the ONNX file disagrees with torch at batch {batch}: max abs diff {diff:.3g} > "
                f"tolerance {rel * (1.0 + scale):.3g}; nothing was written"
            )
    return worst, bound, checked


def _parity_once(wrapped: nn.Module, inputs: Any, tmp: Path, input_names: list[str], rel: float) -> tuple[float, float]:
    """One more run of torch and onnxruntime on ``inputs`` (another height and width); (max diff, bound)."""
    session = ort_session(tmp, "CPUExecutionProvider", torch.get_num_threads())
    diff, scale, _ = _compare_once(wrapped, session, input_names, inputs)
    bound = rel * (1.0 + scale)
    if diff > bound:
        raise SlimnetError(
            f"the ONNX file disagrees with torch at {_hw(as_args(inputs)[0])}: max abs diff {diff:.3g} > "
            f"tolerance {bound:.3g}; nothing was written"
        )
    return diff, bound


def _compare_once(wrapped: nn.Module, session: Any, input_names: list[str], inputs: Any) -> tuple[float, float, int]:
    args, _ = as_args(inputs)
    batch = int(args[0].shape[0]) if args and args[0].dim() else 1
    with torch.no_grad():
        ref = flat_tensors(wrapped(*args))
    try:
        got = session.run(None, ort_feed(session, input_names, inputs))
    except Exception as exc:  # noqa: BLE001 - e.g. a graph that fixed the batch size
        first = first_line(exc)
        raise SlimnetError(
            f"onnxruntime cannot run the exported file at batch {batch} ({first}); if the model "
            "only works at one batch size, export with --no-dynamic-batch"
        ) from None
    diff, scale = 0.0, 0.0
    for r, g in zip(ref, got):
        r64 = r.detach().double()
        g64 = torch.from_numpy(g).double()
        if tuple(r64.shape) != tuple(g64.shape):
            raise SlimnetError(
                f"the ONNX output has shape {tuple(g64.shape)} where torch gives {tuple(r64.shape)} "
                f"at batch {batch}; nothing was written"
            )
        if r64.numel():
            diff = max(diff, _max_diff(r64, g64))
            finite = r64[r64.isfinite()]
            scale = max(scale, float(finite.abs().max()) if finite.numel() else 0.0)
    return diff, scale, batch


def _max_diff(ref: torch.Tensor, got: torch.Tensor) -> float:
    """Largest |difference|, where equal values (inf included) and NaN on both sides agree, and a NaN on one
    side only is an infinite difference (a plain max would let NaN through every comparison)."""
    same = (ref == got) | (ref.isnan() & got.isnan())
    d = (ref - got).abs().masked_fill(same, 0.0).nan_to_num(nan=float("inf"))
    return float(d.max())


def _move_into_place(work: Path, out: Path, external: bool) -> None:
    """Data file first, graph last: a reader never sees a graph whose weights are missing."""
    if external:
        os.replace(work / f"{out.name}.data", out.with_name(f"{out.name}.data"))
    os.replace(work / out.name, out)


def _size(out: Path, external: bool) -> int:
    size = out.stat().st_size
    if external:
        size += out.with_name(f"{out.name}.data").stat().st_size
    return size


def ort_session(path: str | Path | bytes, provider: str, threads: int) -> Any:
    """An onnxruntime session pinned to ``threads`` intra-op threads and one inter-op thread (``path``: a file,
    or the serialized model itself).

    Spinning is off: with several sessions timed in turn, idle threads of one session spinning would steal
    cores from the next one, which would make interleaving unfair."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, sess_options=opts, providers=[provider])


def ort_feed(session: Any, names: Sequence[str], inputs: Any) -> dict[str, Any]:
    """Numpy arrays keyed by the session's input names (the exporter may drop inputs the graph never reads)."""
    args, _ = as_args(inputs)
    wanted = {i.name for i in session.get_inputs()}
    return {n: t.detach().cpu().numpy() for n, t in zip(names, args) if n in wanted}
