"""Ultralytics YOLO through slimnet and back (slimnet/load/yolo.py): built from ultralytics' YAML (nothing downloaded),
shrunk and verified, written in ultralytics' checkpoint format, loaded by ``YOLO("pruned.pt")``, validated on a
tiny synthetic dataset and exported with ultralytics' own tools. Skipped without ultralytics."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from slimnet.load.yolo import OFFLINE_ENV

for _key, _value in OFFLINE_ENV.items():  # before ultralytics is first imported: no network, no pip installs
    os.environ.setdefault(_key, _value)
# ultralytics' settings and fonts go to a folder of this test run, where its font check finds stand-ins (plots are
# off anyway), so it never tries to fetch one
_CONFIG = Path(tempfile.mkdtemp(prefix="slimnet-yolo-"))
atexit.register(shutil.rmtree, _CONFIG, True)
for _font in ("Arial.ttf", "Arial.Unicode.ttf"):
    (_CONFIG / _font).touch()
os.environ["YOLO_CONFIG_DIR"] = str(_CONFIG)
ultralytics = pytest.importorskip("ultralytics", reason="the ultralytics extra is not installed")

from slimnet._tensors import flat_tensors  # noqa: E402
from slimnet.api import shrink  # noqa: E402
from slimnet.load.loader import load_model  # noqa: E402
from slimnet.load.yolo import checkpoint  # noqa: E402
from slimnet.verify.verifier import randomise  # noqa: E402

from .helpers import check  # noqa: E402


def _dataset(root: Path, names: int) -> Path:
    """Two 64x64 images with one object each (a rectangle's polygon), as a YOLO dataset YAML (train = val)."""
    import cv2

    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        (labels / f"{i}.txt").write_text(f"{i} 0.3 0.35 0.7 0.35 0.7 0.65 0.3 0.65\n")  # a polygon: seg and boxes
    yaml = root / "data.yaml"
    yaml.write_text(
        f"path: {root}\ntrain: images\nval: images\nnames:\n" + "".join(f"  {i}: c{i}\n" for i in range(names))
    )
    return yaml


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n-seg.yaml"])
def test_yolo_shrinks_and_round_trips_through_ultralytics(cfg: str, tmp_path: Path) -> None:
    from ultralytics import YOLO

    model = randomise(load_model(f"ultralytics:{cfg}").model)
    x = torch.rand(1, 3, 128, 128)
    res = check(model, x, round_to=8)
    assert res.report["pruned_groups"] >= 40 and res.report["left_whole_after_verify"] == []
    head = res.model.model[-1]
    assert (head.nc, head.reg_max, type(head).__name__) == (80, 16, type(model.model[-1]).__name__)
    assert all(type(a) is type(b) for a, b in zip(model.modules(), res.model.modules()))  # no module replaced
    assert sum(p.numel() for p in res.model.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())

    path = tmp_path / "pruned.pt"
    torch.save(checkpoint(res.model, res.plan), path)
    loaded = YOLO(str(path))
    assert loaded.task == ("segment" if "seg" in cfg else "detect")
    with torch.no_grad():
        want, got = flat_tensors(res.model(x)), flat_tensors(loaded.model.eval()(x))
    assert len(want) == len(got) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(want, got))

    metrics = loaded.val(data=str(_dataset(tmp_path / "data", 80)), imgsz=64, batch=2, device="cpu", workers=0,
                         plots=False, verbose=False, project=str(tmp_path / "runs"))  # fmt: skip
    assert 0.0 <= metrics.box.map50 <= 1.0
    exported = loaded.export(format="torchscript", imgsz=64)
    out = torch.jit.load(exported)(torch.rand(1, 3, 64, 64))
    detections = out[0] if isinstance(out, (tuple, list)) else out
    assert detections.shape[1] == 4 + 80 + (32 if "seg" in cfg else 0)  # boxes, classes (and mask coefficients)
    if "seg" in cfg:
        assert out[1].shape[1] == 32  # the mask prototypes


def test_a_pruned_yolo_reloads_in_slimnet_and_a_plain_load_points_at_the_spec(tmp_path: Path) -> None:
    model = load_model("ultralytics:yolov8n.yaml").model
    res = shrink(model, torch.rand(1, 3, 64, 64), ratio=0.5, measure=False)
    path = tmp_path / "pruned.pt"
    torch.save(checkpoint(res.model, res.plan), path)
    again = load_model(f"ultralytics:{path}").model
    assert [p.shape for p in again.parameters()] == [p.shape for p in res.model.parameters()]
    from slimnet.errors import SlimnetError

    with pytest.raises(SlimnetError, match="ultralytics checkpoint: give it as ultralytics:"):
        load_model(str(path), trust_pickle=True)
