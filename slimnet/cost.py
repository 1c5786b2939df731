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

The conventions are fvcore's plus slimnet's extra handles (:mod:`slimnet.measure`), so that this count and
fvcore's agree on the original and on the pruned model (``tests/test_cost.py`` checks it; fvcore stays the
reference in ``slimnet bench``): one multiply-add is one MAC; conv and linear count multiplications only;
batch norm 2 per element (1 without affine), layer/group/instance norm 5 (4), elementwise ops and activations 1
per output element, adaptive pooling and mean/sum 1 per input element, max/avg pooling the window per output
element, nearest upsampling 1 and bilinear 4 per output element, attention its two products.

Supporting a new op is one entry: ``@cost(keys...)`` on a function of a :class:`CostCall` returning terms.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ._tensors import flat_tensors, replace_tensors
from ._util import bind_once, lookup

Member = tuple[str, int]


@dataclass
class Form:
    """``const + sum_i counts[i] * keep(unit of atoms[i])``, plus the kept size of a weight dim when ``dim``."""

    const: float = 0.0
    atoms: np.ndarray | None = None
    counts: np.ndarray | None = None
    dim: Member | None = None


@dataclass
class Term:
    """``scale * prod(forms)``: the MACs of one op (or a part of it), attributed to ``module``."""

    scale: float
    forms: list[Form]
    module: str = ""
    op: str = ""


@dataclass
class CostCall:
    """What a cost entry sees of one node (built by the atom interpreter after the node's channel rule ran)."""

    node: fx.Node
    module: nn.Module | None  # for call_module nodes
    value: Any  # the node's output
    args: tuple  # real values of the arguments
    kwargs: dict
    ids: Callable[[Any], Any]  # fx argument -> its atom ids
    out: Any  # the node's atom ids
    param: Callable[[Any], str | None]  # fx argument -> the state_dict name behind a get_attr, else None
    target_name: str = ""  # the module path, for call_module nodes

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)

    def node_arg(self, i: int, name: str) -> Any:
        n = self.node
        return n.args[i] if len(n.args) > i else n.kwargs.get(name)


CostFn = Callable[[CostCall], list[Term]]
#: The one registry of MAC rules: module classes (or qualified names), functions and method names -> entry.
COSTS: dict[Any, CostFn] = {}


def cost(*keys: Any) -> Callable[[CostFn], CostFn]:
    def deco(fn: CostFn) -> CostFn:
        for k in keys:
            bind_once(COSTS, k, fn, "MAC rule")
        return fn

    return deco


# ------------------------------------------------------------------------------------------------ forms
def elements(ids: Any, value: Any = None) -> Form:
    """The elements of an activation that survive: one count per atom (elements with no atom always stay)."""
    if not isinstance(ids, torch.Tensor):
        return Form(const=float(value.numel()) if isinstance(value, torch.Tensor) else 0.0)
    flat = ids.reshape(-1).to(torch.int64)
    if flat.numel() == 0:
        return Form()
    counts = torch.bincount(flat + 1)
    nonzero = torch.nonzero(counts[1:]).flatten()
    return Form(const=float(counts[0]), atoms=nonzero.numpy(), counts=counts[1:][nonzero].double().numpy())


def per_column(ids: Any, size: int) -> Form:
    """The columns (last dim) of a matmul's second operand that survive: a column whose elements all hold one
    atom goes with that atom's unit; a column of mixed or no atoms always stays."""
    if not isinstance(ids, torch.Tensor) or ids.dim() == 0:
        return Form(const=float(size))
    cols = ids.reshape(-1, ids.shape[-1]) if ids.dim() > 1 else ids.reshape(1, -1)
    lo, hi = cols.amin(0), cols.amax(0)
    single = (lo == hi) & (lo >= 0)
    atoms = lo[single].to(torch.int64).numpy()
    return Form(const=float((~single).sum()), atoms=atoms, counts=np.ones(len(atoms)))


def kept(name: str | None, dim: int, size: int) -> Form:
    """The kept size of a state_dict tensor's dim (resolved from the groups when the model is assembled)."""
    return Form(dim=(name, dim), const=float(size)) if name else Form(const=float(size))


def constant(x: float) -> Form:
    return Form(const=float(x))


def _numel(t: Any) -> int:
    return t.numel() if isinstance(t, torch.Tensor) else 0


def _term(call: CostCall, scale: float, *forms: Form) -> list[Term]:
    stack = call.node.meta.get("nn_module_stack") or {}
    where = call.target_name or (next(reversed(stack.values()))[0] if stack else "")
    return [Term(float(scale), list(forms), where, call.node.name)]


