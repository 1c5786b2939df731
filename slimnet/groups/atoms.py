"""Atoms and id tensors: the vocabulary shared by the interpreter, the rules and assembly.

An *atom* is an integer id for one channel of one producer (or one element of a free parameter); an *id tensor*
has a value's shape and holds, in float64, the atom of each position, or :data:`NO_ATOM`. A :class:`UnionFind`
over atoms records which must be removed together. Kept apart from :mod:`slimnet.groups.interpreter` so that
assembly (which only needs the union-find) and the rules (which need the helpers) do not depend on the
interpreter's module for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import fx

from .._tensors import map_tensors

#: The id of a position that belongs to no atom (a constant, padding): it couples nothing.
NO_ATOM = -1.0


class UnionFind:
    """Union-find with path halving; ids are consecutive ints handed out by :meth:`add`. The root of a class is
    always its smallest member, whatever the order of the unions."""

    def __init__(self, parents: list[int] | None = None) -> None:
        self.parent: list[int] = list(parents or [])
        #: bumped by every union; :meth:`roots` is recomputed only after one (the analysis of a transformer
        #: asks for the roots of ~10^5 atoms at every attention product, mostly with no union in between)
        self._version = 0
        self._roots: tuple[int, np.ndarray] | None = None

    def add(self, n: int) -> int:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._version += 1
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_pairs(self, pairs: Any) -> None:
        """:meth:`union` of each ``(a, b)`` pair (inlined: residual adds unify thousands of pairs)."""
        self._version += 1
        p = self.parent
        for a, b in pairs:
            while p[a] != a:
                p[a] = p[p[a]]
                a = p[a]
            while p[b] != b:
                p[b] = p[p[b]]
                b = p[b]
            if a < b:
                p[b] = a
            elif b < a:
                p[a] = b

    def union_all(self, atoms: Any) -> None:
        atoms = [int(a) for a in atoms]
        for a in atoms[1:]:
            self.union(atoms[0], a)

    def roots(self) -> np.ndarray:
        """The root of every atom, vectorised; the same array until the next union (atoms added since are their
        own roots). Callers must not write to it."""
        cached = self._roots
        if cached is not None and cached[0] == self._version:
            known = cached[1]
            if len(known) == len(self.parent):
                return known
            grown = np.concatenate([known, np.arange(len(known), len(self.parent), dtype=np.int64)])
            self._roots = (self._version, grown)
            return grown
        p = np.asarray(self.parent, dtype=np.int64)
        while True:
            q = p[p]
            if np.array_equal(q, p):
                self._roots = (self._version, p)
                return p
            p = q


# ------------------------------------------------------------------------------------------ id tensor helpers
def one_atom_per_slice(ids: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each slice along ``dim`` (reduced away): its smallest atom (-1 where it holds none), and whether it
    holds several. The one masked min/max behind ``per_index``, ``tie`` and matmul's row and column atoms."""
    if ids.numel() and ids.shape[dim]:
        mn, mx = torch.aminmax(ids, dim=dim)
        if bool(mn.min() >= 0):  # no slice holds NO_ATOM (nearly always): one pass instead of five
            return mn, mn != mx
    mask = ids >= 0
    top = float("inf") if ids.is_floating_point() else torch.iinfo(ids.dtype).max
    big = torch.tensor(top, dtype=ids.dtype)
    mn = torch.where(mask, ids, big).amin(dim)
    mx = torch.where(mask, ids, -big).amax(dim)
    has = mask.any(dim)
    return torch.where(has, mn, torch.full_like(mn, -1)), has & (mn != mx)


def canonical(ids: torch.Tensor, roots: Any) -> torch.Tensor:
    """``ids`` with every atom replaced by its class's root (``roots``: the union-find's, one per atom): atoms
    that the rules have already made one unit (MViT's class token and its pooled tokens, both a depthwise conv's
    channel, a whole head's channels) no longer look different."""
    if not ids.numel():
        return ids
    r = torch.as_tensor(roots, dtype=torch.float64)
    flat = ids.reshape(-1)
    out = torch.where(flat >= 0, r[flat.clamp_min(0).to(torch.int64)], flat)
    return out.reshape(ids.shape)


def constant_ids(value: Any, atom: float = NO_ATOM) -> Any:
    """An id structure for ``value`` whose every position holds ``atom`` (by default: no atom)."""
    return map_tensors(value, lambda t: torch.full(t.shape, atom, dtype=torch.float64), None)


def unique_pair_arrays(a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (a, b) atom pairs as two arrays, via one 1-D unique over a combined key (unique over rows is
    slow)."""
    a64, b64 = a.to(torch.int64), b.to(torch.int64)
    m = int(b64.max()) + 1
    keys = torch.unique(a64 * m + b64).numpy()
    return keys // m, keys % m


def unique_pairs(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int]]:
    """Distinct (a, b) atom pairs."""
    xs, ys = unique_pair_arrays(a, b)
    return list(zip(xs.tolist(), ys.tolist()))


def unique_atoms(t: torch.Tensor) -> list[int]:
    """The distinct atoms of an id tensor, without ``NO_ATOM``."""
    u = torch.unique(t)
    return [int(a) for a in u.tolist() if a >= 0]


def nodes_in(value: Any) -> list[fx.Node]:
    """The fx nodes anywhere in an argument structure."""
    out: list[fx.Node] = []
    fx.node.map_arg(value, out.append)
    return out
