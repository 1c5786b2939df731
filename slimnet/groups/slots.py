"""Slots: which indices of which tensor dims each unit owns, as sorted arrays, and the per-group views of them
that assembly (:mod:`slimnet.groups.assemble`) builds groups from. Vectorised over all units at once: a model has
10^5 of them, and a loop of array operations per member or per unit cost resnet50 tens of milliseconds."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from .model import Member

Shapes = dict[str, tuple[int, ...]]
ByMember = dict[Member, list[tuple[np.ndarray, str]]]  # every binding of one tensor dim: (atoms, role)


@dataclass
class Slots:
    """Every (member, unit root, index) slice of the units, as three arrays sorted by member, root, index
    (members numbered in sorted ``(tensor, dim)`` order); and the role of each tensor dim."""

    members: list[Member]
    member: np.ndarray
    root: np.ndarray
    index: np.ndarray
    roles: dict[Member, str]


def unit_slots(by_member: ByMember, roots: np.ndarray, unit_roots: set[int], shapes: Shapes) -> Slots:
    """For each unit (by root): the indices it owns in each tensor dim, vectorised over all members at once (a
    loop of array operations per member cost resnet50 ~10 ms)."""
    roles: dict[Member, str] = {}
    is_unit = np.zeros(len(roots), dtype=bool)
    is_unit[list(unit_roots)] = True
    members = sorted(m for m in by_member if m[0] in shapes)
    if not members:
        empty = np.zeros(0, dtype=np.int64)
        return Slots(members, empty, empty, empty, roles)
    per_member = []
    for member in members:
        entries = by_member[member]
        for _atoms, role in entries:
            if role:
                roles[member] = role
        # every entry of one member binds the same physical slices: the first atom per index decides
        per_member.append(entries[0][0] if len(entries) == 1 else np.max(np.stack([a for a, _ in entries]), axis=0))
    sizes = np.fromiter((len(a) for a in per_member), dtype=np.int64, count=len(per_member))
    atoms = np.concatenate(per_member).astype(np.int64, copy=False)
    m = np.repeat(np.arange(len(members), dtype=np.int64), sizes)
    i = np.arange(len(atoms), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    bound = atoms >= 0
    m, i, r = m[bound], i[bound], roots[atoms[bound]]
    ok = is_unit[r]
    m, r, i = m[ok], r[ok], i[ok]
    # by member, then root, then index: indices already ascend within a member, so a stable sort on one key
    order = np.argsort(m * (int(r.max(initial=0)) + 1) + r, kind="stable")
    return Slots(members, m[order], r[order], i[order], roles)


def unit_member_sets(slots: Slots) -> dict[bytes, list[int]]:
    """Units by the set of members they own slices of (a group's key), each list in ascending root order.
    Vectorised: each set is hashed to the sum of random 64-bit codes of its members, units are bucketed by hash,
    and every unit's set is then compared, element by element, with its bucket's first (a collision, never
    seen, falls back to the loop over units: a Python loop over every unit cost 17 ms on resnet50)."""
    order = np.lexsort((slots.member, slots.root))
    r, m = slots.root[order], slots.member[order]
    first = np.ones(len(r), dtype=bool)
    first[1:] = (r[1:] != r[:-1]) | (m[1:] != m[:-1])
    r, m = r[first], m[first]  # distinct (root, member) pairs, by root then member
    if not len(r):
        return {}
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    lengths = np.diff(np.r_[starts, len(r)])
    codes = np.random.default_rng(0).integers(1, 2**62, size=int(m.max()) + 1, dtype=np.int64)
    with np.errstate(over="ignore"):
        hashes = np.add.reduceat(codes[m], starts)  # wraps around: still a sum of random codes
    _, lead, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rep = lead[inverse]  # each unit's bucket's first unit
    offsets = np.arange(len(r)) - np.repeat(starts, lengths)
    same = (lengths == lengths[rep]).all() and (m == m[np.repeat(starts[rep], lengths) + offsets]).all()
    if not same:
        return _unit_member_sets_loop(r, m, starts)
    by_bucket = np.argsort(inverse, kind="stable")  # roots ascending within a bucket
    cuts = np.flatnonzero(np.diff(inverse[by_bucket])) + 1
    return {
        m[starts[u] : starts[u] + lengths[u]].tobytes(): part.tolist()
        for u, part in zip(lead.tolist(), np.split(r[starts][by_bucket], cuts))
    }


def _unit_member_sets_loop(r: np.ndarray, m: np.ndarray, starts: np.ndarray) -> dict[bytes, list[int]]:
    bounds = np.r_[starts, len(r)]
    buckets: dict[bytes, list[int]] = defaultdict(list)
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        buckets[m[s:e].tobytes()].append(int(r[s]))
    return buckets


def unit_positions(slots: Slots, gid: np.ndarray, first_member: np.ndarray) -> np.ndarray:
    """Each unit root's position in its group: units ordered by their first index in the group's first member."""
    g = gid[slots.root]
    at_first = slots.member == first_member[g]
    r, i = slots.root[at_first], slots.index[at_first]  # sorted by root, then index: a root's first is its min
    lead = np.r_[True, r[1:] != r[:-1]]
    r, i = r[lead], i[lead]
    order = np.lexsort((i, gid[r]))
    r, grp = r[order], gid[r[order]]
    starts = np.r_[0, np.flatnonzero(grp[1:] != grp[:-1]) + 1]
    rank = np.arange(len(r)) - np.repeat(starts, np.diff(np.r_[starts, len(r)]))
    pos = np.full(len(gid), -1, dtype=np.int64)
    pos[r] = rank
    return pos


def member_indices(slots: Slots, gid: np.ndarray, pos: np.ndarray, sizes: list[int]) -> list[dict]:
    """Each group's :data:`~slimnet.groups.model.MemberIndex` per member: one sort of all slices by group,
    member, unit position and index, then one run per (group, member)."""
    g, p = gid[slots.root], pos[slots.root]
    order = np.lexsort((slots.index, p, slots.member, g))
    g, m, p, i = g[order], slots.member[order], p[order], slots.index[order]
    bounds = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (m[1:] != m[:-1]), True])
    out: list[dict] = [{} for _ in sizes]
    if len(bounds) < 2:
        return out
    # every run's starts at once: run j owns slots off[j] .. off[j] + units, slot 0 empty, then one count per unit
    # position; a cumulative sum less the run's first element's position gives its starts
    first = bounds[:-1]
    units = np.asarray(sizes, dtype=np.int64)[g[first]]
    off = np.cumsum(units + 1) - (units + 1)
    run = np.repeat(np.arange(len(first)), np.diff(bounds))
    counts = np.bincount(off[run] + 1 + p, minlength=int(off[-1] + units[-1] + 1))
    starts = np.cumsum(counts) - np.repeat(first, units + 1)
    runs = zip(g[first].tolist(), m[first].tolist(), first.tolist(), bounds[1:].tolist(), off.tolist(), units.tolist())
    for grp, member, s, e, o, n in runs:
        out[grp][slots.members[member]] = (i[s:e], starts[o : o + n + 1])
    return out
