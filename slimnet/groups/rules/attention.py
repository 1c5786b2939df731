"""Attention: matmul (q against k, attention weights against v), scaled_dot_product_attention and
nn.MultiheadAttention. Heads are kept or removed whole: the attention rescales by the head size, and a removed
head would leave uniform attention rather than none, so trimming inside a head is never exact.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..atoms import NO_ATOM, canonical, constant_ids, one_atom_per_slice, unique_atoms, unique_pairs
from ..interpreter import AtomInterpreter
from ..registry import arg, rule
from .einsum import matmul_rows, owned_rows


@rule(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``A[..., n, k] @ B[..., k, m]``: atoms that vary along the contracted dim are paired across A and B
    (q against k in attention); atoms constant along it (a row of A, a column of B) carry to the output.
    Anything else (an atom varying along both, a contraction the other side cannot follow, channel atoms on
    both the rows and the columns) is poisoned."""
    a, b = it.ids_of(args[0]), it.ids_of(args[1])
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
        return it.unknown(n, value, "matmul of vectors")
    # Whether an operand contracts is read from its own atoms: a head's channels vary along k even when a reshape
    # has made them one unit (q @ k^T is then a whole head's product, see _contracted_product). Along the other
    # dim, atoms already one unit (MViT's class token and its pooled tokens, a depthwise conv's in and out) are
    # compared by their class.
    _, a_row_multi = one_atom_per_slice(a, -1)  # [..., n]: A's atoms vary along k?
    _, b_col_multi = one_atom_per_slice(b, -2)  # [..., m]: B's atoms vary along k?
    raw_a, raw_b = a, b
    a, b = canonical(a, it.roots()), canonical(b, it.roots())
    why = f"matmul at node {it.where()}"
    a_row, _ = one_atom_per_slice(a, -1)  # [..., n]: A's atom per row
    a_col, a_col_multi = one_atom_per_slice(a, -2)  # [..., k]: A's atom per contracted index, constant along n?
    b_col, _ = one_atom_per_slice(b, -2)  # [..., m]
    b_row, b_row_multi = one_atom_per_slice(b, -1)  # [..., k]
    a_contracts = bool(a_row_multi.any())
    b_contracts = bool(b_col_multi.any())
    if (a_contracts and a_col_multi.any() and owned_rows(it, raw_a, -1)) or (
        b_contracts and b_row_multi.any() and owned_rows(it, raw_b, -2)
    ):  # rows owned by several units (heads) against a shared operand: einsum's rule keeps them apart
        return matmul_rows(it, raw_a, raw_b, value)
    if a_contracts and a_col_multi.any():
        it.poison_ids(a, f"{why}: an operand's atoms vary along both of its last dims")
    if b_contracts and b_row_multi.any():
        it.poison_ids(b, f"{why}: an operand's atoms vary along both of its last dims")
    if a_contracts or b_contracts:
        _pair_contracted(it, a_col, b_row, why)
    rows = torch.full_like(a_row, NO_ATOM) if a_contracts else a_row
    cols = torch.full_like(b_col, NO_ATOM) if b_contracts else b_col
    if (a_contracts or b_contracts) and not (rows >= 0).any() and not (cols >= 0).any():
        return _contracted_product(it, a_col, b_row, value)
    if (rows >= 0).any() and (cols >= 0).any():
        # out[i, j] = sum_k a[i, k] b[k, j] needs both a's row atom and b's column atom (attn @ v: a head's
        # attention weights and its value columns): each such pair is one unit.
        grid_r = rows.unsqueeze(-1).expand(value.shape).reshape(-1)
        grid_c = cols.unsqueeze(-2).expand(value.shape).reshape(-1)
        both = (grid_r >= 0) & (grid_c >= 0)
        if both.any():
            it.unify_pairs(unique_pairs(grid_r[both], grid_c[both]))
    out = torch.where(rows.unsqueeze(-1) >= 0, rows.unsqueeze(-1), cols.unsqueeze(-2))
    return out.expand(value.shape).clone() if out.shape != value.shape else out


def _pair_contracted(it: AtomInterpreter, a_col: torch.Tensor, b_row: torch.Tensor, why: str) -> None:
    """A's and B's atoms at each contracted index are one unit; one facing no atom cannot be followed."""
    shape = torch.broadcast_shapes(a_col.shape, b_row.shape)
    ac, br = a_col.expand(shape).reshape(-1), b_row.expand(shape).reshape(-1)
    paired = (ac >= 0) & (br >= 0)
    if paired.any():
        it.unify_pairs(unique_pairs(ac[paired], br[paired]))
    lonely = torch.cat([ac[(ac >= 0) & (br < 0)], br[(br >= 0) & (ac < 0)]])
    it.poison(unique_atoms(lonely), f"{why}: contracted channels the other operand cannot follow")


