"""Assembly (slimnet/groups/assemble.py) on evidence built by hand, without tracing or interpreting anything:
units are classes holding a produced channel, groups are units with the same member slices, and the marks
(poison, notes, normalisation, heads, frozen parameters) decide reasons and kinds. Also runs the worked example
in AtomInterpreter's docstring."""

from __future__ import annotations

import copy
import doctest

import numpy as np

from slimnet.groups import Evidence, assemble, interpreter

SHAPES = {"a.weight": (4, 2), "a.bias": (4,), "b.weight": (2, 4), "b.bias": (2,), "s.weight": (4,)}


def conv_conv(parents: list[int] | None = None, **kw) -> Evidence:
    """Input atom 0; layer ``a`` makes atoms 1-4, layer ``b`` (the output) reads them and makes atoms 5-6."""
    bindings = [
        ("a.weight", 0, np.array([1, 2, 3, 4]), "out"),
        ("a.bias", 0, np.array([1, 2, 3, 4]), ""),
        ("a.weight", 1, np.array([0, 0]), "in"),
        ("b.weight", 1, np.array([1, 2, 3, 4]), "in"),
        ("b.weight", 0, np.array([5, 6]), "out"),
        ("b.bias", 0, np.array([5, 6]), ""),
    ]
    return Evidence(
        parents=parents or list(range(7)),
        channel_ranges=[(1, 4, "a"), (5, 2, "b")],
        bindings=bindings + kw.pop("bindings", []),
        poison=[(0, "model input x"), (5, "model output"), (6, "model output")] + kw.pop("poison", []),
        **kw,
    )


def by_name(evidence: Evidence, shapes: dict = SHAPES) -> dict:
    return {g.name: g for g in assemble(evidence, shapes)}


def test_a_layer_and_its_reader_are_one_group_of_units():
    groups = by_name(conv_conv())
    a, b = groups["a"], groups["b"]
    assert a.prunable and a.n_units == 4 and a.kind == "channels" and a.normalised is None
    assert a.members == [("a.bias", 0), ("a.weight", 0), ("b.weight", 1)]
    assert [u.members[("b.weight", 1)] for u in a.units] == [[0], [1], [2], [3]]
    assert a.roles == {("a.bias", 0): "", ("a.weight", 0): "out", ("b.weight", 1): "in"}
    assert b.reason == "model output" and b.members == [("b.bias", 0), ("b.weight", 0)]
    assert list(groups) == ["a", "b"]  # in the order of their first atom; the input's atom 0 is no unit


def test_assembly_reads_the_evidence_and_never_changes_it():
    evidence = conv_conv(param_ranges={"s.weight": (7, (4,))}, parents=list(range(7)) + [1, 2, 3, 4])
    before = copy.deepcopy(evidence)
    assemble(evidence, SHAPES)
    assert evidence.parents == before.parents and evidence.poison == before.poison
    assert evidence.notes == before.notes and len(evidence.bindings) == len(before.bindings)


def test_one_slice_bound_to_several_atoms_merges_them():
    shared = ("s.weight", 0, np.array([2, 1, 3, 4]), "")  # a second binding of s.weight that swaps atoms 1 and 2
    groups = by_name(conv_conv(bindings=[("s.weight", 0, np.array([1, 2, 3, 4]), ""), shared]))
    units = [u.members[("a.weight", 0)] for u in groups["a"].units]
    assert units == [[0, 1], [2], [3]]


def test_a_free_parameter_is_bound_along_the_dim_whose_slices_are_units():
    # s.weight got one atom per element (7-10), which the rules unified with the channels 1-4
    groups = by_name(conv_conv(parents=list(range(7)) + [1, 2, 3, 4], param_ranges={"s.weight": (7, (4,))}))
    assert ("s.weight", 0) in groups["a"].members and groups["a"].prunable


def test_a_free_parameter_that_no_dim_fits_is_left_whole_with_its_reason():
    shapes = dict(SHAPES, **{"p": (2, 2)})
    # p's four elements (7-10) follow channels 1, 2, 3, 4: neither its rows nor its columns are one unit each
    evidence = conv_conv(parents=list(range(7)) + [1, 2, 3, 4], param_ranges={"p": (7, (2, 2))})
    assert by_name(evidence, shapes)["a"].reason == "parameter p cannot be sliced along one dim"


def test_marks_decide_reasons_kinds_and_normalisation():
    groups = by_name(conv_conv(heads=[1, 2, 3, 4], normed=[(3, "normalised over by LayerNorm ln")]))
    assert groups["a"].kind == "heads" and groups["a"].normalised == "normalised over by LayerNorm ln"
    assert groups["a"].prunable and groups["b"].kind == "channels"
    frozen = by_name(conv_conv(frozen={"b.weight": "no channel rule for op at node x"}))
    assert frozen["a"].reason == "no channel rule for op at node x"  # every atom bound to b.weight


def test_a_single_unit_says_why_it_is_one():
    merged = [0, 1, 1, 1, 1, 5, 6]  # the rules unified channels 1-4
    assert by_name(conv_conv(parents=merged))["a"].reason == "a single unit: nothing to choose from"
    noted = by_name(conv_conv(parents=merged, notes=[(2, "size fixed in forward at node view")]))
    assert noted["a"].reason == "all channels go together (size fixed in forward at node view)"


def test_the_atom_interpreter_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(interpreter.AtomInterpreter, "AtomInterpreter", globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_units_are_bucketed_by_their_exact_member_sets():
    """unit_member_sets hashes each unit's member set; the buckets must be exactly those of comparing the sets
    (checked against a dict of tuples on random slots, and on the loop it falls back to after a collision)."""
    import importlib

    assembly = importlib.import_module("slimnet.groups.slots")
    rng = np.random.default_rng(1)
    sets = [tuple(sorted(rng.choice(6, size=rng.integers(1, 4), replace=False).tolist())) for _ in range(5)]
    member, root, index = [], [], []
    for unit in range(300):
        for k in sets[int(rng.integers(len(sets)))]:
            for i in range(int(rng.integers(1, 3))):  # a unit may own several indices of one member
                member.append(k), root.append(3 * unit + 1), index.append(i)
    order = np.lexsort((index, root, member))
    slots = assembly.Slots([("t", 0)] * 6, *(np.asarray(a, dtype=np.int64)[order] for a in (member, root, index)), {})
    expected: dict[bytes, list[int]] = {}
    for unit in sorted(set(root)):
        key = np.asarray(sorted({m for m, r in zip(member, root) if r == unit}), dtype=np.int64).tobytes()
        expected.setdefault(key, []).append(unit)
    assert assembly.unit_member_sets(slots) == expected
    r = np.asarray(sorted(set(root)), dtype=np.int64)
    pairs = sorted({(rt, m) for m, rt in zip(member, root)})
    rr, mm = (np.asarray(x, dtype=np.int64) for x in zip(*pairs))
    starts = np.flatnonzero(np.r_[True, rr[1:] != rr[:-1]])
    assert dict(assembly._unit_member_sets_loop(rr, mm, starts)) == expected
    assert len(r) == 300 and len(expected) <= len(sets)
