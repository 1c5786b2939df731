"""Targets: the uniform share that reaches a fraction of the MACs or parameters, found on the cost model, and
the cut that results verified like any other."""

from __future__ import annotations

import pytest
import torch

from slimnet import api
from slimnet._tensors import count_params
from slimnet.allocate import keep_count, uniform_counts
from slimnet.errors import SlimnetError
from slimnet.load import load_model
from slimnet.measure import count_macs


@pytest.fixture(scope="module")
def resnet18():
    model = load_model("torchvision:resnet18").model
    x = torch.randn(1, 3, 64, 64)
    return model, x, api.graph(model, x)


@pytest.mark.parametrize("kind", ["macs", "params"])
def test_a_target_lands_within_one_percent_and_the_cut_is_verified(resnet18, kind):
    model, x, analysis = resnet18
    res = api.shrink(model, x, analysis=analysis, round_to=1, **{f"target_{kind}": 0.5})
    target = res.report["target"]
    assert target["kind"] == kind and target["wanted"] == 0.5 and target["within_tolerance"]
    assert abs(target["reached"] - 0.5) <= 0.01
    assert res.verification.passed
    before, after = (
        (count_macs(model, x)["macs"], count_macs(res.model, x)["macs"])
        if kind == "macs"
        else (count_params(model), count_params(res.model))
    )
    assert after / before == pytest.approx(target["reached"], abs=1e-6)  # what the cut model really has
    assert res.plan["target"] == target and res.plan["ratio"] == target["ratio"]


def test_rounding_says_when_it_cannot_land_within_one_percent(resnet18):
    model, x, analysis = resnet18
    res = api.shrink(model, x, analysis=analysis, round_to=64, target_macs=0.5, measure=False)
    target = res.report["target"]
    assert target["within_tolerance"] == (abs(target["reached"] - 0.5) <= 0.01)
    if not target["within_tolerance"]:
        assert "--round-to 64" in target["note"]


def test_a_target_below_what_the_model_allows_names_the_smallest_reachable_value(resnet18):
    model, x, analysis = resnet18
    with pytest.raises(SlimnetError, match=r"cannot be reached: the smallest this model allows is 0\.\d+"):
        api.shrink(model, x, analysis=analysis, target_macs=0.01)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, float("nan")])
def test_targets_out_of_range_are_refused(resnet18, bad):
    model, x, analysis = resnet18
    with pytest.raises(SlimnetError, match="out of range"):
        api.shrink(model, x, analysis=analysis, target_macs=bad)
    with pytest.raises(SlimnetError, match="one target"):
        api.shrink(model, x, analysis=analysis, target_macs=0.5, target_params=0.5)


def test_uniform_counts_follow_keep_count(resnet18):
    _, _, analysis = resnet18
    groups = [g for g in analysis.groups if g.prunable]
    counts = uniform_counts(groups, 0.3, 8)
    assert counts == {g.id: keep_count(len(g.units), 0.3, 8) for g in groups}
