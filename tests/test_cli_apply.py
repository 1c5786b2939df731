"""``slimnet apply``: a saved plan re-applied bit for bit, and applied where it cannot be
(see :mod:`tests.refusals`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimnet.cli import app

from .helpers import NARROW_NET
from .refusals import SHAPE, invoke, runner, watch


def test_apply_reproduces_bit_for_bit_and_plans_are_deterministic(tmp_path, net):
    spec = f"{net}:make"
    a, b, c = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    args = ["--ratio", "0.3", "--criterion", "random", "--seed", "7", "--input-shape", "1,3,8,8"]
    assert runner.invoke(app, ["shrink", spec, *args, "-o", str(a)]).exit_code == 0
    assert runner.invoke(app, ["shrink", spec, *args, "-o", str(b)]).exit_code == 0
    assert (tmp_path / "a.plan.json").read_bytes() == (tmp_path / "b.plan.json").read_bytes()
    r = runner.invoke(
        app, ["apply", spec, str(tmp_path / "a.plan.json"), "-o", str(c), "--input-shape", "1,3,8,8", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verified"] is True
    sa = torch.load(a, weights_only=False).state_dict()
    sc = torch.load(c, weights_only=False).state_dict()
    assert sa.keys() == sc.keys() and all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.fixture
def good_plan(tmp_path: Path, net: Path) -> Path:
    """A real plan for the tiny net (shrunk once, outside the folder the apply tests watch)."""
    made = tmp_path / "made"
    made.mkdir()
    r = runner.invoke(
        app, ["shrink", f"{net}:make", "-o", str(made / "slim.pt"), "--input-shape", SHAPE, "--round-to", "4"]
    )
    assert r.exit_code == 0, r.stderr
    return made / "slim.plan.json"


def test_apply_missing_plan_and_output_over_plan(tmp_path: Path, out_dir: Path, net: Path, good_plan: Path) -> None:
    case = watch(tmp_path, net, good_plan)
    invoke(
        case,
        ["apply", f"{net}:make", str(tmp_path / "none.json"), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=("none.json", "does not exist"),
    )
    invoke(
        case,
        ["apply", f"{net}:make", str(good_plan), "-o", str(good_plan), "--input-shape", SHAPE],
        phrases=("is the input",),
    )


def test_apply_plan_to_another_model(tmp_path: Path, out_dir: Path, good_plan: Path) -> None:
    other = tmp_path / "other.py"
    other.write_text(NARROW_NET)
    case = watch(tmp_path, other, good_plan)
    invoke(
        case,
        ["apply", f"{other}:make", str(good_plan), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=("does not fit the model",),
    )
