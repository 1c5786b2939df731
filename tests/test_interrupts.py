"""Ctrl-C at any moment: exit 130, one line 'interrupted', nothing written. The in-process cases interrupt saving and
verifying; the others send a real SIGINT to ``python -m slimnet`` in a subprocess, or raise KeyboardInterrupt when
a given module is first imported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from .refusals import SHAPE, check_refused, shrink, watch

ROOT = Path(__file__).resolve().parent.parent


def test_interrupt_while_saving_leaves_nothing(
    tmp_path: Path, out_dir: Path, net: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of writing the model: no half file, no temp file, and the plan written just
    before is taken back."""
    real_save = torch.save

    def save_then_interrupt(obj: object, f: object, *a: object, **kw: object) -> None:
        real_save(obj, f, *a, **kw)  # the temp file is complete on disk: the rename must still not happen
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    case = watch(tmp_path, net)
    line = shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, code=130)
    assert line.startswith("interrupted")


def test_interrupt_while_verifying(tmp_path: Path, out_dir: Path, net: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slimnet import api

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "verify", interrupted)
    case = watch(tmp_path, net)
    line = shrink(case, f"{net}:make", "-o", str(out_dir / "o.pt"), "--input-shape", SHAPE, code=130)
    assert line.startswith("interrupted")


SLOW_FACTORY = textwrap.dedent(
    """
    import os
    import pathlib
    import time

    import torch
    import torchvision


    class Slow(torch.nn.Module):
        # Identity that, the first time slimnet runs or traces it, says so and then stalls for 60 s: the SIGINT is
        # sure to land inside the pipeline however fast the machine (a plain resnet50 once finished first on CI).

        def __init__(self):
            super().__init__()
            self.first = True

        def forward(self, x):
            if self.first:
                self.first = False
                pathlib.Path(os.environ["SLIMNET_TEST_STARTED"]).touch()
                time.sleep(60)
            return x


    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(Slow(), torchvision.models.resnet18(weights=None))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore"  # torch's deprecation chatter is not slimnet's output
    return env


def test_ctrl_c_during_shrink(tmp_path: Path, out_dir: Path, delay: float = 0.5) -> None:
    """Real SIGINT to ``python -m slimnet shrink`` while the pipeline first runs (or traces) the model: exit 130,
    one line 'interrupted', nothing written. The model (from a factory file) signals that moment and then stalls,
    so the signal cannot arrive after the outputs are written, however fast the machine.

    The signal is timed from inside the pipeline, not from process start: the first ~1.5 s of a fresh process are
    imports, where Ctrl-C is a separate (known) problem, see test_ctrl_c_while_torch_imports_numpy."""
    f = tmp_path / "slowfactory.py"
    f.write_text(SLOW_FACTORY)
    started = tmp_path / "started"
    case = watch(out_dir)
    env = _env()
    env["SLIMNET_TEST_STARTED"] = str(started)
    env["PYTHONFAULTHANDLER"] = "1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "slimnet",
            "shrink",
            f"{f}:make",
            "--input-shape",
            "1,3,64,64",
            "-o",
            str(out_dir / "out.pt"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert started.exists(), f"the model never ran: {proc.poll()}"
        time.sleep(delay)
        assert proc.poll() is None, "finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=300)  # a generous cap, not a race
        except subprocess.TimeoutExpired:  # seen once, on a heavily loaded machine: show where the child is
            proc.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread's traceback on stderr
            stdout, stderr = proc.communicate(timeout=60)
            pytest.fail(f"still running 300 s after SIGINT; its threads:\n{stderr[-4000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    check_refused(case, proc.returncode, stdout, stderr, "interrupted", code=130)
    assert not (out_dir / "out.pt").exists() and not (out_dir / "out.plan.json").exists()


_HOOK = textwrap.dedent(
    """
    import runpy
    import sys


    class CtrlC:
        '''Raise KeyboardInterrupt when MODULE is first imported: Ctrl-C arriving exactly at that moment.'''

        def find_spec(self, name, path=None, target=None):
            if name == {module!r}:
                sys.meta_path.remove(self)
                raise KeyboardInterrupt
            return None


    sys.meta_path.insert(0, CtrlC())
    sys.argv = ["slimnet"] + {argv!r}
    runpy.run_module("slimnet", run_name="__main__")
    """
)


def _ctrl_c_at_import(tmp_path: Path, module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "ctrl_c.py"
    script.write_text(_HOOK.format(module=module, argv=argv))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=180
    )


@pytest.mark.xfail(
    strict=True,
    reason="the CLI imports torch lazily inside guarded(); torch._C swallows a "
    "KeyboardInterrupt raised while it imports numpy, so the run goes on, writes the output and "
    "exits 0 (with a real SIGINT ~1.0-1.5 s after start; other timings give 'internal error' exit 1 "
    "or a C++ abort)",
)
def test_ctrl_c_while_torch_imports_numpy(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(out_dir)
    r = _ctrl_c_at_import(
        tmp_path, "numpy", ["shrink", f"{net}:make", "--input-shape", SHAPE, "-o", str(out_dir / "out.pt")]
    )
    check_refused(case, r.returncode, r.stdout, r.stderr, "interrupted", code=130)


@pytest.mark.xfail(
    strict=True,
    reason="typer's own KeyboardInterrupt handler (Exit(130), no message) catches a "
    "Ctrl-C that arrives before slimnet's command body runs (typer imports pydantic lazily): "
    "exit 130 but nothing on stderr",
)
def test_ctrl_c_before_the_command_runs(tmp_path: Path, out_dir: Path, net: Path) -> None:
    case = watch(out_dir)
    r = _ctrl_c_at_import(
        tmp_path, "typer._adapters", ["shrink", f"{net}:make", "--input-shape", SHAPE, "-o", str(out_dir / "out.pt")]
    )
    check_refused(case, r.returncode, r.stdout, r.stderr, "interrupted", code=130)
