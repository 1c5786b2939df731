"""The channel graph: which indices of which tensors must be removed together.

Every channel of every producer (conv/linear output channel, embedding column, element of a free parameter)
gets an integer id, an *atom*. The traced fx graph is then interpreted once on **id tensors** (float64, -1 for
"no atom") alongside the real values:

* data-movement ops (view, flatten, permute, cat, split, getitem, pixel_shuffle, pad, nearest interpolate...)
  are simply applied to the id tensor, so concat offsets, flatten blocks and shuffles come out exact;
* per-element ops pass ids through; elementwise binary ops *unify* atoms position by position (union-find),
  except that an operand broadcast over a dimension where the other operand's atoms vary couples nothing
  (a ``[B,1,H,W]`` spatial gate); an SE scale ``[B,C,1,1]`` still couples its channels to ``x``;
* ops that mix channels (conv, linear, norms, embedding) have explicit rules in :data:`RULES`: they bind atoms
  to weight slices and start new atoms for their outputs;
* ops that mix positions (pooling, reductions, softmax) tie the atoms they mix into one unit;
* a reshape whose size is a literal in the forward code cannot follow a pruned size, so it ties the atoms
  along that dimension (a channel shuffle's group dimension, a hard-coded ``view(b, 512*7*7)``);
* an op with no rule *poisons* the atoms it touches, naming the op: never a silent guess.

A union-find class of atoms is one removable *unit*; units whose members span the same (tensor, dim) pairs
form a *group*, the thing a ratio applies to. Supporting a new op is one entry in :data:`RULES`.
"""

from __future__ import annotations

import builtins
import operator
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ._tensors import flat_tensors, map_tensors
from ._util import lookup, qualname
from .errors import SlimnetError
from .trace import placeholder_args, trace, trace_pieces

NONE = -1.0


# ----------------------------------------------------------------------------------------------------------
# union-find over atoms
# ----------------------------------------------------------------------------------------------------------
class UnionFind:
    """Union-find with path halving; ids are consecutive ints handed out by :meth:`add`."""

    def __init__(self) -> None:
        self.parent: list[int] = []

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
            if ra < rb:
                self.parent[rb] = ra
            else:
                self.parent[ra] = rb

    def union_all(self, atoms: Any) -> None:
        atoms = [int(a) for a in atoms]
        for a in atoms[1:]:
            self.union(atoms[0], a)

    def roots(self) -> np.ndarray:
        """The root of every atom, vectorised."""
        p = np.asarray(self.parent, dtype=np.int64)
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


# ----------------------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------------------
Member = tuple[str, int]  # (state_dict tensor name, dim)


@dataclass
class Unit:
    """One removable unit: the indices it owns in each member tensor dim."""

    members: dict[Member, list[int]]


@dataclass
class Group:
    """Units that share the same member tensors: one ratio, one ranking."""

    id: int
    name: str
    units: list[Unit]
    members: list[Member]
    reason: str | None = None  # why it is left whole; None when prunable
    normalised: str | None = None  # set when a norm over channels sees it (pruning is then not exact)
    roles: dict[Member, str] = field(default_factory=dict)
    kind: str = "channels"  # "heads" when each unit is a whole attention head (or a key/value head's group)

    @property
    def channels(self) -> int:
        return len(self.units)

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "units": len(self.units),
            "members": [f"{t}[{d}]" for t, d in self.members],
            "prunable": self.prunable,
            "reason": self.reason,
            "normalised": self.normalised,
            "kind": self.kind,
        }


@dataclass
class Analysis:
    """The channel graph of one model: every group, and the aliases of tied tensors."""

    groups: list[Group]
    aliases: dict[str, list[str]]  # canonical tensor name -> every state_dict name sharing it
    shapes: dict[str, tuple[int, ...]]
    notes: list[str] = field(default_factory=list)  # how the model was traced, when not in one piece


# ----------------------------------------------------------------------------------------------------------
# the interpreter
# ----------------------------------------------------------------------------------------------------------
Rule = Callable[["AtomInterpreter", fx.Node, tuple, dict, Any], Any]
#: The one registry: module classes, functions, and method names (strings) -> rule.
RULES: dict[Any, Rule] = {}


def rule(*keys: Any) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the channel rule for modules classes, functions or method names."""

    def deco(fn: Rule) -> Rule:
        for k in keys:
            RULES[k] = fn
        return fn

    return deco


def is_leaf_class(cls: type) -> bool:
    """The tracer's leaf policy: a module class with a rule keyed by its exact qualified name (Hugging Face's
    ``Conv1D``) stays one node; torch.nn's classes are leaves anyway."""
    return qualname(cls) in RULES


def _where(node: fx.Node) -> str:
    st = getattr(node, "stack_trace", None) or node.meta.get("stack_trace")
    if st:
        lines = [ln.strip() for ln in st.strip().splitlines() if ln.strip().startswith("File")]
        lines = [ln for ln in lines if "/torch/" not in ln and "/slimnet/" not in ln]
        if lines:
            last = lines[-1].replace("File ", "").replace('"', "")
            return f" ({last})"
    return ""


def _op_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{type(gm.get_submodule(node.target)).__name__} module {node.target}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    t = node.target
    return f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', str(t))}".lstrip(".")


