"""Latency tables: the ONNX variants they time are the pruned models (same outputs), subgraphs keep their interface,
tables are cached and re-measured on request, and a latency target runs end to end. No timing is asserted: how
well targets land is measured by tools/allocation.py (docs/allocation.md)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from slimnet import api
from slimnet.errors import SlimnetError
from slimnet.exporting.onnx import ort_session
from slimnet.measure import lut
from slimnet.measure.lut import onnx_graph, table

from .helpers import randomise


def wide_net() -> nn.Module:
    """Wide enough that cutting a group changes its time, small enough to time in milliseconds."""
    return randomise(
        nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1, groups=64),
            nn.BatchNorm2d(64),
            nn.ReLU6(),
            nn.Conv2d(64, 48, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(48, 10),
        )
    )


def run_onnx(proto, feed) -> np.ndarray:
    return ort_session(proto.SerializeToString(), "CPUExecutionProvider", 1).run(None, feed)[0]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_sliced_exports_compute_what_the_pruned_model_computes(name):
    model, x = randomise(getattr(torchvision.models, name)()), torch.randn(1, 3, 32, 32)
    res = api.shrink(model, x, ratio=0.4, round_to=4, measure=False)
    template = lut.export_template(model, x)
    got = run_onnx(onnx_graph.sliced(template.proto, template.names(res.plan["tensors"])), template.feed)
    with torch.no_grad():
        want = res.model(x).numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-4 * (1 + np.abs(want).max()))


def test_a_groups_subgraph_keeps_its_interface_and_runs_at_every_width():
    model, x = wide_net(), torch.randn(1, 3, 16, 16)
    analysis = api.graph(model, x)
    template = lut.export_template(model, x)
    whole = onnx_graph.shapes(template)
    group = next(g for g in analysis.groups if g.name == "0")  # conv 0 -> bn -> relu -> depthwise -> 1x1 conv
    cut = template.names(lut.single_cut(analysis, group, 16))
    nodes = onnx_graph.touched(template.skeleton, whole, onnx_graph.shapes(template, cut))
    kinds = sorted(template.proto.graph.node[i].op_type for i in nodes)
    assert kinds.count("Conv") == 3 and "Gemm" not in kinds  # the 1x1 conv reads the group; the head does not
    sub = onnx_graph.subgraph(template.proto, nodes, whole)
    feed = onnx_graph.random_feed(sub)
    full, small = run_onnx(sub, feed), run_onnx(onnx_graph.sliced(sub, cut), feed)
    assert full.shape == small.shape == (1, 48, 16, 16)  # same interface at every width
    assert not np.allclose(full, small)


def test_tables_are_cached_per_machine_and_measured_again_on_request(monkeypatch, _latency_cache):
    model, x = wide_net(), torch.randn(1, 3, 16, 16)
    planner = api.Planner(model, x)
    built = planner.latency_table(round_to=8)
    assert not built.cached and built.path is not None and built.path.is_file()
    assert built.path.parent == _latency_cache / "latency"
    saved = json.loads(built.path.read_text())
    assert saved["machine"] == lut.machine() and saved["backend"] == "ort-cpu" and saved["threads"] == 1
    groups = {g.name: g for g in planner.analysis.groups if g.prunable}
    assert set(built.table.groups) == set(groups)
    for name, timing in built.table.groups.items():
        assert timing.widths[0] == len(groups[name].units) and timing.saved_ms[0] == 0.0
        assert all(w % 8 == 0 for w in timing.widths)

    def no_measuring(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(table, "build", no_measuring)
    again = api.Planner(model, x, analysis=planner.analysis).latency_table(round_to=8)
    assert again.cached and again.table == built.table and again.report()["saved_seconds"] >= 0
    with pytest.raises(AssertionError, match="measured again"):
        api.Planner(model, x, analysis=planner.analysis).latency_table(round_to=8, cache=False)
    with pytest.raises(AssertionError, match="measured again"):  # another thread count is another table
        api.Planner(model, x, analysis=planner.analysis).latency_table(round_to=8, threads=2)


def test_a_latency_target_is_measured_after_the_cut_and_verified():
    """The target is taken halfway between the measured table's floor and the whole model (a fixed fraction
    such as 0.7 lies below the floor of some tables on a busy machine: it failed in CI that way)."""
    model, x = wide_net(), torch.randn(1, 3, 16, 16)
    with pytest.raises(SlimnetError, match="cannot be reached: the smallest predicted latency") as unreachable:
        api.shrink(model, x, target_latency=0.01, round_to=8)
    floor = float(re.search(r"allows is ([0-9.]+) of the original", str(unreachable.value)).group(1))
    wanted = round(floor + 0.5 * (1.0 - floor), 4)  # the table is cached: the next shrink predicts the same floor
    res = api.shrink(model, x, target_latency=wanted, round_to=8)
    t = res.report["target"]
    assert res.verification.passed and t["kind"] == "latency" and t["allocation"] == "latency"
    ratio, original = t["measured_ms"] / t["measured_original_ms"], t["measured_original_ms"]
    rounding = 5e-5 * (1 + ratio) / original  # both times are reported rounded to 1e-4 ms; this net runs in ~0.1 ms
    assert t["wanted"] == wanted and t["reached"] == pytest.approx(ratio, rel=1e-3, abs=1.01 * rounding + 1e-6)
    assert 1 <= t["rounds"] <= 3 and t["backend"] == "ort-cpu" and t["threads"] == 1
    assert set(t["table"]) >= {"cached", "path", "build_seconds", "saved_seconds", "method"}
    assert res.plan["target"] == t and res.plan["allocation"] == "latency"
    assert res.report["pruned_groups"] >= 1


@pytest.mark.parametrize("bad", ["fast", "0", "1.5", "-3ms", "0ms"])
def test_bad_latency_targets_are_refused(bad):
    model, x = wide_net(), torch.randn(1, 3, 16, 16)
    with pytest.raises(SlimnetError, match="--target-latency"):
        api.shrink(model, x, target_latency=bad)
    with pytest.raises(SlimnetError, match="unknown --backend tpu"):
        api.shrink(model, x, target_latency=0.5, backend="tpu")


def test_an_absolute_latency_target_is_a_fraction_of_the_original_measured_now(monkeypatch):
    model, x = wide_net(), torch.randn(1, 3, 16, 16)
    timed = []

    def fake_measure(_model, _example, plans, **_timing):  # the original takes 10 ms, every cut 8 ms
        timed.append(len(plans))
        return [10.0] + [8.0] * len(plans)

    monkeypatch.setattr(lut, "measure", fake_measure)
    # 8 ms of 10: a fraction the real latency table (measured, on a possibly busy machine) can always reach
    res = api.shrink(model, x, target_latency="8ms", round_to=8)
    t = res.report["target"]
    assert timed[0] == 0 and t["wanted"] == pytest.approx(0.8) and t["wanted_absolute_ms"] == 8.0
    assert t["measured_ms"] == 8.0 and t["reached"] == pytest.approx(0.8) and t["rounds"] == 1
    assert res.verification.passed
