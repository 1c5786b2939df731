"""The Lightning and Hugging Face Trainer callbacks run a few steps on a tiny model, cutting it on schedule with
the trainer's own optimizer carried through (skipped when the extra is not installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from .test_pruner import EXAMPLE, Net, batch, make

SETTINGS = {"ratio": 0.5, "schedule": "linear", "steps": 2, "start": 1, "every": 2, "round_to": 1}


def assert_state_follows_parameters(optimizer: torch.optim.Optimizer) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key in ("exp_avg", "exp_avg_sq"):
                assert optimizer.state[p][key].shape == p.shape, key


def test_lightning_callback_cuts_on_schedule_and_resumes(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is an optional extra")
    from slimnet.train.integrations.lightning import SlimnetPruning

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = make(torch.float32)

        def training_step(self, data: Any, _index: int) -> torch.Tensor:
            x, y = data
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    data = [batch(i, torch.float32) for i in range(16)]
    quiet = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False, "enable_model_summary": False}

    def fit(module: Module, callback: SlimnetPruning, steps: int, ckpt: str | None = None) -> Any:
        trainer = pl.Trainer(max_steps=steps, callbacks=[callback], enable_checkpointing=False, **quiet)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None), ckpt_path=ckpt)
        return trainer

    module, callback = Module(), SlimnetPruning(EXAMPLE.float(), attr="net", **SETTINGS)
    trainer = fit(module, callback, 2)  # the first cut, at step 1
    assert module.net.c1.out_channels == 12 and callback.pruner.cuts_done == 1
    assert_state_follows_parameters(trainer.optimizers[0])
    trainer.save_checkpoint(tmp_path / "mid.ckpt")

    resumed, again = Module(), SlimnetPruning(EXAMPLE.float(), attr="net", **SETTINGS)
    again.restore(resumed, str(tmp_path / "mid.ckpt"))
    trainer = fit(resumed, again, 5, str(tmp_path / "mid.ckpt"))
    assert resumed.net.c1.out_channels == 8 and again.pruner.done
    assert [c.step for c in again.pruner.history] == [1, 3]
    assert_state_follows_parameters(trainer.optimizers[0])


class HFNet(nn.Module):
    """Net behind the Trainer's calling convention: keyword inputs, a dict with the loss."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make(torch.float32)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def test_hf_trainer_callback_cuts_on_schedule_and_saves_its_state(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
    pytest.importorskip("accelerate", reason="Hugging Face's Trainer needs accelerate (the hf-trainer extra)")
    from slimnet.train.integrations.hf_trainer import STATE_FILE, SlimnetCallback

    rows = [{"x": x[j], "labels": y[j]} for x, y in (batch(i, torch.float32) for i in range(4)) for j in range(8)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
        use_cpu=True, save_strategy="steps", save_steps=2, logging_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    model = HFNet()
    callback = SlimnetCallback({"x": EXAMPLE.float()}, **SETTINGS)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    trainer.train()
    assert model.net.c1.out_channels == 8 and callback.pruner.done
    assert [c.step for c in callback.pruner.history] == [1, 3]
    assert_state_follows_parameters(trainer.optimizer.optimizer)
    assert (tmp_path / "checkpoint-2" / STATE_FILE).is_file()

    fresh, again = HFNet(), SlimnetCallback({"x": EXAMPLE.float()}, **SETTINGS)
    again.restore(fresh, tmp_path / "checkpoint-2")  # one cut done at step 1
    assert fresh.net.c1.out_channels == 12 and again.pruner.next_cut == 3


def test_net_is_shared_with_test_pruner() -> None:
    assert isinstance(make(), Net)
