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
    assert r.exit_code == 2 and "unknown --backend tpu" in r.stderr
    r = runner.invoke(app, ["bench", big, "--runs", "0"])
    assert r.exit_code == 2 and "--runs" in r.stderr
