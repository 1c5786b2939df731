"""ShrinkSettings: checked once when made, frozen, plain data in the plan, one source (the object or keywords)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimnet import Planner, api
from slimnet.cli import app
from slimnet.errors import SlimnetError
from slimnet.settings import ShrinkSettings

from .helpers import NET, cli_runner


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))


X = torch.randn(1, 3, 12, 12)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"ratio": 1.5}, "ratio"),
        ({"criterion": "nope"}, "nope"),
        ({"round_to": 0}, "round"),
        ({"target_macs": 0.5, "target_params": 0.5}, "one"),
        ({"backend": "tpu"}, "tpu"),
    ],
)
def test_bad_settings_refused_when_made(fields: dict, words: str) -> None:
    with pytest.raises(SlimnetError, match=words):
        ShrinkSettings(**fields)


def test_frozen_and_round_trip() -> None:
    s = ShrinkSettings(ratio=0.3, criterion="fpgm", ignore=["0"], use_global=True, ratios={"2": 0.25})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.ratio = 0.9  # type: ignore[misc]
    data = json.loads(json.dumps(s.to_dict()))  # plain data: survives JSON
    assert data["global"] is True and data["ignore"] == ["0"] and "use_global" not in data
    assert ShrinkSettings.from_dict(data) == s
    assert s.replace(ratio=0.4).ratio == 0.4 and s.ratio == 0.3
    with pytest.raises(SlimnetError, match="unknown keys"):
        ShrinkSettings.from_dict({**data, "ratoi": 0.2})
    with pytest.raises(SlimnetError, match="ratio must be"):
        ShrinkSettings.from_dict({"ratio": "half"})


def test_settings_object_equals_keywords_and_is_recorded() -> None:
    s = ShrinkSettings(ratio=0.5, criterion="l2", round_to=4)
    by_object = api.shrink(net(), X, settings=s, measure=False)
    by_words = api.shrink(net(), X, ratio=0.5, criterion="l2", round_to=4, measure=False)
    assert by_object.plan["tensors"] == by_words.plan["tensors"]
    assert len(by_object.plan["tensors"]["0.weight"]["0"]) == 8  # half of 16, a multiple of 4
    assert by_object.plan["settings"] == s.recorded() == by_words.plan["settings"]
    assert ShrinkSettings.from_dict(by_object.plan["settings"]) == s
    y = by_object.model(X)
    assert y.shape == (1, 4, 8, 8)


def test_one_source_only() -> None:
    s = ShrinkSettings(ratio=0.25, round_to=4)
    with pytest.raises(SlimnetError, match="ratio"):
        api.shrink(net(), X, settings=s, ratio=0.75, measure=False)
    planner = Planner(net(), X)
    with pytest.raises(SlimnetError, match="not both"):
        planner.plan(s, ratio=0.5)
    assert len(planner.plan(s).plan["tensors"]["0.weight"]["0"]) == 12  # 16 less a quarter


def test_cli_records_recipe_and_flags_in_plan(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "r.yaml").write_text("criterion: fpgm\nratio: 0.25\nround_to: 2\n")
    out = tmp_path / "slim.pt"
    args = ["shrink", f"{tmp_path / 'net.py'}:make", "--recipe", str(tmp_path / "r.yaml"), "--seed", "3"]
    r = cli_runner().invoke(app, [*args, "--input-shape", "1,3,16,16", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads((tmp_path / "slim.plan.json").read_text())
    assert plan["settings"]["criterion"] == "fpgm" and plan["settings"]["ratio"] == 0.25
    assert plan["settings"]["round_to"] == 2 and plan["settings"]["seed"] == 3
    assert len(plan["tensors"]["conv1.weight"]["0"]) == 12
    (tmp_path / "bad.yaml").write_text("ratio: null\nratoi: 0.3\n")
    r = cli_runner().invoke(app, ["shrink", f"{tmp_path / 'net.py'}:make", "--recipe", str(tmp_path / "bad.yaml")])
    assert r.exit_code == 2 and "unknown keys ['ratoi']" in r.stderr
