"""Tracing (slimnet/trace/: tracer.py, symbolic.py, values.py): which module classes stay leaves is passed
in by the caller, on every path (plain, with values, piece by piece), and the tracer modules import nothing of
the channel rules."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import fx, nn

import slimnet
from slimnet.trace.tracer import trace, trace_pieces
from slimnet.trace.values import trace_call


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
    for name in ("tracer", "symbolic", "values", "reduced"):
        tree = ast.parse((Path(slimnet.__file__).parent / "trace" / f"{name}.py").read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if "groups" in m], name


class Stateful(nn.Module):
    """Stores what it computes on itself during forward, as RAFT keeps its correlation pyramid: a new attribute,
    a list it appends to, an int it counts with and a new submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)
        self.cache: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        self.pyramid = [y, torch.nn.functional.avg_pool2d(y, 2)]
        self.cache.append(y)
        self.calls += 1
        self.extra = nn.Identity()
        return self.conv2(self.pyramid[0] + self.pyramid[1].mean((2, 3), keepdim=True))


def _state(model: nn.Module) -> list[tuple[str, list[tuple[str, int]]]]:
    """Every module's attributes by name and object identity, and the contents of the lists it holds."""
    out = []
    for name, m in model.named_modules():
        attrs = [(k, id(v)) for k, v in m.__dict__.items()]
        attrs += [(f"{k}[]", id(x)) for k, v in m.__dict__.items() if isinstance(v, list) for x in v]
        out.append((name, sorted(attrs)))
    return out


def test_tracing_leaves_a_model_that_stores_state_during_forward_untouched():
    from slimnet.api import graph, shrink

    from .helpers import check, randomise

    m = randomise(Stateful())
    before = _state(m)
    trace(m, X)
    trace_call(m, (X,), {})
    trace_pieces(m, X)
    graph(m, X)
    assert _state(m) == before and m.cache == [] and m.calls == 0 and not hasattr(m, "pyramid")
    res = check(m, torch.randn(1, 3, 8, 8))
    assert _state(m) == before and len(res.plan["tensors"]["conv1.weight"]["0"]) == 4
    assert shrink(m, torch.randn(1, 3, 8, 8), measure=False).verification.passed and _state(m) == before


def _flat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """A plain tensor helper hidden from fx by torch.fx.wrap, as torchvision hides MViT's _unsqueeze."""
    b, c, h, w = x.shape
    return x.reshape(b, heads, c // heads, h * w)


def _unsqueezed(x: torch.Tensor) -> torch.Tensor:
    """Branches on ``x.dim()``: only traces with example values beside the proxies."""
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x


fx.wrap("_flat_heads")
fx.wrap("_unsqueezed")


class Wrapped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y = _flat_heads(torch.relu(self.conv1(x)), 2).reshape(x.shape[0], -1, x.shape[2], x.shape[3])
        z = _unsqueezed(self.conv2(y).mean((2, 3)))
        return self.fc(z.flatten(1))


def test_fx_wrapped_tensor_helpers_are_traced_through():
    from slimnet.groups.registry import has_rule

    from .helpers import check, randomise

    assert [n.target for n in trace(Wrapped(), X).graph.nodes if n.meta.get("is_wrapped")] == [
        _flat_heads,
        _unsqueezed,
    ]  # fx's default: opaque calls
    gm = trace(Wrapped(), X, keep_wrapped=has_rule)
    assert not [n for n in gm.graph.nodes if n.meta.get("is_wrapped")]
    res = check(randomise(Wrapped()), torch.randn(1, 3, 4, 4))
    kept1 = res.plan["tensors"]["conv1.weight"]["0"]
    assert len(kept1) == 4 and kept1[2:] == [k + 4 for k in kept1[:2]]  # the helper's 2 heads lose the same channels
    assert len(res.plan["tensors"]["conv2.weight"]["0"]) == 4


def test_eval_mode_is_set_once_and_restored(monkeypatch):
    """``in_eval`` walks the tree only when some module is training; tracing gives a training model back in
    training mode, and leaves an eval model (even one with a submodule left training) all in eval mode."""
    from slimnet._tensors import in_eval

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))
    x = torch.randn(1, 3, 8, 8)
    net.train()
    trace(net, x)
    assert all(m.training for m in net.modules())
    net.eval()
    net[1].train()
    trace(net, x)
    assert not any(m.training for m in net.modules())

    def refuse(*_args: object) -> None:
        raise AssertionError("walked the tree although every module was in eval mode")

    monkeypatch.setattr(nn.Module, "train", refuse)
    assert in_eval(net) is net
