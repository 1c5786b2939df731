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


class RandomNet(nn.Module):
    """Runs ``self.plan``: each entry reads earlier tensors by position and appends one tensor."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.dims = rng.choice([1, 2, 2, 2, 3])
        self.layers = nn.ModuleDict()
        self.plan: list[tuple] = []
        widths = [3]  # channels of each tensor so far (tensor 0 is the input)
        n = 0

        def add(mod: nn.Module) -> str:
            nonlocal n
            name = f"m{n}"
            n += 1
            self.layers[name] = mod
            return name

        def conv(src: int, out: int, k: int = 3, groups: int = 1) -> None:
            name = add(CONV[self.dims](widths[src], out, k, padding=k // 2, groups=groups))
            self.plan.append(("mod", name, src))
            widths.append(out)

        conv(0, rng.choice([4, 6, 8, 12, 16]))
        for _ in range(rng.randint(2, 8)):
            last = len(widths) - 1
            c = widths[last]
            kind = rng.choice(
                ["conv", "conv", "dw", "group", "norm", "act", "add", "cat", "split", "se", "gate", "shared"]
            )
            if kind == "conv":
                conv(last, rng.choice([4, 6, 8, 12, 16]), rng.choice([1, 3]))
            elif kind == "dw":
                mult = rng.choice([1, 1, 2])
                conv(last, c * mult, 3, groups=c)
            elif kind == "group" and c % 2 == 0:
                g = rng.choice([d for d in (2, 4) if c % d == 0])
                conv(last, g * rng.choice([1, 2, 3]), 3, groups=g)
            elif kind == "norm":
                options = [BN[self.dims](c), IN[self.dims](c, affine=True), nn.PReLU(c)]
                if c % 2 == 0:
                    options.append(nn.GroupNorm(2, c))
                self.plan.append(("mod", add(rng.choice(options)), last))
                widths.append(c)
            elif kind == "act":
                self.plan.append(("act", rng.choice(["relu", "gelu", "sigmoid", "hardswish"]), last))
                widths.append(c)
            elif kind == "add":
                same = [i for i, w in enumerate(widths[1:-1], 1) if w == c]
                if same:
                    self.plan.append(("add", rng.choice(same), last))
                else:
                    conv(last, c, 1)
                    self.plan.append(("add", last, len(widths) - 1))
                widths.append(c)
            elif kind == "cat":
                picks = rng.sample(range(1, len(widths)), min(len(widths) - 1, rng.randint(2, 3)))
                self.plan.append(("cat", tuple(picks)))
                widths.append(sum(widths[i] for i in picks))
            elif kind == "split" and c % 2 == 0:
                how = rng.choice(["chunk", "split"])
                self.plan.append((how, last))
                widths.append(c // 2)
            elif kind == "se":
                mid = max(2, c // 2)
                a = add(CONV[self.dims](c, mid, 1))
                b = add(CONV[self.dims](mid, c, 1))
                self.plan.append(("se", a, b, last))
                widths.append(c)
            elif kind == "gate":
                self.plan.append(("gate", add(CONV[self.dims](c, 1, 3, padding=1)), last))
                widths.append(c)
            elif kind == "shared":
                name = add(CONV[self.dims](c, c, 3, padding=1))
                self.plan.append(("twice", name, last))
                widths.append(c)
        last = len(widths) - 1
        self.head_kind = rng.choice(["conv", "linear", "flatten"])
        if self.head_kind == "conv":
            self.head = CONV[self.dims](widths[last], 2, 1)
        elif self.head_kind == "linear":
            self.head = nn.Linear(widths[last], 3)
        else:
            self.head = nn.Linear(widths[last] * SIZE[self.dims] ** self.dims, 3)

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
