"""Gradual against one-shot pruning inside a training loop, on scikit-learn's digits with a small CNN.

    OMP_NUM_THREADS=1 python tools/gradual.py --out docs/gradual.md

Every run trains the same CNN (three 3x3 convolutions with BatchNorm, 16/32/32 channels, on the 8x8 digits) with
Adam for the same number of steps and the same batches; the runs differ only in how the model is cut to the
target fraction of its MACs by :class:`slimnet.Pruner` after ``--dense`` steps of dense training:

* ``one-shot``: a single cut at step ``--dense``, then fine-tuning;
* ``agp``: ``--cuts`` cuts on the AGP schedule, the first at step ``--dense``, one every ``--every`` steps, then
  fine-tuning up to the same total;
* ``carried``: Adam's moments are sliced at each cut (``pruner.step(..., optimizer=opt)``); ``rebuilt``: a new
  Adam is built after each cut, as one must with tools that cannot prune optimizer state.

Test accuracy (450 held-out digits) is measured right after each cut (before any fine-tuning), right before the
next and at the end; the doc gives the mean and standard deviation over ``--seeds`` seeds, and the plot the
accuracy against the MACs left as the schedule proceeds. The criterion is ``l1``, except in the last row: ``agp``
with ``taylor`` (the training gradients, averaged over the steps between cuts).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import slimnet
from slimnet._util import write_atomic


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.c3, self.b3 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # lazy: a tool-only dependency
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=450, random_state=0, stratify=y)
    return xtr, ytr, xte, yte


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test accuracy and cross-entropy (the loss moves where 450 digits leave the accuracy flat)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y))


@dataclass
class Run:
    name: str
    schedule: str
    optimizer: str  # "carried" or "rebuilt"
    criterion: str = "l1"
    #: (step, MACs fraction, accuracy, when): "before" / "after" a cut, or at the "end"
    points: list[tuple[int, float, float, str]] = field(default_factory=list)
    final: float = 0.0
    final_loss: float = 0.0

    def after_cuts(self) -> list[float]:
        return [p[2] for p in self.points if p[3] == "after"]


def train(run: Run, seed: int, data: tuple, args: argparse.Namespace, target: float) -> Run:
    """One training run of ``args.steps`` steps, cut by a Pruner (none for the dense baseline)."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    pruner = None
    if run.schedule != "dense":
        steps = 1 if run.schedule == "one-shot" else args.cuts
        pruner = slimnet.Pruner(
            model, xte[:1], target_macs=target, criterion=run.criterion, schedule=run.schedule, steps=steps,
            start=args.dense, every=args.every, round_to=1,
        )  # fmt: skip
        if run.optimizer == "carried":
            pruner.attach(opt)
    order = torch.Generator().manual_seed(seed)
    fraction = 1.0
    for step in range(args.steps):
        idx = torch.randint(0, len(xtr), (args.batch,), generator=order)
        loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
        if pruner is not None and pruner.next_cut == step:
            run.points.append((step, fraction, evaluate(model, xte, yte)[0], "before"))
        cut = pruner.step(step) if pruner is not None else None
        if cut is not None:
            fraction = cut.macs_fraction
            run.points.append((step, fraction, evaluate(model, xte, yte)[0], "after"))  # before any fine-tuning
            if run.optimizer == "rebuilt":
                opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    run.final, run.final_loss = evaluate(model, xte, yte)
    run.points.append((args.steps, fraction, run.final, "end"))
    return run


RUNS = [
    ("dense (no pruning)", "dense", "carried", "l1"),
    ("one-shot, Adam carried", "one-shot", "carried", "l1"),
    ("one-shot, Adam rebuilt", "one-shot", "rebuilt", "l1"),
    ("agp, Adam carried", "agp", "carried", "l1"),
    ("agp, Adam rebuilt", "agp", "rebuilt", "l1"),
    ("agp, Adam carried, taylor", "agp", "carried", "taylor"),
]


def sweep(args: argparse.Namespace, target: float, data: tuple, dense: list[Run]) -> dict[str, list[Run]]:
    out: dict[str, list[Run]] = {RUNS[0][0]: dense}
    for name, schedule, optimizer, criterion in RUNS[1:]:
        out[name] = [train(Run(name, schedule, optimizer, criterion), s, data, args, target) for s in args.seeds]
        finals = [r.final for r in out[name]]
        print(f"target {target}: {name}: {statistics.mean(finals):.4f} +- {statistics.pstdev(finals):.4f}")
    return out


