"""The one copy of each test helper: shrink a model and check the numbers, not just that something ran; the
tiny network that CLI tests write to disk as FILE.py:FACTORY; a CLI runner."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typer.testing import CliRunner

from slimnet._tensors import call, flat_tensors
from slimnet.api import ShrinkResult, shrink
from slimnet.cut.surgeon import mask_plan
from slimnet.verify import verifier as verify


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics that are not the identity, so that wrong cuts show in outputs."""
    return verify.randomise(model, seed=seed).eval()


def check(model: nn.Module, x: Any, ratio: float = 0.5, **kw: Any) -> ShrinkResult:
    """Shrink, then re-check independently: pruned output equals the masked original, every planned tensor
    is the original sliced by the plan, and the pruned model is smaller."""
    original = copy.deepcopy(model)
    kw.setdefault("round_to", 1)
    res = shrink(model, x, ratio=ratio, measure=False, **kw)
    # the input model is untouched
    for (k, a), (_, b) in zip(original.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), f"shrink modified the input model's {k}"
    assert res.verification.passed, res.verification.error
    masked = mask_plan(copy.deepcopy(model), res.plan).double()
    pruned = copy.deepcopy(res.model).double()
    with torch.no_grad():
        xs = torch.utils._pytree.tree_map(
            lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, x
        )
        ref, got = flat_tensors(call(masked, xs)), flat_tensors(call(pruned, xs))
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        if r.numel():  # an empty output (a detector's head with nothing detected) has nothing to compare
            assert torch.allclose(r, g, atol=1e-9 * (1 + float(r.abs().max()))), float((r - g).abs().max())
    state = model.state_dict()
    new_state = res.model.state_dict()
    for name, dims in res.plan["tensors"].items():
        expect = state[name]
        for d, idx in sorted(dims.items()):
            expect = expect.index_select(int(d), torch.tensor(idx))
        assert torch.equal(new_state[name], expect), name
    for name, t in state.items():
        if name not in res.plan["tensors"]:
            assert torch.equal(new_state[name], t), f"{name} changed without being in the plan"
    return res


def kept(res: ShrinkResult, name: str, dim: int = 0) -> list[int] | None:
    return res.plan["tensors"].get(name, {}).get(str(dim))


def reasons(res: ShrinkResult) -> dict[str, str]:
    return {s["group"]: s["reason"] for s in res.report["skipped"]}


#: A tiny conv net as a model file (FILE.py:FACTORY with FACTORY ``make``), input 1x3x32x32.
NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.conv2(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


    def make():
        torch.manual_seed(0)
        return Net()
    """
)

#: NET with conv1 (and bn1) 8 channels wide instead of 16: the same layers, other shapes (a plan made for NET
#: does not fit it; ``bench`` of NET against it has fewer MACs to show).
NARROW_NET = (
    NET.replace("nn.Conv2d(3, 16, 3, padding=1)", "nn.Conv2d(3, 8, 3, padding=1)")
    .replace("nn.BatchNorm2d(16)", "nn.BatchNorm2d(8)")
    .replace("nn.Conv2d(16, 16", "nn.Conv2d(8, 16")
)

UNTRACEABLE = NET.replace(
    "        x = self.conv2(x)\n",
    "        if x.sum() > 0:  # data-dependent control flow\n            x = self.conv2(x)\n",
)


def cli_runner() -> CliRunner:
    """stderr kept apart from stdout: click < 8.2 needs mix_stderr=False, newer click always separates them."""
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


REPO = Path(__file__).resolve().parents[1]


def run_group(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on a timeout the whole process group goes (torchrun's workers too)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
