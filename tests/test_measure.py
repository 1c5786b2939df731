"""MACs against hand-computed formulas, skipped ops reported, the latency harness's shape (never its timings),
and :func:`slimnet.api.bench` (``slimnet bench`` end to end is in test_cli_bench.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimnet._tensors import batch_input
from slimnet.cost.macs import compare, count_macs, device_info, own_macs
from slimnet.errors import SlimnetError
from slimnet.measure import latency
from slimnet.measure.latency import time_models


def conv_net(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(width * 8 * 8, 10)
    ).eval()


def conv_net_macs(width: int = 8, batch: int = 1) -> int:
    """On a [batch, 3, 16, 16] input."""
    conv = batch * width * 16 * 16 * (3 * 3 * 3)  # one MAC per output element per kernel tap
    relu = batch * width * 16 * 16  # one op per element
    pool = batch * width * 8 * 8 * (2 * 2)  # each output looks at a 2x2 window
    fc = batch * (width * 8 * 8) * 10
    return conv + relu + pool + fc


class LinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(20, 30)
        self.fc2 = nn.Linear(30, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x))) * 2


class Attention(nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v)


class Cumsum(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.fc(x), dim=1)


class Kwargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * scale


def test_conv_net_macs_by_formula():
    model = conv_net()
    cost = count_macs(model, torch.randn(1, 3, 16, 16))
    assert cost["macs"] == conv_net_macs() == 64512
    assert cost["flops"] == 2 * cost["macs"]
    assert cost["params"] == (8 * 27 + 8) + (512 * 10 + 10)
    assert cost["skipped_ops"] == {}
    assert cost["by_op"] == {"conv": 55296, "linear": 5120, "relu": 2048, "max_pool2d": 2048}
    assert cost["per_layer"]["0"] == {"macs": 55296, "params": 8 * 27 + 8}
    assert cost["per_layer"]["2"]["macs"] == 2048 and cost["per_layer"]["4"]["macs"] == 5120
    assert sum(own_macs(cost["per_layer"]).values()) == cost["macs"]
    assert "one multiply-add as one flop" in cost["note"]
    assert count_macs(model, torch.randn(3, 3, 16, 16))["macs"] == conv_net_macs(batch=3)


def test_linear_net_macs_by_formula_and_mode_restored():
    model = LinearNet().train()
    cost = count_macs(model, torch.randn(4, 20))
    fc1, gelu, fc2, mul = 4 * 20 * 30, 4 * 30, 4 * 30 * 5, 4 * 5
    assert cost["macs"] == fc1 + gelu + fc2 + mul
    assert cost["per_layer"] == {"fc1": {"macs": fc1, "params": 630}, "fc2": {"macs": fc2, "params": 155}}
    assert model.training  # measured in eval mode, given back in train mode


def test_attention_macs_and_tuple_input():
    q, k, v = torch.randn(2, 4, 10, 8), torch.randn(2, 4, 12, 8), torch.randn(2, 4, 12, 6)
    cost = count_macs(Attention(), (q, k, v))
    # q @ k^T, then attn @ v, and the scaling and the softmax (one each per attention weight, as the fused
    # nn.MultiheadAttention path and the explicit ops count them)
    assert cost["macs"] == 2 * 4 * 10 * 12 * 8 + 2 * 4 * 10 * 12 * 6 + 2 * 4 * 10 * 12 * 2
    assert cost["skipped_ops"] == {}


class SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_multihead_attention_fast_path_is_counted():
    """nn.MultiheadAttention in eval/no-grad runs one fused op; it once counted as zero (ViT-B/16: 11.3 of
    17.6 GMACs), which made every pruned ViT look twice as efficient as it was."""
    b, n, e, h = 2, 10, 64, 4
    cost = count_macs(SelfAttention(), torch.randn(b, n, e))
    projections = b * n * 3 * e * e + b * n * e * e
    attention = 2 * b * n * n * e  # q @ k^T and attn @ v over all heads
    # + the scaling and the softmax, one each per attention weight (as the explicit path computes them)
    assert cost["macs"] == projections + attention + 2 * b * h * n * n
    assert cost["skipped_ops"] == {}


def test_dict_input():
    cost = count_macs(Kwargs(), {"x": torch.randn(2, 4), "scale": torch.randn(2, 3)})
    assert cost["macs"] == 2 * 4 * 3 + 2 * 3 and cost["per_layer"]["fc"]["macs"] == 24


def test_op_without_handle_is_listed_not_silently_zero():
    cost = count_macs(Cumsum(), torch.randn(2, 6))
    assert cost["skipped_ops"] == {"aten::cumsum": 1}
    assert cost["macs"] == 2 * 6 * 6  # what has a handle is still counted


def test_failures_are_one_error():
    class Broken(nn.Module):
        def forward(self, _x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(SlimnetError, match="cannot count the MACs of Broken.*boom"):
        count_macs(Broken(), torch.randn(1, 2))
    with pytest.raises(SlimnetError, match="give a tensor, a tuple or a dict of tensors"):
        count_macs(LinearNet(), [1, 2])


def test_batch_input_repeats_rows():
    x = torch.arange(6.0).reshape(2, 3)
    y = batch_input(x, 5)
    assert y.shape == (5, 3) and torch.equal(y[2], x[0]) and torch.equal(y[4], x[0])
    assert batch_input(x, 2) is x
    d = batch_input({"a": x, "n": torch.tensor(3)}, 3)
    assert d["a"].shape == (3, 3) and d["n"].dim() == 0
    with pytest.raises(SlimnetError):
        batch_input(x, 0)


def test_interleaved_order():
    calls: list[str] = []

    def step(name: str):
        return lambda: calls.append(name) or 1.0

    times = latency.interleaved([step("a"), step("b")], warmup=1, runs=2, bar=latency.ProgressBar(False))
    assert calls == ["a", "b"] * 3 and times == [[1.0, 1.0], [1.0, 1.0]]


def test_time_models_fields_not_values():
    torch.manual_seed(0)
    models = [("big", conv_net(8)), ("small", conv_net(4))]
    res = time_models(models, torch.randn(1, 3, 16, 16), runs=5, warmup=1, threads=1, progress=False)
    assert res["runs"] == 5 and res["warmup"] == 1 and res["threads"] == 1 and res["batch_size"] == 1
    assert res["backends"] == list(latency.BACKENDS)
    timed = ["torch-cpu", "ort-cpu"] + (["torch-cuda"] if torch.cuda.is_available() else [])
    for label, _ in models:
        for b in timed:
            s = res["latency_ms"][label][b]
            assert set(s) == {"p50", "p90", "min", "runs", "warmup"} and s["runs"] == 5
            assert isinstance(s["p50"], float) and 0 < s["min"] <= s["p50"] <= s["p90"]
    if not torch.cuda.is_available():
        assert set(res["skipped"]) == {"torch-cuda", "ort-cuda"}
        assert all("CUDA" in why for why in res["skipped"].values())
    assert torch.get_num_threads() >= 1


def test_time_models_batch_and_errors():
    res = time_models(
        [("m", LinearNet())],
        torch.randn(1, 20),
        backends=("torch-cpu",),
        batch_size=4,
        runs=2,
        warmup=0,
        progress=False,
    )
    assert res["latency_ms"]["m"]["torch-cpu"]["runs"] == 2 and res["skipped"] == {}
    with pytest.raises(SlimnetError, match="unknown backend"):
        time_models([("m", LinearNet())], torch.randn(1, 20), backends=("tpu",), runs=1, progress=False)
    with pytest.raises(SlimnetError, match="unique"):
        time_models([("m", LinearNet()), ("m", LinearNet())], torch.randn(1, 20), runs=1, progress=False)


def test_compare_ratios():
    a = {"macs": 400, "latency_ms": {"torch-cpu": {"p50": 10.0}, "ort-cpu": {"p50": 8.0}}}
    b = {"macs": 100, "latency_ms": {"torch-cpu": {"p50": 5.0}, "ort-cpu": {"p50": 4.0}}}
    c = compare(a, b)
    assert c["speedup"] == {"theoretical": 4.0, "torch-cpu": 2.0, "ort-cpu": 2.0}
    assert c["efficiency"] == {"torch-cpu": 0.5, "ort-cpu": 0.5}


def test_device_info():
    info = device_info(3)
    assert info["threads"] == 3 and info["cpu"] and info["torch"] == torch.__version__
    for key in ("gpu", "onnxruntime", "onnx", "fvcore", "slimnet", "cpu_count"):
        assert key in info


def test_shrunk_model_costs_less():
    api = pytest.importorskip("slimnet.api")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    model = conv_net(8)
    res = api.shrink(model, x, ratio=0.5, round_to=1)
    assert res.report["macs"] == [count_macs(model, x)["macs"], count_macs(res.model, x)["macs"]]
    assert res.report["macs"][1] == conv_net_macs(width=4)
    timing = time_models([("a", model), ("b", res.model)], x, backends=("torch-cpu",), runs=2, warmup=0, progress=False)
    entries = [{"macs": m, "latency_ms": timing["latency_ms"][k]} for m, k in zip(res.report["macs"], "ab")]
    assert compare(*entries)["speedup"]["theoretical"] == conv_net_macs(8) / conv_net_macs(4)


def test_timed_rounds_adds_rounds_only_when_noisy():
    steady = [lambda: 2.0, lambda: 1.0]
    times, info = latency.timed_rounds(steady, ["a", "b"], warmup=1, runs=4, budget=60)
    assert info["rounds"] == 4 and info["noisy"] == [] and info["settled"] and times == [[2.0] * 4, [1.0] * 4]
    # a judge that objects (bench: a speedup above the MAC ratio) buys more rounds; stable medians then settle
    times, info = latency.timed_rounds(steady, ["a", "b"], 0, 4, budget=60, judge=lambda _medians: "too fast")
    assert info["noisy"] == ["too fast"] and info["rounds"] == 8 and info["settled"] and info["still"] == ["too fast"]
    # a drifting machine: the second half of the rounds is slower; medians keep moving, so the block cap stops it
    clock = iter(range(10**6))
    drifting = [lambda: 1.0 + next(clock)]
    times, info = latency.timed_rounds(drifting, ["a"], 0, 4, budget=60)
    assert "the two halves of the rounds differ" in info["noisy"][0]
    assert not info["settled"] and info["rounds"] == latency.MAX_BLOCKS * 4
    # no budget: noise is reported, no round is added
    clock = iter(range(10**6))
    times, info = latency.timed_rounds(drifting, ["a"], 0, 4, budget=0)
    assert info["rounds"] == 4 and info["noisy"] and not info["settled"]
