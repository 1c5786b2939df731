"""What a model costs in practice: milliseconds per call on each backend, timed interleaved.

:func:`time_models` times several models *interleaved* (A B A B ...) on each backend, so that slow drift of the
machine (thermal, other processes) hits all of them alike, and reports p50/p90/min in ms. Backends: eager torch
and onnxruntime, on the CPU and on CUDA; onnxruntime runs the file :func:`slimnet.export.export_onnx` writes (and
checks). A backend that cannot run here is skipped with the reason, never silently.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._tensors import batch_input, call, eval_mode
from .errors import SlimnetError
from .export import export_onnx, ort_feed, ort_session
from .settings import BACKENDS, check_counts


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
    def step() -> float:
        with torch.inference_mode():
            t0 = time.perf_counter()
            call(model, inputs)
            return (time.perf_counter() - t0) * 1e3

    return step


def _torch_cuda(model: nn.Module, inputs: Any) -> Callable[[], float]:
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


def _ort(
    model: nn.Module, example: Any, inputs: Any, threads: int, folder: str, index: int, cuda: bool
) -> Callable[[], float]:
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


class ProgressBar:
    """A rich progress bar on stderr when it is a terminal, silence otherwise (CI logs, --json pipes)."""

    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.progress = Progress(console=Console(stderr=True), transient=True)
        self.task: Any = None

    def __enter__(self) -> ProgressBar:
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


def interleaved(steps: Sequence[Callable[[], float]], warmup: int, runs: int, bar: ProgressBar) -> list[list[float]]:
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
    check_counts(batch_size=batch_size, warmup=warmup, runs=runs)  # threads: None or 0 mean torch's default
    for backend in backends:
        unavailable(backend)  # unknown names fail now, not after minutes of timing the others
    threads = threads or torch.get_num_threads()
    inputs = batch_input(example_input, batch_size)
    latency: dict[str, dict[str, Any]] = {label: {} for label in labels}
    skipped: dict[str, str] = {}
    with (
        ProgressBar(progress) as bar,
        tempfile.TemporaryDirectory(prefix="slimnet-bench-") as folder,
        _torch_threads(threads),
        eval_mode(*(m for _, m in models)),
    ):
        for backend in backends:
            steps = unavailable(backend) or _prepare(backend, models, example_input, inputs, threads, folder)
            if isinstance(steps, str):
                skipped[backend] = steps
                continue
            bar.start(f"{backend}: {len(models)} model(s) x {warmup}+{runs}", (warmup + runs) * len(models))
            for label, times in zip(labels, interleaved(steps, warmup, runs, bar)):
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
