"""Einsum of two operands (MViT's relative-position term ``bythwc,hkc->bythwk``, attention written as einsum).

Both operands are laid out as ``[output letters..., contracted letters]`` (a letter an operand lacks is a
broadcast dim of size 1), so every output position reads one *row* of each operand: its atoms along the
contracted letters. A row whose atoms vary along them and are one unit is *owned*: a whole head's channels
(its head size fixed in a reshape). Removing that unit removes the whole row, never one contracted index, so
the product there belongs to the unit (as in :func:`~slimnet.groups.rules.attention.matmul`), and the other
operand's row is only coupled to it as a whole: made one unit with it when it faces that unit alone, and left
whole when it faces several (a relative-position table shared by all heads would otherwise merge the heads).
Rows that are not owned follow matmul: atoms at the same contracted index are one unit, atoms constant along
the contraction carry to the output, contracted atoms facing no atom are left whole. Anything else (one
operand or three, ``...``, a letter repeated in an operand or summed inside one operand) is refused. A matmul
whose rows are owned by several units (MViT's temporal term ``r_q @ Rt^T``) is handed here (:func:`matmul_rows`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from ..atoms import NO_ATOM, canonical, one_atom_per_slice, unique_atoms, unique_pairs
from ..interpreter import AtomInterpreter
from ..registry import rule


def parse(equation: Any, count: int) -> tuple[str, str, str] | None:
    """``(a letters, b letters, output letters)`` of a two-operand equation this rule follows, else None."""
    if not isinstance(equation, str) or count != 2 or "." in equation:
        return None
    eq = equation.replace(" ", "")
    lhs, _, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != 2:
        return None
    a, b = ins
    if "->" not in eq:  # implicit output: the letters seen once, in alphabetical order
        out = "".join(sorted(c for c in set(a + b) if (a + b).count(c) == 1))
    letters = a + b + out
    if not letters.isalpha() or any(len(set(s)) != len(s) for s in (a, b, out)):
        return None
    if not set(out) <= set(a + b) or any(c not in out and not (c in a and c in b) for c in a + b):
        return None  # a letter summed inside one operand
    return a, b, out


def _align(ids: torch.Tensor, letters: str, out: str, contracted: str, sizes: dict[str, int]) -> torch.Tensor:
    """``ids`` as ``[output letters (1 where absent)..., contracted letters flattened]``."""
    order = [letters.index(c) for c in out + contracted if c in letters]
    t = ids.permute(order).reshape([ids.shape[letters.index(c)] if c in letters else 1 for c in out + contracted])
    t = t.expand(list(t.shape[: len(out)]) + [sizes[c] for c in contracted])
    return t.reshape(list(t.shape[: len(out)]) + [-1]) if contracted else t.unsqueeze(-1)


def _over(t: torch.Tensor, dims: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``one_atom_per_slice`` over several dims (kept as size 1)."""
    if not dims:
        return t, torch.zeros_like(t, dtype=torch.bool)
    rest = [d for d in range(t.dim()) if d not in dims]
    flat = t.permute(rest + dims).reshape([t.shape[d] for d in rest] + [-1])
    one, several = one_atom_per_slice(flat, -1)
    shape = [1 if d in dims else t.shape[d] for d in range(t.dim())]
    return one.reshape(shape), several.reshape(shape)


