"""Fixtures only; the shared helpers live in :mod:`tests.helpers`."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
