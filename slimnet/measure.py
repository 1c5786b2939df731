"""What a model costs: parameters and MACs in theory (fvcore), milliseconds in practice (latency harness).

MACs. fvcore traces the model with the TorchScript tracer and counts each op with a *handle*; it calls one
multiply-add one "flop", so what it reports is what we call **MACs**, and ``flops = 2 * macs``. Its own
handles cover conv, linear, matmul, einsum, norms and a few resamplers; we add one table, :data:`EXTRA_HANDLES`,
for the ops that it leaves out but that a pruned network still pays for:

* elementwise arithmetic and activations (add, mul, relu, gelu, silu, hardswish, sigmoid, softmax, ...):
  one per output element, the convention fvcore already uses for batch norm and pooling;
* pooling: ``kernel area`` per output element (max/avg), one per input element (adaptive);
* ``scaled_dot_product_attention``: the MACs of ``q @ k^T`` and ``attn @ v`` (softmax and scaling not counted);
* ``_native_multi_head_attention`` (``nn.MultiheadAttention``'s fused inference path): projections, both
  attention products and the softmax;
* reductions (mean, sum) and ``rms_norm``.

Shape-only ops (view, pad, cat, dropout in eval, comparisons, ...) are explicitly free (:data:`FREE_OPS`). Any op
with neither a handle nor a place in that list is reported under ``skipped_ops`` with its count, so a total is
never silently too small.

Latency. :func:`time_models` times several models *interleaved* (A B A B ...) on each backend, so that slow
drift of the machine (thermal, other processes) hits all of them alike, and reports p50/p90/min in ms.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import SlimnetError

Handle = Callable[[list[Any], list[Any]], float]

BACKENDS = ("torch-cpu", "ort-cpu", "torch-cuda", "ort-cuda")
MACS_NOTE = "fvcore counts one multiply-add as one flop: macs is that count and flops = 2 x macs"


# ----------------------------------------------------------------------------------------------- MAC handles
def _shape(value: Any) -> list[int] | None:
    """The static shape of a traced value, or None when it is not a tensor of known shape."""
    try:
        if value.isCompleteTensor():
            return list(value.type().sizes())
    except AttributeError:
        pass
    return None


def _numel(value: Any) -> int:
    shape = _shape(value)
    return math.prod(shape) if shape is not None else 0


def _ivalue(value: Any) -> Any:
    """A traced constant (int, list of ints...), looking through ``prim::ListConstruct``; None if not constant."""
    try:
        node = value.node()
        if node.kind() == "prim::ListConstruct":
            return [_ivalue(v) for v in node.inputs()]
        return value.toIValue()
    except (AttributeError, RuntimeError):
        return None


def per_output(inputs: list[Any], outputs: list[Any]) -> float:
    """One op per output element: elementwise arithmetic and activations."""
    return _numel(outputs[0]) if outputs else 0


def per_input(inputs: list[Any], outputs: list[Any]) -> float:
    """One op per input element: reductions and adaptive pooling (every input element is read once)."""
    return _numel(inputs[0]) if inputs else 0


def pool_window(inputs: list[Any], outputs: list[Any]) -> float:
    """Max/avg pooling: each output element looks at ``prod(kernel_size)`` inputs."""
    kernel = _ivalue(inputs[1]) if len(inputs) > 1 else None
    if isinstance(kernel, int):
        area = kernel ** max(1, len(_shape(outputs[0]) or [0, 0, 0]) - 2)
    elif isinstance(kernel, (list, tuple)) and kernel and all(isinstance(k, int) for k in kernel):
        area = math.prod(kernel)
    else:
        area = 1
    return _numel(outputs[0]) * area


def sdpa(inputs: list[Any], outputs: list[Any]) -> float:
    """scaled_dot_product_attention: ``q @ k^T`` ([.., L, E] x [.., E, S]) + ``attn @ v`` ([.., L, S] x [.., S, Ev])."""
    q, k, v = (_shape(t) for t in inputs[:3])
    if not q or not k or not v:
        return 0
    batch = math.prod(q[:-2])
    length, embed, source, value_dim = q[-2], q[-1], k[-2], v[-1]
    return batch * length * source * (embed + value_dim)


def native_mha(inputs: list[Any], outputs: list[Any]) -> float:
    """``nn.MultiheadAttention``'s fused fast path (eval, no grad): the q/k/v in-projections, ``q @ k^T`` and
    ``attn @ v`` over all heads, the softmax (one per attention weight) and the out-projection.

    Inputs: query [.., L, E], key [.., S, E], value, embed_dim, num_heads, qkv_weight [3E, E], qkv_bias,
    proj_weight [E, E], ...; without this handle a ViT's attention would count as zero MACs.
    """
    q, k, w_qkv, w_out = (_shape(inputs[i]) for i in (0, 1, 5, 7))
    if not q or not k or not w_qkv or not w_out:
        return 0
    batch, length, source, embed_in = math.prod(q[:-2]), q[-2], k[-2], q[-1]
    inner = w_qkv[0] // 3
    heads = _ivalue(inputs[4])
    projections = batch * (length + 2 * source) * inner * embed_in + batch * length * w_out[0] * w_out[1]
    attention = 2 * batch * length * source * inner
    softmax = batch * (heads if isinstance(heads, int) else 1) * length * source
    return projections + attention + softmax


def rms_norm(inputs: list[Any], outputs: list[Any]) -> float:
    """RMSNorm: square, mean, scale (about 3 per element; 4 with a weight), as fvcore counts its other norms."""
    has_weight = len(inputs) > 2 and _shape(inputs[2]) is not None
    return _numel(inputs[0]) * (4 if has_weight else 3)


_ELEMENTWISE = (
    "add",
    "sub",
    "rsub",
    "mul",
    "div",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "neg",
    "abs",
    "reciprocal",
    "where",
    "addcmul",
    "addcdiv",
    "lerp",
    "maximum",
    "minimum",
)
_ACTIVATIONS = (
    "relu",
    "relu6",
    "hardtanh",
    "clamp",
    "clamp_min",
    "clamp_max",
    "gelu",
    "silu",
    "hardswish",
    "hardsigmoid",
    "sigmoid",
    "tanh",
    "elu",
    "selu",
    "celu",
    "leaky_relu",
    "mish",
    "softplus",
    "prelu",
    "erf",
    "softmax",
    "log_softmax",
    "glu",
    "threshold",
)


def _with_inplace(names: Sequence[str], handle: Handle) -> dict[str, Handle]:
    return {f"aten::{n}{suffix}": handle for n in names for suffix in ("", "_")}


#: op name -> handle, for what fvcore does not count by itself (see the module docstring for the conventions).
EXTRA_HANDLES: dict[str, Handle] = {
    **_with_inplace(_ELEMENTWISE, per_output),
    **_with_inplace(_ACTIVATIONS, per_output),
    **{f"aten::{p}_pool{d}d": pool_window for p in ("max", "avg") for d in (1, 2, 3)},
    **{f"aten::adaptive_{p}_pool{d}d": per_input for p in ("max", "avg") for d in (1, 2, 3)},
    "aten::mean": per_input,
    "aten::sum": per_input,
    "aten::scaled_dot_product_attention": sdpa,
    "aten::_native_multi_head_attention": native_mha,
    "aten::rms_norm": rms_norm,
}
#: Ops that move or select data (or are no-ops in eval mode): deliberately zero, not "skipped".
FREE_OPS = (
    "aten::unflatten",
    "aten::pad",
    "aten::fill_",
    "aten::dropout_",
    "aten::feature_dropout",
    "aten::alpha_dropout",
    "aten::ne",
    "aten::lt",
    "aten::le",
    "aten::logical_not",
    "aten::expand_as",
    "aten::repeat",
    "aten::flip",
    "aten::channel_shuffle",
    "aten::pixel_shuffle",
    "aten::pixel_unshuffle",
    "aten::clone",
    "aten::masked_fill_",
    "aten::ones_like",
    "aten::new_ones",
    "aten::movedim",
    "aten::tile",
    "aten::view_as",
    "aten::tensor_split",
    "aten::linspace",
    "aten::meshgrid",
    "prim::device",
    "aten::embedding",
)  # a table lookup: no multiply-adds


# ----------------------------------------------------------------------------------------------- MAC counting
class _Positional(nn.Module):
    """Calls the model with the example's structure (args or kwargs) and returns a flat tuple of tensors, which
    is what the TorchScript tracer under fvcore can digest."""

    def __init__(self, model: nn.Module, keys: Sequence[str] | None) -> None:
        super().__init__()
        self.model = model
        self.keys = list(keys) if keys is not None else None

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(**dict(zip(self.keys, args))) if self.keys is not None else self.model(*args)
        return tuple(flat_tensors(out))


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) output, in order: tensors, tuples, lists, dicts, Hugging Face outputs."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    if hasattr(value, "to_tuple"):
        return flat_tensors(value.to_tuple())
    return []


def as_args(example: Any) -> tuple[tuple[torch.Tensor, ...], list[str] | None]:
    """The example as positional tensors plus the keyword names (for a dict example), or an error."""
    if isinstance(example, torch.Tensor):
        return (example,), None
    if isinstance(example, dict) and all(isinstance(v, torch.Tensor) for v in example.values()):
        return tuple(example.values()), list(example)
    if isinstance(example, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in example):
        return tuple(example), None
    raise SlimnetError(f"the example input is a {type(example).__name__}: give a tensor, a tuple or a dict of tensors")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Measure in eval mode (dropout off, BN on running stats) and give the model back as it came."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)


def count_params(model: nn.Module) -> int:
    """Parameters, each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_input: Any) -> dict[str, Any]:
    """MACs (fvcore's "flops": one multiply-add = 1), FLOPs = 2 x MACs, params, per-op and per-module totals.

    Returns ``{"macs", "flops", "params", "by_op": {op: macs}, "skipped_ops": {op: count}, "per_layer":
    {module: {"macs", "params"}}, "note"}``. ``per_layer`` holds every submodule, its MACs including its
    children's (a module's own ops, e.g. a residual add, are counted in it and not in any child).
    """
    args, keys = as_args(example_input)
    with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore's import and trace warn about deprecated torch.jit APIs
        from fvcore.nn import FlopCountAnalysis

        wrapped = _Positional(model, keys)
        analysis = FlopCountAnalysis(wrapped, args)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        analysis.set_op_handle(**EXTRA_HANDLES).set_op_handle(**dict.fromkeys(FREE_OPS))
        try:
            macs = int(analysis.total())
        except Exception as exc:  # noqa: BLE001 - the tracer under fvcore failed: say so in one line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise SlimnetError(
                f"cannot count the MACs of {type(model).__name__}: the TorchScript trace that "
                f"fvcore uses failed ({type(exc).__name__}: {first})"
            ) from None
        by_module = analysis.by_module()
        skipped = dict(sorted(analysis.unsupported_ops("model").items()))
        by_op = dict(sorted(((k, int(v)) for k, v in analysis.by_operator("model").items()), key=lambda kv: -kv[1]))
    return {
        "macs": macs,
        "flops": 2 * macs,
        "params": count_params(model),
        "by_op": by_op,
        "skipped_ops": skipped,
        "per_layer": _per_layer(model, by_module),
        "note": MACS_NOTE,
    }


