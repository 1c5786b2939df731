"""The cost model proper: terms resolved from atoms and weight dims to units, evaluated for any keep vector."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from .terms import Member, Term, constant, kept

Resolved = tuple[float, list[tuple[float, np.ndarray, np.ndarray]], str]  # (scale, forms over units, module)


@dataclass
class CostModel:
    """Terms resolved to units: ``macs(keep)`` and ``params(keep)`` for a keep vector over all units (in the
    order of :meth:`unit_index`), in microseconds per evaluation."""

    mac_terms: list[Resolved]
    param_terms: list[Resolved]
    n_units: int
    offsets: list[int] = field(default_factory=list)  # first unit index of each group
    #: False when the model was analysed piece by piece: MACs outside the traced pieces are not counted
    complete: bool = True

    @staticmethod
    def _value(terms: Sequence, keep: np.ndarray) -> float:
        total = 0.0
        for scale, forms, _ in terms:
            v = scale
            for const, idx, counts in forms:
                v *= const + float(counts @ keep[idx]) if len(idx) else const
            total += v
        return total

    def macs(self, keep: np.ndarray | None = None) -> int:
        return round(self._value(self.mac_terms, self._keep(keep)))

    def params(self, keep: np.ndarray | None = None) -> int:
        return round(self._value(self.param_terms, self._keep(keep)))

    def gradient(self, kind: str, keep: np.ndarray | None = None) -> np.ndarray:
        """d(MACs or params)/d(keep) at ``keep``: what each unit costs at the margin (``kind``: "macs" or
        "params"). MACs and parameters are sums of products of sums over units, so the derivative is exact, and a
        unit that appears once per term saves exactly this much when it is dropped."""
        k = self._keep(keep)
        grad = np.zeros(self.n_units)
        for scale, forms, _ in self.mac_terms if kind == "macs" else self.param_terms:
            values = [const + float(counts @ k[idx]) if len(idx) else const for const, idx, counts in forms]
            for i, (_, idx, counts) in enumerate(forms):
                if len(idx):
                    others = float(np.prod(values[:i] + values[i + 1 :])) if len(values) > 1 else 1.0
                    np.add.at(grad, idx, scale * others * counts)
        return grad

    def per_module(self, keep: np.ndarray | None = None) -> dict[str, int]:
        """MACs attributed to the module that ran each op (its own ops; containers' residual adds included)."""
        out: dict[str, float] = {}
        k = self._keep(keep)
        for term in self.mac_terms:
            out[term[2]] = out.get(term[2], 0.0) + self._value([term], k)
        return {name: round(v) for name, v in out.items()}

    def _keep(self, keep: np.ndarray | None) -> np.ndarray:
        return np.ones(self.n_units) if keep is None else np.asarray(keep, dtype=np.float64)

    def keep_vector(self, kept: Sequence[Sequence[int]]) -> np.ndarray:
        """The keep vector of one list of kept unit positions per group (in the analysis' group order)."""
        keep = np.zeros(self.n_units)
        for start, positions in zip(self.offsets, kept):
            keep[start + np.asarray(list(positions), dtype=np.int64)] = 1.0
        return keep


def resolve(
    terms: Sequence[Term],
    unit_of_atom: Callable[[np.ndarray], np.ndarray],
    member_units: dict[Member, tuple[np.ndarray, np.ndarray]],
    alias: dict[str, str],
) -> list[Resolved]:
    """Terms over atoms and weight dims -> terms over units. ``unit_of_atom`` maps atom ids to global unit
    indices (-1: the atom is in no unit and always stays); ``member_units`` maps a (tensor, dim) member to the
    units that own its indices and how many each owns."""
    out: list[Resolved] = []
    for term in terms:
        forms = []
        for f in term.forms:
            if f.dim is not None:
                member = (alias.get(f.dim[0], f.dim[0]), f.dim[1])
                units, counts = member_units.get(member, (np.zeros(0, np.int64), np.zeros(0)))
                forms.append((f.const - float(counts.sum()), units, counts))
            elif (f.atoms is not None and len(f.atoms)) or f.mixed:
                units, counts, const = _units_of(f, unit_of_atom)
                inside = units >= 0
                const += float(counts[~inside].sum())
                idx, summed = _sum_by(units[inside], counts[inside])
                forms.append((const, idx, summed))
            else:
                forms.append((f.const, np.zeros(0, np.int64), np.zeros(0)))
        out.append((term.scale, forms, term.module))
    return out


def _units_of(f: Any, unit_of_atom: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """A form's atoms as units with their counts, and its constant; a mixed slice counts for its unit when all
    of its atoms ended in that one unit, else it is constant (kept whatever is cut)."""
    atoms = f.atoms if f.atoms is not None else np.zeros(0, np.int64)
    units = [unit_of_atom(atoms)] if len(atoms) else []
    counts = [np.asarray(f.counts, dtype=np.float64)] if len(atoms) else []
    const = f.const
    for group in f.mixed or []:
        u = unit_of_atom(group)
        if len(u) and (u >= 0).all() and (u == u[0]).all():
            units.append(u[:1])
            counts.append(np.array([f.mixed_count]))
        else:
            const += f.mixed_count
    if not units:
        return np.zeros(0, np.int64), np.zeros(0), const
    return np.concatenate(units), np.concatenate(counts), const


def _sum_by(idx: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(idx):
        return np.zeros(0, np.int64), np.zeros(0)
    uniq, inverse = np.unique(idx, return_inverse=True)
    return uniq, np.bincount(inverse, weights=counts)


def param_terms(model: nn.Module) -> list[Term]:
    """Parameters: each tensor (once) as the product of its dims' kept sizes."""
    out, seen = [], set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        forms = [kept(name, d, s) for d, s in enumerate(p.shape)] or [constant(1.0)]
        out.append(Term(1.0, forms, name.rpartition(".")[0], "param"))
    return out


def unit_offsets(groups: Sequence[Any]) -> list[int]:
    """The global index of each group's first unit: units are numbered group after group."""
    offsets, n = [], 0
    for g in groups:
        offsets.append(n)
        n += len(g.units)
    return offsets


def member_units(groups: Sequence[Any], offsets: Sequence[int]) -> dict[Member, tuple[np.ndarray, np.ndarray]]:
    """Each member tensor dim -> (global indices of the units owning its slices, how many slices each owns)."""
    acc: dict[Member, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for g, start in zip(groups, offsets):
        for m in g.members:
            sizes = g.unit_sizes(m)
            owner = np.flatnonzero(sizes)
            units, counts = acc.setdefault(m, ([], []))
            units.append(start + owner)
            counts.append(sizes[owner].astype(np.float64))
    return {m: (np.concatenate(u), np.concatenate(c)) for m, (u, c) in acc.items()}


def resolve_part(terms: Sequence[Term], groups: Sequence[Any], roots: np.ndarray, alias: dict[str, str],
                 offset: int = 0, prefix: str = "") -> list[Resolved]:  # fmt: skip
    """The terms of one traced graph (whose units are ``groups``, numbered from ``offset``) over global units;
    ``prefix`` names the piece of a model analysed piece by piece."""
    offsets = [offset + o for o in unit_offsets(groups)]
    unit_at = np.full(len(roots), -1, dtype=np.int64)
    for g, start in zip(groups, offsets):
        unit_roots = g.units.roots if hasattr(g.units, "roots") else [u.root for u in g.units]
        unit_at[unit_roots] = np.arange(start, start + len(g.units))
    members = member_units(groups, offsets)
    resolved = resolve(terms, lambda atoms: unit_at[roots[atoms]], members, alias)
    if prefix:
        resolved = [(scale, forms, f"{prefix}.{where}" if where else prefix) for scale, forms, where in resolved]
    return resolved


def build(model: nn.Module, groups: Sequence[Any], alias: dict[str, str], mac_terms: list[Resolved],
          complete: bool = True) -> CostModel:  # fmt: skip
    """The cost model of ``model`` whose units are ``groups``: its MAC terms (already over global units) and
    one parameter term per parameter tensor."""
    offsets = unit_offsets(groups)
    members = member_units(groups, offsets)
    params = resolve(param_terms(model), lambda atoms: np.full(len(atoms), -1), members, alias)
    n = offsets[-1] + len(groups[-1].units) if groups else 0
    return CostModel(mac_terms, params, n, offsets, complete)
