"""The atom interpreter's operations on id tensors (:class:`IdTensorOps`, a base of
:class:`~slimnet.groups.interpreter.AtomInterpreter`): one atom per index along a dim, filling a shape with
atoms, tying the atoms along a dim. The rules call them as ``it.per_index(...)``, ``it.fill(...)``,
``it.tie(...)``; what they learn goes through the interpreter's ``unify_pairs`` and ``note``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._tensors import RecentByTensor
from .atoms import one_atom_per_slice, unique_pairs

#: A reason, or a function that makes it when it is needed (:meth:`AtomInterpreter.at_node`).
Why = str | Callable[[], str]


class IdTensorOps:
    """Id-tensor operations over the interpreter's union-find. ``per_index`` remembers its recent answers in
    ``self._known`` (set up by the interpreter)."""

    _known: RecentByTensor

    def unify_pairs(self, pairs: Any) -> None:  # pragma: no cover - the interpreter's
        raise NotImplementedError

    def note(self, atom: int, reason: str) -> None:  # pragma: no cover - the interpreter's
        raise NotImplementedError

    def per_index(self, ids: torch.Tensor, dim: int, why: Why = "") -> np.ndarray:
        """One atom per index along ``dim``; where a slice holds several atoms they become one unit (``why``: the
        note for them, or a function that makes it: a source line costs a lookup, and most slices hold one
        atom). The answer for an id tensor that :meth:`fill` made, or that was asked about just before and has
        not been written to since (a conv's output read by its norm, then by the next conv), is remembered."""
        dim = dim % ids.dim()
        known = self._known.get(ids, dim)
        if known is not None:
            return known.copy()
        n = ids.shape[dim]
        t = ids.movedim(dim, 0).reshape(n, -1)
        if t.shape[1] == 0:
            return np.full(n, -1, dtype=np.int64)
        atoms, several = one_atom_per_slice(t, 1)
        rows = several.nonzero().flatten()
        if len(rows):  # each such slice's atoms joined to its smallest (one unique over all of them)
            sub = t[rows]
            keep = sub >= 0
            self.unify_pairs(unique_pairs(atoms[rows].unsqueeze(1).expand_as(sub)[keep], sub[keep]))
            if why:
                reason = why() if callable(why) else why
                for atom in atoms[rows].to(torch.int64).tolist():
                    self.note(atom, reason)
        found = atoms.to(torch.int64).numpy()
        self._known.put(ids, found, dim)
        return found.copy()

    def fill(self, atoms: np.ndarray, shape: torch.Size, dim: int) -> torch.Tensor:
        """An id tensor of ``shape`` whose slice ``i`` along ``dim`` is ``atoms[i]``."""
        dim = dim % len(shape)
        view = [1] * len(shape)
        view[dim] = len(atoms)
        out = torch.as_tensor(atoms, dtype=torch.float64).reshape(view).expand(shape).clone()
        if out.numel():
            self._known.put(out, np.where(np.asarray(atoms) >= 0, np.asarray(atoms), -1).astype(np.int64), dim)
        return out

    def tie(self, ids: torch.Tensor, dim: int, why: Why) -> None:
        """The atoms along ``dim`` at each position must go together (the dim's size is fixed)."""
        dim = dim % ids.dim()
        n = ids.shape[dim]
        if n <= 1:
            return
        t = ids.movedim(dim, -1).reshape(-1, n)
        first, several = one_atom_per_slice(t, 1)
        rows = several.nonzero().flatten()
        if len(rows) == 0:
            return
        sub = t[rows]
        keep = sub >= 0
        self.unify_pairs(unique_pairs(first[rows].unsqueeze(1).expand(-1, n)[keep], sub[keep]))
        self.note(int(first[rows[0]]), why() if callable(why) else why)

    def tie_pieces(self, ids: torch.Tensor, dim: int, pieces: int, why: Why) -> None:
        """Piece ``p`` position ``j`` goes with position ``j`` of every other piece (chunk, channel shuffle)."""
        dim = dim % ids.dim()
        n = ids.shape[dim]
        if pieces <= 1 or n % pieces:
            self.tie(ids, dim, why)
            return
        shape = list(ids.shape)
        split = ids.reshape(shape[:dim] + [pieces, n // pieces] + shape[dim + 1 :])
        self.tie(split, dim, why)