# ------------------------------------------------------------------------------------------------ entries
_PER_OUTPUT_FUNCS = [
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, operator.pow, operator.neg,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.maximum, torch.minimum, torch.where,
    torch.pow, torch.addcmul, torch.addcdiv, torch.lerp, torch.subtract, torch.multiply, torch.divide,
    torch.sqrt, torch.rsqrt, torch.exp, torch.log, torch.neg, torch.abs, torch.reciprocal, torch.erf,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.softmax, torch.log_softmax,
    F.relu, F.relu6, F.hardtanh, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.elu, F.selu,
    F.celu, F.leaky_relu, F.mish, F.softplus, F.softmax, F.log_softmax, F.glu, F.threshold, F.prelu,
]  # fmt: skip
_PER_OUTPUT_METHODS = [
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "pow_", "sqrt", "rsqrt", "exp", "exp_",
    "log", "neg", "neg_", "abs", "reciprocal", "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "clamp", "clamp_", "clip", "softmax", "log_softmax", "maximum", "minimum", "where", "addcmul", "addcmul_",
    "lerp", "erf", "hardswish", "__add__", "__mul__", "__sub__", "__truediv__", "__radd__", "__rmul__",
    "__rsub__", "__rtruediv__", "subtract", "multiply", "divide", "square",
]  # fmt: skip
_PER_OUTPUT_MODULES = [
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.ELU,
    nn.SELU, nn.CELU, nn.LeakyReLU, nn.Mish, nn.Softplus, nn.Softmax, nn.LogSoftmax, nn.GLU, nn.Threshold,
    nn.PReLU,
]  # fmt: skip


@cost(*_PER_OUTPUT_FUNCS, *_PER_OUTPUT_METHODS, *_PER_OUTPUT_MODULES)
def per_output(call: CostCall) -> list[Term]:
    """Elementwise arithmetic and activations: one per output element (nothing for arithmetic on sizes)."""
    if not isinstance(call.value, torch.Tensor) or not call.value.is_floating_point():
        return []
    return _term(call, 1.0, elements(call.out, call.value))


