"""A Hugging Face ``Trainer`` callback over :class:`slimnet.train.pruner.Pruner` (optional extra ``transformers``).

    from slimnet.integrations.hf_trainer import SlimnetCallback
    prune = SlimnetCallback(example, target_macs=0.5, schedule="agp", steps=5, start=300, every=60)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds, callbacks=[prune])
    trainer.train()                          # model is cut in place at steps 300, 360, ..., 540

``example`` is one batch of model inputs (a dict of tensors, as the Trainer passes them). The Pruner is built
when training begins (the optimizer exists by then), cuts after each optimizer step (``state.global_step - 1``
is the step just taken) and carries the optimizer's state through each cut. At each checkpoint the pruner's
state is written beside it (``checkpoint-N/slimnet_pruner.pt``). The Trainer loads a checkpoint's weights
before any callback runs, so to resume, cut the fresh model first::

    prune = SlimnetCallback(example, ...)            # the same settings
    prune.restore(model, "out/checkpoint-400")
    trainer = transformers.Trainer(model=model, ..., callbacks=[prune]); trainer.train(resume_from_checkpoint=...)

A pruned Hugging Face model's ``config`` still names the original sizes: save it with ``torch.save`` or its plan
(``prune.pruner.save_plan``), which ``slimnet apply`` re-applies to the original.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..._util import save_atomic
from ...errors import SlimnetError
from ..pruner import Pruner

try:
    from transformers import TrainerCallback
except ImportError:
    raise SlimnetError("slimnet.integrations.hf_trainer needs transformers: pip install transformers") from None

STATE_FILE = "slimnet_pruner.pt"


class SlimnetCallback(TrainerCallback):
    """Gradual pruning inside ``Trainer.train``: ``example`` and ``pruner_settings`` are :class:`Pruner`'s."""

    def __init__(self, example: Any, *, ema: Any = None, **pruner_settings: Any) -> None:
        self.example, self.ema, self.settings = example, ema, pruner_settings
        self.pruner: Pruner | None = None

    def restore(self, model: nn.Module, checkpoint_dir: str | Path) -> None:
        """Cut ``model`` as the pruner had cut it when ``checkpoint_dir`` was saved."""
        path = Path(checkpoint_dir) / STATE_FILE
        if not path.is_file():
            raise SlimnetError(f"{checkpoint_dir} has no {STATE_FILE}: was it saved with this callback?")
        self.pruner = Pruner(model, self.example, **self.settings)
        self.pruner.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.pruner is None:
            self.pruner = Pruner(model, self.example, **self.settings)
        self.pruner.attach(kwargs.get("optimizer"), self.ema)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:
            self.pruner.step(state.global_step - 1, optimizer=kwargs.get("optimizer"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.pruner is not None and folder.is_dir():
            save_atomic(folder / STATE_FILE, lambda tmp: torch.save(self.pruner.state_dict(), tmp))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pruner is not None:
            self.pruner.close()