def plot(results: dict[float, dict[str, list[Run]]], path: Path, args: argparse.Namespace) -> None:
    import matplotlib  # lazy: a tool-only dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted(results, reverse=True)
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4.5), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for name, runs in results[target].items():
            if name.startswith("dense"):
                ax.axhline(statistics.mean(r.final for r in runs), color="grey", ls=":", label=name)
                continue
            pts = np.array([_mean(p) for p in zip(*[r.points for r in runs])])
            ax.plot(pts[:, 0], pts[:, 1], marker="o", ms=3, label=name)
        ax.set_xlabel("MACs left (fraction of the dense model's)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"digits CNN to {target:.0%} of the MACs (mean of {len(args.seeds)} seeds)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _mean(points: tuple[tuple[int, float, float, str], ...]) -> tuple[float, float]:
    """One point of the schedule over seeds: mean MACs fraction, mean accuracy."""
    return statistics.mean(p[1] for p in points), statistics.mean(p[2] for p in points)


def table(results: dict[str, list[Run]]) -> list[str]:
    lines = [
        "| run | MACs left | lowest accuracy right after a cut | final accuracy (mean ± std) | min | max | "
        "final test loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        finals = [r.final for r in runs]
        macs = statistics.mean(r.points[-1][1] for r in runs)
        after = [min(r.after_cuts()) for r in runs if r.after_cuts()]
        lowest = f"{statistics.mean(after):.4f}" if after else "-"
        lines.append(
            f"| {name} | {macs:.3f} | {lowest} | {statistics.mean(finals):.4f} ± {statistics.pstdev(finals):.4f} | "
            f"{min(finals):.4f} | {max(finals):.4f} | {statistics.mean(r.final_loss for r in runs):.4f} |"
        )
    return lines


def summary(results: dict[str, list[Run]]) -> list[str]:
    """What the table says about the two questions: gradual vs one-shot, carried vs rebuilt (same MACs, same
    steps), with the spread of one test digit (1/450 = 0.0022) in mind."""

    def final(name: str) -> float:
        return statistics.mean(r.final for r in results[name])

    def spread(name: str) -> float:
        return statistics.pstdev(r.final for r in results[name])

    gradual, oneshot = final("agp, Adam carried"), final("one-shot, Adam carried")
    noise = max(spread("agp, Adam carried"), spread("one-shot, Adam carried"))
    verdict = "at least as accurate as" if gradual >= oneshot else (
        "within one standard deviation of" if oneshot - gradual <= noise else "less accurate than"
    )  # fmt: skip
    lowest = [
        statistics.mean(min(r.after_cuts()) for r in results[n])
        for n in ("agp, Adam carried", "one-shot, Adam carried")
    ]
    carried = [final(f"{s}, Adam carried") - final(f"{s}, Adam rebuilt") for s in ("one-shot", "agp")]
    return [
        f"Gradual (agp) ends {verdict} one-shot: {gradual:.4f} against {oneshot:.4f} (standard deviation over seeds up "
        f"to {noise:.4f}; one test digit is 0.0022). Right after its cuts the gradual model never falls below "
        f"{lowest[0]:.4f} on average, the one-shot model falls to {lowest[1]:.4f}. Carrying Adam's state instead of "
        f"rebuilding the optimizer changes the final accuracy by {carried[0]:+.4f} (one-shot) and {carried[1]:+.4f} "
        "(agp).",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25], help="fractions of the MACs to keep")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--steps", type=int, default=900, help="training steps of every run")
    ap.add_argument("--dense", type=int, default=300, help="dense steps before the first cut")
    ap.add_argument("--cuts", type=int, default=5)
    ap.add_argument("--every", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", default="docs/gradual.md")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*the last cut will reach")  # the table gives the MACs reached
    t0 = time.perf_counter()
    data = digits()
    dense = [train(Run(*RUNS[0]), s, data, args, 1.0) for s in args.seeds]
    results = {t: sweep(args, t, data, dense) for t in args.targets}
    out = Path(args.out)
    plot(results, out.with_suffix(".png"), args)
    write_atomic(out, "\n".join(document(results, args, time.perf_counter() - t0, out)).encode())
    print(f"wrote {out} and {out.with_suffix('.png')}")


def document(results: dict[float, dict[str, list[Run]]], args: argparse.Namespace, seconds: float, out: Path) -> list:
    head = (Path(__file__).read_text().split('"""')[1]).strip().splitlines()
    lines = ["# Gradual pruning in a training loop: digits", "", *head[2:], ""]
    last = args.dense + (args.cuts - 1) * args.every
    lines += [
        f"Settings: {args.steps} steps of batch {args.batch}, Adam lr {args.lr}, first cut after {args.dense} dense "
        f"steps, AGP {args.cuts} cuts every {args.every} steps (the last at step {last}), "
        f"round_to 1, seeds {args.seeds}. torch {torch.__version__}, {platform.machine()}, "
        f"{os.environ.get('OMP_NUM_THREADS', '?')} thread(s), {seconds:.0f} s in all.",
        "",
    ]
    for target, res in results.items():
        lines += [f"## To {target:.0%} of the MACs", "", *table(res), "", *summary(res), ""]
    lines += [f"![accuracy against MACs]({out.with_suffix('.png').name})", "", *READING]
    return lines


READING = """## Reading

The digits are nearly saturated: the dense CNN gets 446 of 450 test digits right, one digit is 0.0022, and the
seeds spread the final accuracy by 0.002-0.007, so differences in the final column below about 0.005 are noise
(the final test loss says the same). What the schedule changes clearly is the damage of each cut: a single cut
to the target takes the model to near chance before fine-tuning (0.22 and 0.15 accuracy right after it), while
each AGP cut is smaller and the model never falls as low (0.47 and 0.25 on average, recovering to about 0.98
before the next cut); in exchange the gradual model reaches its final width 240 steps later and fine-tunes
there for 360 steps instead of 600. Carrying Adam's moments through the cuts against rebuilding the optimizer
moves the final accuracy by less than the noise here: Adam's state is short-lived (beta2 = 0.999 forgets in
about a thousand steps, and a rebuilt Adam's bias correction makes its first steps full size), so the cost of
rebuilding shows on larger models and shorter fine-tuning, not on a 900-step digits run; what carrying buys
everywhere is that the loop does not change (no new optimizer, scheduler or trainer), and that the step after a
cut is the step the unpruned optimizer would have taken (tests/test_pruner.py).
""".splitlines()


if __name__ == "__main__":
    main()
