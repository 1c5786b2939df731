"""The one table of channel rules, :data:`RULES`, and the contract every rule follows.

The rule contract
-----------------
A rule says how one op moves, merges or creates *atoms* (see :mod:`slimnet.groups`). Every rule has the
signature::

    rule(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> ids | None

* ``it`` is the interpreter running the graph (:class:`~slimnet.groups.interpreter.AtomInterpreter`);
* ``n`` is the fx node being run: ``n.op`` is ``call_function``, ``call_method`` or ``call_module`` and
  ``n.target`` the function, the method name or the submodule's path;
* ``args`` and ``kwargs`` are ``n.args`` and ``n.kwargs``: fx nodes and literals, not values (read an argument
  with :func:`arg`, its ids with ``it.ids_of``, its real value with ``it.value_of``);
* ``value`` is the node's real output, already computed.

It returns an **id structure mirroring** ``value``: in place of each tensor, a float64 tensor of the same shape
holding the atom of each position, :data:`~slimnet.groups.atoms.NO_ATOM` (-1) where a position belongs to
no atom (a constant); other leaves may be None. Or it returns **None to refuse**: the op is then handled as one
without a rule (``it.unknown``), which poisons every atom it reads and gives its output one poisoned atom. A rule
never guesses; where it cannot say where a tensor's channels come from, it refuses.

A rule reaches the interpreter through these methods only (never its attributes):

* reading: ``ids_of(arg)``, ``value_of(arg)``, ``param_name(arg)``, ``module_of(n)``, ``where()``,
  ``at_node(text)`` (a reason made only when needed);
* atoms: ``new_atoms(count, producer)``, ``poisoned_atom(why)``, ``bind(tensor, dim, atoms, role)``,
  ``unify(atoms)``, ``unify_pairs(pairs)``, ``roots()``;
* marks: ``poison(atoms, why)``, ``poison_ids(ids, why)``, ``mark_heads(atoms)``, ``mark_normalised(atoms, why)``,
  ``note(atom, why)``;
* id tensors: ``per_index(ids, dim, why)``, ``fill(atoms, shape, dim)``, ``tie(ids, dim, why)``,
  ``tie_pieces(ids, dim, pieces, why)``, ``value_use(nodes)``;
* refusing with a better name for the op: ``unknown(n, value, what)``;

and the helpers of :mod:`slimnet.groups.atoms` (``NO_ATOM``, ``constant_ids``, ``one_atom_per_slice``,
``unique_pairs``, ``unique_atoms``).

Keys and lookup
---------------
A key is a function (``F.conv2d``, ``operator.add``), a method name (``"view"``), a module class
(``nn.Conv2d``) or a module class's qualified name (``"transformers.pytorch_utils.Conv1D"``: optional libraries
are never imported to build the table). Module classes are looked up along their MRO (:func:`rule_for`);
:func:`rule` refuses a key already bound to another rule, so a conflict fails at import, not at run time.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from torch import fx

from .._util import bind_once, lookup, qualname

#: ``(interpreter, node, args, kwargs, value) -> ids | None`` (typed loosely: the registry does not import
#: the interpreter, which imports the registry).
Rule = Callable[[Any, fx.Node, tuple, dict, Any], Any]

#: The one registry: functions, method names (strings), module classes and qualified class names -> rule.
RULES: dict[Any, Rule] = {}

#: Ops that return nothing and write into their first argument (``x[idx] = v``): their rule runs for that effect
#: (it updates the argument's id tensor in place, as the op did the tensor, and returns it); without a rule, or
#: when it refuses, what they touch is poisoned, never ignored.
IN_PLACE = frozenset({operator.setitem})


def rule(*keys: Any) -> Callable[[Rule], Rule]:
    """Register the decorated function as the channel rule for each key; a key bound to another rule raises."""

    def deco(fn: Rule) -> Rule:
        for k in keys:
            bind_once(RULES, k, fn, "channel rule")
        return fn

    return deco


def rule_for(node: fx.Node, gm: fx.GraphModule) -> Rule | None:
    """The rule of a ``call_function``, ``call_method`` or ``call_module`` node, or None."""
    if node.op == "call_module":
        return lookup(RULES, type(gm.get_submodule(node.target)))
    return RULES.get(node.target)


def is_leaf_class(cls: type) -> bool:
    """The tracer's leaf policy: a module class whose exact qualified name has a rule (Hugging Face's
    ``Conv1D``) stays one graph node instead of being traced through. torch.nn's classes are leaves anyway;
    subclasses are not matched (the interpreter's MRO lookup would find their base's rule, but changing which
    modules the tracer enters is a change of behaviour left for later)."""
    return qualname(cls) in RULES


def has_rule(fn: Any) -> bool:
    """The tracer's policy for functions registered with ``torch.fx.wrap``: one with a channel rule (torchvision's
    ``stochastic_depth``) stays one call; any other is traced through, so that its plain tensor code meets the
    rules of the ops inside it instead of poisoning everything it touches."""
    try:
        return fn in RULES
    except TypeError:  # unhashable
        return False


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of a call, given by position or by keyword ``name``."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)
