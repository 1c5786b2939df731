"""ONNX export: the file exists, passes onnx.checker, matches torch in onnxruntime (also at another batch size),
and nothing is left behind when it does not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimnet.errors import SlimnetError
from slimnet.exporting import onnx as export_mod
from slimnet.exporting.onnx import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TwoInTwoOut(nn.Module):
    """Tuple (or dict) input, tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.a(x) + self.b(y)
        return h, torch.sigmoid(h).sum(-1)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)


class BatchBaked(nn.Module):
    """Reads the batch size as a Python int: the trace freezes it, so the file is wrong at another batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * int(x.shape[0])


def _run(path: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feed)


def _assert_ok(info: dict, path) -> None:
    assert path.is_file() and info["path"] == str(path)
    assert info["checker"] == "ok" and info["max_abs_diff"] <= info["tolerance"]
    assert info["bytes"] == path.stat().st_size > 0
    assert info["exporter"] in ("torchscript", "dynamo") and info["opset"] >= 17
    onnx.checker.check_model(str(path))


def test_small_convnet_parity_and_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    model = ConvNet().eval()
    path = tmp_path / "conv.onnx"
    info = export_onnx(model, torch.randn(1, 3, 16, 16), path)
    _assert_ok(info, path)
    assert info["inputs"] == ["input"] and info["outputs"] == ["output"]
    assert info["checked_batches"] == [1, 3] and info["external_data"] is False
    x = torch.randn(3, 3, 16, 16)  # another batch than the example
    (got,) = _run(str(path), {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert got.shape == (3, 5) and np.abs(got - ref).max() <= 1e-4 * (1 + np.abs(ref).max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv.onnx"]  # no temporary files left


def test_fixed_batch_when_asked(tmp_path):
    path = tmp_path / "fixed.onnx"
    info = export_onnx(ConvNet().eval(), torch.randn(2, 3, 8, 8), path, dynamic_batch=False)
    assert info["checked_batches"] == [2]
    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].shape
    assert shape == [2, 3, 8, 8]


def test_tuple_and_dict_inputs_multiple_outputs(tmp_path):
    torch.manual_seed(0)
    model = TwoInTwoOut().eval()
    x, y = torch.randn(1, 6), torch.randn(1, 3)
    info = export_onnx(model, (x, y), tmp_path / "t.onnx")
    assert info["inputs"] == ["input_0", "input_1"] and info["outputs"] == ["output_0", "output_1"]
    info = export_onnx(model, {"y": y, "x": x}, tmp_path / "d.onnx")
    assert info["inputs"] == ["y", "x"]
    xb, yb = torch.randn(3, 6), torch.randn(3, 3)
    got = _run(str(tmp_path / "d.onnx"), {"x": xb.numpy(), "y": yb.numpy()})
    with torch.no_grad():
        ref = model(xb, yb)
    for g, r in zip(got, ref):
        assert np.allclose(g, r.numpy(), atol=1e-5)


def test_transformer_encoder(tmp_path):
    torch.manual_seed(0)
    info = export_onnx(Encoder().eval(), torch.randn(1, 7, 32), tmp_path / "enc.onnx")
    _assert_ok(info, tmp_path / "enc.onnx")
    assert info["checked_batches"] == [1, 3]


def lively(model: nn.Module) -> nn.Module:
    """Small random weights and non-trivial BN statistics: torchvision's own init shrinks mobilenet_v2's outputs
    to ~1e-9, where any tolerance passes and the parity check would prove nothing."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=gen) + 0.5
                    if "running_var" in name
                    else torch.randn(t.shape, generator=gen) * 0.05
                )
    return model.eval()


