"""``slimnet shrink`` with calibration data: data-driven criteria, repairs reported in --json (new fields only),
sensitivity-driven targets, and one-line refusals before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slimnet.cli import app

from .helpers import NET, cli_runner


@pytest.fixture()
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(NET)
    torch.save(torch.randn(48, 3, 32, 32), tmp_path / "data.pt")
    return tmp_path


BASE = ["shrink", "net.py:make", "-o", "p.pt", "--input-shape", "1,3,32,32", "--round-to", "1", "--json"]


@pytest.mark.usefixtures("files")
def test_data_criterion_and_repairs_in_the_report():
    args = [*BASE, "--criterion", "wanda", "--data", "data.pt", "--calib-batch-size", "16", "--calib-batches", "2"]
    res = cli_runner().invoke(app, [*args, "--recalibrate-bn", "--compensate-bias"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["verified"] and report["exact"] and report["criterion"] == "wanda"
    assert report["calibration"] == {"source": "data.pt", "batches": 2, "samples": 32}
    assert list(report["fidelity"]) == ["cut", "compensate_bias", "recalibrate_bn"]
    assert report["repairs"]["compensate_bias"]["into_bias"] == ["conv2", "fc"]
    assert {d["criterion"] for d in report["group_details"] if d["kept"] < d["units"]} == {"wanda"}
    assert Path("p.pt").is_file() and Path("p.plan.json").is_file()


@pytest.mark.usefixtures("files")
def test_sensitivity_file_drives_the_target():
    runner = cli_runner()
    sens = ["sensitivity", "net.py:make", "--input-shape", "1,3,32,32", "--data", "data.pt", "-o", "s.json"]
    assert runner.invoke(app, [*sens, "--round-to", "1", "--ratios", "0.25,0.5,0.75"]).exit_code == 0
    res = runner.invoke(app, [*BASE, "--data", "data.pt", "--ratios-from", "s.json", "--target-macs", "0.5"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["target"]["allocation"] == "sensitivity" and abs(report["target"]["reached"] - 0.5) < 0.1
    assert set(report["target"]["ratios"]) == {"conv1", "conv2"}
    assert json.loads(Path("p.plan.json").read_text())["target"]["ratios"] == report["target"]["ratios"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--criterion", "taylor"], "criterion taylor needs calibration data"),
        (["--recalibrate-bn"], "--recalibrate-bn needs calibration data"),
        (["--data", "nope.pt"], "--data nope.pt does not exist"),
        (["--data", "data.pt", "--calib-batches", "0"], "calib_batches=0 (--calib-batches) must be at least 1"),
        (["--ratios-from", "missing.json", "--target-macs", "0.5"], "sensitivity file missing.json does not exist"),
    ],
    ids=["criterion", "repair", "missing-data", "counts", "missing-sensitivity"],
)
@pytest.mark.usefixtures("files")
def test_refusals_are_one_line_and_write_nothing(extra, message):
    res = cli_runner().invoke(app, [*BASE, *extra])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not Path("p.pt").exists() and not Path("p.plan.json").exists()


def test_data_the_model_rejects(files):
    torch.save(torch.randn(8, 3, 32), files / "flat.pt")
    res = cli_runner().invoke(app, [*BASE, "--data", "flat.pt"])
    assert res.exit_code == 2 and "has shape 8x3x32; the model takes Nx3x32x32" in res.stderr
