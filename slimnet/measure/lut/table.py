"""Build, cache and use the latency table of one model on this machine and backend.

For every prunable group and each width :func:`slimnet.allocate.widths_to_time` picks (a handful, multiples of
the rounding step), the model is cut at that group alone and the time saved is measured:

* onnxruntime: the model is exported once (:mod:`.onnx_graph`); for each group the nodes whose shapes the cut
  changes are cut out as a subgraph, its weights sliced per width, and the whole and cut subgraphs are timed
  interleaved, medians of a dozen rounds. Where slicing the file cannot express a cut (a reshape whose shape is a
  constant, as in attention), each width is exported from the cut model instead and the whole model timed.
* torch: each width is cut by the surgeon and the whole model timed, interleaved with the original.

The table is cached as JSON under the user's cache folder (``$SLIMNET_CACHE_DIR``, else
``$XDG_CACHE_HOME/slimnet``, else ``~/.cache/slimnet``), keyed by the machine (host name, CPU, core count,
onnxruntime and torch versions), backend, threads, batch size, input shape, the model's groups and the widths
timed; a later run with the same key reads it instead of measuring (``cache=False`` measures again).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._tensors import batch_input, eval_mode
from ..._util import write_atomic
from ...allocate import GroupTiming, LatencyTable, widths_to_time
from ...allocate.decide import Decision
from ...cut.surgeon import pruned_copy
from ...errors import SlimnetError
from ...groups import Analysis, Group
from ...plan import build_plan
from ..latency import ProgressBar, unavailable
from . import onnx_graph, runners

TABLE_VERSION = 1
WARMUP, RUNS = 2, 11


def cache_dir() -> Path:
    """Where tables are cached (created on first write)."""
    if os.environ.get("SLIMNET_CACHE_DIR"):
        return Path(os.environ["SLIMNET_CACHE_DIR"]) / "latency"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slimnet" / "latency"


def machine() -> str:
    """This machine as the cache sees it: host, CPU model, cores, runtime versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a core dependency
        ort = "-"
    return f"{platform.node()} | {cpu} | {os.cpu_count()} cpus | onnxruntime {ort} | torch {torch.__version__}"


def input_shape(example: Any, batch_size: int | None) -> str:
    """The timed input's shapes, e.g. ``1x3x224x224``."""
    ex = batch_input(example, batch_size)
    tensors = list(ex.values()) if isinstance(ex, dict) else list(ex) if isinstance(ex, (tuple, list)) else [ex]
    return ",".join("x".join(str(s) for s in t.shape) for t in tensors if isinstance(t, torch.Tensor))


@dataclass
class Built:
    """A table, and whether it came from the cache (and how long this call took)."""

    table: LatencyTable
    cached: bool
    path: Path | None
    seconds: float

    def report(self) -> dict[str, Any]:
        saved = max(0.0, self.table.seconds - self.seconds) if self.cached else 0.0
        return {
            "cached": self.cached,
            "path": str(self.path) if self.path else None,
            "build_seconds": round(self.table.seconds, 2),
            "seconds": round(self.seconds, 2),
            "saved_seconds": round(saved, 2),
            "method": self.table.method,
            "groups": len(self.table.groups),
            "machine": self.table.machine,
        }


