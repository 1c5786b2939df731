"""Fixtures only; the shared helpers live in :mod:`tests.helpers` (and the bad-input harness in
:mod:`tests.refusals`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from .helpers import NET


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _latency_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Latency tables are cached in a folder of the test session, never in the user's cache."""
    folder = tmp_path_factory.getbasetemp() / "slimnet-cache"
    monkeypatch.setenv("SLIMNET_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One thread for torch and onnxruntime: on a busy 2-core machine two OpenMP threads thrash (10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def net(tmp_path: Path) -> Path:
    """The tiny conv net of :data:`tests.helpers.NET` as a model file: use it as ``f"{net}:make"``."""
    f = tmp_path / "tinynet.py"
    f.write_text(NET)
    return f


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def seq_file(tmp_path: Path) -> Path:
    """A whole module saved with torch.save whose classes are all torch's own (loads without --trust-pickle)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3))
    p = tmp_path / "seq.pt"
    torch.save(model, p)
    return p
