"""``slimnet bench`` end to end: the --json contract, the tables, and one clear line for a bad model or flag."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from slimnet.cli import app

from .helpers import NARROW_NET, NET
from .refusals import runner


def _two_nets(tmp_path: Path) -> tuple[str, str]:
    """NET and its narrower variant as FILE.py:FACTORY specs: the baseline and a smaller model."""
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "narrow.py").write_text(NARROW_NET)
    return f"{tmp_path / 'net.py'}:make", f"{tmp_path / 'narrow.py'}:make"


def test_cli_bench_json(tmp_path):
    big, small = _two_nets(tmp_path)
    r = runner.invoke(
        app,
        [
            "bench",
            big,
            small,
            "--input-shape",
            "1,3,12,12",
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--backend",
            "torch-cpu,ort-cpu",
            "--backend",
            "torch-cuda",
            "--per-layer",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [m["path"] for m in rep["models"]] == [big, small]
    for m in rep["models"]:
        assert {"params", "macs", "flops", "skipped_ops", "latency_ms", "per_layer"} <= set(m)
        assert m["flops"] == 2 * m["macs"] and m["skipped_ops"] == {}
        for b in ("torch-cpu", "ort-cpu"):
            assert set(m["latency_ms"][b]) == {"p50", "p90", "min"}
    assert rep["models"][0]["macs"] > rep["models"][1]["macs"]
    assert rep["speedup"]["theoretical"] == rep["models"][0]["macs"] / rep["models"][1]["macs"]
    assert set(rep["speedup"]) >= {"theoretical", "torch-cpu", "ort-cpu"}
    assert set(rep["efficiency"]) >= {"torch-cpu", "ort-cpu"}
    assert rep["device"]["threads"] == 1 and rep["backends"] == ["torch-cpu", "ort-cpu", "torch-cuda"]
    if not torch.cuda.is_available():
        assert set(rep["skipped_backends"]) == {"torch-cuda"}


def test_cli_bench_tables_and_errors(tmp_path):
    big, small = _two_nets(tmp_path)
    r = runner.invoke(
        app,
        [
            "bench",
            big,
            small,
            "--input-shape",
            "1,3,12,12",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--backend",
            "torch-cpu",
            "--per-layer",
        ],
    )
    assert r.exit_code == 0, r.output
    for text in ("theoretical cost", "latency", "speedup over", "MACs per layer"):
        assert text in r.stdout
    r = runner.invoke(app, ["bench", str(tmp_path / "missing.pt")])
    assert r.exit_code == 2 and r.stderr.startswith("error:") and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["bench", big, "--backend", "tpu"])
    assert r.exit_code == 2 and "unknown backend tpu (--backend)" in r.stderr
    r = runner.invoke(app, ["bench", big, "--runs", "0"])
    assert r.exit_code == 2 and "--runs" in r.stderr


def test_bench_times_an_onnx_file_with_or_without_its_torch_twin(tmp_path: Path) -> None:
    """An .onnx file is timed on onnxruntime as it is; its MACs come from its graph, or from its torch twin."""
    big, small = _two_nets(tmp_path)
    r = runner.invoke(app, ["export", small, "-o", str(tmp_path / "narrow.onnx"), "--input-shape", "1,3,12,12"])
    assert r.exit_code == 0, r.stderr
    onnx_file = str(tmp_path / "narrow.onnx")
    common = ["--runs", "3", "--warmup", "1", "--threads", "1", "--backend", "torch-cpu,ort-cpu", "--budget", "0"]
    r = runner.invoke(app, ["bench", big, onnx_file, "--input-shape", "1,3,12,12", *common, "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    base, onnx_entry = rep["models"]
    assert onnx_entry["macs_counter"] == "onnx" and set(onnx_entry["latency_ms"]) == {"ort-cpu"}
    assert onnx_entry["not_timed"] == {"torch-cpu": "an ONNX file runs on onnxruntime only"}
    assert set(onnx_entry["speedup"]) == {"theoretical", "ort-cpu"}
    # the graph's count is fvcore's up to the exporter's fusions (BN folded into the conv: 8x12x12 here)
    r = runner.invoke(app, ["bench", big, small, onnx_file, "--input-shape", "1,3,12,12", *common, "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    twin_macs = rep["models"][1]["macs"]
    assert rep["models"][2]["macs"] == twin_macs and rep["models"][2]["macs_counter"].endswith(f"from {small}")
    assert 0 < twin_macs - onnx_entry["macs"] <= 8 * 12 * 12 * 2
    # an ONNX file first in line: its input comes from its graph; the text says how it was counted and timed
    r = runner.invoke(app, ["bench", onnx_file, *common])
    assert r.exit_code == 0, r.stderr
    assert "counted from the ONNX graph" in r.stdout and "torch-cpu skipped: ONNX files run on onnxruntime only" in (
        r.stdout
    )


def test_bench_says_when_timings_are_noisy(tmp_path: Path, monkeypatch) -> None:
    """A backend whose rounds swing is named, with what was seen and how many rounds ran."""
    from slimnet.measure import latency

    big, small = _two_nets(tmp_path)
    real = latency._torch_cpu

    def jittery(model, inputs):
        step, calls = real(model, inputs), iter(range(10**6))
        return lambda: step() * (4.0 if next(calls) % 3 == 0 else 1.0)  # every third run is 4x slower

    monkeypatch.setattr(latency, "_torch_cpu", jittery)
    args = ["bench", big, small, "--input-shape", "1,3,12,12", "--runs", "6", "--warmup", "0", "--threads", "1"]
    r = runner.invoke(app, [*args, "--backend", "torch-cpu", "--budget", "5", "--json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    noise = rep["noise"]["torch-cpu"]
    assert any("p90 is" in seen for seen in noise["noisy"]) and noise["rounds"] > 6
    assert rep["models"][0]["latency_spread"]["torch-cpu"]["p90_over_p50"] > 1.5
    r = runner.invoke(app, [*args, "--backend", "torch-cpu", "--budget", "0"])
    assert r.exit_code == 0 and "torch-cpu: noisy timings (" in r.stdout and "did not settle" in r.stdout
