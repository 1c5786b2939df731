"""Detectors: inputs that are lists of images (``model([image])``, torchvision's convention), forwards that do not
trace whole because of their post-processing, and a verifier that compares what comes before thresholds and
top-k (each traced piece's outputs) instead of the post-processed detections, where ties may break either way."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet.api import shrink
from slimnet.cli import app
from slimnet.verify import verify

from .helpers import check, kept, randomise, reasons
from .refusals import runner

#: A toy detector as a model file: a list of images in, a list of {"boxes", "scores"} out; its post-processing
#: branches on score values, so it only traces piece by piece (backbone, head).
DETECTOR = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
            self.head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 5, 1))
            self.jitter = 0.0  # tests set it to stand for tie-breaking that differs between two runs

        def forward(self, images):
            batch = torch.stack([F.interpolate(i[None], size=(16, 16), mode="bilinear")[0] for i in images])
            out = self.head(torch.relu(self.backbone(batch)))  # [B, 1 score + 4 box channels, 16, 16]
            results = []
            for o in out:
                scores = o[0].flatten() + self.jitter
                keep = torch.topk(scores, 5).indices
                if scores.max() > 1e9:  # branches on values: the whole forward does not trace
                    keep = keep[:1]
                results.append({"boxes": o[1:].flatten(1)[:, keep].t(), "scores": scores[keep]})
            return results


    def make():
        torch.manual_seed(0)
        return Detector()
    """
)


@pytest.fixture
def detector() -> nn.Module:
    ns: dict = {}
    exec(DETECTOR, ns)  # noqa: S102 - the model file's own source, shared with the CLI test
    return randomise(ns["make"]())


def test_a_list_of_images_is_one_argument_and_the_pieces_are_verified(detector: nn.Module) -> None:
    res = check(detector, ([torch.rand(3, 20, 24)],))
    assert "the 2 traced pieces (backbone, head)" in res.report["verify_compared"]
    assert res.report["verify_inputs"] == ["example", "2 images, the first 3x52x56"]
    assert len(kept(res, "backbone.0.weight")) == 8 and len(kept(res, "head.0.weight")) == 8
    why = reasons(res)
    assert why["head.2"].startswith("output of head, traced as a separate piece: read by Detector's code")
    assert why["backbone.2"].startswith("output of backbone")  # the pieces' boundaries stay whole
    assert res.plan["pieces"] == ["backbone", "head"] and res.report["trace_notes"]


def test_piece_outputs_are_compared_where_post_processing_breaks_ties(detector: nn.Module) -> None:
    """The same network with other tie-breaking in its post-processing: piece by piece it is the same model
    (verified); compared on the detections it would be refused."""
    x = ([torch.rand(3, 16, 16)],)
    other = copy.deepcopy(detector)
    other.jitter = 1e-3
    assert verify(detector, other, {"tensors": {}}, x, pieces=["backbone", "head"]).passed
    assert not verify(detector, other, {"tensors": {}}, x).passed
    broken = copy.deepcopy(detector)
    with torch.no_grad():
        broken.head[2].weight[0].mul_(1.01)  # a change inside a piece is still caught
    result = verify(detector, broken, {"tensors": {}}, x, pieces=["backbone", "head"])
    assert not result.passed and result.error.startswith("piece head's outputs differ")


def test_input_files_holding_lists(tmp_path: Path) -> None:
    (tmp_path / "det.py").write_text(DETECTOR)
    spec = f"{tmp_path / 'det.py'}:make"
    for i, value in enumerate(([torch.rand(3, 20, 20)], ([torch.rand(3, 20, 20), torch.rand(3, 24, 16)],))):
        torch.save(value, tmp_path / f"in{i}.pt")
        out = tmp_path / f"slim{i}.pt"
        r = runner.invoke(app, ["shrink", spec, "--input", str(tmp_path / f"in{i}.pt"), "-o", str(out), "--json"])
        assert r.exit_code == 0, r.output
        rep = json.loads(r.stdout)
        assert rep["verified"] and rep["pruned_groups"] == 2 and "traced pieces" in rep["verify_compared"]
        assert rep["macs"][1] < rep["macs"][0] and rep["left_whole_after_verify"] == []
    torch.save([torch.rand(3, 20, 20), 3], tmp_path / "bad.pt")
    r = runner.invoke(app, ["shrink", spec, "--input", str(tmp_path / "bad.pt"), "-o", str(tmp_path / "o.pt")])
    assert r.exit_code == 2 and "holds a list with a int in it, not a tensor, tuple, list or dict" in r.output
    assert not (tmp_path / "o.pt").exists()


def test_a_list_example_that_the_model_rejects_says_it_was_one_list_argument() -> None:
    from slimnet.errors import SlimnetError

    with pytest.raises(SlimnetError, match=r"rejects the example input \[3x8x8\]"):
        shrink(nn.Conv2d(3, 4, 1), [torch.rand(3, 8, 8)])


@pytest.mark.slow
def test_torchvision_detector_with_a_list_of_images() -> None:
    from slimnet.load import load_model

    model = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn").model
    res = shrink(model, ([torch.rand(3, 224, 224)],), ratio=0.5)
    assert res.verification.passed and res.report["pruned_groups"] >= 30
    assert res.report["macs"][1] < 0.6 * res.report["macs"][0]