def _per_layer(model: nn.Module, by_module: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{submodule name: {"macs", "params"}} for every named submodule, in definition order."""
    out: dict[str, dict[str, int]] = {}
    for name, module in model.named_modules():
        if not name:
            continue
        out[name] = {"macs": int(by_module.get(f"model.{name}", 0)), "params": count_params(module)}
    return out


def own_macs(per_layer: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Each module's MACs minus its direct children's: the ops it runs itself (for leaves, all of them).
    Summed with the root's own ops, these partition the total, which is why ``--per-layer`` shows them."""
    children: dict[str, int] = Counter()
    for name, row in per_layer.items():
        parent = name.rpartition(".")[0]
        if parent in per_layer:
            children[parent] += row["macs"]
    return {name: row["macs"] - children.get(name, 0) for name, row in per_layer.items()}


# ----------------------------------------------------------------------------------------------- latency
def batch_input(example: Any, batch_size: int | None) -> Any:
    """The example repeated along dim 0 to ``batch_size`` rows (same structure: tensor, tuple or dict)."""
    if batch_size is None:
        return example
    if batch_size < 1:
        raise SlimnetError(f"--batch-size {batch_size} must be at least 1")

    def grow(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] == batch_size:
            return t
        reps = -(-batch_size // t.shape[0])
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:batch_size].contiguous()

    if isinstance(example, torch.Tensor):
        return grow(example)
    if isinstance(example, dict):
        return {k: grow(v) for k, v in example.items()}
    return tuple(grow(v) for v in example)


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None when it can."""
    if backend not in BACKENDS:
        raise SlimnetError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if backend.endswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    if backend.startswith("ort"):
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if backend == "ort-cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            hint = " (install onnxruntime-gpu)" if backend == "ort-cuda" else ""
            return f"onnxruntime has no {provider}{hint}"
    return None


def _torch_cpu(model: nn.Module, inputs: Any) -> Callable[[], float]:
    from .trace import call

    def step() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            call(model, inputs)
            return (time.perf_counter() - t0) * 1e3

    return step


def _torch_cuda(model: nn.Module, inputs: Any) -> Callable[[], float]:
    from .trace import call

    torch.backends.cudnn.benchmark = True
    device_model = copy.deepcopy(model).cuda().eval()  # the caller's model stays where it is
    device_inputs = _to_device(inputs, "cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def step() -> float:
        with torch.inference_mode():
            start.record()
            call(device_model, device_inputs)
            end.record()
            end.synchronize()
        return float(start.elapsed_time(end))

    return step


def _to_device(inputs: Any, device: str) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    return tuple(v.to(device) for v in inputs)


def ort_session(path: str | Path, provider: str, threads: int) -> Any:
    """An onnxruntime session pinned to ``threads`` intra-op threads and one inter-op thread.

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
    return ort.InferenceSession(str(path), sess_options=opts, providers=[provider])


def ort_feed(session: Any, names: Sequence[str], inputs: Any) -> dict[str, Any]:
    """Numpy arrays keyed by the session's input names (the exporter may drop inputs the graph never reads)."""
    args, _ = as_args(inputs)
    wanted = {i.name for i in session.get_inputs()}
    return {n: t.detach().cpu().numpy() for n, t in zip(names, args) if n in wanted}


def _ort(
    model: nn.Module, example: Any, inputs: Any, threads: int, folder: str, index: int, cuda: bool
) -> Callable[[], float]:
    from .export import export_onnx

    path = Path(folder) / f"model{index}.onnx"
    info = export_onnx(model, example, path)
    session = ort_session(path, "CUDAExecutionProvider" if cuda else "CPUExecutionProvider", threads)
    feed = ort_feed(session, info["inputs"], inputs)
    if not cuda:

        def step() -> float:
            t0 = time.perf_counter()
            session.run(None, feed)
            return (time.perf_counter() - t0) * 1e3

        return step
    return _ort_cuda_step(session, feed)


def _ort_cuda_step(session: Any, feed: dict[str, Any]) -> Callable[[], float]:
    """Inputs and outputs stay on the GPU (IO binding), so that the time is the model's, not PCIe copies'."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, "cuda")

    def step() -> float:
        t0 = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return (time.perf_counter() - t0) * 1e3

    return step


def _runner(
    backend: str, model: nn.Module, example: Any, inputs: Any, threads: int, folder: str, index: int
) -> Callable[[], float]:
    if backend == "torch-cpu":
        return _torch_cpu(model, inputs)
    if backend == "torch-cuda":
        return _torch_cuda(model, inputs)
    return _ort(model, example, inputs, threads, folder, index, cuda=backend == "ort-cuda")


def summarize(times_ms: Sequence[float], warmup: int) -> dict[str, float | int]:
    """p50/p90/min over the timed runs (warm-up runs are not in ``times_ms``)."""
    import numpy as np

    arr = np.asarray(times_ms, dtype=float)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "min": float(arr.min()),
        "runs": len(arr),
        "warmup": warmup,
    }


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Bar:
    """A rich progress bar on stderr when it is a terminal, silence otherwise (CI logs, --json pipes)."""

    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(stderr=True), transient=True)
        self.task: Any = None

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, description: str, total: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(description, total=total)

    def advance(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)


def _interleaved(steps: Sequence[Callable[[], float]], warmup: int, runs: int, bar: _Bar) -> list[list[float]]:
    """Warm up, then time: each round runs every model once, in turn (A B A B ...)."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + runs):
        for i, step in enumerate(steps):
            ms = step()
            if r >= warmup:
                times[i].append(ms)
            bar.advance()
    return times


def time_models(
    models: Sequence[tuple[str, nn.Module]],
    example_input: Any,
    backends: Sequence[str] = BACKENDS,
    batch_size: int | None = 1,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every model on every backend, interleaved. Returns ``{"latency_ms": {label: {backend: {"p50",
    "p90", "min", "runs", "warmup"}}}, "skipped": {backend: reason}, "backends", "batch_size", "threads",
    "warmup", "runs"}``; a backend that cannot run here (no GPU, no provider, export failed) is in ``skipped``."""
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise SlimnetError(f"model labels must be unique, got {labels}")
    if runs < 1 or warmup < 0:
        raise SlimnetError(f"--runs {runs} must be at least 1 and --warmup {warmup} at least 0")
    for backend in backends:
        unavailable(backend)  # unknown names fail now, not after minutes of timing the others
    threads = threads or torch.get_num_threads()
    inputs = batch_input(example_input, batch_size)
    latency: dict[str, dict[str, Any]] = {label: {} for label in labels}
    skipped: dict[str, str] = {}
    with (
        _Bar(progress) as bar,
        tempfile.TemporaryDirectory(prefix="slimnet-bench-") as folder,
        _torch_threads(threads),
        eval_modes([m for _, m in models]),
    ):
        for backend in backends:
            steps = unavailable(backend) or _prepare(backend, models, example_input, inputs, threads, folder)
            if isinstance(steps, str):
                skipped[backend] = steps
                continue
            bar.start(f"{backend}: {len(models)} model(s) x {warmup}+{runs}", (warmup + runs) * len(models))
            for label, times in zip(labels, _interleaved(steps, warmup, runs, bar)):
                latency[label][backend] = summarize(times, warmup)
            del steps  # free sessions / device copies before the next backend
    return {
        "latency_ms": latency,
        "skipped": skipped,
        "backends": list(backends),
        "batch_size": batch_size,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
    }


def _prepare(
    backend: str, models: Sequence[tuple[str, nn.Module]], example: Any, inputs: Any, threads: int, folder: str
) -> list[Callable[[], float]] | str:
    """One timing step per model, or the reason the backend cannot time them (e.g. an export failed)."""
    steps = []
    for i, (label, model) in enumerate(models):
        try:
            steps.append(_runner(backend, model, example, inputs, threads, folder, i))
        except SlimnetError as exc:
            return f"{label}: {exc}"
    return steps


@contextlib.contextmanager
def eval_modes(models: Sequence[nn.Module]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        yield


# ----------------------------------------------------------------------------------------------- comparison
def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a and b else None


def compare(original: Mapping[str, Any], pruned: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """Speedup of ``pruned`` over ``original`` (entries with ``macs`` and ``latency_ms`` {backend: {"p50"}}).

    ``speedup["theoretical"]`` is the MAC ratio original/pruned; ``speedup[backend]`` the p50 latency ratio;
    ``efficiency[backend]`` = real / theoretical: 1.0 means the backend turned every saved MAC into time.
    """
    theoretical = _ratio(original.get("macs"), pruned.get("macs"))
    speedup: dict[str, float | None] = {"theoretical": theoretical}
    efficiency: dict[str, float | None] = {}
    lat_o, lat_p = original.get("latency_ms") or {}, pruned.get("latency_ms") or {}
    for backend in lat_o:
        if backend not in lat_p:
            continue
        real = _ratio(lat_o[backend]["p50"], lat_p[backend]["p50"])
        speedup[backend] = real
        efficiency[backend] = real / theoretical if real is not None and theoretical else None
    return {"speedup": speedup, "efficiency": efficiency}


# ----------------------------------------------------------------------------------------------- device
def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), or what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def device_info(threads: int | None = None) -> dict[str, Any]:
    """Where the numbers come from: CPU, thread count, GPU, and the versions that shape them."""
    from . import __version__

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "onnx": _version("onnx"),
        "fvcore": _version("fvcore"),
        "slimnet": __version__,
    }
