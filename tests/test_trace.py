"""Tracing (slimnet/trace.py, trace_symbolic.py, trace_values.py): which module classes stay leaves is passed
in by the caller, on every path (plain, with values, piece by piece), and the tracer modules import nothing of
the channel rules."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import fx, nn

import slimnet
from slimnet.trace import trace, trace_pieces
from slimnet.trace_values import trace_call


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(Inner(), nn.Conv2d(4, 2, 1))

    def forward(self, x):
        return self.block(x) + 1


def called(gm: fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]


def inner(cls: type) -> bool:
    return cls is Inner


X = torch.randn(1, 3, 4, 4)


def test_without_a_policy_only_torch_modules_are_leaves():
    assert called(trace(Outer(), X)) == ["block.0.conv", "block.1"]


def test_the_leaf_policy_is_passed_in():
    assert called(trace(Outer(), X, is_leaf=inner)) == ["block.0", "block.1"]


def test_the_value_tracer_and_the_pieces_follow_the_policy_too():
    assert called(trace_call(Outer(), (X,), {}, is_leaf=inner)) == ["block.0", "block.1"]
    assert called(trace_call(Outer(), (X,), {})) == ["block.0.conv", "block.1"]
    pieces = dict(trace_pieces(Outer(), X, is_leaf=inner))
    assert called(pieces["block"]) == ["0", "1"]


def test_the_tracer_imports_nothing_of_the_channel_rules():
    for name in ("trace", "trace_symbolic", "trace_values"):
        tree = ast.parse(Path(slimnet.__file__).with_name(f"{name}.py").read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if "groups" in m], name
