"""``slimnet export`` end to end: the JSON, the text, and one clear line for a bad output or model."""

from __future__ import annotations

import json

import pytest

from slimnet.cli import app

from .helpers import NET
from .refusals import runner

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_export_json_and_errors(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    spec = f"{tmp_path / 'net.py'}:make"
    out = tmp_path / "net.onnx"
    r = runner.invoke(app, ["export", spec, "-o", str(out), "--input-shape", "1,3,12,12", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["path"] == str(out) and out.is_file() and info["checker"] == "ok" and info["model"] == spec
    r = runner.invoke(
        app, ["export", spec, "-o", str(out), "--input-shape", "1,3,12,12", "--opset", "18", "--no-dynamic-batch"]
    )
    assert r.exit_code == 0 and "wrote" in r.stdout and "opset 18" in r.stdout

    # -o in a missing folder, -o equal to the input, a missing model: one line, exit 2, no traceback
    for args in (["-o", str(tmp_path / "none" / "x.onnx")], ["-o", str(tmp_path / "net.py")]):
        r = runner.invoke(app, ["export", spec, *args, "--input-shape", "1,3,12,12"])
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 2 and "does not exist" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    assert (tmp_path / "net.py").read_text() == NET