def _contracted_product(it: AtomInterpreter, a_col: torch.Tensor, b_row: torch.Tensor, value: Any) -> Any:
    """Only contracted channels feed the product (q @ k^T). Where a slice's contracted channels are all one
    unit (a whole head: its head size was fixed in a reshape), removing that unit would leave the product 0,
    not absent, and what follows (softmax, attn @ v) would still see it: the slice's product belongs to that
    unit. Where they are several units, a group always keeps one of them, and removing the others changes the
    original and the pruned model alike; the product then carries no channel."""
    shape = torch.broadcast_shapes(a_col.shape, b_row.shape)
    both = torch.cat([a_col.expand(shape), b_row.expand(shape)], -1)
    flat = both.reshape(-1, both.shape[-1]).to(torch.int64)
    roots = torch.as_tensor(it.roots())
    units = torch.where(flat >= 0, roots[flat.clamp_min(0)], torch.full_like(flat, -1))
    unit, several = one_atom_per_slice(units, 1)
    atoms = torch.where(several, torch.full_like(unit, -1), unit)
    it.mark_heads(torch.unique(atoms[atoms >= 0]).tolist())
    out = atoms.to(torch.float64).reshape(tuple(both.shape[:-1]) + (1, 1))
    return out.expand(value.shape).clone()


@rule(F.scaled_dot_product_attention)
def sdpa(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """``softmax(q k^T * scale + mask) v`` per leading slice (batch, head). The default scale is
    1/sqrt(head size) and a removed head would leave uniform attention, not none: so a slice's q, k and v
    channels (and a per-head mask such as a relative position bias) are one unit, a whole head. With
    ``enable_gqa`` a key/value head serves its group of query heads, which then go together."""
    q, k, v = (it.ids_of(arg(args, kwargs, i, name)) for i, name in enumerate(("query", "key", "value")))
    mask = it.ids_of(arg(args, kwargs, 3, "attn_mask"))
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
        return it.unknown(n, value, "scaled_dot_product_attention of vectors")
    if q.dim() >= 3 and k.shape[-3] != q.shape[-3] and q.shape[-3] % k.shape[-3] == 0:  # grouped-query
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    parts = [t.expand(tuple(lead) + tuple(t.shape[-2:])).reshape(-1, t.shape[-2] * t.shape[-1]) for t in (q, k, v)]
    if isinstance(mask, torch.Tensor) and mask.dim() >= 2:
        m = mask.reshape((1,) * (len(lead) + 2 - mask.dim()) + tuple(mask.shape))
        if all(a in (1, b) for a, b in zip(m.shape[:-2], lead)):
            m = m.expand(tuple(lead) + tuple(m.shape[-2:]))
            parts.append(m.reshape(-1, m.shape[-2] * m.shape[-1]))
    atoms = it.per_index(torch.cat(parts, -1), 0, f"attention head at node {it.where()}")
    it.mark_heads(np.unique(atoms[atoms >= 0]))
    return torch.as_tensor(atoms, dtype=torch.float64).reshape(tuple(lead) + (1, 1)).expand(value.shape).clone()


@rule(nn.MultiheadAttention)
def multihead_attention(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Whole heads: a head's q, k and v rows of the packed projection and its out_proj columns are one unit
    (the attention rescales by the head size, so trimming inside a head would not be exact)."""
    mod = it.module_of(n)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        return it.unknown(n, value, "MultiheadAttention with separate q/k/v weights, bias_kv or zero_attn")
    q, k, v = (it.ids_of(arg(args, kwargs, i, name)) for i, name in enumerate(("query", "key", "value")))
    w, b = f"{n.target}.in_proj_weight", f"{n.target}.in_proj_bias" if mod.in_proj_bias is not None else None
    for src in (q, k, v):
        it.bind(w, 1, it.per_index(src, -1, it.at_node("merged into one feature")), "in")
    e, heads = mod.embed_dim, mod.num_heads
    head_atoms = it.new_atoms(heads, str(n.target))
    it.mark_heads(head_atoms)
    rows = np.tile(np.repeat(head_atoms, e // heads), 3)
    it.bind(w, 0, rows, "out")
    it.bind(b, 0, rows)
    it.bind(f"{n.target}.out_proj.weight", 1, np.repeat(head_atoms, e // heads), "in")
    out_value = value[0]
    out_atoms = it.new_atoms(out_value.shape[-1], f"{n.target}.out_proj")
    it.bind(f"{n.target}.out_proj.weight", 0, out_atoms, "out")
    if mod.out_proj.bias is not None:
        it.bind(f"{n.target}.out_proj.bias", 0, out_atoms)
    weights = None if value[1] is None else constant_ids(value[1])
    return (it.fill(out_atoms, out_value.shape, -1), weights)
