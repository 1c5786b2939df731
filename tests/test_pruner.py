"""Pruning inside a training loop: the step after a cut equals the masked unpruned step, optimizer and EMA state
follow the plan, checkpoints resume bit for bit, and refused cuts change nothing."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import slimnet
from slimnet.allocate import keep_count
from slimnet.cut.surgeon import apply_plan, mask_plan, pruned_copy
from slimnet.errors import SlimnetError, VerificationError
from slimnet.train.pruner import Pruner
from slimnet.verify import verifier as verify_module

from .helpers import randomise

EXAMPLE = torch.randn(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))


class Net(nn.Module):
    """Two prunable groups: the residual stream (c1, b1, c2 out, b2, fc in) and the inner width (m, bm, c2 in)."""

    def __init__(self) -> None:
        super().__init__()
        # no conv bias before a BN: its gradient is rounding noise, which Adam's normalisation blows up to full
        # steps, so the pruned and the masked run would differ there by the noise alone
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.m, self.bm = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.c2, self.b2 = nn.Conv2d(24, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = x + F.relu(self.b2(self.c2(F.relu(self.bm(self.m(x))))))
        return self.fc(x.mean((2, 3)))


def make(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return randomise(Net()).to(dtype).train()


def batch(i: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(8, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 4, (8,), generator=g)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, i: int, dtype: torch.dtype = torch.float64) -> float:
    x, y = batch(i, dtype)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def sliced(t: torch.Tensor, dims: dict[str, list[int]]) -> torch.Tensor:
    for d, idx in sorted(dims.items()):
        t = t.index_select(int(d), torch.tensor(idx))
    return t


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_after_a_cut_updates_the_kept_entries_as_the_unpruned_optimizer_would(name: str) -> None:
    model = make()
    opt = OPTIMIZERS[name](model.parameters())
    for i in range(3):
        train_step(model, opt, i)
    twin, twin_opt = copy.deepcopy((model, opt))  # one deepcopy: the twin optimizer holds the twin's parameters
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="one-shot", start=3, round_to=1)
    cut = pruner.step(3, optimizer=opt)
    assert cut is not None and cut.max_abs_diff < 1e-9 and cut.sliced_state > 0
    plan = pruner.plan
    assert plan["tensors"], "nothing was cut"
    mask_plan(twin, plan)  # the unpruned model with the dropped channels zeroed, and its full optimizer state
    loss, twin_loss = train_step(model, opt, 3), train_step(twin, twin_opt, 3)
    assert loss == pytest.approx(twin_loss, abs=1e-12)
    state, twin_state = model.state_dict(), twin.state_dict()
    for key, value in state.items():
        expected = sliced(twin_state[key], plan["tensors"].get(key, {}))
        assert value.shape == expected.shape, key
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-12, msg=key)


COARSE = pytest.mark.filterwarnings("ignore:.*the last cut will reach")  # the target itself is not under test


@COARSE
def test_adam_moments_and_ema_copies_are_sliced_to_the_plan() -> None:
    timm_utils = pytest.importorskip("timm.utils", reason="timm is an optional extra")
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema_timm = timm_utils.ModelEmaV3(model, decay=0.9)
    ema_swa = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
    for i in range(3):
        train_step(model, opt, i)
        ema_timm.update(model)
        ema_swa.update_parameters(model)
    names = {id(p): n for n, p in model.named_parameters()}
    before = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    ema_before = [copy.deepcopy(e.module.state_dict()) for e in (ema_timm, ema_swa)]
    params_before = list(model.parameters())
    pruner = Pruner(model, EXAMPLE, target_macs=0.5, schedule="one-shot", start=3, round_to=2)
    pruner.step(3, optimizer=opt, ema=ema_timm)
    pruner.step(4, ema=ema_swa)  # nothing due: remembered for the next cut, nothing cut now
    plan = pruner.plan
    assert list(model.parameters()) == params_before  # the very same parameter objects
    assert [p for g in opt.param_groups for p in g["params"]] == params_before
    for name, p in model.named_parameters():
        dims = plan["tensors"].get(name, {})
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][key], sliced(before[name][key], dims)), (name, key)
        assert torch.equal(opt.state[p]["step"], before[name]["step"])
    for name, t in ema_timm.module.state_dict().items():
        assert torch.equal(t, sliced(ema_before[0][name], plan["tensors"].get(name, {}))), name
    assert ema_swa.module.c1.weight.shape == ema_before[1]["c1.weight"].shape  # not cut: it came after the cut
    train_step(model, opt, 4)  # and training goes on


def test_ema_given_at_a_later_cut_is_checked_against_the_model() -> None:
    model = make()
    stale = copy.deepcopy(model)
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="linear", steps=2, start=0, every=1, round_to=1)
    pruner.step(0)
    with pytest.raises(SlimnetError, match="was it cut with the model at every earlier cut"):
        pruner.step(1, ema=stale)


def checkpoint(pruner: Pruner, model: nn.Module, opt: Any, sched: Any) -> bytes:
    buf = io.BytesIO()
    state = {"pruner": pruner.state_dict(), "model": model.state_dict(), "opt": opt.state_dict()}
    torch.save({**state, "sched": sched.state_dict()}, buf)
    return buf.getvalue()


def run(model: nn.Module, opt: Any, sched: Any, pruner: Pruner, steps: range, save_at: int = -1) -> tuple:
    losses, saved = [], None
    for i in steps:
        losses.append(train_step(model, opt, i, torch.float32))
        sched.step()
        pruner.step(i, optimizer=opt)
        if i == save_at:
            saved = checkpoint(pruner, model, opt, sched)
    return losses, saved


@COARSE
@pytest.mark.parametrize("criterion", ["taylor", "fpgm"])
def test_resume_from_a_mid_schedule_checkpoint_reproduces_the_next_losses_bit_for_bit(criterion: str) -> None:
    settings = {"target_macs": 0.4, "criterion": criterion, "steps": 4, "start": 3, "every": 3, "round_to": 2}

    def fresh() -> tuple:
        model = make(torch.float32)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=40)
        return model, opt, sched, Pruner(model, EXAMPLE.float(), **settings)

    model, opt, sched, pruner = fresh()
    pruner.attach(opt)
    losses, saved = run(model, opt, sched, pruner, range(16), save_at=7)  # two cuts done, mid-window
    assert [c.step for c in pruner.history] == [3, 6, 9, 12] and pruner.done
    assert all(p is q for p, q in zip(model.parameters(), opt.param_groups[0]["params"]))

    model2, opt2, sched2, pruner2 = fresh()  # the original model again, its optimizer built on it
    state = torch.load(io.BytesIO(saved), weights_only=False)
    pruner2.load_state_dict(state["pruner"], optimizer=opt2)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert pruner2.cuts_done == 2 and pruner2.next_cut == 9
    sums = state["pruner"]["scorer"].get("sums", {})
    assert (criterion == "taylor") == bool(sums)  # step 7's gradients, in the window before the cut at 9
    for k, v in sums.items():
        assert torch.equal(pruner2.scorer.state_dict()["sums"][k], v), k
    resumed, _ = run(model2, opt2, sched2, pruner2, range(8, 16))
    assert resumed == losses[8:]  # bit for bit, through two more cuts
    assert pruner2.plan["tensors"] == pruner.plan["tensors"]
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


def test_the_cumulative_plan_re_applies_to_a_fresh_original() -> None:
    model = make()
    original = copy.deepcopy(model)
    pruner = Pruner(model, EXAMPLE, ratio=0.6, schedule="exponential", steps=3, start=0, every=1, round_to=1)
    for i in range(3):  # no training in between: the model must be the original sliced by the cumulative plan
        pruner.step(i)
    again = pruned_copy(original, pruner.plan)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    res = slimnet.api.apply(original, pruner.plan, EXAMPLE)[1]
    assert res is not None and res.passed
    assert pruner.plan["schedule"]["cuts_done"] == 3 and pruner.plan["ratio"] == pytest.approx(0.6)


def test_levels_drive_the_counts_and_targets_are_reached() -> None:
    model = make()
    pruner = Pruner(model, EXAMPLE, ratio=0.75, schedule="linear", steps=3, start=0, every=1, round_to=1)
    for step, level in enumerate(pruner.schedule.levels(0.75)):
        pruner.step(step)
        assert model.c1.out_channels == keep_count(16, level, 1) and model.m.out_channels == keep_count(24, level, 1)
    model = make()
    pruner = Pruner(model, EXAMPLE, target_params=0.5, steps=4, start=0, every=2, round_to=1)
    for step in range(8):
        pruner.step(step)
    fractions = [c.params_fraction for c in pruner.history]
    assert fractions == sorted(fractions, reverse=True) and abs(fractions[-1] - 0.5) < 0.02
    assert fractions[-1] == pytest.approx(sum(p.numel() for p in model.parameters()) / pruner._full_params)


def test_an_unreachable_target_is_refused_and_a_coarse_one_announced_before_training() -> None:
    with pytest.raises(SlimnetError, match="cannot be reached"):
        Pruner(make(), EXAMPLE, target_macs=0.001, round_to=8)
    with pytest.warns(UserWarning, match="target_macs=0.5: the last cut will reach 0.511, .* with round_to=16"):
        Pruner(make(), EXAMPLE, target_macs=0.5, round_to=16)  # 16 of 16 and 16 of 24, or 16 and 8: no closer


def test_taylor_ranks_by_the_training_gradients() -> None:
    """A channel whose output nothing reads has zero gradient: taylor drops it even with the largest weights."""
    model = make()
    with torch.no_grad():
        model.m.weight[5] *= 50  # the inner channel 5: the largest weights ...
        model.c2.weight[:, 5] = 0  # ... read by nobody
    kept = {}
    for criterion in ("l1", "taylor"):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=0.0)  # gradients but no updates: the planted channel stays
        pruner = Pruner(m, EXAMPLE, ratio=0.25, criterion=criterion, schedule="one-shot", start=2, round_to=1)
        for i in range(3):
            train_step(m, opt, i)
            pruner.step(i, optimizer=opt)
        kept[criterion] = pruner.plan["tensors"]["m.weight"]["0"]
    assert 5 in kept["l1"] and 5 not in kept["taylor"]


def test_taylor_without_gradients_says_how_to_give_them() -> None:
    pruner = Pruner(make(), EXAMPLE, ratio=0.5, criterion="taylor", schedule="one-shot", start=0)
    with pytest.raises(SlimnetError, match="pass optimizer= to pruner.step"):
        pruner.step(0)


def test_a_cut_between_backward_and_step_slices_the_gradients_and_keeps_the_old_graph_harmless() -> None:
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_step(model, opt, 0)
    x, y = batch(1)
    loss = F.cross_entropy(model(x), y)  # the loop keeps `loss` (and its graph) alive across the cut
    loss.backward()
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="one-shot", start=1, round_to=1)
    pruner.step(1, optimizer=opt)
    assert all(p.grad is None or p.grad.shape == p.shape for p in model.parameters())
    opt.step()
    opt.zero_grad()
    train_step(model, opt, 2)  # a new graph on the new shapes, while `loss` still holds the old one
    assert loss.requires_grad


def test_a_refused_cut_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_step(model, opt, 0)
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    failed = verify_module.VerifyResult(1.0, 1e-6, False, "torch.float64", ["example"], error="outputs differ")
    monkeypatch.setattr("slimnet.train.pruner.verify", lambda *_a, **_k: failed)
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="one-shot", start=0, round_to=1)
    with pytest.raises(VerificationError, match="outputs differ; the model was left as it was"):
        pruner.step(0, optimizer=opt)
    assert pruner.cuts_done == 0 and model.c1.out_channels == 16
    for (k, a), b in zip(model.state_dict().items(), before[0].values()):
        assert torch.equal(a, b), k
    assert opt.state_dict()["state"][0]["exp_avg"].shape == before[1]["state"][0]["exp_avg"].shape


def test_optimizer_state_that_cannot_follow_the_cut_is_refused_first() -> None:
    model = make()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, history_size=3)
    x, y = batch(0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="one-shot", start=0, round_to=1)
    with pytest.raises(SlimnetError, match="LBFGS's state entry .* cannot carry it through the cut"):
        pruner.step(0, optimizer=opt)
    assert model.c1.out_channels == 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give one of ratio=, target_macs= or target_params="),
        ({"ratio": 0.5, "target_macs": 0.5}, "give one of"),
        ({"ratio": 1.5}, "ratio=1.5 is out of range"),
        ({"target_macs": 1.2}, "out of range"),
        ({"ratio": 0.5, "criterion": "magic"}, "unknown criterion 'magic'"),
        ({"ratio": 0.5, "schedule": "cosine"}, "unknown schedule"),
        ({"ratio": 0.5, "data": [torch.randn(2, 1, 6, 6)]}, "data= .* is not in this version"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(SlimnetError, match=message):
        Pruner(make(), EXAMPLE, **kwargs)


def test_keep_objects_surgery_keeps_tied_parameters_tied() -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10))
    model[1].weight = model[0].weight  # tied: one parameter, two names
    plan = {"tensors": {"0.weight": {"1": [0, 2, 5]}, "1.weight": {"1": [0, 2, 5]}}}
    weight = model[0].weight
    apply_plan(model, plan, keep_objects=True)
    assert model[0].weight is weight and model[1].weight is weight and weight.shape == (10, 3)
    assert model[1].in_features == 3 and model[0].embedding_dim == 3


def test_slimnet_pruner_is_the_pruner() -> None:
    assert slimnet.Pruner is Pruner


def test_a_cut_leaves_the_global_random_state_and_the_training_mode_alone() -> None:
    """A run with cuts draws the same dropout masks and batches as one without."""
    model = make()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    pruner = Pruner(model, EXAMPLE, ratio=0.5, schedule="one-shot", start=0, round_to=1)
    assert pruner.step(0) is not None and model.c1.out_channels == 8
    assert torch.equal(torch.get_rng_state(), state) and model.training
