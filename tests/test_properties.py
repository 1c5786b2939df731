"""Property: any generated network shrinks at any ratio and criterion to a model that computes exactly what
the masked original computes; groups may be refused (with a reason), but nothing crashes. The data-driven
criteria rank on random calibration batches: their cuts must be just as exact.

Profiles: ``ci`` (default, 30 examples) and ``slow`` (``HYPOTHESIS_PROFILE=slow``, 500 examples; see
``tools/fuzz.py``). Every failure found is kept as a regression case in ``REGRESSIONS``."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimnet.settings import CRITERIA, DATA_CRITERIA

from .helpers import check, randomise
from .randnet import RandomNet

settings.register_profile(
    "ci", max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow",
    max_examples=int(os.environ.get("SLIMNET_FUZZ_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REGRESSIONS: list[tuple[int, float, str, int]] = [
    (23485101, 0.0, "taylor", 1),  # no prunable group
    (1459, 0.0, "taylor", 1),  # a group with no gradient: ranked by l1
]


def _run(seed: int, ratio: float, criterion: str, round_to: int) -> None:
    torch.manual_seed(seed)
    net = randomise(RandomNet(seed), seed)
    data = net.example(batch=12) if criterion in DATA_CRITERIA else None
    res = check(net, net.example(), ratio=ratio, criterion=criterion, round_to=round_to, seed=seed, data=data)
    for s in res.report["skipped"]:
        assert s["reason"], s
    with torch.no_grad():
        assert res.model(net.example(batch=3)).shape[0] == 3


@given(
    seed=st.integers(0, 2**31 - 1),
    ratio=st.floats(0.0, 0.95),
    criterion=st.sampled_from(CRITERIA),
    round_to=st.sampled_from([1, 2, 4, 8]),
)
def test_random_networks_shrink_exactly(seed, ratio, criterion, round_to):
    _run(seed, ratio, criterion, round_to)


@pytest.mark.parametrize(("seed", "ratio", "criterion", "round_to"), REGRESSIONS or [(0, 0.5, "l1", 1)])
def test_regressions(seed, ratio, criterion, round_to):
    _run(seed, ratio, criterion, round_to)
