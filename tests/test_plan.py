"""Plan files that are broken, or that do not fit the model they are applied to: one line, nothing written
(see :mod:`tests.refusals`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .refusals import SHAPE, invoke, watch


@pytest.mark.parametrize(
    "text,phrases,code",
    [
        ("not json at all", ("is not valid JSON",), 2),
        ('{"format": "other/1", "tensors": {}}', ("is not a slimnet.plan/1 plan",), 2),
        (
            '{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1, 99]}}}',
            ("does not fit the model", "index 99"),
            2,
        ),
        ('{"format": "slimnet.plan/1", "tensors": {"nope.weight": {"0": [0]}}}', ("no tensor 'nope.weight'",), 2),
        ('{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [1, 0]}}}', ("ascending",), 2),
        # cuts conv1's weight but not its bias or bn1: refused by the verifier, nothing written
        ('{"format": "slimnet.plan/1", "tensors": {"conv1.weight": {"0": [0, 1]}}}', ("verification failed",), 3),
    ],
    ids=["not-json", "other-format", "index-out-of-range", "unknown-tensor", "unsorted", "inconsistent"],
)
def test_apply_bad_plans(
    tmp_path: Path, out_dir: Path, net: Path, text: str, phrases: tuple[str, ...], code: int
) -> None:
    plan = tmp_path / "p.plan.json"
    plan.write_text(text)
    case = watch(tmp_path, net, plan)
    invoke(
        case,
        ["apply", f"{net}:make", str(plan), "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE],
        phrases=phrases,
        code=code,
    )