def table_for(
    model: nn.Module,
    example: Any,
    analysis: Analysis,
    groups: Sequence[Group],
    *,
    backend: str = "ort-cpu",
    threads: int = 1,
    batch_size: int = 1,
    round_to: int = 8,
    max_layer_ratio: float | None = None,
    cache: bool = True,
    progress: bool = False,
    template: Callable[[], onnx_graph.Template] | None = None,
) -> Built:
    """The latency table of ``groups``: read from the cache when this machine measured it before (unless
    ``cache`` is False), else measured now and written to the cache. ``template``: gives the model's export
    for timing when one is needed (a caller that keeps one passes it; otherwise the model is exported here)."""
    why = unavailable(backend)
    if why:
        raise SlimnetError(f"--backend {backend} cannot run here: {why}")
    t0 = time.perf_counter()
    grids = {g.name: widths_to_time(g, round_to, max_layer_ratio) for g in groups}
    shape = input_shape(example, batch_size)
    key = _key(model, analysis, grids, backend, threads, batch_size, shape)
    path = cache_dir() / f"{key}.json"
    if cache and path.is_file():
        try:
            table = LatencyTable.from_json(json.loads(path.read_text()))
            if all(name in table.groups for name in grids):
                return Built(table, True, path, time.perf_counter() - t0)
        except (ValueError, TypeError, KeyError):
            pass  # an unreadable cache entry is measured again
    table = build(model, example, analysis, groups, grids, backend, threads, batch_size, progress, template)
    table.key, table.input_shape = key, shape
    table.seconds = time.perf_counter() - t0
    written: Path | None = path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(table.to_json(), indent=1).encode())
    except OSError:
        written = None  # a read-only cache folder costs the next run a measurement, nothing more
    return Built(table, False, written, table.seconds)