def _rows(it: AtomInterpreter, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: its atom when constant along the contraction (else -1), whether its atoms vary along it, and
    its unit (root; -1 none, -2 several)."""
    one, multi = one_atom_per_slice(x, -1)
    unit, several = one_atom_per_slice(canonical(x, it.roots()), -1)
    return torch.where(multi, torch.full_like(one, NO_ATOM), one), multi, torch.where(several, -2.0, unit)


def _face(it: AtomInterpreter, x: tuple, y: tuple, free: list[int], why: str) -> None:
    """Couple ``y``'s rows that are not owned to the owned rows of ``x`` they face: one unit with the unit they
    face alone, left whole where they face several (coupling them would merge those units)."""
    x_ids, x_owned, x_unit = x
    y_ids, y_owned, _ = y
    facing, several = _over(torch.where(x_owned, x_unit, NO_ATOM), free)
    rows = ~y_owned & (facing >= 0)
    if not rows.any():
        return
    atoms = (y_ids >= 0) & rows.unsqueeze(-1)
    lone = atoms & ~several.unsqueeze(-1)
    if lone.any():
        it.unify_pairs(unique_pairs(y_ids[lone], facing.unsqueeze(-1).expand_as(y_ids)[lone]))
    it.poison(unique_atoms(y_ids[atoms & several.unsqueeze(-1)]), f"{why}: contracted against several heads")


def _pair(it: AtomInterpreter, a: torch.Tensor, b: torch.Tensor, a_free: list[int], b_free: list[int]) -> None:
    """Matmul's pairing: at each contracted index the atoms of both operands are one unit."""
    rep_a = a.amax(a_free, keepdim=True) if a_free else a
    rep_b = b.amax(b_free, keepdim=True) if b_free else b
    for x, rep in ((a, rep_b), (b, rep_a)):
        both = (x >= 0) & (rep >= 0)
        if both.any():
            it.unify_pairs(unique_pairs(x[both], rep.expand_as(x)[both]))


@rule(torch.einsum)
def einsum(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Two operands, letters either kept (in the output) or contracted (in both inputs, not in the output)."""
    operands = list(args[1:])
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = list(operands[0])
    letters = parse(args[0] if args else kwargs.get("equation"), len(operands))
    ids = [it.ids_of(x) for x in operands]
    if letters is None or not all(isinstance(t, torch.Tensor) for t in ids) or not isinstance(value, torch.Tensor):
        return it.unknown(n, value, "einsum of this form")
    (la, lb, out), (a, b) = letters, ids
    if a.dim() != len(la) or b.dim() != len(lb):
        return it.unknown(n, value, "einsum of this form")
    return contract(it, (a, la), (b, lb), out, value)


def contract(
    it: AtomInterpreter, a_in: tuple, b_in: tuple, out: str, value: torch.Tensor, op: str = "einsum"
) -> torch.Tensor:
    """The ids of ``einsum(a letters, b letters -> out)`` of two id tensors given with their letters."""
    (a, la), (b, lb) = a_in, b_in
    sizes = {c: max(t.shape[s.index(c)] for t, s in ((a, la), (b, lb)) if c in s) for c in la + lb}
    contracted = "".join(c for c in la if c in lb and c not in out)
    a, b = _align(a, la, out, contracted, sizes), _align(b, lb, out, contracted, sizes)
    why = f"{op} at node {it.where()}"
    a_free = [d for d in range(len(out)) if a.shape[d] > 1 and b.shape[d] == 1]
    b_free = [d for d in range(len(out)) if b.shape[d] > 1 and a.shape[d] == 1]
    (a_row, a_multi, a_unit), (b_row, b_multi, b_unit) = _rows(it, a), _rows(it, b)
    a_owned, b_owned = a_multi & (a_unit >= 0), b_multi & (b_unit >= 0)
    both = a_owned & b_owned  # two owned rows meet (q against k): their units are one
    if both.any():
        grid = torch.broadcast_shapes(a_unit.shape, b_unit.shape)
        it.unify_pairs(unique_pairs(a_unit.expand(grid)[both], b_unit.expand(grid)[both]))
    _face(it, (a, a_owned, a_unit), (b, b_owned, b_unit), a_free, why)
    _face(it, (b, b_owned, b_unit), (a, a_owned, a_unit), b_free, why)
    rest_a = torch.where(a_owned.unsqueeze(-1), NO_ATOM, a)
    rest_b = torch.where(b_owned.unsqueeze(-1), NO_ATOM, b)
    _pair(it, rest_a, rest_b, a_free, b_free)
    for x, y, x_multi, y_free in ((rest_a, b, a_multi & ~a_owned, b_free), (rest_b, a, b_multi & ~b_owned, a_free)):
        hole = (y < 0).amax(y_free, keepdim=True) if y_free else y < 0
        lonely = (x >= 0) & hole & x_multi.unsqueeze(-1)
        it.poison(unique_atoms(x[lonely]), f"{why}: contracted channels the other operand cannot follow")
    return _output(it, (a, a_row, a_multi, a_owned), (b, b_row, b_multi, b_owned), value)


def matmul_rows(it: AtomInterpreter, a: torch.Tensor, b: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as the einsum ``...nk,...km->...nm`` (batch dims broadcast): for a matmul whose rows are owned by
    several units (MViT's temporal relative-position term ``r_q @ Rt^T``, every head's rows against one table
    shared by all heads), which matmul's own pairing would merge."""
    nd = max(a.dim(), b.dim())
    a = a.reshape((1,) * (nd - a.dim()) + tuple(a.shape))
    b = b.reshape((1,) * (nd - b.dim()) + tuple(b.shape))
    batch = "abcdefghij"[: nd - 2]
    return contract(it, (a, batch + "nk"), (b, batch + "km"), batch + "nm", value, "matmul")


def owned_rows(it: AtomInterpreter, x: torch.Tensor, dim: int) -> bool:
    """Whether every slice of ``x`` along ``dim`` that holds atoms is owned: several atoms, all one unit."""
    _, multi = one_atom_per_slice(x, dim)
    _, several = one_atom_per_slice(canonical(x, it.roots()), dim)
    return bool((~(x >= 0).any(dim) | (multi & ~several)).all())


def _output(it: AtomInterpreter, a: tuple, b: tuple, value: torch.Tensor) -> torch.Tensor:
    """The output's atoms: an owned row's unit; else matmul's (the row's atom, the column's, one unit where
    both carry one; a contraction that is one unit belongs to it, several leave no atom)."""
    (a_ids, a_row, a_multi, a_owned), (b_ids, b_row, b_multi, b_owned) = a, b
    grid = tuple(value.shape)
    r, c = a_row.expand(grid), b_row.expand(grid)
    carry = (r >= 0) & (c >= 0) & ~(a_owned | b_owned).expand(grid)
    if carry.any():
        it.unify_pairs(unique_pairs(r[carry], c[carry]))
    _, _, ua = _rows(it, a_ids)
    _, _, ub = _rows(it, b_ids)
    ua, ub = ua.expand(grid), ub.expand(grid)
    unit = torch.where(ua == -1, ub, torch.where((ub == -1) | (ub == ua), ua, -2.0))
    owned = torch.where(a_owned.expand(grid), ua, torch.where(b_owned.expand(grid), ub, NO_ATOM))
    contracting = (a_multi | b_multi).expand(grid) & (unit >= 0)
    it.mark_heads(unique_atoms(torch.cat([owned[owned >= 0], unit[contracting & (owned < 0) & (r < 0) & (c < 0)]])))
    carried = torch.where(r >= 0, r, torch.where(c >= 0, c, torch.where(contracting, unit, NO_ATOM)))
    return torch.where(owned >= 0, owned, carried).clone()
