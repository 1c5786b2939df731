"""MACs and parameters as functions of which units a plan keeps, read off the one atom-interpretation pass.

Counting the MACs of a pruned model used to mean building it and running fvcore's TorchScript trace over it.
Allocation (hit 50% of the MACs), training-loop schedules and sensitivity sweeps need that number for many
candidate plans, so it is computed here from what the analysis already saw: while the atom interpreter runs
each node, the entry of :data:`COSTS` for that op turns the node's shapes and atom ids into *terms*::

    MACs = sum over terms of  scale * form_1 * form_2 * ...     form = const + sum_u count_u * keep_u

where ``keep_u`` is 1 when the plan keeps unit ``u`` (0 when it drops it). A form counts what survives of one
dimension: the elements of an activation (each element carries the atom of its channel, so pruning removes
exactly the elements whose unit goes), or the indices of a weight's dim (a conv's output and input channels).
A conv is ``positions x kernel x kept(W, 0) x kept(W, 1)``; an elementwise op is ``kept(output elements)``.

The conventions are fvcore's plus slimnet's extra handles (:mod:`slimnet.cost.macs`), so that this count and
fvcore's agree on the original and on the pruned model (``tests/test_cost.py`` checks it; fvcore stays the
reference in ``slimnet bench``): one multiply-add is one MAC; conv and linear count multiplications only;
batch norm 2 per element (1 without affine), layer/group/instance norm 5 (4), elementwise ops and activations 1
per output element, adaptive pooling and mean/sum 1 per input element, max/avg pooling the window per output
element, nearest upsampling 1 and bilinear 4 per output element, attention its two products plus 2 per
attention weight (the scaling and the softmax).

Supporting a new op is one entry: ``@cost(keys...)`` on a function of a :class:`CostCall` returning terms.
"""

from __future__ import annotations

from . import rules  # noqa: F401 - registers the entries
from .dispatch import terms_of
from .model import CostModel, Resolved, build, param_terms, resolve, resolve_part
from .terms import COSTS, CostCall, Form, Term, cost

__all__ = [
    "COSTS",
    "CostCall",
    "CostModel",
    "Form",
    "Resolved",
    "Term",
    "build",
    "cost",
    "param_terms",
    "resolve",
    "resolve_part",
    "terms_of",
]
