"""The digits half of the accuracy study (tools/accuracy.py): a small CNN trained here, in seconds, on
scikit-learn's 8x8 digits (1797 images shipped with the package; nothing downloaded).

Split (seeded): 70% train / 30% test. The CNN trains on the train split with labels; pruning, repair, sensitivity
and distillation see only *unlabelled* train images (the calibration set), and every accuracy is on the test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class DigitsNet(nn.Module):
    """conv(1->32) -> conv(32->64) -> pool -> conv(64->64) -> pool -> fc(256->128) -> fc(128->10), BN after each
    conv: 2.2 M MACs, the shape of a real CNN in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.conv3, self.bn3 = nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(64 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


@dataclass
class Digits:
    """The split, as tensors: images N x 1 x 8 x 8 scaled to [0, 1] and centred, labels N."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def load(seed: int = 0) -> Digits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0 - 0.5
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, te = train_test_split(range(len(y)), test_size=0.3, random_state=seed, stratify=bunch.target)
    return Digits(x[tr], y[tr], x[te], y[te])


def train(data: Digits, epochs: int = 30, seed: int = 0) -> tuple[nn.Module, float]:
    """The trained CNN (eval mode) and the seconds it took."""
    torch.manual_seed(seed)
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(data.train_y), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval(), time.perf_counter() - t0


def accuracy(model: nn.Module, data: Digits) -> float:
    """Test accuracy, in percent."""
    with torch.no_grad():
        return 100.0 * float((model.eval()(data.test_x).argmax(1) == data.test_y).float().mean())


def calibration(data: Digits, batches: int = 8, batch_size: int = 64) -> torch.Tensor:
    """Unlabelled training images for calibration (the first ``batches x batch_size`` of the train split)."""
    return data.train_x[: batches * batch_size]


def task(log: Any, distill_steps: int = 600) -> tuple[Any, dict[str, Any]]:
    """The study's Task for digits (a CNN trained here, seeded) and facts for the doc."""
    from accuracy_study import Task

    from slimnet.load.data import as_calibration
    from slimnet.repair.distill import distill

    data = load()
    model, seconds = train(data)
    calib = list(calibration(data).split(64))
    with torch.no_grad():
        calib_logp = [F.log_softmax(model(b), 1) for b in calib]

    def calib_score(m: nn.Module) -> float:
        """Minus the mean KL divergence from the original's class distribution on the calibration images: a
        smooth score (top-1 agreement moves in steps of one image, and ties everywhere once repaired)."""
        with torch.no_grad():
            kl = [F.kl_div(F.log_softmax(m.eval()(b), 1), t, log_target=True, reduction="batchmean")
                  for b, t in zip(calib, calib_logp)]  # fmt: skip
        return -float(sum(kl)) / len(kl)

    with torch.no_grad():
        test_ref = model(data.test_x).argmax(1)
    unlabelled = as_calibration(list(data.train_x.split(64)), data.train_x[:1], calib_batches=10**6)

    def evaluate(m: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            agree = 100.0 * float((m.eval()(data.test_x).argmax(1) == test_ref).float().mean())
        return {"accuracy": accuracy(m, data), "agreement": agree}

    def tune(student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
        res = distill(student, teacher, unlabelled, steps=distill_steps, lr=1e-3, temperature=4.0, progress=False)
        return {"steps": res.steps, "seconds": round(res.seconds, 1), "calibration_before": res.before,
                "calibration_after": res.after}  # fmt: skip

    t = Task(
        name="digits",
        model=model,
        example=data.train_x[:1],
        calib=calib,
        sweep_data=calib,
        calib_score=calib_score,
        evaluate=evaluate,
        distill=tune,
        round_to=4,
        ratios=(0.125, 0.25, 0.375, 0.5, 0.625, 0.75),
        log=log,
    )
    facts = {
        "train_images": len(data.train_y),
        "test_images": len(data.test_y),
        "calibration_images": sum(len(b) for b in calib),
        "train_seconds": round(seconds, 1),
        "distill_steps": distill_steps,
    }
    return t, facts
