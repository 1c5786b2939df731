"""What a model costs in practice: milliseconds per call on each backend, timed interleaved.

:func:`time_models` times several models *interleaved* (A B A B ...) on each backend, so that slow drift of the
machine (thermal, other processes) hits all of them alike, and reports p50/p90/min in ms. Backends: eager torch
and onnxruntime, on the CPU and on CUDA; onnxruntime runs the file :func:`slimnet.exporting.onnx.export_onnx` writes
(and
checks), or an ``.onnx`` file given as it is (:class:`OnnxFile`, which no torch backend can run). A backend that
cannot run here is skipped with the reason, never silently.

Noise. A busy machine makes single runs swing; the median of interleaved rounds resists that, but not without
limit. After the first ``runs`` rounds, :func:`timed_rounds` looks for signs of noise: a wide spread (p90 more
than 1.5x p50), the first and second half of the rounds disagreeing by more than 5%, or a caller's own check
(``bench``: a speedup above 105% of the MAC ratio, which pruning cannot earn). Any of them, and it runs more blocks
of rounds until each model's median moves by less than 2% over a block, or the time ``budget`` is spent; the
result says what it saw, how many rounds it ran, and whether the medians settled.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .._tensors import batch_input, call, eval_mode
from ..errors import SlimnetError
from ..exporting.onnx import export_onnx, ort_feed, ort_session
from ..settings import BACKENDS, check_counts
from ..stages import Stages

#: p90 / p50 above this: the timings spread widely (a busy machine).
SPREAD_LIMIT = 1.5
#: The medians of the first and the second half of the rounds differ by more than this: the machine drifted.
HALVES_LIMIT = 0.05
#: A median that moves by less than this over one more block of rounds has settled.
SETTLE = 0.02
#: At most this many times ``runs`` rounds in all, however much budget is left.
MAX_BLOCKS = 10


@dataclass(frozen=True)
class OnnxFile:
    """An ``.onnx`` file to time as it is, on onnxruntime (the torch backends cannot run it)."""

    path: Path

    def input_names(self) -> list[str]:
        import onnx  # lazy: only an .onnx model needs its graph read here

        graph = onnx.load(str(self.path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        return [i.name for i in graph.input if i.name not in inits]


#: What :func:`time_models` times: a torch module or an ONNX file.
Timed = Union[nn.Module, OnnxFile]
#: ``judge({label: median ms})`` -> why these medians look wrong, or None.
Judge = Callable[[dict[str, float]], "str | None"]


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


@dataclass
class _Workspace:
    """Where one :func:`time_models` call exports its ONNX files, and what it exported already (each model is
    exported once, whether ort-cpu, ort-cuda or both time it)."""

    folder: Path
    threads: int
    exported: dict[int, list[str]]  # model index -> the exported file's input names


def _ort(model: Timed, example: Any, inputs: Any, ws: _Workspace, index: int, cuda: bool) -> Callable[[], float]:
    if isinstance(model, OnnxFile):
        path, names = model.path, model.input_names()
    else:
        path = ws.folder / f"model{index}.onnx"
        if index not in ws.exported:
            ws.exported[index] = export_onnx(model, example, path)["inputs"]
        names = ws.exported[index]
    session = ort_session(path, "CUDAExecutionProvider" if cuda else "CPUExecutionProvider", ws.threads)
    if isinstance(inputs, dict):  # by name: an ONNX file's inputs need not come in the dict's order
        wanted = {i.name for i in session.get_inputs()}
        feed = {k: v.detach().cpu().numpy() for k, v in inputs.items() if k in wanted}
    else:
        feed = ort_feed(session, names, inputs)
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


def _runner(backend: str, model: Timed, example: Any, inputs: Any, ws: _Workspace, index: int) -> Callable[[], float]:
    if backend == "torch-cpu":
        return _torch_cpu(model, inputs)  # type: ignore[arg-type]  # an OnnxFile never gets here (_prepare)
    if backend == "torch-cuda":
        return _torch_cuda(model, inputs)  # type: ignore[arg-type]
    return _ort(model, example, inputs, ws, index, cuda=backend == "ort-cuda")


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

    def grow(self, more: int) -> None:
        """Extra rounds: the bar's end moves out."""
        if self.progress is not None and self.task is not None:
            total = next(t.total for t in self.progress.tasks if t.id == self.task) or 0
            self.progress.update(self.task, total=total + more)

    def advance(self) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)


def interleaved(
    steps: Sequence[Callable[[], float]], warmup: int, runs: int, bar: ProgressBar | None = None
) -> list[list[float]]:
    """Warm up, then time: each round runs every model once, in turn (A B A B ...)."""
    times: list[list[float]] = [[] for _ in steps]
    for r in range(warmup + runs):
        for i, step in enumerate(steps):
            ms = step()
            if r >= warmup:
                times[i].append(ms)
            if bar is not None:
                bar.advance()
    return times


def noise(labels: Sequence[str], times: Sequence[Sequence[float]], judge: Judge | None = None) -> list[str]:
    """What in these timings looks like noise (empty: nothing): a wide p90/p50 spread, halves of the rounds that
    disagree, or the caller's ``judge`` on the medians."""
    found = []
    for label, t in zip(labels, times):
        p50, p90 = np.percentile(t, 50), np.percentile(t, 90)
        if p50 > 0 and p90 / p50 > SPREAD_LIMIT:
            found.append(f"{label}: p90 is {p90 / p50:.1f}x p50")
        half = len(t) // 2
        if half >= 2:
            first, second = float(np.median(t[:half])), float(np.median(t[half:]))
            if first > 0 and abs(second / first - 1) > HALVES_LIMIT:
                found.append(f"{label}: the two halves of the rounds differ by {abs(second / first - 1):.0%}")
    if judge is not None:
        verdict = judge({label: float(np.median(t)) for label, t in zip(labels, times)})
        if verdict:
            found.append(verdict)
    return found


