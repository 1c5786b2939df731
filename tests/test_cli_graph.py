"""``slimnet graph``: the groups of a built-in model, and models it cannot show (see :mod:`tests.refusals`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimnet.cli import app

from .helpers import UNTRACEABLE
from .refusals import SHAPE, invoke, runner, watch


def test_builtin_model_and_graph():
    r = runner.invoke(app, ["graph", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--json"])
    assert r.exit_code == 0, r.output
    g = json.loads(r.stdout)
    assert len(g["groups"]) == 13 and g["prunable"] == 12
    fc = next(x for x in g["groups"] if x["name"] == "fc")
    assert fc["reason"] == "model output" and fc["units"] == 1000
    r = runner.invoke(app, ["graph", "torchvision:resnet18", "--input-shape", "1,3,32,32"])
    assert r.exit_code == 0 and "13 groups, 12 prunable" in r.stdout


@pytest.mark.parametrize("spec,phrases", [("nope.pt", ("does not exist",)), ("BRANCHY", ("cannot trace",))])
def test_graph_bad_models(tmp_path: Path, spec: str, phrases: tuple[str, ...]) -> None:
    f = tmp_path / "branchy.py"
    f.write_text(UNTRACEABLE)
    spec = f"{f}:make" if spec == "BRANCHY" else str(tmp_path / spec)
    case = watch(tmp_path, f)
    invoke(case, ["graph", spec, "--input-shape", SHAPE], phrases=phrases)
