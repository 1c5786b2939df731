"""A PyTorch Lightning callback over :class:`slimnet.train.pruner.Pruner` (optional extra ``lightning``).

    from slimnet.integrations.lightning import SlimnetPruning
    prune = SlimnetPruning(example, target_macs=0.5, schedule="agp", steps=5, start=300, every=60)
    trainer = lightning.Trainer(callbacks=[prune], ...)
    trainer.fit(module)                     # module.model is cut in place at steps 300, 360, ..., 540

The Pruner is built at ``setup`` on the LightningModule (or on its attribute ``attr``, e.g. ``"model"``), cuts after
each optimizer step (``trainer.global_step - 1`` is the step just taken, as in a plain loop) and carries the
optimizers' state through each cut. Its state (schedule position, kept units, Taylor sums) is the callback's
state in Lightning checkpoints. To resume, the fresh module must be cut before Lightning loads the pruned
weights into it, which happens before any callback hook can see the checkpoint: call :meth:`SlimnetPruning.restore`
first::

    prune = SlimnetPruning(example, ...)            # the same settings
    prune.restore(module, "last.ckpt")
    trainer = lightning.Trainer(callbacks=[prune], ...); trainer.fit(module, ckpt_path="last.ckpt")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import SlimnetError
from ..pruner import Pruner

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise SlimnetError("slimnet.integrations.lightning needs PyTorch Lightning: pip install lightning") from None


class SlimnetPruning(pl.Callback):
    """Gradual pruning inside ``Trainer.fit``: ``example`` and ``pruner_settings`` are :class:`Pruner`'s."""

    def __init__(self, example: Any, *, attr: str | None = None, ema: Any = None, **pruner_settings: Any) -> None:
        self.example, self.attr, self.ema, self.settings = example, attr, ema, pruner_settings
        self.pruner: Pruner | None = None

    def target(self, pl_module: nn.Module) -> nn.Module:
        """The module that is pruned: the LightningModule, or its attribute ``attr``."""
        return getattr(pl_module, self.attr) if self.attr else pl_module

    def restore(self, pl_module: nn.Module, ckpt_path: str) -> None:
        """Cut ``pl_module`` as the checkpoint's pruner had cut it (before ``trainer.fit(..., ckpt_path=)``)."""
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None:
            raise SlimnetError(f"{ckpt_path} holds no {self.state_key} state: was it saved with this callback?")
        self._build(pl_module)
        self.pruner.load_state_dict(state["pruner"])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.pruner is None:
            self._build(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            self.pruner.attach(optimizer, self.ema)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step > 0:
            self.pruner.step(trainer.global_step - 1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.pruner is not None:
            self.pruner.close()

    def state_dict(self) -> dict[str, Any]:
        return {"pruner": self.pruner.state_dict()} if self.pruner is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pruner is not None and "pruner" in state_dict:
            self.pruner.load_state_dict(state_dict["pruner"])  # a no-op after restore(): already cut so

    def _build(self, pl_module: nn.Module) -> None:
        self.pruner = Pruner(self.target(pl_module), self.example, **self.settings)