def _zoo_model(name: str) -> nn.Module:
    if name == "vit":  # torchvision's VisionTransformer (nn.MultiheadAttention), small enough for CI
        from torchvision.models.vision_transformer import VisionTransformer

        torch.manual_seed(0)
        return VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    from slimnet.load.loader import load_model

    return load_model(f"torchvision:{name}").model


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "vit"])
def test_torchvision_models_pruned_export_with_parity(tmp_path, name):
    """Pruned torchvision models (depthwise convs, residual adds, pruned attention heads) export and match."""
    from slimnet.api import shrink

    model = lively(_zoo_model(name))
    x = torch.randn(1, 3, 64, 64)
    res = shrink(model, x, ratio=0.5, round_to=1, measure=False)
    if name == "vit":  # the export below is of the smaller model: heads 4 -> 2 (of 16 dims), MLP 128 -> 64
        block = res.model.encoder.layers[0]
        assert type(block.self_attention).__name__ == "SlimMultiheadAttention"
        assert block.self_attention.num_heads == 2 and block.self_attention.in_proj_weight.shape == (96, 64)
        assert block.mlp[0].out_features == 64
    else:
        assert res.report["params"][1] < 0.7 * res.report["params"][0]
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(res.model, x, path)
    _assert_ok(info, path)
    x3 = torch.randn(3, 3, 64, 64)
    (got,) = _run(str(path), {"input": x3.numpy()})
    with torch.no_grad():
        ref = res.model(x3).numpy()
    assert np.abs(ref).max() > 0.05  # outputs big enough for the comparison to mean something
    assert got.shape == (3, 1000) and np.abs(got - ref).max() <= 1e-4 * (1 + np.abs(ref).max())


def test_mismatch_raises_and_leaves_nothing(tmp_path):
    path = tmp_path / "bad.onnx"
    with pytest.raises(SlimnetError, match=r"disagrees with torch at batch 3: max abs diff"):
        export_onnx(BatchBaked(), torch.randn(1, 4), path)
    assert list(tmp_path.iterdir()) == []
    # the same model at a fixed batch is exact
    assert export_onnx(BatchBaked(), torch.randn(1, 4), path, dynamic_batch=False)["max_abs_diff"] == 0.0


def test_external_data_above_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "EXTERNAL_DATA_BYTES", 0)
    path = tmp_path / "big.onnx"
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()  # tensors over 1 KB go out
    info = export_onnx(model, torch.randn(1, 64), path)
    data = tmp_path / "big.onnx.data"
    assert info["external_data"] is True and data.is_file()
    assert info["bytes"] == path.stat().st_size + data.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    (got,) = _run(str(path), {"input": np.ones((2, 64), np.float32)})
    with torch.no_grad():
        assert np.allclose(got, model(torch.ones(2, 64)).numpy(), atol=1e-5)


def test_dynamo_fallback_keeps_a_dynamic_batch(tmp_path, monkeypatch):
    """When the TorchScript exporter fails (or is gone), dynamo writes the file, from a batch-2 example so that
    the batch axis stays dynamic."""

    def gone(*_args, **_kwargs):
        raise RuntimeError("TorchScript exporter removed")

    monkeypatch.setattr(export_mod, "_export_torchscript", gone)
    torch.manual_seed(0)
    info = export_onnx(TwoInTwoOut().eval(), (torch.randn(1, 6), torch.randn(1, 3)), tmp_path / "dyn.onnx")
    assert info["exporter"] == "dynamo" and info["opset"] >= 18 and info["checked_batches"] == [1, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dyn.onnx"]


def test_both_exporters_failing_is_one_error(tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("nope")

    monkeypatch.setattr(export_mod, "_export_torchscript", broken)
    monkeypatch.setattr(export_mod, "_export_dynamo", broken)
    with pytest.raises(SlimnetError, match=r"ONNX export failed \(torchscript: RuntimeError: nope; dynamo"):
        export_onnx(ConvNet().eval(), torch.randn(1, 3, 8, 8), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_simplify_keeps_parity(tmp_path):
    info = export_onnx(ConvNet().eval(), torch.randn(1, 3, 8, 8), tmp_path / "s.onnx", simplify=True)
    assert info["simplified"] is True and info["max_abs_diff"] <= info["tolerance"]


def test_user_errors(tmp_path):
    with pytest.raises(SlimnetError, match="does not exist"):
        export_onnx(ConvNet().eval(), torch.randn(1, 3, 8, 8), tmp_path / "no" / "x.onnx")
    with pytest.raises(SlimnetError, match="rejects the example input"):
        export_onnx(ConvNet().eval(), torch.randn(1, 5, 8, 8), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_pruned_model_exports(tmp_path):
    api = pytest.importorskip("slimnet.api")
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    res = api.shrink(ConvNet().eval(), x, ratio=0.5, round_to=1, measure=False)
    assert res.model.conv.out_channels == 4
    info = export_onnx(res.model, x, tmp_path / "p.onnx")
    assert info["max_abs_diff"] <= info["tolerance"] and info["checked_batches"] == [1, 3]
