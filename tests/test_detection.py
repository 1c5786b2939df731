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
from slimnet.verify.verifier import verify

from .helpers import check, kept, mask_plan, randomise, reasons
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
    from slimnet.load.loader import load_model

    model = load_model("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn").model
    res = shrink(model, ([torch.rand(3, 224, 224)],), ratio=0.5)
    assert res.verification.passed and res.report["pruned_groups"] >= 30
    assert res.report["macs"][1] < 0.6 * res.report["macs"][0]


class Masker(nn.Module):
    """A detector's shape in miniature: a per-detection head run on the features of what scored above a
    threshold, called (as torchvision's mask head is) even when nothing did, with an empty batch. ``ids``: the
    head reads detection ids (an embedding) instead of features, so it cannot be run on made-up rows."""

    def __init__(self, threshold: float, ids: bool = False) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.mask_head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.mask_predictor = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 2, 1))
        self.id_head = nn.Sequential(nn.Embedding(4, 16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        self.threshold, self.ids = threshold, ids

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        score = f[:, 0].amax((1, 2))
        if float(score.max()) > 1e9:  # branches on values: the whole forward does not trace
            score = score * 0
        found = score > self.threshold
        if self.ids:
            return score, self.id_head(torch.nonzero(found)[:, 0])
        return score, self.mask_predictor(torch.relu(self.mask_head(f[found])))


def _groups(res: object) -> dict[str, tuple[int, bool]]:
    return {g.name: (len(g.units), g.prunable) for g in res.analysis.groups}  # type: ignore[attr-defined]


def test_a_piece_that_only_got_an_empty_batch_is_analysed_and_verified_on_a_filled_one() -> None:
    """Nothing scores above the threshold, so the mask head gets [0, 16, 8, 8]: no channel can be followed
    through an empty tensor (its convolutions' cuts used to be wrong, caught by the verifier and left whole as
    a bug). It is read on 2 seeded random rows instead: the same groups as when something is detected, cut, and
    verified on those rows, which a wrong mask head cut fails."""
    x = torch.rand(1, 3, 8, 8)
    empty = randomise(Masker(1e6))
    full = copy.deepcopy(empty)
    full.threshold = -1e6  # everything detected: the head gets the backbone's rows
    res, ref = check(empty, x), check(full, x)
    assert _groups(res) == _groups(ref) and res.plan["tensors"] == ref.plan["tensors"]
    assert len(kept(res, "mask_head.0.weight")) == 8 and len(kept(res, "mask_predictor.0.weight")) == 4
    assert kept(res, "mask_head.2.weight") is None  # the piece's output stays whole
    assert not any("failed verification" in why for why in reasons(res).values())
    assert "(mask_head, mask_predictor: nothing detected) is compared on 2 seeded" in res.report["verify_compared"]
    rows = torch.randn(3, 16, 8, 8, dtype=torch.float64)  # the pruned head computes the masked original's
    masked = mask_plan(copy.deepcopy(empty), res.plan).double()
    pruned = copy.deepcopy(res.model).double()
    with torch.no_grad():
        want = masked.mask_predictor(torch.relu(masked.mask_head(rows)))
        got = pruned.mask_predictor(torch.relu(pruned.mask_head(rows)))
    assert float((want - got).abs().max()) < 1e-9 * (1 + float(want.abs().max()))
    broken = copy.deepcopy(res.model)
    with torch.no_grad():
        broken.mask_head[2].weight[0].mul_(1.01)  # a change the empty batch could never show
    result = verify(empty, broken, res.plan, x, pieces=res.plan["pieces"])
    assert not result.passed and result.error.startswith("piece mask_head's (on 2 seeded random rows")


def test_a_piece_that_cannot_run_on_a_filled_batch_is_left_whole_with_the_reason() -> None:
    """The head reads detection ids (an embedding), which random rows cannot stand for: its groups stay whole,
    saying why, instead of being cut wrongly and caught by the verifier."""
    res = check(randomise(Masker(1e6, ids=True)), torch.rand(1, 3, 8, 8))
    why = reasons(res)
    assert why["id_head.1"] == (
        "piece id_head only saw empty inputs (no detections on the example?) and does not run on a filled batch: "
        "its channels cannot be analysed"
    )
    assert not any(k.startswith("id_head") for k in res.plan["tensors"])
    assert len(kept(res, "backbone.0.weight")) == 8
    assert not any("failed verification" in w for w in why.values())


def test_filled_rows_stand_in_only_for_empty_floating_batches() -> None:
    from slimnet._tensors import filled_if_empty, only_empty

    empty = ((torch.zeros(0, 4, 3, dtype=torch.float64),), {"rois": [torch.zeros(0, 5)]})
    assert only_empty(empty) and not only_empty(((torch.zeros(0, 4), torch.zeros(1, 4)), {}))
    assert not only_empty(((torch.zeros(()),), {})) and not only_empty(((), {}))
    (x,), kw = filled_if_empty(empty)
    assert x.shape == (2, 4, 3) and x.dtype == torch.float64 and kw["rois"][0].shape == (2, 5)
    assert float(x.std()) > 0.5 and torch.equal(filled_if_empty(empty)[0][0], x)  # seeded: one input for both
    assert filled_if_empty(((torch.zeros(0, dtype=torch.long),), {})) is None  # ids: random ones mean nothing
    assert filled_if_empty(((torch.zeros(0, 0, 3),), {})) is None


class TopKDetector(nn.Module):
    """Traces whole (no branch on values) but selects its outputs with top-k, as RetinaNet and FCOS do."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 5, 1))
        self.jitter = 0.0  # stands for tie-breaking that differs between two runs

    def forward(self, x):
        out = self.head(torch.relu(self.backbone(x)))
        scores = out[:, 0].flatten(1) + self.jitter
        keep = scores.topk(5).indices
        return scores.gather(1, keep), out[:, 1:].flatten(2).gather(2, keep[:, None].expand(-1, 4, -1))


def test_a_whole_traced_model_that_breaks_ties_is_compared_before_it_does():
    """Its parts' outputs are compared (both models run whole), not the detections that top-k picked: another
    tie-breaking passes, a change inside a part is still caught, and the cut verifies and names what it
    compared."""
    model, x = randomise(TopKDetector()).eval(), torch.randn(1, 3, 8, 8)
    res = check(model, x)
    assert res.analysis.taps == ["backbone", "head"] and res.plan["taps"] == ["backbone", "head"]
    assert "the outputs of backbone, head (both models run whole)" in res.report["verify_compared"]
    assert len(kept(res, "backbone.0.weight")) == 8 and len(kept(res, "head.0.weight")) == 8
    other = copy.deepcopy(model)
    other.jitter = 1e-3
    assert verify(model, other, {"tensors": {}}, x, taps=["backbone", "head"]).passed
    assert not verify(model, other, {"tensors": {}}, x).passed
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.head[2].weight[0].mul_(1.01)
    result = verify(model, broken, {"tensors": {}}, x, taps=["backbone", "head"])
    assert not result.passed and result.error.startswith("head's outputs differ")
