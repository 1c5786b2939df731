"""The rule registry (slimnet/groups/registry.py): a key is bound to one rule, and binding it to another fails
at registration; module rules are found along the MRO; the tracer's leaf policy; a rule is the one place that
supports an op, and a rule that refuses makes the op unknown (never a guess)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimnet._util import qualname
from slimnet.groups import analyse, registry
from slimnet.groups.registry import is_leaf_class, rule, rule_for
from slimnet.groups.rules.elementwise import passthrough
from slimnet.groups.rules.layers import conv_module
from slimnet.trace.tracer import trace

from .helpers import randomise


@pytest.fixture
def rules(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry to register into, so that the real one stays as imported."""
    table = dict(registry.RULES)
    monkeypatch.setattr(registry, "RULES", table)
    return table


def test_a_key_bound_to_another_rule_is_refused(rules):
    def other(it, n, args, kwargs, value):
        return None

    with pytest.raises(RuntimeError, match="bound twice"):
        rule(torch.relu)(other)
    with pytest.raises(RuntimeError, match="bound twice"):
        rule("view")(other)
    assert rules[torch.relu] is passthrough


def test_binding_a_key_to_its_own_rule_again_is_allowed(rules):
    rule(torch.relu, "sinh")(passthrough)
    assert rules[torch.relu] is passthrough and rules["sinh"] is passthrough


class MyConv(nn.Conv2d):
    pass


class Custom(nn.Module):
    def forward(self, x):
        return x * 2


class SubCustom(Custom):
    pass


def test_module_rules_are_found_along_the_mro():
    gm = trace(nn.Sequential(MyConv(3, 4, 1)), torch.randn(1, 3, 4, 4), is_leaf=lambda cls: cls is MyConv)
    node = next(n for n in gm.graph.nodes if n.op == "call_module")
    assert rule_for(node, gm) is conv_module


def test_the_leaf_policy_matches_rules_keyed_by_exact_qualified_name(rules):
    assert not is_leaf_class(Custom)
    rule(qualname(Custom))(passthrough)
    assert is_leaf_class(Custom)
    assert not is_leaf_class(SubCustom)  # the exact class only, as the tracer always did
    assert not is_leaf_class(nn.Conv2d)  # keyed by the class itself (and a leaf for torch.fx anyway)


class Sinh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).sinh())


def test_one_entry_supports_an_op_and_a_refusing_rule_makes_it_unknown(rules):
    x = torch.randn(1, 3, 4, 4)
    model = randomise(Sinh())
    reason = {g.name: g.reason for g in analyse(model, x).groups}["a"]
    assert reason.startswith("no channel rule for method .sinh()")
    rule("sinh")(passthrough)
    assert {g.name: g.reason for g in analyse(model, x).groups}["a"] is None
    seen = []

    def refuse(it, n, args, kwargs, value):
        seen.append(n.target)
        return None

    rules["sinh"] = refuse  # replacing a rule takes an explicit assignment: rule() would refuse
    reason = {g.name: g.reason for g in analyse(model, x).groups}["a"]
    assert seen == ["sinh"] and reason.startswith("no channel rule for method .sinh()")
