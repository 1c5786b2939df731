"""Layers that mix channels: convolutions, linear layers, norms, PReLU and embeddings.

Each binds the atoms it reads and makes to slices of its tensors: a conv's output channels are new atoms bound
to weight dim 0 (and the bias), its input channels' atoms to weight dim 1; a norm's parameters follow the channel
they scale. Functional forms (``F.conv2d(x, self.weight)``) work when every parameter is a plain ``get_attr``;
a computed weight is refused (``it.unknown``), never guessed. A conv or LayerNorm whose weights serve several
units one row each (heads folded into the batch dim, as MViT's pools do) keeps its weights whole and passes the
units through (:func:`shared_by_units`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..atoms import canonical, one_atom_per_slice
from ..interpreter import AtomInterpreter
from ..registry import arg, rule


def _producer(n: fx.Node, name: str | None) -> str:
    """The layer that makes a node's output channels: the weight's module, else the node."""
    if name:
        return name.rsplit(".", 1)[0]
    return str(n.target) if n.op == "call_module" else n.name


def shared_by_units(it: AtomInterpreter, x: torch.Tensor, cdim: int, dims: list[int]) -> bool:
    """Whether a layer's per-channel weights serve several units one slice each: each slice of ``x`` over
    ``dims`` (the channel dim and the positions the layer mixes) holds one unit's atoms, not all the same unit,
    so that a channel's slices hold atoms of several units. MViT's pools fold the heads into the batch dim and
    run one depthwise conv and one LayerNorm(head_dim) over every head: each head's rows go in whole and come
    out whole, so the weights, shared by all heads, stay whole and the heads pass through. Binding the weights
    per channel instead would merge the heads (a channel's weight slice would belong to all of them)."""
    c = x.shape[cdim]
    if c == 0 or not one_atom_per_slice(x.movedim(cdim, 0).reshape(c, -1), 1)[1].any():
        return False  # a channel's slices hold one atom: the layer's weights follow the channels as usual
    rest = [d for d in range(x.dim()) if d not in dims]
    rows = canonical(x, it.roots()).permute(rest + dims).reshape(-1, int(np.prod([x.shape[d] for d in dims])))
    unit, several = one_atom_per_slice(rows, 1)
    partial = (rows >= 0).any(1) & (rows < 0).any(1)
    if several.any() or partial.any():
        return False
    units = torch.unique(unit[unit >= 0]).to(torch.int64).numpy()
    # rows that are the model's inputs (RAFT runs its two images through one encoder as a batch of 2) are not
    # units of channels: the layer's channels are its own, as usual
    return len(units) > 1 and not np.isin(units, it.poisoned_roots()).any()


def _shared_conv(x: torch.Tensor, value: torch.Tensor, cdim: int, groups: int) -> torch.Tensor:
    """A shared conv's output ids (see :func:`shared_by_units`): channel for channel its input's, when it maps
    each channel to itself (depthwise) and a channel holds one atom per row; else each row's unit."""
    c = x.shape[cdim]
    flat = x.reshape(list(x.shape[: cdim + 1]) + [-1])
    atom, several = one_atom_per_slice(flat, -1)  # per row and channel
    if groups == c == value.shape[cdim] and not several.any():
        return atom.reshape(list(atom.shape) + [1] * (value.dim() - cdim - 1)).expand(value.shape).clone()
    unit = one_atom_per_slice(flat.reshape(list(x.shape[:cdim]) + [-1]), -1)[0]
    return unit.reshape(list(unit.shape) + [1] * (value.dim() - cdim)).expand(value.shape).clone()


def conv_ids(
    it: AtomInterpreter,
    n: fx.Node,
    x: torch.Tensor,
    value: torch.Tensor,
    w: str | None,
    b: str | None,
    groups: int,
    transposed: bool,
    spatial: int,
) -> torch.Tensor:
    """conv: output channels are new atoms; input channels bind weight dim 1 (dim 0 when transposed);
    a grouped conv ties each group's input and output channels into one unit (groups are kept whole)."""
    cdim = x.dim() - spatial - 1
    if shared_by_units(it, x, cdim, list(range(cdim, x.dim()))):
        return _shared_conv(x, value, cdim, groups)
    in_atoms = it.per_index(x, cdim, it.at_node("merged into one input channel"))
    cout = value.shape[cdim]
    out_atoms = it.new_atoms(cout, _producer(n, w))
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
        # one row per group: its k input and m output atoms become one unit (vectorised: depthwise convs
        # have a group per channel)
        rows = np.concatenate([in_atoms.reshape(groups, k), out_atoms.reshape(groups, m)], axis=1)
        orphan = (rows[:, :k] < 0).any(axis=1)
        if orphan.any():
            it.poison(rows[orphan, k:].reshape(-1), f"grouped conv {n.name} reads channels no layer produces")
        anchor = rows[:, k : k + 1]  # an output atom of each group (always an atom)
        pairs = np.broadcast_to(anchor, rows.shape)[rows >= 0], rows[rows >= 0]
        it.unify_pairs(zip(pairs[0].tolist(), pairs[1].tolist()))
    return it.fill(out_atoms, value.shape, cdim)


@rule(nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    x = it.ids_of(args[0])
    b = f"{n.target}.bias" if mod.bias is not None else None
    transposed = isinstance(mod, nn.modules.conv._ConvTransposeNd)
    spatial = mod.weight.dim() - 2
    return conv_ids(it, n, x, value, f"{n.target}.weight", b, mod.groups, transposed, spatial)


@rule(F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    x = it.ids_of(args[0])
    w_arg = arg(args, kwargs, 1, "weight")
    b_arg = arg(args, kwargs, 2, "bias")
    w, b = it.param_name(w_arg), it.param_name(b_arg)
    transposed = "transpose" in n.target.__name__
    groups = it.value_of(arg(args, kwargs, 7 if transposed else 6, "groups", 1))
    if w is None or (b_arg is not None and b is None):
        return it.unknown(n, value, f"{n.target.__name__} with a computed weight")
    spatial = int(n.target.__name__[-2])
    return conv_ids(it, n, x, value, w, b, groups, transposed, spatial)


def linear_ids(it: AtomInterpreter, n: fx.Node, x: torch.Tensor, value: torch.Tensor, w: str, b: str | None):
    in_atoms = it.per_index(x, -1, it.at_node("merged into one input feature"))
    out_atoms = it.new_atoms(value.shape[-1], _producer(n, w))
    it.bind(w, 0, out_atoms, "out")
    it.bind(w, 1, in_atoms, "in")
    it.bind(b, 0, out_atoms)
    return it.fill(out_atoms, value.shape, -1)


@rule(nn.Linear)
def linear_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    b = f"{n.target}.bias" if mod.bias is not None else None
    return linear_ids(it, n, it.ids_of(args[0]), value, f"{n.target}.weight", b)


@rule(F.linear)
def linear_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    w_arg, b_arg = arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    w, b = it.param_name(w_arg), it.param_name(b_arg)
    if w is None or (b_arg is not None and b is None):
        return it.unknown(n, value, "F.linear with a computed weight")
    return linear_ids(it, n, it.ids_of(args[0]), value, w, b)


def _channel_params(
    it: AtomInterpreter, x: torch.Tensor, cdim: int, names: list[str | None], scale: str | None
) -> np.ndarray:
    atoms = it.per_index(x, cdim, it.at_node("merged into one channel"))
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
def batchnorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Per-channel statistics and affine parameters follow the channel."""
    mod = it.module_of(n)
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
def batchnorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    x = it.ids_of(args[0])
    keys = [(1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")]  # same for both functions
    arg_nodes = [arg(args, kwargs, i, k) for i, k in keys]
    names = [it.param_name(a) for a in arg_nodes]
    if any(a is not None and nm is None for a, nm in zip(arg_nodes, names)):
        return it.unknown(n, value, f"{n.target.__name__} with computed parameters")
    _channel_params(it, x, 1 if x.dim() > 1 else 0, names, names[2])
    return x


def groupnorm_ids(it: AtomInterpreter, n: fx.Node, x: torch.Tensor, groups: int, names: list[str | None]):
    """GroupNorm: the channels of one group share statistics, so a group is removed whole."""
    atoms = _channel_params(it, x, 1, names, names[0])
    k = len(atoms) // groups
    for j in range(groups):
        chunk = atoms[j * k : (j + 1) * k]
        if (chunk < 0).any():
            it.poison(chunk, f"GroupNorm {n.name} normalises channels no layer produces")
        it.unify(chunk)
    return x


@rule(nn.GroupNorm)
def groupnorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    names = [f"{n.target}.weight", f"{n.target}.bias"] if mod.affine else [None, None]
    return groupnorm_ids(it, n, it.ids_of(args[0]), mod.num_groups, names)


@rule(F.group_norm)
def groupnorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    groups = it.value_of(arg(args, kwargs, 1, "num_groups"))
    w, b = arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")
    names = [it.param_name(w), it.param_name(b)]
    if (w is not None and names[0] is None) or (b is not None and names[1] is None):
        return it.unknown(n, value, "F.group_norm with computed parameters")
    return groupnorm_ids(it, n, it.ids_of(args[0]), groups, names)


def layernorm_ids(
    it: AtomInterpreter, n: fx.Node, x: torch.Tensor, ndims: int, names: list[str | None], kind: str
) -> torch.Tensor:
    """LayerNorm/RMSNorm normalise over channels: removing one changes the others' values, so the group is
    only pruned on request (and then the verifier reports the difference instead of failing)."""
    if ndims != 1:
        return it.unknown(n, x, f"{kind} over {ndims} dims")
    if shared_by_units(it, x, x.dim() - 1, [x.dim() - 1]):
        return x  # each unit's rows normalised alone (MViT's per-head norms): the weights stay whole
    atoms = it.per_index(x, -1, it.at_node("merged into one channel"))
    if all(nm is None for nm in names):
        it.poison(atoms, f"{kind} {n.name} has no affine weight to follow a pruned size")
    for nm in names:
        it.bind(nm, 0, atoms)
    it.mark_normalised(atoms[atoms >= 0], f"normalised over by {kind} {n.target if n.op == 'call_module' else n.name}")
    return x


@rule(nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []))
def layernorm_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    names = [f"{n.target}.{p}" for p in ("weight", "bias") if getattr(mod, p, None) is not None]
    return layernorm_ids(it, n, it.ids_of(args[0]), len(mod.normalized_shape), names or [None], type(mod).__name__)


@rule(F.layer_norm, *([F.rms_norm] if hasattr(F, "rms_norm") else []))
def layernorm_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    shape = it.value_of(arg(args, kwargs, 1, "normalized_shape"))
    params = [arg(args, kwargs, 2, "weight")] + ([arg(args, kwargs, 3, "bias")] if n.target is F.layer_norm else [])
    names = [it.param_name(p) for p in params]
    if any(p is not None and nm is None for p, nm in zip(params, names)):
        return it.unknown(n, value, f"{n.target.__name__} with computed parameters")
    return layernorm_ids(it, n, it.ids_of(args[0]), len(shape), names, n.target.__name__)


@rule(nn.PReLU)
def prelu_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    mod = it.module_of(n)
    x = it.ids_of(args[0])
    if mod.num_parameters > 1:
        it.bind(f"{n.target}.weight", 0, it.per_index(x, 1 if x.dim() > 1 else 0))
    return x


@rule(nn.Embedding)
def embedding_module(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    """Embedding columns are new atoms (the indices it looks up carry no channels)."""
    atoms = it.new_atoms(value.shape[-1], str(n.target))
    it.bind(f"{n.target}.weight", 1, atoms, "out")
    return it.fill(atoms, value.shape, -1)


@rule(F.embedding)
def embedding_function(it: AtomInterpreter, n: fx.Node, args: tuple, kwargs: dict, value: Any) -> Any:
    w = it.param_name(arg(args, kwargs, 1, "weight"))
    if w is None:
        return it.unknown(n, value, "F.embedding with a computed weight")
    atoms = it.new_atoms(value.shape[-1], w.rsplit(".", 1)[0])
    it.bind(w, 1, atoms, "out")
    return it.fill(atoms, value.shape, -1)
