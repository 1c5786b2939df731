"""A generator of random valid networks for property tests (and ``tools/fuzz.py``).

A net is a list of ops over a growing list of tensors that all keep the input's spatial size: convs (plain,
depthwise, grouped; 1d/2d/3d), norms of every kind, activations, residual adds, concats of several widths,
splits and chunks, SE-style broadcast multiplies, 1-channel spatial gates, a module used twice, and a head
that flattens into a Linear or pools. Everything is decided by one seed, so a failure is reproducible from
its seed alone.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
IN = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
SIZE = {1: 12, 2: 6, 3: 4}


KINDS = ["conv", "conv", "dw", "group", "norm", "act", "add", "cat", "split", "se", "gate", "shared"]


class _Builder:
    """Draws the ops of one net, one kind at a time: each appends to ``plan`` and ``widths`` (the channels of each
    tensor so far; tensor 0 is the input) and names its modules m0, m1, ... in ``layers``."""

    def __init__(self, rng: random.Random, dims: int, layers: nn.ModuleDict) -> None:
        self.rng, self.dims, self.layers = rng, dims, layers
        self.plan: list[tuple] = []
        self.widths = [3]

    def add(self, mod: nn.Module) -> str:
        name = f"m{len(self.layers)}"
        self.layers[name] = mod
        return name

    def conv(self, src: int, out: int, k: int = 3, groups: int = 1) -> None:
        name = self.add(CONV[self.dims](self.widths[src], out, k, padding=k // 2, groups=groups))
        self.plan.append(("mod", name, src))
        self.widths.append(out)

    def step(self, kind: str) -> None:
        last = len(self.widths) - 1
        grow = {
            "conv": self.plain,
            "dw": self.depthwise,
            "group": self.grouped,
            "norm": self.norm,
            "act": self.act,
            "add": self.residual,
            "cat": self.cat,
            "split": self.split,
            "se": self.se,
            "gate": self.gate,
            "shared": self.shared,
        }[kind]
        grow(last, self.widths[last])

    def plain(self, last: int, _c: int) -> None:
        self.conv(last, self.rng.choice([4, 6, 8, 12, 16]), self.rng.choice([1, 3]))

    def depthwise(self, last: int, c: int) -> None:
        mult = self.rng.choice([1, 1, 2])
        self.conv(last, c * mult, 3, groups=c)

    def grouped(self, last: int, c: int) -> None:
        if c % 2 == 0:
            g = self.rng.choice([d for d in (2, 4) if c % d == 0])
            self.conv(last, g * self.rng.choice([1, 2, 3]), 3, groups=g)

    def norm(self, last: int, c: int) -> None:
        options = [BN[self.dims](c), IN[self.dims](c, affine=True), nn.PReLU(c)]
        if c % 2 == 0:
            options.append(nn.GroupNorm(2, c))
        self.plan.append(("mod", self.add(self.rng.choice(options)), last))
        self.widths.append(c)

    def act(self, last: int, c: int) -> None:
        self.plan.append(("act", self.rng.choice(["relu", "gelu", "sigmoid", "hardswish"]), last))
        self.widths.append(c)

    def residual(self, last: int, c: int) -> None:
        same = [i for i, w in enumerate(self.widths[1:-1], 1) if w == c]
        if same:
            self.plan.append(("add", self.rng.choice(same), last))
        else:
            self.conv(last, c, 1)
            self.plan.append(("add", last, len(self.widths) - 1))
        self.widths.append(c)

    def cat(self, _last: int, _c: int) -> None:
        picks = self.rng.sample(range(1, len(self.widths)), min(len(self.widths) - 1, self.rng.randint(2, 3)))
        self.plan.append(("cat", tuple(picks)))
        self.widths.append(sum(self.widths[i] for i in picks))

    def split(self, last: int, c: int) -> None:
        if c % 2 == 0:
            self.plan.append((self.rng.choice(["chunk", "split"]), last))
            self.widths.append(c // 2)

    def se(self, last: int, c: int) -> None:
        mid = max(2, c // 2)
        a = self.add(CONV[self.dims](c, mid, 1))
        b = self.add(CONV[self.dims](mid, c, 1))
        self.plan.append(("se", a, b, last))
        self.widths.append(c)

    def gate(self, last: int, c: int) -> None:
        self.plan.append(("gate", self.add(CONV[self.dims](c, 1, 3, padding=1)), last))
        self.widths.append(c)

    def shared(self, last: int, c: int) -> None:
        self.plan.append(("twice", self.add(CONV[self.dims](c, c, 3, padding=1)), last))
        self.widths.append(c)


class RandomNet(nn.Module):
    """Runs ``self.plan``: each entry reads earlier tensors by position and appends one tensor."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.dims = rng.choice([1, 2, 2, 2, 3])
        self.layers = nn.ModuleDict()
        build = _Builder(rng, self.dims, self.layers)
        build.conv(0, rng.choice([4, 6, 8, 12, 16]))
        for _ in range(rng.randint(2, 8)):
            build.step(rng.choice(KINDS))
        self.plan: list[tuple] = build.plan
        width = build.widths[-1]
        self.head_kind = rng.choice(["conv", "linear", "flatten"])
        if self.head_kind == "conv":
            self.head = CONV[self.dims](width, 2, 1)
        elif self.head_kind == "linear":
            self.head = nn.Linear(width, 3)
        else:
            self.head = nn.Linear(width * SIZE[self.dims] ** self.dims, 3)

    def example(self, batch: int = 1) -> torch.Tensor:
        return torch.randn((batch, 3) + (SIZE[self.dims],) * self.dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = [x]
        for op in self.plan:
            kind = op[0]
            if kind == "mod":
                t.append(self.layers[op[1]](t[op[2]]))
            elif kind == "act":
                t.append(getattr(F, op[1])(t[op[2]]) if op[1] != "sigmoid" else torch.sigmoid(t[op[2]]))
            elif kind == "add":
                t.append(t[op[1]] + t[op[2]])
            elif kind == "cat":
                t.append(torch.cat([t[i] for i in op[1]], dim=1))
            elif kind == "chunk":
                a, b = t[op[1]].chunk(2, dim=1)
                t.append(a * b)
            elif kind == "split":
                a, b = torch.split(t[op[1]], t[op[1]].shape[1] // 2, dim=1)
                t.append(a - b)
            elif kind == "se":
                s = t[op[3]].mean(dim=tuple(range(2, 2 + self.dims)), keepdim=True)
                s = torch.sigmoid(self.layers[op[2]](F.relu(self.layers[op[1]](s))))
                t.append(t[op[3]] * s)
            elif kind == "gate":
                t.append(t[op[2]] * torch.sigmoid(self.layers[op[1]](t[op[2]])))
            elif kind == "twice":
                mod = self.layers[op[1]]
                t.append(mod(F.relu(mod(t[op[2]]))))
        y = t[-1]
        if self.head_kind == "conv":
            return self.head(y)
        if self.head_kind == "linear":
            return self.head(y.mean(dim=tuple(range(2, 2 + self.dims))))
        return self.head(torch.flatten(y, 1))
