"""Timing steps for the latency table: one callable per variant that runs it once and returns milliseconds.

The clock: with one thread on the CPU, onnxruntime and torch run the whole model on the calling thread, so its CPU
time (``time.thread_time``) is the latency the model would have on an idle core, and time the thread spends
descheduled by other processes is not counted. On a 2-core machine shared with other jobs (load 6-8 while this
was written) wall-clock medians of a 2 ms subgraph swung 5x between runs while CPU times stayed within a few
percent, so tables at one thread use the CPU clock; with several threads, or on CUDA, only the wall clock
(CUDA events) says what the caller waits for, and medians of interleaved runs are used as in
:mod:`slimnet.measure.latency`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._tensors import call
from ...exporting.onnx import ort_session
from ..latency import ProgressBar, interleaved
from ..latency import _torch_cuda as torch_cuda_step

Step = Callable[[], float]


def clock(backend: str, threads: int, wall: bool = False) -> tuple[str, Callable[[], float]]:
    """The clock's name and function (seconds) for ``backend`` at ``threads`` (``wall``: the wall clock always)."""
    if backend.endswith("cpu") and threads == 1 and not wall:
        return "thread CPU time", time.thread_time
    return "wall clock", time.perf_counter


def ort_step(proto_bytes: bytes, feed: dict[str, np.ndarray], backend: str, threads: int, wall: bool = False) -> Step:
    """Run an ONNX model (serialized) once per call."""
    provider = "CUDAExecutionProvider" if backend == "ort-cuda" else "CPUExecutionProvider"
    import onnxruntime as ort  # lazy: onnxruntime is loaded by the session above anyway

    session = ort_session(proto_bytes, provider, threads)
    wanted = {i.name for i in session.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in wanted}
    now = clock(backend, threads, wall)[1]
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a graph that fails is reported by the caller, in one line

    def step() -> float:
        t0 = now()
        session.run(None, feed, quiet)
        return (now() - t0) * 1e3

    return step


def torch_step(model: nn.Module, inputs: Any, backend: str, threads: int) -> Step:
    """Run a module once per call (CUDA: timed with events on a device copy)."""
    if backend == "torch-cuda":
        return torch_cuda_step(model, inputs)
    now = clock(backend, threads)[1]

    def step() -> float:
        with torch.inference_mode():
            t0 = now()
            call(model, inputs)
            return (now() - t0) * 1e3

    return step


def medians(steps: Sequence[Step], warmup: int, runs: int, threads: int) -> list[float]:
    """Interleaved runs (A B C A B C ...), the median per step."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = interleaved(steps, warmup, runs, ProgressBar(False))
    finally:
        torch.set_num_threads(before)
    return [float(np.median(t)) for t in times]