class AtomInterpreter(fx.Interpreter):
    """Runs the graph on real values and, beside them, on atom-id tensors; rules fill the union-find."""

    def __init__(self, gm: fx.GraphModule, aliases: dict[str, str]) -> None:
        super().__init__(gm, garbage_collect_values=True)
        self.alias = aliases  # any state_dict name -> canonical name
        self.uf = UnionFind()
        self.channel_ranges: list[tuple[int, int, str]] = []  # (start, n, producer name)
        self.param_ranges: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.bindings: list[tuple[str, int, np.ndarray, str]] = []  # (tensor, dim, atom per index, role)
        self.poison: list[tuple[int, str]] = []
        self.normed: list[tuple[int, str]] = []
        self.notes: list[tuple[int, str]] = []
        self.heads: list[int] = []  # atoms that stand for a whole attention head
        self.frozen: dict[str, str] = {}  # parameters read by an op with no rule
        self.ids: dict[fx.Node, Any] = {}
        # int/float nodes computed from tensor sizes -> the (id tensor, dim) pairs they read; a size used as a
        # *value* (a 1/sqrt(d) scale, a mean's divisor) must not change, so those dims get tied (see value_use)
        self.size_src: dict[fx.Node, list[tuple[torch.Tensor, int]]] = {}
        self.shapes: dict[fx.Node, torch.Tensor] = {}  # x.shape / x.size() nodes -> x's ids (x.shape[i] reads dim i)
        self._params = dict(gm.named_parameters(remove_duplicate=False))
        self._params.update(dict(gm.named_buffers(remove_duplicate=False)))
        self.current: fx.Node | None = None

    # -- atoms ------------------------------------------------------------------------------------------
    def new_atoms(self, n: int, producer: str) -> np.ndarray:
        start = self.uf.add(n)
        self.channel_ranges.append((start, n, producer))
        return np.arange(start, start + n, dtype=np.int64)

    def poison_atom(self, reason: str) -> int:
        a = self.uf.add(1)
        self.poison.append((a, reason))
        return a

    def poison_ids(self, ids: Any, reason: str) -> None:
        for t in flat_tensors(ids):
            for a in _unique_atoms(t):
                self.poison.append((int(a), reason))

    def unify(self, atoms: Any) -> None:
        atoms = [int(a) for a in atoms if a >= 0]
        self.uf.union_all(atoms)

    def bind(self, name: str | None, dim: int, atoms: np.ndarray, role: str = "") -> None:
        """Tensor ``name``'s slice ``i`` along ``dim`` belongs to ``atoms[i]``'s unit (-1: to none)."""
        if name is None:
            return
        self.bindings.append((self.alias.get(name, name), dim, np.asarray(atoms, dtype=np.int64), role))

    def where(self) -> str:
        n = self.current
        return f"{n.name}{_where(n)}" if n is not None else ""

    # -- id tensors ---------------------------------------------------------------------------------------
    def ids_of(self, value: Any) -> Any:
        """Map fx nodes in an argument structure to their id tensors (lazily creating parameter atoms)."""
        if isinstance(value, fx.Node):
            if value not in self.ids:
                return None
            v = self.ids[value]
            if callable(v) and not isinstance(v, torch.Tensor):
                v = v()
                self.ids[value] = v
            return v
        if isinstance(value, (tuple, list)):
            return type(value)(self.ids_of(v) for v in value)
        if isinstance(value, dict):
            return {k: self.ids_of(v) for k, v in value.items()}
        return value

    def param_name(self, arg: Any) -> str | None:
        """The state_dict name behind a ``get_attr`` argument (a weight passed to F.conv2d...), else None."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            return str(arg.target)
        return None

    def per_index(self, ids: torch.Tensor, dim: int, why: str = "") -> np.ndarray:
        """One atom per index along ``dim``; where a slice holds several atoms they become one unit."""
        dim = dim % ids.dim()
        n = ids.shape[dim]
        t = ids.movedim(dim, 0).reshape(n, -1)
        if t.shape[1] == 0:
            return np.full(n, -1, dtype=np.int64)
        mask = t >= 0
        big = torch.tensor(float("inf"), dtype=t.dtype)
        mn = torch.where(mask, t, big).amin(1)
        mx = torch.where(mask, t, -big).amax(1)
        has = mask.any(1)
        out = torch.where(has, mn, torch.full_like(mn, -1)).to(torch.int64).numpy()
        conflict = (has & (mn != mx)).nonzero().flatten().tolist()
        for i in conflict:
            atoms = _unique_atoms(t[i])
            self.unify(atoms)
            if why:
                self.notes.append((int(atoms[0]), why))
        return out

    def fill(self, atoms: np.ndarray, shape: torch.Size, dim: int) -> torch.Tensor:
        """An id tensor of ``shape`` whose slice ``i`` along ``dim`` is ``atoms[i]``."""
        dim = dim % len(shape)
        view = [1] * len(shape)
        view[dim] = len(atoms)
        return torch.as_tensor(atoms, dtype=torch.float64).reshape(view).expand(shape).clone()

    def tie(self, ids: torch.Tensor, dim: int, why: str) -> None:
        """The atoms along ``dim`` at each position must go together (the dim's size is fixed)."""
        dim = dim % ids.dim()
        n = ids.shape[dim]
        if n <= 1:
            return
        t = ids.movedim(dim, -1).reshape(-1, n)
        mask = t >= 0
        big = torch.tensor(float("inf"), dtype=t.dtype)
        mn = torch.where(mask, t, big).amin(1)
        mx = torch.where(mask, t, -big).amax(1)
        rows = (mask.any(1) & (mn != mx)).nonzero().flatten()
        if len(rows) == 0:
            return
        sub, first = t[rows], mn[rows].unsqueeze(1).expand(-1, n)
        keep = sub >= 0
        for x, y in _unique_pairs(first[keep], sub[keep]):
            self.uf.union(x, y)
        self.notes.append((int(mn[rows[0]]), why))

    def tie_pieces(self, ids: torch.Tensor, dim: int, pieces: int, why: str) -> None:
        """Piece ``p`` position ``j`` goes with position ``j`` of every other piece (chunk, channel shuffle)."""
        dim = dim % ids.dim()
        n = ids.shape[dim]
        if pieces <= 1 or n % pieces:
            self.tie(ids, dim, why)
            return
        shape = list(ids.shape)
        split = ids.reshape(shape[:dim] + [pieces, n // pieces] + shape[dim + 1 :])
        self.tie(split, dim, why)

    # -- running ------------------------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        real = super().run_node(n)
        if n.op == "get_attr":
            self.ids[n] = self._lazy_param(n, real)
        elif n.op == "output":
            self.poison_ids(self.ids_of(n.args[0]), "model output")
        elif n.op == "placeholder":
            self.ids[n] = self._input_ids(real, str(n.target))
        else:
            self.ids[n] = self._apply_rule(n, real)
        for dead in self.user_to_last_uses.get(n, []):
            self.ids.pop(dead, None)
            self.size_src.pop(dead, None)
            self.shapes.pop(dead, None)
        return real

    def _input_ids(self, real: Any, name: str) -> Any:
        if not flat_tensors(real):
            return None
        a = self.poison_atom(f"model input {name}")  # named: a group tied to an attention mask says so
        return map_tensors(real, lambda t: torch.full(t.shape, float(a), dtype=torch.float64), None)

    def _lazy_param(self, n: fx.Node, real: Any) -> Any:
        if not isinstance(real, torch.Tensor):
            return None
        name = self.alias.get(str(n.target), str(n.target))
        if not real.is_floating_point():
            return lambda: torch.full(real.shape, NONE, dtype=torch.float64)
        if name not in self.alias:  # a constant or non-persistent buffer: no plan can slice it, so it is a
            # fixed size (like a tensor built in forward): combined with channels it keeps them whole
            if real.numel() <= 1:
                return lambda: torch.full(real.shape, NONE, dtype=torch.float64)
            a = self.poison_atom(f"tensor {name} is not in the state_dict, so it cannot be sliced")
            return lambda: torch.full(real.shape, float(a), dtype=torch.float64)

        def make() -> torch.Tensor:
            if name in self.param_ranges:
                start, shape = self.param_ranges[name]
            else:
                start = self.uf.add(real.numel())
                shape = tuple(real.shape)
                self.param_ranges[name] = (start, shape)
            return torch.arange(start, start + real.numel(), dtype=torch.float64).reshape(shape)

        return make

    def _apply_rule(self, n: fx.Node, real: Any) -> Any:
        if not flat_tensors(real):
            self._track_sizes(n)
            return None
        if n.op == "call_module":
            mod = self.module.get_submodule(n.target)
            fn = lookup(RULES, type(mod))
        elif n.op == "call_method":
            fn = RULES.get(n.target)
        else:
            fn = RULES.get(n.target)
        args, kwargs = n.args, n.kwargs
        if fn is None:
            return self._unknown(n, real)
        out = fn(self, n, args, kwargs, real)
        if out is None:  # a rule that cannot say where a tensor's channels come from must not guess
            return self._unknown(n, real)
        return out

    def _track_sizes(self, n: fx.Node) -> None:
        """Record which tensor dims an int (or a float computed from ints) was read from."""
        is_size = n.op == "call_method" and n.target == "size"
        is_shape = n.op == "call_function" and n.target is builtins.getattr and len(n.args) > 1 and n.args[1] == "shape"
        if is_size or is_shape:
            src = self.ids_of(n.args[0])
            if not isinstance(src, torch.Tensor) or src.dim() == 0:
                return
            dim = (n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")) if is_size else None
            if dim is None:
                self.shapes[n] = src
            dims = range(src.dim()) if dim is None else [int(dim) % src.dim()]
            self.size_src[n] = [(src, d) for d in dims]
            return
        if n.target is operator.getitem and n.args[0] in self.shapes and isinstance(n.args[1], int):
            src = self.shapes[n.args[0]]
            self.size_src[n] = [(src, n.args[1] % src.dim())]
            return
        found = [s for a in _nodes_in((n.args, n.kwargs)) for s in self.size_src.get(a, [])]
        if found:
            self.size_src[n] = found

    def value_use(self, values: Any) -> None:
        """``values`` (fx nodes) enter a computation as numbers, not as sizes: where one was read from a
        tensor's dim, that dim's size must not change (pruning it would change the number), so it is tied."""
        for v in _nodes_in(values):
            for src, dim in self.size_src.get(v, []):
                self.tie(src, dim, f"the size of dim {dim} is used as a value at node {self.where()}")

    def _unknown(self, n: fx.Node, real: Any, what: str | None = None) -> Any:
        reason = f"no channel rule for {what or _op_name(n, self.module)} at node {self.where()}"
        # Parameters handed straight to the op are frozen by name (giving each element an atom would cost
        # memory for nothing); everything else it reads is poisoned atom by atom.
        args = []
        for a in list(n.args) + list(n.kwargs.values()):
            name = self.param_name(a)
            if name is not None and (a not in self.ids or callable(self.ids[a])):
                self.frozen.setdefault(self.alias.get(name, name), reason)
            else:
                args.append(a)
        self.poison_ids(self.ids_of(args), reason)
        a = self.poison_atom(reason)
        return map_tensors(real, lambda t: torch.full(t.shape, float(a), dtype=torch.float64), None)

    def real(self, value: Any) -> Any:
        """Real values of an argument structure (after the node ran: for sizes, dims, indices)."""
        return fx.node.map_arg(value, lambda nd: self.env[nd] if nd in self.env else None)


def _unique_pairs(a: torch.Tensor, b: torch.Tensor) -> list[tuple[int, int]]:
    """Distinct (a, b) atom pairs, via one 1-D unique over a combined key (unique over rows is slow)."""
    a64, b64 = a.to(torch.int64), b.to(torch.int64)
    m = int(b64.max()) + 1
    keys = torch.unique(a64 * m + b64)
    return list(zip((keys // m).tolist(), (keys % m).tolist()))


def _unique_atoms(t: torch.Tensor) -> list[int]:
    u = torch.unique(t)
    return [int(a) for a in u.tolist() if a >= 0]


def _nodes_in(value: Any) -> list[fx.Node]:
    """The fx nodes anywhere in an argument structure."""
    out: list[fx.Node] = []
    fx.node.map_arg(value, out.append)
    return out


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


# ----------------------------------------------------------------------------------------------------------
# rules: pass-through (per-element ops)
# ----------------------------------------------------------------------------------------------------------
_UNARY_FUNCS = [
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.sigmoid,
    F.tanh,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.celu,
    F.softplus,
    F.mish,
    F.hardtanh,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.softsign,
    F.tanhshrink,
    F.logsigmoid,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.exp,
    torch.log,
    torch.sqrt,
    torch.rsqrt,
    torch.abs,
    torch.neg,
    torch.clamp,
    torch.clip,
    torch.erf,
    torch.sin,
    torch.cos,
    torch.square,
    torch.reciprocal,
    torch.sign,
    torch.floor,
    torch.ceil,
    torch.round,
    torch.nan_to_num,
    torch.log1p,
    torch.expm1,
    operator.neg,
    operator.pos,
    F.hardshrink,
    F.softshrink,
    torch.nn.functional.threshold,
]
_UNARY_METHODS = [
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "tanh_",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "abs",
    "neg",
    "clamp",
    "clamp_",
    "clip",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "detach",
    "cpu",
    "cuda",
    "erf",
    "square",
    "reciprocal",
    "sign",
    "floor",
    "ceil",
    "round",
    "requires_grad_",
    "hardswish",
    "sin",
    "cos",
    "log1p",
    "expm1",
    "nan_to_num",
    "exp_",
    "neg_",
]
_UNARY_MODULES = [
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Hardshrink,
    nn.Softshrink,
    nn.Threshold,
]


try:  # torchvision wraps it as an fx leaf function; per sample it is a scalar factor, per element a no-op
    from torchvision.ops import StochasticDepth, stochastic_depth

    _UNARY_FUNCS += [stochastic_depth]
    _UNARY_MODULES += [StochasticDepth]
except ImportError:  # pragma: no cover - torchvision is a dependency, but the rules do not need it
    pass


@rule(*_UNARY_FUNCS, *_UNARY_METHODS, *_UNARY_MODULES)
def passthrough(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Per-element ops keep every position's atom."""
    src = it.ids_of(args[0]) if args else None
    if isinstance(src, torch.Tensor) and isinstance(real, torch.Tensor) and src.shape == real.shape:
        return src
    return elementwise(it, n, args, kwargs, real)


# ----------------------------------------------------------------------------------------------------------
# rules: elementwise combination with broadcasting
# ----------------------------------------------------------------------------------------------------------
def _combine(it: AtomInterpreter, a: torch.Tensor, b: torch.Tensor, out_shape: torch.Size) -> torch.Tensor:
    """Unify two operands' atoms position by position; a broadcast operand couples only one-to-one."""
    nd = len(out_shape)
    a_shape = (1,) * (nd - a.dim()) + tuple(a.shape)
    b_shape = (1,) * (nd - b.dim()) + tuple(b.shape)
    a_bc = any(s == 1 and o > 1 for s, o in zip(a_shape, out_shape))
    b_bc = any(s == 1 and o > 1 for s, o in zip(b_shape, out_shape))
    ae = a.reshape(a_shape).expand(out_shape)
    be = b.reshape(b_shape).expand(out_shape)
    af, bf = ae.reshape(-1), be.reshape(-1)
    both = (af >= 0) & (bf >= 0)
    if both.any():
        pairs = _unique_pairs(af[both], bf[both])
        partners_a: dict[int, set[int]] = defaultdict(set)
        partners_b: dict[int, set[int]] = defaultdict(set)
        for x, y in pairs:
            partners_a[x].add(y)
            partners_b[y].add(x)
        for x, y in pairs:
            if a_bc and len(partners_a[x]) > 1:
                continue
            if b_bc and len(partners_b[y]) > 1:
                continue
            it.uf.union(x, y)
    first, second = (be, ae) if (a_bc and not b_bc) else (ae, be)
    return torch.where(first >= 0, first, second).clone()


_BINARY_FUNCS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.pow,
    operator.mod,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.true_divide,
    torch.maximum,
    torch.minimum,
    torch.where,
    torch.pow,
    torch.eq,
    torch.ne,
    torch.gt,
    torch.lt,
    torch.ge,
    torch.le,
    torch.addcmul,
    torch.addcdiv,
    torch.lerp,
    torch.masked_fill,
    torch.fmod,
    torch.remainder,
    torch.atan2,
    torch.hypot,
    operator.eq,
    operator.ne,
    operator.gt,
    operator.lt,
    operator.ge,
    operator.le,
    operator.and_,
    operator.or_,
    torch.logical_and,
    torch.logical_or,
    torch.subtract,
    torch.multiply,
    torch.divide,
]
_BINARY_METHODS = [
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
    "pow",
    "pow_",
    "maximum",
    "minimum",
    "masked_fill",
    "masked_fill_",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "addcmul",
    "addcmul_",
    "lerp",
    "where",
    "fmod",
    "remainder",
    "__add__",
    "__mul__",
    "__sub__",
    "__truediv__",
    "__radd__",
    "__rmul__",
    "__rsub__",
    "__rtruediv__",
    "truediv",
    "subtract",
    "multiply",
    "divide",
    "logical_and",
    "logical_or",
]


@rule(*_BINARY_FUNCS, *_BINARY_METHODS)
def elementwise(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Elementwise ops over several tensors (scalars couple nothing)."""
    if not isinstance(real, torch.Tensor):
        return it._unknown(n, real)
    nodes = [a for a in list(args) + list(kwargs.values()) if isinstance(a, fx.Node)]
    it.value_use(nodes)  # x / math.sqrt(x.size(-1))
    operands = [it.ids_of(a) for a in nodes]
    operands = [o for o in operands if isinstance(o, torch.Tensor)]
    if not operands:
        return torch.full(real.shape, NONE, dtype=torch.float64)
    out = operands[0]
    for other in operands[1:]:
        out = _combine(it, out, other, real.shape)
    if out.shape != real.shape:
        out = out.reshape((1,) * (real.dim() - out.dim()) + tuple(out.shape)).expand(real.shape).clone()
    return out


# ----------------------------------------------------------------------------------------------------------
# rules: data movement (applied to the id tensor itself)
# ----------------------------------------------------------------------------------------------------------
def _literal_dims(size_args: tuple) -> list[int]:
    """Output dims whose size is an int literal in the forward code (not -1, not derived from a tensor)."""
    if len(size_args) == 1 and isinstance(size_args[0], (tuple, list, torch.Size)):
        size_args = tuple(size_args[0])
    return [d for d, s in enumerate(size_args) if isinstance(s, int) and s > 1]


def _apply_on_ids(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict) -> Any:
    """Run the node's own op with id tensors in place of its tensor arguments."""
    id_args = it.real(args)
    id_kwargs = it.real(kwargs)
    first = it.ids_of(args[0])
    id_args = (first,) + tuple(id_args[1:])
    if n.target in (torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack, torch.concatenate):
        id_args = (it.ids_of(args[0]),) + tuple(id_args[1:])
    if n.op == "call_method":
        method = {"view": "reshape", "view_as": "reshape_as"}.get(n.target, n.target)  # ids need not be contiguous
        return getattr(first, method)(*id_args[1:], **id_kwargs)
    if n.op == "call_module":
        return it.module.get_submodule(n.target)(*id_args, **id_kwargs)
    return n.target(*id_args, **id_kwargs)


_MOVE_FUNCS = [
    torch.flatten,
    torch.reshape,
    torch.permute,
    torch.transpose,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.squeeze,
    torch.unsqueeze,
    torch.roll,
    torch.flip,
    torch.movedim,
    torch.t,
    torch.swapaxes,
    torch.swapdims,
    torch.tile,
    F.pixel_shuffle,
    F.pixel_unshuffle,
    torch.pixel_shuffle,
    torch.pixel_unshuffle,
    torch.hstack,
    torch.vstack,
    torch.concatenate,
    torch.repeat_interleave,
    torch.broadcast_to,
]
_MOVE_METHODS = [
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "unsqueeze",
    "squeeze",
    "expand",
    "repeat",
    "flip",
    "roll",
    "t",
    "movedim",
    "unflatten",
    "swapaxes",
    "swapdims",
    "tile",
    "expand_as",
    "view_as",
    "reshape_as",
    "unsqueeze_",
    "squeeze_",
    "transpose_",
    "repeat_interleave",
    "broadcast_to",
]
_MOVE_MODULES = [nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle]


@rule(*_MOVE_FUNCS, *_MOVE_METHODS, *_MOVE_MODULES)
def movement(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Index bookkeeping: the op moves ids exactly as it moves values."""
    out = _apply_on_ids(it, n, args, kwargs)
    literal: list[int] = []
    if n.target in ("view", "reshape", "expand", "broadcast_to") or n.target is torch.reshape:
        literal = _literal_dims(tuple(args[1:]))
    elif n.target == "unflatten":
        dim = it.real(_arg(args, kwargs, 1, "dim"))
        sizes = _arg(args, kwargs, 2, "sizes")
        dim = dim % (out.dim() - len(sizes) + 1)
        literal = [dim + i for i in _literal_dims(tuple(sizes))]
    elif isinstance(n.target, str) is False and n.op == "call_module":
        mod = it.module.get_submodule(n.target)
        if isinstance(mod, nn.Unflatten):
            dim = mod.dim % (out.dim() - len(mod.unflattened_size) + 1)
            literal = [dim + i for i in _literal_dims(tuple(mod.unflattened_size))]
    if isinstance(out, torch.Tensor):
        for d in literal:
            it.tie(out, d, f"size fixed in forward at node {it.where()}")
    return out


@rule(F.pad, "pad")
def pad(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Padding: constant padding holds no atom; reflect/replicate copy atoms like any data movement."""
    x = it.ids_of(args[0])
    padding = it.real(_arg(args, kwargs, 1, "pad"))
    mode = it.real(_arg(args, kwargs, 2, "mode", "constant"))
    if mode == "constant":
        return F.pad(x, padding, mode="constant", value=NONE)
    return F.pad(x, padding, mode=mode)


@rule(
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
    nn.ConstantPad1d,
    nn.ConstantPad2d,
    nn.ConstantPad3d,
    nn.ReflectionPad1d,
    nn.ReflectionPad2d,
    nn.ReflectionPad3d,
    nn.ReplicationPad1d,
    nn.ReplicationPad2d,
    nn.ReplicationPad3d,
    nn.CircularPad1d,
    nn.CircularPad2d,
    nn.CircularPad3d,
)
def pad_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    x = it.ids_of(args[0])
    if isinstance(
        mod, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
    ):
        return F.pad(x, mod.padding, mode="constant", value=NONE)
    return mod(x)


@rule(operator.getitem)
def getitem(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Indexing: a tuple element, or a tensor slice; a partial slice along varying atoms ties them."""
    src = it.ids_of(args[0])
    idx = it.real(args[1])
    if isinstance(src, (tuple, list)):
        return src[idx]
    if not isinstance(src, torch.Tensor):
        return torch.full(real.shape, NONE, dtype=torch.float64) if isinstance(real, torch.Tensor) else None
    _tie_partial_index(it, src, idx)
    return src[idx]


def _tie_partial_index(it: AtomInterpreter, src: torch.Tensor, idx: Any) -> None:
    """Positions picked by fixed indices do not follow pruning: tie the atoms along such a dim."""
    items = idx if isinstance(idx, tuple) else (idx,)
    dim = 0
    for item in items:
        if item is Ellipsis:
            dim = src.dim() - (len(items) - 1 - items.index(Ellipsis)) - sum(1 for i in items if i is None)
            continue
        if item is None:
            continue
        if dim >= src.dim():
            break
        whole = isinstance(item, slice) and item == slice(None)
        if not whole:
            it.tie(src, dim, f"indexed with fixed positions at node {it.where()}")
        dim += 1


@rule(torch.split, torch.chunk, "split", "chunk", torch.tensor_split, "tensor_split", torch.unbind, "unbind")
def split(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Splits: equal pieces whose size follows the input keep position j of each piece together; pieces of
    literal sizes cannot follow pruning at all."""
    src = it.ids_of(args[0])
    name = n.target if isinstance(n.target, str) else n.target.__name__
    dim = it.real(_arg(args, kwargs, 1 if name == "unbind" else 2, "dim", 0)) % src.dim()
    pieces = len(real)
    why = f"split at node {it.where()}"
    size = _arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    follows = name == "chunk" or (name == "split" and isinstance(size, fx.Node))  # piece size from the tensor
    if follows and src.shape[dim] % pieces == 0:
        it.tie_pieces(src, dim, pieces, why)
    else:
        it.tie(src, dim, why)
    if name == "unbind":
        return tuple(src.unbind(dim))
    return tuple(torch.split(src, [r.shape[dim] for r in real], dim))


@rule(
    torch.narrow,
    "narrow",
    torch.select,
    "select",
    torch.index_select,
    "index_select",
    torch.gather,
    "gather",
    torch.take_along_dim,
)
def select(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Fixed-position selection along a dim: the atoms there cannot be pruned independently."""
    src = it.ids_of(args[0])
    dim = it.real(_arg(args, kwargs, 1, "dim"))
    if isinstance(dim, int):
        it.tie(src, dim, f"selected by position at node {it.where()}")
    return _apply_on_ids(it, n, args, kwargs)


@rule(nn.ChannelShuffle, torch.channel_shuffle, *([F.channel_shuffle] if hasattr(F, "channel_shuffle") else []))
def channel_shuffle(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    src = it.ids_of(args[0])
    if n.op == "call_module":
        groups = it.module.get_submodule(n.target).groups
    else:
        groups = it.real(_arg(args, kwargs, 1, "groups"))
    it.tie_pieces(src, 1, groups, f"channel shuffle at node {it.where()}")
    return torch.channel_shuffle(src, groups)


# ----------------------------------------------------------------------------------------------------------
# rules: ops that mix positions (pooling, reductions, softmax...)
# ----------------------------------------------------------------------------------------------------------
def mix(it: AtomInterpreter, src: torch.Tensor, dims: list[int], real: Any, why: str) -> Any:
    """Positions along ``dims`` are mixed: each slice's atoms become one unit, placed in the output."""
    nd = src.dim()
    dims = sorted({d % nd for d in dims})
    keep = [d for d in range(nd) if d not in dims]
    t = src.permute(keep + dims).reshape([src.shape[d] for d in keep] + [-1]) if dims else src.unsqueeze(-1)
    lead = t.shape[:-1]
    flat = t.reshape(-1, t.shape[-1])
    atoms = it.per_index(flat, 0, why) if flat.shape[0] else np.zeros(0, dtype=np.int64)
    row = torch.as_tensor(atoms, dtype=torch.float64).reshape(lead)

    def place(r: torch.Tensor) -> torch.Tensor:
        if r.dim() == nd:  # keepdim / pooling: mixed dims stay, other dims as before
            shaped = row
            for d in dims:
                shaped = shaped.unsqueeze(d)
            if tuple(r.shape[d] for d in keep) != tuple(lead):
                return torch.full(r.shape, NONE, dtype=torch.float64)
            return shaped.expand(r.shape).clone()
        if r.dim() == len(keep) and tuple(r.shape) == tuple(lead):
            return row.clone()
        return torch.full(r.shape, NONE, dtype=torch.float64)

    return map_tensors(real, place, None)


def _spatial(k: int) -> Callable[[AtomInterpreter, fx.Node, tuple, dict, Any], Any]:
    def pool(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
        src = it.ids_of(args[0])
        return mix(it, src, list(range(src.dim() - k, src.dim())), real, f"pooled at node {it.where()}")

    return pool


for _k, _keys in {
    1: [
        F.max_pool1d,
        F.avg_pool1d,
        F.adaptive_avg_pool1d,
        F.adaptive_max_pool1d,
        F.lp_pool1d,
        nn.MaxPool1d,
        nn.AvgPool1d,
        nn.AdaptiveAvgPool1d,
        nn.AdaptiveMaxPool1d,
        nn.LPPool1d,
        torch.max_pool1d,
        torch.avg_pool1d,
        torch.adaptive_avg_pool1d,
        torch.adaptive_max_pool1d,
        F.max_pool1d_with_indices,
    ],
    2: [
        F.max_pool2d,
        F.avg_pool2d,
        F.adaptive_avg_pool2d,
        F.adaptive_max_pool2d,
        F.lp_pool2d,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.AdaptiveMaxPool2d,
        nn.LPPool2d,
        torch.max_pool2d,
        F.max_pool2d_with_indices,
        nn.FractionalMaxPool2d,
    ],
    3: [
        F.max_pool3d,
        F.avg_pool3d,
        F.adaptive_avg_pool3d,
        F.adaptive_max_pool3d,
        nn.MaxPool3d,
        nn.AvgPool3d,
        nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool3d,
        torch.max_pool3d,
        F.max_pool3d_with_indices,
    ],
}.items():
    rule(*_keys)(_spatial(_k))


@rule(F.interpolate, F.upsample, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def interpolate(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Nearest resizing copies positions (applied to ids); other modes mix a channel's positions."""
    src = it.ids_of(args[0])
    if n.op == "call_module":
        mod = it.module.get_submodule(n.target)
        mode = "bilinear" if isinstance(mod, nn.UpsamplingBilinear2d) else getattr(mod, "mode", "nearest")
    else:
        mode = it.real(_arg(args, kwargs, 4, "mode", "nearest"))
    if mode in ("nearest", "nearest-exact"):
        return F.interpolate(src, size=tuple(real.shape[2:]), mode=mode)
    return mix(it, src, list(range(2, src.dim())), real, f"interpolated at node {it.where()}")


def _reduce_dims(it: AtomInterpreter, args: tuple, kwargs: dict, src: torch.Tensor, default_all: bool) -> list[int]:
    dim = it.real(_arg(args, kwargs, 1, "dim", None))
    if dim is None:
        return list(range(src.dim())) if default_all else [-1]
    if isinstance(dim, (tuple, list)):
        return list(dim)
    return [dim]


@rule(
    torch.mean,
    torch.sum,
    torch.amax,
    torch.amin,
    torch.max,
    torch.min,
    torch.std,
    torch.var,
    torch.prod,
    torch.logsumexp,
    torch.argmax,
    torch.argmin,
    torch.norm,
    torch.linalg.vector_norm,
    torch.cumsum,
    torch.cumprod,
    torch.nansum,
    torch.nanmean,
    torch.median,
    torch.all,
    torch.any,
    torch.count_nonzero,
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "std",
    "var",
    "prod",
    "logsumexp",
    "argmax",
    "argmin",
    "norm",
    "cumsum",
    "cumprod",
    "nansum",
    "nanmean",
    "median",
    "all",
    "any",
    "count_nonzero",
)
def reduction(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Reductions mix the positions along their dims (the atoms there become one unit)."""
    src = it.ids_of(args[0])
    if not isinstance(src, torch.Tensor):
        return it._unknown(n, real)
    other = _arg(args, kwargs, 1, "dim", None)
    if isinstance(other, fx.Node) and isinstance(it.env.get(other), torch.Tensor):  # torch.max(a, b)
        return elementwise(it, n, args, kwargs, real)
    dims = _reduce_dims(it, args, kwargs, src, default_all=True)
    return mix(it, src, dims, real, f"reduced at node {it.where()}")


@rule(
    F.softmax,
    F.log_softmax,
    F.softmin,
    torch.softmax,
    torch.log_softmax,
    "softmax",
    "log_softmax",
    nn.Softmax,
    nn.LogSoftmax,
    nn.Softmin,
    nn.Softmax2d,
    F.normalize,
    nn.LocalResponseNorm,
    F.local_response_norm,
)
def softmax(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Normalisation along a dim: removing a position changes every other one, so they go together."""
    src = it.ids_of(args[0])
    if n.op == "call_module":
        mod = it.module.get_submodule(n.target)
        dim = getattr(mod, "dim", None)
        if isinstance(mod, (nn.Softmax2d, nn.LocalResponseNorm)):
            dim = -3
    elif n.target in (F.normalize,):
        dim = it.real(_arg(args, kwargs, 2, "dim", 1))
    elif n.target is F.local_response_norm:
        dim = 1
    else:
        dim = it.real(_arg(args, kwargs, 1, "dim", None))
    if dim is None:
        dim = 0 if src.dim() in (0, 1, 3) else 1
    return mix(it, src, [dim], real, f"normalised along a dim at node {it.where()}")


# ----------------------------------------------------------------------------------------------------------
# rules: ops that mix channels (they bind weight slices)
# ----------------------------------------------------------------------------------------------------------
def _producer(it: AtomInterpreter, n: fx.Node, name: str | None) -> str:
    if name:
        return name.rsplit(".", 1)[0]
    return str(n.target) if n.op == "call_module" else n.name


def conv_ids(
    it: AtomInterpreter,
    n: fx.Node,
    x: torch.Tensor,
    real: torch.Tensor,
    w: str | None,
    b: str | None,
    groups: int,
    transposed: bool,
    spatial: int,
) -> torch.Tensor:
    """conv: output channels are new atoms; input channels bind weight dim 1 (dim 0 when transposed);
    a grouped conv ties each group's input and output channels into one unit (groups are kept whole)."""
    cdim = x.dim() - spatial - 1
    in_atoms = it.per_index(x, cdim, f"merged into one input channel at node {it.where()}")
    cout = real.shape[cdim]
    out_atoms = it.new_atoms(cout, _producer(it, n, w))
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    it.bind(b, 0, out_atoms)
    if groups == 1:
        it.bind(w, out_dim, out_atoms, "out")
        it.bind(w, in_dim, in_atoms, "in")
    else:
        k, m = len(in_atoms) // groups, cout // groups
        if transposed:  # weight [Cin, Cout/g, ...]: dim 0 follows the input channels
            it.bind(w, 0, in_atoms, "in")
        else:
            it.bind(w, 0, out_atoms, "out")
        for j in range(groups):
            ins = in_atoms[j * k : (j + 1) * k]
            outs = out_atoms[j * m : (j + 1) * m]
            if (ins < 0).any():
                for a in outs:
                    it.poison.append((int(a), f"grouped conv {n.name} reads channels no layer produces"))
            it.unify(list(ins) + list(outs))
    return it.fill(out_atoms, real.shape, cdim)


@rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    x = it.ids_of(args[0])
    b = f"{n.target}.bias" if mod.bias is not None else None
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    spatial = mod.weight.dim() - 2
    return conv_ids(it, n, x, real, f"{n.target}.weight", b, mod.groups, transposed, spatial)


@rule(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    x = it.ids_of(args[0])
    w_arg = _arg(args, kwargs, 1, "weight")
    b_arg = _arg(args, kwargs, 2, "bias")
    w, b = it.param_name(w_arg), it.param_name(b_arg)
    transposed = "transpose" in n.target.__name__
    groups = it.real(_arg(args, kwargs, 7 if transposed else 6, "groups", 1))
    if w is None or (b_arg is not None and b is None):
        return it._unknown(n, real, f"{n.target.__name__} with a computed weight")
    spatial = int(n.target.__name__[-2])
    return conv_ids(it, n, x, real, w, b, groups, transposed, spatial)


def linear_ids(it: AtomInterpreter, n: fx.Node, x: torch.Tensor, real: torch.Tensor, w: str, b: str | None):
    in_atoms = it.per_index(x, -1, f"merged into one input feature at node {it.where()}")
    out_atoms = it.new_atoms(real.shape[-1], _producer(it, n, w))
    it.bind(w, 0, out_atoms, "out")
    it.bind(w, 1, in_atoms, "in")
    it.bind(b, 0, out_atoms)
    return it.fill(out_atoms, real.shape, -1)


@rule(nn.Linear, "transformers.models.falcon.modeling_falcon.FalconLinear")  # a Linear computing x @ W.T + b
def linear_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    b = f"{n.target}.bias" if mod.bias is not None else None
    return linear_ids(it, n, it.ids_of(args[0]), real, f"{n.target}.weight", b)


@rule("transformers.pytorch_utils.Conv1D")
def hf_conv1d(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Hugging Face's Conv1D (GPT-2) is a Linear whose weight is stored transposed: [in, out]."""
    x = it.ids_of(args[0])
    w, b = f"{n.target}.weight", f"{n.target}.bias"
    in_atoms = it.per_index(x, -1, f"merged into one input feature at node {it.where()}")
    out_atoms = it.new_atoms(real.shape[-1], str(n.target))
    it.bind(w, 1, out_atoms, "out")
    it.bind(w, 0, in_atoms, "in")
    it.bind(b, 0, out_atoms)
    return it.fill(out_atoms, real.shape, -1)


@rule(F.linear)
def linear_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    w_arg, b_arg = _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    w, b = it.param_name(w_arg), it.param_name(b_arg)
    if w is None or (b_arg is not None and b is None):
        return it._unknown(n, real, "F.linear with a computed weight")
    return linear_ids(it, n, it.ids_of(args[0]), real, w, b)


def _channel_params(
    it: AtomInterpreter, x: torch.Tensor, cdim: int, names: list[str | None], scale: str | None
) -> np.ndarray:
    atoms = it.per_index(x, cdim, f"merged into one channel at node {it.where()}")
    for name in names:
        it.bind(name, 0, atoms, "norm_scale" if name is not None and name == scale else "")
    return atoms


@rule(
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LazyBatchNorm2d,
)
def batchnorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Per-channel statistics and affine parameters follow the channel."""
    mod = it.module.get_submodule(n.target)
    x = it.ids_of(args[0])
    cdim = 1 if x.dim() > 1 else 0
    if isinstance(mod, nn.modules.instancenorm._InstanceNorm) and x.dim() == mod._get_no_batch_dim():
        cdim = 0
    names = [
        f"{n.target}.{p}"
        for p in ("weight", "bias", "running_mean", "running_var")
        if getattr(mod, p, None) is not None
    ]
    _channel_params(it, x, cdim, names, f"{n.target}.weight")
    return x


@rule(F.batch_norm, F.instance_norm)
def batchnorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    x = it.ids_of(args[0])
    keys = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]  # same for both functions
    arg_nodes = [_arg(args, kwargs, i, k) for i, k in keys]
    names = [it.param_name(a) for a in arg_nodes]
    if any(a is not None and nm is None for a, nm in zip(arg_nodes, names)):
        return it._unknown(n, real, f"{n.target.__name__} with computed parameters")
    _channel_params(it, x, 1 if x.dim() > 1 else 0, names, names[2])
    return x


def groupnorm_ids(it: AtomInterpreter, n: fx.Node, x: torch.Tensor, groups: int, names: list[str | None]):
    """GroupNorm: the channels of one group share statistics, so a group is removed whole."""
    atoms = _channel_params(it, x, 1, names, names[0])
    k = len(atoms) // groups
    for j in range(groups):
        chunk = atoms[j * k : (j + 1) * k]
        if (chunk < 0).any():
            for a in chunk[chunk >= 0]:
                it.poison.append((int(a), f"GroupNorm {n.name} normalises channels no layer produces"))
        it.unify(chunk)
    return x


@rule(nn.GroupNorm)
def groupnorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    names = [f"{n.target}.weight", f"{n.target}.bias"] if mod.affine else [None, None]
    return groupnorm_ids(it, n, it.ids_of(args[0]), mod.num_groups, names)


@rule(F.group_norm)
def groupnorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    groups = it.real(_arg(args, kwargs, 1, "num_groups"))
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    names = [it.param_name(w), it.param_name(b)]
    if (w is not None and names[0] is None) or (b is not None and names[1] is None):
        return it._unknown(n, real, "F.group_norm with computed parameters")
    return groupnorm_ids(it, n, it.ids_of(args[0]), groups, names)


def layernorm_ids(
    it: AtomInterpreter, n: fx.Node, x: torch.Tensor, ndims: int, names: list[str | None], kind: str
) -> torch.Tensor:
    """LayerNorm/RMSNorm normalise over channels: removing one changes the others' values, so the group is
    only pruned on request (and then the verifier reports the difference instead of failing)."""
    if ndims != 1:
        return it._unknown(n, x, f"{kind} over {ndims} dims")
    atoms = it.per_index(x, -1, f"merged into one channel at node {it.where()}")
    if all(nm is None for nm in names):
        for a in atoms[atoms >= 0]:
            it.poison.append((int(a), f"{kind} {n.name} has no affine weight to follow a pruned size"))
    for nm in names:
        it.bind(nm, 0, atoms)
    for a in atoms[atoms >= 0]:
        it.normed.append((int(a), f"normalised over by {kind} {n.target if n.op == 'call_module' else n.name}"))
    return x


@rule(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
def layernorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    names = [f"{n.target}.{p}" for p in ("weight", "bias") if getattr(mod, p, None) is not None]
    return layernorm_ids(it, n, it.ids_of(args[0]), len(mod.normalized_shape), names or [None], type(mod).__name__)


#: RMSNorm classes of Hugging Face decoders (x / rms(x) * weight over the last dim, weight 1-D): leaves with
#: the LayerNorm rule, so that their width is a (normalised, opt-in) group rather than a reduction that ties
#: every channel into one.
HF_RMSNORMS = [
    f"transformers.models.{m}.modeling_{m}.{c}RMSNorm"
    for m, c in (
        ("llama", "Llama"),
        ("mistral", "Mistral"),
        ("qwen2", "Qwen2"),
        ("qwen3", "Qwen3"),
        ("gemma", "Gemma"),
        ("phi3", "Phi3"),
        ("mixtral", "Mixtral"),
        ("olmo2", "Olmo2"),
        ("granite", "Granite"),
    )
]


@rule(*HF_RMSNORMS)
def hf_rmsnorm(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1:
        return it._unknown(n, real)
    return layernorm_ids(it, n, it.ids_of(args[0]), 1, [f"{n.target}.weight"], type(mod).__name__)


@rule(F.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else []))
def layernorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    shape = it.real(_arg(args, kwargs, 1, "normalized_shape"))
    params = [_arg(args, kwargs, 2, "weight")] + ([_arg(args, kwargs, 3, "bias")] if n.target is F.layer_norm else [])
    names = [it.param_name(p) for p in params]
    if any(p is not None and nm is None for p, nm in zip(params, names)):
        return it._unknown(n, real, f"{n.target.__name__} with computed parameters")
    return layernorm_ids(it, n, it.ids_of(args[0]), len(shape), names, n.target.__name__)


@rule(nn.PReLU)
def prelu_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    mod = it.module.get_submodule(n.target)
    x = it.ids_of(args[0])
    if mod.num_parameters > 1:
        it.bind(f"{n.target}.weight", 0, it.per_index(x, 1 if x.dim() > 1 else 0))
    return x


def _single(ids: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slice along ``dim`` reduced away: the one atom it holds (-1 if none) and whether it holds several."""
    mask = ids >= 0
    big = torch.tensor(float("inf"), dtype=ids.dtype)
    mn = torch.where(mask, ids, big).amin(dim)
    mx = torch.where(mask, ids, -big).amax(dim)
    has = mask.any(dim)
    return torch.where(has, mn, torch.full_like(mn, NONE)), has & (mn != mx)


@rule(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """``A[..., n, k] @ B[..., k, m]``: atoms that vary along the contracted dim are paired across A and B
    (q against k in attention); atoms constant along it (a row of A, a column of B) carry to the output.
    Anything else (an atom varying along both, a contraction the other side cannot follow, channel atoms on
    both the rows and the columns) is poisoned."""
    a, b = it.ids_of(args[0]), it.ids_of(args[1])
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.dim() < 2 or b.dim() < 2:
        return it._unknown(n, real, "matmul of vectors")
    why = f"matmul at node {it.where()}"
    a_row, a_row_multi = _single(a, -1)  # [..., n]: A's atom per row, constant along k?
    a_col, a_col_multi = _single(a, -2)  # [..., k]: A's atom per contracted index, constant along n?
    b_col, b_col_multi = _single(b, -2)  # [..., m]
    b_row, b_row_multi = _single(b, -1)  # [..., k]
    a_contracts = bool(a_row_multi.any())
    b_contracts = bool(b_col_multi.any())
    if a_contracts and a_col_multi.any():
        it.poison_ids(a, f"{why}: an operand's atoms vary along both of its last dims")
    if b_contracts and b_row_multi.any():
        it.poison_ids(b, f"{why}: an operand's atoms vary along both of its last dims")
    if a_contracts or b_contracts:
        shape = torch.broadcast_shapes(a_col.shape, b_row.shape)
        ac, br = a_col.expand(shape).reshape(-1), b_row.expand(shape).reshape(-1)
        paired = (ac >= 0) & (br >= 0)
        if paired.any():
            for x, y in _unique_pairs(ac[paired], br[paired]):
                it.uf.union(x, y)
        lonely = torch.cat([ac[(ac >= 0) & (br < 0)], br[(br >= 0) & (ac < 0)]])
        for atom in _unique_atoms(lonely):
            it.poison.append((atom, f"{why}: contracted channels the other operand cannot follow"))
    rows = torch.full_like(a_row, NONE) if a_contracts else a_row
    cols = torch.full_like(b_col, NONE) if b_contracts else b_col
    if (a_contracts or b_contracts) and not (rows >= 0).any() and not (cols >= 0).any():
        # Only contracted channels feed the product (q @ k^T). Where a slice's contracted channels are all one
        # unit (a whole head: its head size was fixed in a reshape), removing that unit would leave the product
        # 0, not absent, and what follows (softmax, attn @ v) would still see it: the slice's product belongs
        # to that unit. Where they are several units, a group always keeps one of them, and removing the others
        # changes the original and the pruned model alike; the product then carries no channel.
        shape = torch.broadcast_shapes(a_col.shape, b_row.shape)
        both = torch.cat([a_col.expand(shape), b_row.expand(shape)], -1)
        flat = both.reshape(-1, both.shape[-1]).to(torch.int64)
        roots = torch.as_tensor(it.uf.roots())
        has = flat >= 0
        r = torch.where(has, roots[flat.clamp_min(0)], torch.full_like(flat, -1))
        big = torch.iinfo(torch.int64).max
        lo = torch.where(has, r, torch.full_like(r, big)).amin(1)
        hi = torch.where(has, r, torch.full_like(r, -1)).amax(1)
        single = has.any(1) & (lo == hi)
        atoms = torch.where(single, lo, torch.full_like(lo, -1))
        it.heads.extend(torch.unique(atoms[atoms >= 0]).tolist())
        atoms = atoms.to(torch.float64)
        out = atoms.reshape(tuple(both.shape[:-1]) + (1, 1))
        return out.expand(real.shape).clone()
    if (rows >= 0).any() and (cols >= 0).any():
        # out[i, j] = sum_k a[i, k] b[k, j] needs both a's row atom and b's column atom (attn @ v: a head's
        # attention weights and its value columns): each such pair is one unit.
        grid_r = rows.unsqueeze(-1).expand(real.shape).reshape(-1)
        grid_c = cols.unsqueeze(-2).expand(real.shape).reshape(-1)
        both = (grid_r >= 0) & (grid_c >= 0)
        if both.any():
            for x, y in _unique_pairs(grid_r[both], grid_c[both]):
                it.uf.union(x, y)
    out = torch.where(rows.unsqueeze(-1) >= 0, rows.unsqueeze(-1), cols.unsqueeze(-2))
    return out.expand(real.shape).clone() if out.shape != real.shape else out


@rule(F.scaled_dot_product_attention)
def sdpa(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """``softmax(q k^T * scale + mask) v`` per leading slice (batch, head). The default scale is
    1/sqrt(head size) and a removed head would leave uniform attention, not none: so a slice's q, k and v
    channels (and a per-head mask such as a relative position bias) are one unit, a whole head. With
    ``enable_gqa`` a key/value head serves its group of query heads, which then go together."""
    q, k, v = (it.ids_of(_arg(args, kwargs, i, name)) for i, name in enumerate(("query", "key", "value")))
    mask = it.ids_of(_arg(args, kwargs, 3, "attn_mask"))
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in (q, k, v)):
        return it._unknown(n, real, "scaled_dot_product_attention of vectors")
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
    it.heads.extend(int(a) for a in np.unique(atoms[atoms >= 0]))
    return torch.as_tensor(atoms, dtype=torch.float64).reshape(tuple(lead) + (1, 1)).expand(real.shape).clone()


@rule(nn.MultiheadAttention)
def multihead_attention(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Whole heads: a head's q, k and v rows of the packed projection and its out_proj columns are one unit
    (the attention rescales by the head size, so trimming inside a head would not be exact)."""
    mod = it.module.get_submodule(n.target)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        return it._unknown(n, real, "MultiheadAttention with separate q/k/v weights, bias_kv or zero_attn")
    q, k, v = (it.ids_of(_arg(args, kwargs, i, name)) for i, name in enumerate(("query", "key", "value")))
    w, b = f"{n.target}.in_proj_weight", f"{n.target}.in_proj_bias" if mod.in_proj_bias is not None else None
    for src in (q, k, v):
        it.bind(w, 1, it.per_index(src, -1, f"merged into one feature at node {it.where()}"), "in")
    e, heads = mod.embed_dim, mod.num_heads
    head_atoms = it.new_atoms(heads, str(n.target))
    it.heads.extend(head_atoms.tolist())
    rows = np.tile(np.repeat(head_atoms, e // heads), 3)
    it.bind(w, 0, rows, "out")
    it.bind(b, 0, rows)
    it.bind(f"{n.target}.out_proj.weight", 1, np.repeat(head_atoms, e // heads), "in")
    out_real = real[0]
    out_atoms = it.new_atoms(out_real.shape[-1], f"{n.target}.out_proj")
    it.bind(f"{n.target}.out_proj.weight", 0, out_atoms, "out")
    if mod.out_proj.bias is not None:
        it.bind(f"{n.target}.out_proj.bias", 0, out_atoms)
    weights = None if real[1] is None else torch.full(real[1].shape, NONE, dtype=torch.float64)
    return (it.fill(out_atoms, out_real.shape, -1), weights)


@rule(nn.Embedding)
def embedding_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Embedding columns are new atoms (the indices it looks up carry no channels)."""
    atoms = it.new_atoms(real.shape[-1], str(n.target))
    it.bind(f"{n.target}.weight", 1, atoms, "out")
    return it.fill(atoms, real.shape, -1)


@rule(F.embedding)
def embedding_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    w = it.param_name(_arg(args, kwargs, 1, "weight"))
    if w is None:
        return it._unknown(n, real, "F.embedding with a computed weight")
    atoms = it.new_atoms(real.shape[-1], w.rsplit(".", 1)[0])
    it.bind(w, 1, atoms, "out")
    return it.fill(atoms, real.shape, -1)


# ----------------------------------------------------------------------------------------------------------
# rules: tensors created inside forward
# ----------------------------------------------------------------------------------------------------------
@rule(
    torch.zeros,
    torch.ones,
    torch.full,
    torch.empty,
    torch.arange,
    torch.randn,
    torch.rand,
    torch.eye,
    torch.tensor,
    torch.linspace,
    torch.as_tensor,
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "new_tensor",
)
def factory(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """A tensor built with a literal size > 1 cannot follow pruning: it carries a poisoned atom so that
    combining it with channels (rather than broadcasting) keeps them whole; sizes from tensors adapt."""
    sizes = args[1:] if n.op == "call_method" else args
    if n.target in (torch.tensor, torch.as_tensor, "new_tensor"):
        it.value_use(list(sizes[:1]))  # torch.tensor(q.size(-1)): a size become a value (DeBERTa's scale)
    elif n.target in (torch.full, "new_full"):
        it.value_use([_arg(sizes, kwargs, 1, "fill_value")])
    if n.target in (torch.arange, torch.linspace, torch.tensor, torch.as_tensor, torch.eye):
        literal = True
    else:
        literal = bool(_literal_dims(tuple(sizes)))
    if literal and isinstance(real, torch.Tensor) and real.numel() > 1:
        a = it.poison_atom(f"tensor of fixed size created at node {it.where()}")
        return torch.full(real.shape, float(a), dtype=torch.float64)
    return map_tensors(real, lambda t: torch.full(t.shape, NONE, dtype=torch.float64), None)


@rule(
    torch.zeros_like,
    torch.ones_like,
    torch.full_like,
    torch.empty_like,
    torch.rand_like,
    torch.randn_like,
    "zero_",
    "fill_",
    "uniform_",
    "normal_",
    "bernoulli",
    "bernoulli_",
    torch.bernoulli,
)
def like(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """New values shaped like an existing tensor: they follow its shape and carry no channel."""
    return map_tensors(real, lambda t: torch.full(t.shape, NONE, dtype=torch.float64), None)


@rule(builtins.getattr, "size", "dim", "numel")
def meta(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, real: Any) -> Any:
    """Attribute reads (``x.shape``, ``x.T``...)."""
    if isinstance(real, torch.Tensor) and n.target is builtins.getattr and args[1] in ("T", "mT", "data"):
        src = it.ids_of(args[0])
        return getattr(src, args[1])
    return None


# ----------------------------------------------------------------------------------------------------------
# assembling groups
# ----------------------------------------------------------------------------------------------------------
def tensor_aliases(model: nn.Module) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Tied parameters (one tensor under several state_dict names) map to one canonical name."""
    canon: dict[int, str] = {}
    alias: dict[str, str] = {}
    groups: dict[str, list[str]] = defaultdict(list)
    for name, t in model.state_dict(keep_vars=True).items():
        key = id(t)
        first = canon.setdefault(key, name)
        alias[name] = first
        groups[first].append(name)
    return alias, dict(groups)


def analyse(model: nn.Module, example: Any, gm: fx.GraphModule | None = None) -> Analysis:
    """Trace (unless given) and interpret the model on atom ids; return its coupled channel groups.

    A model that cannot be traced whole is analysed piece by piece (:func:`slimnet.trace.trace_pieces`):
    the pieces' inputs and outputs stay whole, and the reason the whole model did not trace is kept in
    ``Analysis.notes``. With no prunable piece the tracing error is raised as it was."""
    if gm is None:
        try:
            gm = trace(model, example, is_leaf=is_leaf_class)
        except SlimnetError as exc:
            pieces = trace_pieces(model, example, is_leaf=is_leaf_class)
            analysis = _analyse_pieces(model, pieces, str(exc))
            if not any(g.prunable for g in analysis.groups):
                raise
            return analysis
    groups = _analyse_graph(gm, gm.meta.get("inputs") or placeholder_args(gm, example))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return Analysis(groups=groups, aliases=tensor_aliases(model)[1], shapes=shapes)


def _analyse_graph(gm: fx.GraphModule, inputs: list[Any]) -> list[Group]:
    alias, _ = tensor_aliases(gm)
    it = AtomInterpreter(gm, alias)
    with torch.inference_mode(False), torch.no_grad():
        it.run(*inputs)
    shapes = {k: tuple(v.shape) for k, v in gm.state_dict().items()}
    return _assemble(it, shapes)


def _analyse_pieces(model: nn.Module, pieces: list[tuple[str, fx.GraphModule]], why: str) -> Analysis:
    """Groups of every piece, renamed to the model's state_dict names. A tensor tied to one outside its piece
    (shared embeddings) is frozen: the other user was not traced with it."""
    alias, alias_groups = tensor_aliases(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups: list[Group] = []
    for path, gm in pieces:

        def full(t: str, path: str = path) -> str:
            name = f"{path}.{t}"
            return alias.get(name, name)

        for g in _analyse_graph(gm, gm.meta["inputs"]):
            reason = g.reason
            if reason and (reason.startswith("model input") or reason == "model output"):
                end = "input" if reason.startswith("model input") else "output"
                reason = f"{end} of {path}, traced as a separate piece (the whole model did not trace)"
            for t, _ in g.members:
                outside = [a for a in alias_groups.get(full(t), []) if not a.startswith(f"{path}.")]
                if outside and reason is None:
                    reason = f"{full(t)} is tied to {outside[0]}, outside the traced piece {path}"
            groups.append(
                Group(
                    id=len(groups),
                    name=f"{path}.{g.name}",
                    reason=reason,
                    normalised=g.normalised,
                    members=[(full(t), d) for t, d in g.members],
                    units=[Unit({(full(t), d): idx for (t, d), idx in u.members.items()}) for u in g.units],
                    roles={(full(t), d): r for (t, d), r in g.roles.items()},
                    kind=g.kind,
                )
            )
    first = why.split(": torch.fx needs")[0]
    notes = [f"{first}; traced piece by piece instead ({len(pieces)} pieces), their inputs and outputs left whole"]
    return Analysis(groups=groups, aliases=alias_groups, shapes=shapes, notes=notes)


def _assemble(it: AtomInterpreter, shapes: dict[str, tuple[int, ...]]) -> list[Group]:
    uf = it.uf
    # 1. One physical slice bound to several atoms (a shared module, a merged channel): they go together.
    by_member: dict[Member, list[tuple[np.ndarray, str]]] = defaultdict(list)
    for name, dim, atoms, role in it.bindings:
        by_member[(name, dim)].append((atoms, role))
    for entries in by_member.values():
        if len(entries) > 1:
            stacked = np.stack([a for a, _ in entries])
            for col in stacked.T:
                uf.union_all([a for a in col if a >= 0])
    # 2. Free parameters (layer scales, position embeddings): the dim along which each slice is one unit.
    roots = uf.roots()
    for name, (start, shape) in it.param_ranges.items():
        cls = roots[start : start + int(np.prod(shape))].reshape(shape)
        found = None
        for d in range(len(shape)):
            if shape[d] <= 1:
                continue
            rows = np.moveaxis(cls, d, 0).reshape(shape[d], -1)
            if (rows == rows[:, :1]).all():
                found = d
                break
        if found is None:
            for a in np.unique(cls):
                it.notes.append((int(a), f"parameter {name} cannot be sliced along one dim"))
                it.poison.append((int(a), f"parameter {name} cannot be sliced along one dim"))
        else:
            rows = np.moveaxis(cls, found, 0).reshape(shape[found], -1)
            it.bind(name, found, rows[:, 0].copy())
            by_member[(name, found)].append((rows[:, 0].copy(), ""))
    roots = uf.roots()
    # 3. Classes that hold a produced channel are units.
    is_channel = np.zeros(len(roots), dtype=bool)
    producer_of: dict[int, str] = {}
    for start, n, producer in it.channel_ranges:
        is_channel[start : start + n] = True
        for r in np.unique(roots[start : start + n]).tolist():
            producer_of.setdefault(r, producer)
    unit_roots = set(np.unique(roots[is_channel]).tolist())
    slots: dict[int, dict[Member, list[int]]] = defaultdict(dict)
    roles: dict[Member, str] = {}
    units_arr = np.zeros(len(roots), dtype=bool)
    units_arr[list(unit_roots)] = True
    for (name, dim), entries in by_member.items():
        if name not in shapes:
            continue
        for _atoms, role in entries:
            if role:
                roles[(name, dim)] = role
        # every entry of one member binds the same physical slices: the first atom per index decides
        atoms = np.max(np.stack([a for a, _ in entries]), axis=0)
        idx = np.nonzero(atoms >= 0)[0]
        r = roots[atoms[idx]]
        ok = units_arr[r]
        idx, r = idx[ok], r[ok]
        order = np.argsort(r, kind="stable")
        idx, r = idx[order], r[order]
        # runs of one root, sliced from plain lists (np.split makes an array per unit: slow on wide nets)
        starts = [0] + (np.nonzero(np.diff(r))[0] + 1).tolist() + [len(r)]
        r_list, idx_list = r.tolist(), idx.tolist()
        for s, e in zip(starts[:-1], starts[1:]):
            if e > s:
                slots[r_list[s]][(name, dim)] = sorted(idx_list[s:e])
    poison: dict[int, str] = {}
    for (name, _dim), entries in by_member.items():
        if name in it.frozen:
            for atoms, _ in entries:
                for a in atoms[atoms >= 0].tolist():
                    it.poison.append((int(a), it.frozen[name]))
    for a, why in it.poison:
        poison.setdefault(int(roots[a]), why)
    normed: dict[int, str] = {}
    for a, why in it.normed:
        normed.setdefault(int(roots[a]), why)
    head_roots = {int(roots[a]) for a in it.heads}
    notes: dict[int, str] = {}
    for a, why in it.notes:
        notes.setdefault(int(roots[a]), why)
    # 4. Units with the same members form a group.
    buckets: dict[tuple[Member, ...], list[int]] = defaultdict(list)
    for r in sorted(unit_roots):
        if not slots[r]:
            continue
        buckets[tuple(sorted(slots[r]))].append(r)
    groups: list[Group] = []
    names_seen: dict[str, int] = defaultdict(int)
    for members, rs in sorted(buckets.items(), key=lambda kv: min(kv[1])):
        units = [Unit({m: slots[r][m] for m in members}) for r in rs]
        units.sort(key=lambda u: u.members[members[0]][0])  # units own disjoint slices: one member orders them
        name = producer_of.get(min(rs), members[0][0].rsplit(".", 1)[0])
        names_seen[name] += 1
        if names_seen[name] > 1:
            name = f"{name}#{names_seen[name]}"
        reason = next((poison[r] for r in rs if r in poison), None)
        if reason is None and len(units) < 2:
            reason = notes.get(rs[0], "a single unit: nothing to choose from")
            if reason != "a single unit: nothing to choose from":
                reason = f"all channels go together ({reason})"
        norm = next((normed[r] for r in rs if r in normed), None)
        groups.append(
            Group(
                id=len(groups),
                name=name,
                units=units,
                members=list(members),
                reason=reason,
                normalised=norm,
                roles={m: roles.get(m, "") for m in members},
                kind="heads" if any(r in head_roots for r in rs) else "channels",
            )
        )
    return groups