def _key(model: nn.Module, analysis: Analysis, grids: Mapping[str, list[int]], backend: str, threads: int,
         batch_size: int, shape: str) -> str:  # fmt: skip
    parts = {
        "version": TABLE_VERSION,
        "machine": machine(),
        "backend": backend,
        "threads": threads,
        "batch": batch_size,
        "shape": shape,
        "model": type(model).__qualname__,
        "groups": [[g.name, len(g.units), [f"{t}:{d}" for t, d in g.members]] for g in analysis.groups],
        "shapes": sorted((k, list(v)) for k, v in analysis.shapes.items()),
        "grids": sorted((k, v) for k, v in grids.items()),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def single_cut(analysis: Analysis, group: Group, width: int) -> dict[str, dict[str, list[int]]]:
    """The plan tensors that keep the first ``width`` units of ``group`` and everything else."""
    decision = Decision(group=group, keep=list(range(width)))
    return build_plan(analysis, [decision], model_name="", criterion="", ratio=0.0, round_to=1, seed=0)["tensors"]


def build(
    model: nn.Module,
    example: Any,
    analysis: Analysis,
    groups: Sequence[Group],
    grids: Mapping[str, list[int]],
    backend: str,
    threads: int,
    batch_size: int,
    progress: bool,
    template: Callable[[], onnx_graph.Template] | None = None,
) -> LatencyTable:
    """Measure every group's staircase (see the module docstring)."""
    notes: list[str] = []
    timings: dict[str, GroupTiming] = {}
    with eval_mode(model), ProgressBar(progress) as bar:
        bar.start(f"latency table ({backend}, {threads} thread(s))", len(groups) + 1)
        if backend.startswith("ort"):
            template = template() if template else onnx_graph.export_template(model, example, batch_size)
            whole = onnx_graph.shapes(template)
            full = onnx_graph.sliced(template.proto, {}).SerializeToString()
            model_ms = runners.medians([runners.ort_step(full, template.feed, backend, threads)], WARMUP, RUNS, threads)
            method = "onnxruntime: subgraph of the nodes each cut changes, weights sliced in the exported file"
        else:
            inputs = batch_input(example, batch_size)
            model_ms = runners.medians([runners.torch_step(model, inputs, backend, threads)], WARMUP, RUNS, threads)
            method = "torch: the whole model cut by the surgeon"
        bar.advance()
        for g in groups:
            widths = grids[g.name]
            if backend.startswith("ort"):
                try:
                    ms = _onnx_group(template, whole, analysis, g, widths, backend, threads)
                except Exception as exc:  # noqa: BLE001 - onnx/onnxruntime raise anything on a graph they reject
                    notes.append(f"{g.name}: exported per width ({type(exc).__name__} on the sliced file)")
                    ms = _exported_group(model, example, analysis, g, widths, backend, threads, batch_size)
            else:
                ms = _torch_group(model, example, analysis, g, widths, backend, threads, batch_size)
            timings[g.name] = GroupTiming(len(g.units), widths, [round(ms[0] - m, 5) for m in ms], round(ms[0], 5))
            bar.advance()
    return LatencyTable(
        backend,
        threads,
        batch_size,
        "",
        round(model_ms[0], 5),
        timings,
        method=f"{method}; {runners.clock(backend, threads)[0]}, median of {RUNS} interleaved runs",
        machine=machine(),
        notes=notes,
    )


def _onnx_group(template: onnx_graph.Template, whole: onnx_graph.Shapes, analysis: Analysis, group: Group,
                widths: list[int], backend: str, threads: int) -> list[float]:  # fmt: skip
    """Medians (ms) of the group's subgraph at each width (widths[0]: whole)."""
    cuts = [template.names(single_cut(analysis, group, w)) for w in widths]
    nodes = onnx_graph.touched(template.skeleton, whole, onnx_graph.shapes(template, cuts[-1]))
    if not nodes:
        return [0.0] * len(widths)
    sub = onnx_graph.subgraph(template.proto, nodes, whole)
    feed = onnx_graph.random_feed(sub)
    protos = [onnx_graph.sliced(sub, c).SerializeToString() for c in cuts]
    steps = [runners.ort_step(p, feed, backend, threads) for p in protos]
    for step in steps:
        step()  # a cut the file cannot express fails here, before any timing
    return runners.medians(steps, WARMUP, RUNS, threads)


def _exported_group(model: nn.Module, example: Any, analysis: Analysis, group: Group, widths: list[int],
                    backend: str, threads: int, batch_size: int) -> list[float]:  # fmt: skip
    """Medians (ms) of the whole model exported from the surgeon's cut at each width (the slow, general way)."""
    steps = []
    for w in widths:
        cut = pruned_copy(model, {"tensors": single_cut(analysis, group, w)}).eval()
        t = onnx_graph.export_template(cut, example, batch_size)
        steps.append(runners.ort_step(onnx_graph.sliced(t.proto, {}).SerializeToString(), t.feed, backend, threads))
    return runners.medians(steps, WARMUP, RUNS, threads)


def _torch_group(model: nn.Module, example: Any, analysis: Analysis, group: Group, widths: list[int],
                 backend: str, threads: int, batch_size: int) -> list[float]:  # fmt: skip
    inputs = batch_input(example, batch_size)
    cuts = [model] + [pruned_copy(model, {"tensors": single_cut(analysis, group, w)}).eval() for w in widths[1:]]
    return runners.medians([runners.torch_step(m, inputs, backend, threads) for m in cuts], WARMUP, RUNS, threads)


def measure(
    model: nn.Module,
    example: Any,
    plans: Sequence[Mapping[str, Any]],
    *,
    backend: str = "ort-cpu",
    threads: int = 1,
    batch_size: int = 1,
    runs: int = 15,
    template: onnx_graph.Template | None = None,
) -> list[float]:
    """Median latency (ms) of the original and of each plan's cut, interleaved: ``[original, plan 1, ...]``.
    onnxruntime times the exported file with the plan's weights sliced (the graph an export of the pruned model
    gives; see :mod:`.onnx_graph`), torch the surgeon's pruned copies."""
    cuts: list[Callable[[], float]] = []
    if backend.startswith("ort"):
        template = template or onnx_graph.export_template(model, example, batch_size)
        cuts.append(runners.ort_step(onnx_graph.sliced(template.proto, {}).SerializeToString(), template.feed,
                                     backend, threads))  # fmt: skip
        for plan in plans:
            proto = onnx_graph.sliced(template.proto, template.names(plan["tensors"])).SerializeToString()
            cuts.append(runners.ort_step(proto, template.feed, backend, threads))
    else:
        inputs = batch_input(example, batch_size)
        cuts.append(runners.torch_step(model, inputs, backend, threads))
        for plan in plans:
            cuts.append(runners.torch_step(pruned_copy(model, dict(plan)).eval(), inputs, backend, threads))
    return runners.medians(cuts, 3, runs, threads)