@cost(
    torch.mean, torch.sum, "mean", "sum",
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
def per_input(call: CostCall) -> list[Term]:
    """Reductions and adaptive pooling: one per input element."""
    src = call.node.args[0] if call.node.args else None
    value = call.args[0] if call.args else None
    return _term(call, 1.0, elements(call.ids(src), value))


def _window(call: CostCall) -> int:
    if call.module is not None:
        k = call.module.kernel_size
    else:
        k = call.arg(1, "kernel_size")
    spatial = max(1, call.value.dim() - 2) if isinstance(call.value, torch.Tensor) else 2
    if isinstance(k, int):
        return k**spatial
    return math.prod(k) if k else 1


@cost(
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.max_pool1d,
    torch.max_pool2d, torch.max_pool3d, torch.avg_pool1d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d,
)  # fmt: skip
def pool_window(call: CostCall) -> list[Term]:
    """Max/avg pooling: the window's area per output element."""
    value = call.value[0] if isinstance(call.value, tuple) else call.value
    out = call.out[0] if isinstance(call.out, tuple) else call.out
    return _term(call, float(_window(call)), elements(out, value))


@cost(F.interpolate, F.upsample, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
def upsample(call: CostCall) -> list[Term]:
    """fvcore: nearest 1, bilinear 4 per output element (2-D only; other modes and dims are not counted)."""
    if call.module is not None:
        mode = "bilinear" if isinstance(call.module, nn.UpsamplingBilinear2d) else getattr(call.module, "mode", "")
    else:
        mode = call.arg(4, "mode", "nearest")
    if not isinstance(call.value, torch.Tensor) or call.value.dim() != 4:
        return []
    scale = {"nearest": 1.0, "bilinear": 4.0}.get(mode)
    return _term(call, scale, elements(call.out, call.value)) if scale else []


def _conv(call: CostCall, x: torch.Tensor, w: torch.Tensor, name: str | None, transposed: bool) -> list[Term]:
    spatial = x.shape[2:] if transposed else call.value.shape[2:]
    scale = x.shape[0] * math.prod(spatial) * math.prod(w.shape[2:])
    return _term(call, scale, kept(name, 0, w.shape[0]), kept(name, 1, w.shape[1]))


@cost(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_module(call: CostCall) -> list[Term]:
    """Convolution: batch x output positions (input positions when transposed) x every weight element."""
    m = call.module
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    return _conv(call, call.args[0], m.weight, f"{call.target_name}.weight", transposed)


@cost(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_function(call: CostCall) -> list[Term]:
    w = call.arg(1, "weight")
    name = call.param(call.node_arg(1, "weight"))
    return _conv(call, call.args[0], w, name, "transpose" in call.node.target.__name__)


def _linear(call: CostCall, x: torch.Tensor, name: str | None, out_features: int, in_features: int,
            out_dim: int) -> list[Term]:  # fmt: skip
    rows = x.numel() // max(1, x.shape[-1])
    return _term(call, rows, kept(name, out_dim, out_features), kept(name, 1 - out_dim, in_features))


@cost(nn.Linear, "transformers.models.falcon.modeling_falcon.FalconLinear")
def linear_module(call: CostCall) -> list[Term]:
    """Linear: rows x in x out (the bias is not counted)."""
    w = call.module.weight
    return _linear(call, call.args[0], f"{call.target_name}.weight", w.shape[0], w.shape[1], 0)


@cost("transformers.pytorch_utils.Conv1D")
def hf_conv1d(call: CostCall) -> list[Term]:
    """Hugging Face's Conv1D keeps its weight as [in, out]."""
    w = call.module.weight
    return _linear(call, call.args[0], f"{call.target_name}.weight", w.shape[1], w.shape[0], 1)


@cost(F.linear)
def linear_function(call: CostCall) -> list[Term]:
    w = call.arg(1, "weight")
    return _linear(call, call.args[0], call.param(call.node_arg(1, "weight")), w.shape[0], w.shape[1], 0)


@cost(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def matmul(call: CostCall) -> list[Term]:
    """fvcore: every element of the first operand times the second's last dim (batch x n x k x m)."""
    a, b = call.args[0], call.args[1]
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or b.dim() < 2:
        return []
    ids_a, ids_b = call.ids(call.node.args[0]), call.ids(call.node.args[1])
    return _term(call, 1.0, elements(ids_a, a), per_column(ids_b, b.shape[-1]))


@cost(F.scaled_dot_product_attention)
def sdpa(call: CostCall) -> list[Term]:
    """``q @ k^T`` and ``attn @ v``: every element of q and of the output times the source length."""
    q, k = call.arg(0, "query"), call.arg(1, "key")
    source = k.shape[-2]
    ids_q = call.ids(call.node_arg(0, "query"))
    return _term(call, source, elements(ids_q, q)) + _term(call, source, elements(call.out, call.value))


def _norm(call: CostCall, x: torch.Tensor, affine: bool, per_element: tuple[float, float]) -> list[Term]:
    src = call.node.args[0] if call.node.args else call.node.kwargs.get("input")
    return _term(call, per_element[0] if affine else per_element[1], elements(call.ids(src), x))


@cost(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def batchnorm_module(call: CostCall) -> list[Term]:
    """Batch norm in eval: 2 per element with affine parameters, 1 without."""
    return _norm(call, call.args[0], call.module.weight is not None, (2.0, 1.0))


@cost(F.batch_norm)
def batchnorm_function(call: CostCall) -> list[Term]:
    return _norm(call, call.args[0], call.arg(3, "weight") is not None, (2.0, 1.0))


@cost(nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def norm_module(call: CostCall) -> list[Term]:
    """Layer, group and instance norm: 5 per element with affine parameters, 4 without."""
    return _norm(call, call.args[0], getattr(call.module, "weight", None) is not None, (5.0, 4.0))


@cost(F.layer_norm, F.group_norm, F.instance_norm)
def norm_function(call: CostCall) -> list[Term]:
    index = {F.layer_norm: 2, F.group_norm: 2, F.instance_norm: 3}[call.node.target]
    return _norm(call, call.args[0], call.arg(index, "weight") is not None, (5.0, 4.0))


@cost(*([nn.RMSNorm, F.rms_norm] if hasattr(nn, "RMSNorm") else []))
def rms_norm(call: CostCall) -> list[Term]:
    """RMSNorm: 4 per element with a weight, 3 without (slimnet's handle for aten::rms_norm)."""
    weight = call.module.weight if call.module is not None else call.arg(2, "weight")
    return _norm(call, call.args[0], weight is not None, (4.0, 3.0))


@cost(nn.MultiheadAttention)
def multihead_attention(call: CostCall) -> list[Term]:
    """``nn.MultiheadAttention``'s fused path (as :func:`slimnet.measure.native_mha` counts it): the q/k/v
    projections, both attention products, the scaling and the softmax, and the output projection."""
    m = call.module
    q, k = call.arg(0, "query"), call.arg(1, "key")
    if not m.batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    batch, length, source = math.prod(q.shape[:-2]), q.shape[-2], k.shape[-2]
    w = f"{call.target_name}.in_proj_weight"
    rows, cols = m.in_proj_weight.shape
    inner = kept(w, 0, rows)  # 3 x the kept inner width
    out_w = f"{call.target_name}.out_proj.weight"
    o_rows, o_cols = m.out_proj.weight.shape
    return (
        _term(call, batch * (length + 2 * source) / 3, inner, kept(w, 1, cols))
        + _term(call, batch * length, kept(out_w, 0, o_rows), kept(out_w, 1, o_cols))
        + _term(call, 2 * batch * length * source / 3, inner)
        + _term(call, 2 * batch * length * source / (3 * m.head_dim), inner)
    )


class _Call(nn.Module):
    """One call of a function (or of a module) with its tensor arguments as inputs, for fvcore."""

    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.fn, self.spec = fn, (args, kwargs)
        self.inner = fn if isinstance(fn, nn.Module) else None

    def forward(self, *tensors: torch.Tensor) -> Any:
        args, kwargs = replace_tensors(self.spec, tensors)
        return self.fn(*args, **kwargs)


@cost(torch.einsum)
def counted_by_fvcore(call: CostCall) -> list[Term]:
    """Ops without an entry of their own that fvcore can count (``torch.einsum``, a library's fx-wrapped function
    such as torchvision's ``shifted_window_attention``, a leaf module from outside torch): fvcore counts that one
    call, and the count follows the output's kept elements (exact when pruning only thins the output)."""
    from .measure import count_macs  # lazy: fvcore's import is slow and only these rare ops need it

    fn = call.module if call.module is not None else call.node.target
    tensors = flat_tensors((call.args, call.kwargs))
    if not tensors or not isinstance(call.value, torch.Tensor) or call.value.numel() == 0:
        return []
    try:
        total = count_macs(_Call(fn, call.args, call.kwargs), tuple(tensors))["macs"]
    except Exception:  # noqa: BLE001 - a call fvcore cannot trace is counted as free, as fvcore itself would
        return []
    return _term(call, total / call.value.numel(), elements(call.out, call.value)) if total else []


def fallback(call: CostCall) -> CostFn | None:
    """The entry for an op with none: fvcore's count for wrapped functions and leaf modules of other libraries;
    nothing for torch's own ops (view, cat, getitem...: fvcore calls them free or skips them)."""
    target = call.module if call.module is not None else call.node.target
    home = getattr(type(target) if call.module is not None else target, "__module__", "") or ""
    if call.node.op == "call_method" or home.split(".")[0] in ("torch", "_operator", "builtins", "math"):
        return None
    return counted_by_fvcore


def terms_of(it: Any, n: fx.Node, value: Any) -> list[Term]:
    """The terms of node ``n`` as the atom interpreter ``it`` just ran it (its inputs' ids are still live); none
    for ops that cost nothing or that fvcore would not count."""
    module = it.module_of(n) if n.op == "call_module" else None
    fn = lookup(COSTS, type(module)) if module is not None else COSTS.get(n.target)
    call = CostCall(
        node=n,
        module=module,
        value=value,
        args=it.value_of(n.args),
        kwargs=it.value_of(n.kwargs),
        ids=it.ids_of,
        out=it.ids_of(n),
        param=it.param_name,
        target_name=str(n.target) if module is not None else "",
    )
    fn = fn or fallback(call)
    if fn is None:
        return []
    try:
        return fn(call)
    except (AttributeError, IndexError, TypeError, ValueError):  # an unusual call: counted as free, not fatal
        return []


# ------------------------------------------------------------------------------------------------ the model
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
            elif f.atoms is not None and len(f.atoms):
                units = unit_of_atom(f.atoms)
                inside = units >= 0
                const = f.const + float(f.counts[~inside].sum())
                idx, summed = _sum_by(units[inside], f.counts[inside])
                forms.append((const, idx, summed))
            else:
                forms.append((f.const, np.zeros(0, np.int64), np.zeros(0)))
        out.append((term.scale, forms, term.module))
    return out


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
    acc: dict[Member, tuple[list[int], list[int]]] = {}
    for g, start in zip(groups, offsets):
        for i, u in enumerate(g.units):
            for m, idx in u.members.items():
                units, counts = acc.setdefault(m, ([], []))
                units.append(start + i)
                counts.append(len(idx))
    return {m: (np.asarray(u, dtype=np.int64), np.asarray(c, dtype=np.float64)) for m, (u, c) in acc.items()}


def resolve_part(terms: Sequence[Term], groups: Sequence[Any], roots: np.ndarray, alias: dict[str, str],
                 offset: int = 0, prefix: str = "") -> list[Resolved]:  # fmt: skip
    """The terms of one traced graph (whose units are ``groups``, numbered from ``offset``) over global units;
    ``prefix`` names the piece of a model analysed piece by piece."""
    offsets = [offset + o for o in unit_offsets(groups)]
    unit_at = np.full(len(roots), -1, dtype=np.int64)
    for g, start in zip(groups, offsets):
        for i, u in enumerate(g.units):
            unit_at[u.root] = start + i
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