def timed_rounds(
    steps: Sequence[Callable[[], float]],
    labels: Sequence[str],
    warmup: int,
    runs: int,
    budget: float = 0.0,
    judge: Judge | None = None,
    bar: ProgressBar | None = None,
) -> tuple[list[list[float]], dict[str, Any]]:
    """``runs`` interleaved rounds; then, where :func:`noise` finds any, more blocks of ``runs`` rounds until
    every median moves by less than :data:`SETTLE` over a block, ``budget`` seconds are spent, or
    :data:`MAX_BLOCKS` blocks are run. Returns the times per model and ``{"rounds", "noisy": [what was seen
    after the first block], "settled", "still": [what is still seen at the end], "p90_over_p50": {label: x}}``."""
    times = interleaved(steps, warmup, runs, bar)
    seen = noise(labels, times, judge)
    settled = not seen
    start = time.perf_counter()
    while not settled and time.perf_counter() - start < budget and len(times[0]) < MAX_BLOCKS * runs:
        before = [float(np.median(t)) for t in times]
        if bar is not None:
            bar.grow(runs * len(steps))
        for t, more in zip(times, interleaved(steps, 0, runs, bar)):
            t.extend(more)
        settled = all(b > 0 and abs(float(np.median(t)) / b - 1) <= SETTLE for t, b in zip(times, before))
    spread = {label: float(np.percentile(t, 90) / max(np.percentile(t, 50), 1e-12)) for label, t in zip(labels, times)}
    info = {
        "rounds": len(times[0]),
        "noisy": seen,
        "settled": settled,
        "still": noise(labels, times, judge) if seen else [],
        "p90_over_p50": spread,
    }
    return times, info


def time_models(
    models: Sequence[tuple[str, Timed]],
    example_input: Any,
    backends: Sequence[str] = BACKENDS,
    batch_size: int | None = 1,
    warmup: int = 10,
    runs: int = 50,
    threads: int | None = None,
    progress: bool = True,
    budget: float = 0.0,
    judge: Judge | None = None,
    stages: Stages | None = None,
) -> dict[str, Any]:
    """Time every model on every backend, interleaved. Returns ``{"latency_ms": {label: {backend: {"p50",
    "p90", "min", "runs", "warmup"}}}, "skipped": {backend: reason}, "not_timed": {label: {backend: reason}},
    "noise": {backend: what timed_rounds saw}, "backends", "batch_size", "threads", "warmup", "runs"}``; a
    backend that cannot run here (no GPU, no provider, export failed) is in ``skipped``; an ONNX file on a torch
    backend is in ``not_timed``. ``budget``: seconds per backend for extra rounds when the timings are noisy
    (:func:`timed_rounds`; 0: none). ``stages``: ``export`` and ``time <backend>`` are timed and reported there
    (then without the progress bar of ``progress``)."""
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise SlimnetError(f"model labels must be unique, got {labels}")
    check_counts(batch_size=batch_size, warmup=warmup, runs=runs)  # threads: None or 0 mean torch's default
    for backend in backends:
        unavailable(backend)  # unknown names fail now, not after minutes of timing the others
    threads = threads or torch.get_num_threads()
    inputs = batch_input(example_input, batch_size)
    stages = stages or Stages()
    result: dict[str, Any] = {"latency_ms": {label: {} for label in labels}, "skipped": {}, "not_timed": {}}
    result["noise"] = {}
    modules = [m for _, m in models if isinstance(m, nn.Module)]
    with (
        ProgressBar(progress and stages.listener is None) as bar,
        tempfile.TemporaryDirectory(prefix="slimnet-bench-") as folder,
        _torch_threads(threads),
        eval_mode(*modules),
    ):
        ws = _Workspace(Path(folder), threads, {})
        for backend in backends:
            with stages("export" if backend.startswith("ort") else f"time {backend}"):
                steps = unavailable(backend) or _prepare(backend, models, example_input, inputs, ws, result)
            if isinstance(steps, str):
                result["skipped"][backend] = steps
                continue
            timed = list(steps)
            bar.start(f"{backend}: {len(timed)} model(s) x {warmup}+{runs}", (warmup + runs) * len(timed))
            with stages(f"time {backend}"):
                times, info = timed_rounds(list(steps.values()), timed, warmup, runs, budget, judge, bar)
            for label, t in zip(timed, times):
                result["latency_ms"][label][backend] = summarize(t, warmup)
            result["noise"][backend] = info
            del steps  # free sessions / device copies before the next backend
    result.update(backends=list(backends), batch_size=batch_size, threads=threads, warmup=warmup, runs=runs)
    return result


def _prepare(
    backend: str,
    models: Sequence[tuple[str, Timed]],
    example: Any,
    inputs: Any,
    ws: _Workspace,
    result: dict[str, Any],
) -> dict[str, Callable[[], float]] | str:
    """One timing step per model that this backend can run (an ONNX file is noted under ``not_timed`` on a
    torch backend), or the reason the backend cannot time them (e.g. an export failed)."""
    steps = {}
    for i, (label, model) in enumerate(models):
        if isinstance(model, OnnxFile) and backend.startswith("torch"):
            result["not_timed"].setdefault(label, {})[backend] = "an ONNX file runs on onnxruntime only"
            continue
        try:
            steps[label] = _runner(backend, model, example, inputs, ws, i)
        except SlimnetError as exc:
            return f"{label}: {exc}"
    return steps or "ONNX files run on onnxruntime only"
