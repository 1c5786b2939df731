"""Residual-stream width of Hugging Face decoder LMs: ``slimnet shrink hf:DIR --hidden-ratio R --data text.txt``.

Minitron's third axis (Muralidharan et al. 2024): beside heads, MLP units and layers, the width of the residual
stream itself (``hidden_size``), which every layer reads and writes, and the embeddings and the head with it.
Unlike the other cuts it is an APPROXIMATION, said so in every report (``exact: false``): each RMSNorm divides
by the root mean square of all ``hidden_size`` channels, so dropping channels changes every norm's output, even
those of the kept channels, and no slicing can undo that. slimnet keeps the error small and measures it:

* channels are ranked by ACTIVATION, as Minitron does: the mean magnitude of every RMSNorm's output per channel
  (weight included), over the calibration tokens, summed over the norms; the top ``hidden_size' `` stay, a
  multiple of 64 and of the head count (:func:`kept_size`);
* each norm's weight is rescaled by the mean over the calibration tokens of ``rms_kept(x) / rms_all(x)`` of its
  input, so that where the dropped channels carried little energy the norm's output is what it was;
* the report measures the approximation against the original model on the calibration tokens: the mean
  KL(original || cut) of the next-token distributions and the share of tokens whose top-1 prediction is kept.

What IS exact, and verified every time: the written folder, loaded with plain ``AutoModelForCausalLM`` (no
remote code), gives the logits (float64, on the first calibration batch, relative difference at most
:data:`TOLERANCE`) of the *masked original*: the original with the dropped channels zeroed in the embeddings and
in every write to the residual stream (``o_proj``, ``down_proj`` rows), its norm weights those written (times
``sqrt(h'/h)``) and its norm epsilons times ``h'/h``. That identity holds in exact arithmetic, so any mistake in
which tensor is cut along which axis, or in config.json (``hidden_size``, ``head_dim`` now written explicitly),
shows as a difference.

The rewrite is shard by shard (one tensor in memory at a time, :func:`slimnet.llm.depth._copy_tensors`); the
ranking and the verification load the model whole (in float32 and float64), so this step needs the memory of
the model in memory, unlike ``--drop-layers`` and the low-memory width cut. Supported: Llama, Mistral, Qwen2,
Qwen3, Phi-3 (their attention reads ``head_dim`` from the config). Gemma is refused: it scales its embeddings by
``sqrt(hidden_size)``, which a smaller hidden size would change under tied embeddings.

Which axis of which tensor is the residual stream is one table, :data:`AXES` (a tensor name ends with the
key; a key bound twice fails at import); tensors with no residual axis are listed in :data:`UNTOUCHED`; any other
name is refused before anything is written. Example::

    from slimnet.llm.depth import inspect_folder, text_batches
    from slimnet.llm.hidden import cut_hidden

    source = inspect_folder("SmolLM2-135M")
    batches = text_batches(source, "calib.txt", batch_size=8, calib_batches=8)
    result = cut_hidden(source, 0.1, batches, Path("smol-hidden"))  # result.describe()["approximation"]
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SlimnetError, VerificationError
from .depth import (
    INDEX_FILE,
    PLAN_FILE,
    Source,
    _copy_tensors,
    _load_plain,
    _mask,
    _no_stage,
    _stored_dtype,
    _torch,
    add_plan_entry,
    copy_small_files,
    inspect_folder,
    text_batches,
)

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "phi3")
#: the kept hidden size is a multiple of this (runtimes' kernels want it; the MLP and head rules use 64 too)
ROUND_TO = 64
#: the step used when a multiple of 64 and of the head count is too coarse (see :func:`kept_size`)
FINE_ROUND_TO = 8
#: verification: max |written - masked original| over max(1, max |masked original|), the models in float64
#: (transformers' RMSNorms compute in float32 whatever the model's dtype, and their rounding differs between the
#: two models: SmolLM2's 30 layers at 576 -> 432 reach 1.5e-5; a wrong cut is O(1e-1) and more)
TOLERANCE = 1e-4

#: tensor name suffix -> the axis that runs along the residual stream (one entry per kind of tensor)
AXES: dict[str, int] = {}
#: the norms among :data:`AXES` (their weights are rescaled, their modules hooked)
NORMS: tuple[str, ...] = ("input_layernorm.weight", "post_attention_layernorm.weight", "model.norm.weight")
#: tensors with no residual axis (copied as they are)
UNTOUCHED = (
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.qkv_proj.bias",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight", "mlp.gate_proj.bias", "mlp.up_proj.bias",
    "mlp.gate_up_proj.bias",
)  # fmt: skip


def _axis(suffix: str, axis: int) -> None:
    if suffix in AXES:
        raise RuntimeError(f"slimnet.llm.hidden: {suffix!r} is bound twice in AXES")
    AXES[suffix] = axis


for _suffix, _ax in (
    ("model.embed_tokens.weight", 1),  # [vocab, hidden]
    ("lm_head.weight", 1),  # [vocab, hidden]
    ("model.norm.weight", 0),
    ("input_layernorm.weight", 0),
    ("post_attention_layernorm.weight", 0),
    ("self_attn.q_proj.weight", 1),  # readers of the stream: [out, hidden]
    ("self_attn.k_proj.weight", 1),
    ("self_attn.v_proj.weight", 1),
    ("self_attn.qkv_proj.weight", 1),  # Phi-3's fused q/k/v
    ("mlp.gate_proj.weight", 1),
    ("mlp.up_proj.weight", 1),
    ("mlp.gate_up_proj.weight", 1),  # Phi-3's fused gate/up
    ("self_attn.o_proj.weight", 0),  # writers to the stream: [hidden, in]
    ("self_attn.o_proj.bias", 0),
    ("mlp.down_proj.weight", 0),
    ("mlp.down_proj.bias", 0),
):
    _axis(_suffix, _ax)


def _ends(key: str, suffix: str) -> bool:
    return key == suffix or key.endswith("." + suffix)


def axis_of(key: str) -> int | None:
    """The residual axis of tensor ``key``; None for an :data:`UNTOUCHED` tensor; refused for anything else."""
    for suffix, axis in AXES.items():
        if _ends(key, suffix):
            return axis
    if any(_ends(key, s) for s in UNTOUCHED):
        return None
    raise SlimnetError(
        f"--hidden-ratio does not know tensor {key!r} (which of its axes is the residual stream?): the model's "
        f"layout is not one of {', '.join(SUPPORTED)}"
    )


def is_norm(key: str) -> bool:
    return any(_ends(key, s) for s in NORMS)


# ------------------------------------------------------------------------------------------ checks
def kept_size(hidden: int, ratio: float, heads: int = 1) -> int:
    """Channels kept of ``hidden`` at ``ratio`` (share removed): a multiple of :data:`ROUND_TO` and of the
    attention head count (transformers' configs refuse a ``hidden_size`` that ``num_attention_heads`` does not
    divide, even with ``head_dim`` given); where that step is coarser than a quarter of ``hidden`` (SmolLM2's 9
    heads: lcm(64, 9) = 576, the whole width), a multiple of :data:`FINE_ROUND_TO` and of the heads instead."""
    from ..allocate.counts import keep_count

    step = math.lcm(ROUND_TO, heads)
    if step > hidden // 4:
        step = math.lcm(FINE_ROUND_TO, heads)
    return keep_count(hidden, ratio, step)


def check_hidden(source: Source, ratio: float) -> int:
    """The kept hidden size, or one line saying why this folder or ratio cannot be cut (before any work)."""
    if not 0.0 < ratio < 1.0:
        raise SlimnetError(f"--hidden-ratio {ratio:g}: give the share of residual channels to remove, 0 < R < 1")
    if source.model_type not in SUPPORTED:
        why = " (it scales its embeddings by sqrt(hidden_size))" if source.model_type.startswith("gemma") else ""
        raise SlimnetError(
            f"hf:{source.folder} is a {source.model_type!r} model{why}: --hidden-ratio supports {', '.join(SUPPORTED)}"
        )
    hidden = int(source.config["hidden_size"])
    heads = int(source.config.get("num_attention_heads") or 1)
    kept = kept_size(hidden, ratio, heads)
    if kept >= hidden:
        step = math.lcm(ROUND_TO, heads) if math.lcm(ROUND_TO, heads) <= hidden // 4 else math.lcm(8, heads)
        raise SlimnetError(
            f"--hidden-ratio {ratio:g} keeps all {hidden} residual channels (the kept size is a multiple of "
            f"{step}: {ROUND_TO} or {FINE_ROUND_TO}, and the {heads} attention heads): give a larger ratio"
        )
    for key, shape in source.shapes.items():
        axis = axis_of(key)
        if axis is not None and (len(shape) <= axis or shape[axis] != hidden):
            raise SlimnetError(
                f"hf:{source.folder}: tensor {key} has shape {shape}, not {hidden} along axis {axis} (hidden_size)"
            )
    return kept


# ------------------------------------------------------------------------------------------ ranking
def _norm_modules(model: Any, hidden: int) -> dict[str, Any]:
    """The model's residual-stream RMSNorms by name (``model.layers.0.input_layernorm``, ``model.norm``)."""
    out = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if is_norm(f"{name}.weight") and w is not None and tuple(w.shape) == (hidden,):
            out[name] = mod
    return out


def _over_batches(model: Any, batches: list[dict[str, Any]], norms: dict[str, Any], hook: Any, pre: bool) -> None:
    """Run ``batches`` through ``model`` with ``hook(name, tensor, mask)`` on every norm's input (``pre``) or
    output; each batch's attention mask goes with it (padding excluded)."""
    torch = _torch()
    current: dict[str, Any] = {}
    handles = []
    for name, mod in norms.items():
        if pre:
            handles.append(mod.register_forward_pre_hook(lambda _m, a, n=name: hook(n, a[0], current["mask"])))
        else:
            handles.append(mod.register_forward_hook(lambda _m, _a, o, n=name: hook(n, o, current["mask"])))
    try:
        with torch.inference_mode():
            for b in batches:
                current["mask"] = _mask(b, b["input_ids"]).bool()
                model(**b, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def rank_channels(model: Any, batches: list[dict[str, Any]], hidden: int) -> tuple[Any, int]:
    """Minitron's activation importance of each residual channel: the mean |RMSNorm output| over the
    calibration tokens, summed over the norms; and the number of tokens."""
    torch = _torch()
    norms = _norm_modules(model, hidden)
    if not norms:
        raise SlimnetError("--hidden-ratio found no RMSNorm over hidden_size in the model")
    total = torch.zeros(hidden, dtype=torch.float64)
    count = {"tokens": 0}

    def hook(_name: str, out: Any, mask: Any) -> None:
        total.add_(out.double().abs()[mask].sum(0))
        count["tokens"] += int(mask.sum())

    _over_batches(model, batches, norms, hook, pre=False)
    tokens = count["tokens"] // len(norms)
    return total / max(tokens, 1), tokens


def norm_scales(model: Any, batches: list[dict[str, Any]], hidden: int, kept: list[int]) -> dict[str, float]:
    """Per norm (by its weight's name): the mean over the calibration tokens of rms(kept channels of its input)
    / rms(all channels), the factor that keeps its output where the dropped channels carried little."""
    torch = _torch()
    idx = torch.tensor(kept)
    sums: dict[str, list[float]] = {}

    def hook(name: str, x: Any, mask: Any) -> None:
        x = x.double()[mask]
        ratio = x[:, idx].pow(2).mean(-1).sqrt() / x.pow(2).mean(-1).sqrt().clamp_min(1e-30)
        acc = sums.setdefault(f"{name}.weight", [0.0, 0.0])
        acc[0] += float(ratio.sum())
        acc[1] += int(ratio.numel())

    _over_batches(model, batches, _norm_modules(model, hidden), hook, pre=True)
    return {k: s / max(n, 1) for k, (s, n) in sums.items()}


# ------------------------------------------------------------------------------------------ writing
def hidden_config(source: Source, kept: int) -> dict[str, Any]:
    """config.json with the new ``hidden_size`` and ``head_dim`` written out (it was derived from the old one)."""
    cfg = dict(source.config)
    heads = int(cfg["num_attention_heads"])
    cfg["head_dim"] = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    cfg["hidden_size"] = kept
    return cfg


def write_hidden(source: Source, kept: list[int], scales: dict[str, float], dest: Path, entry: dict[str, Any]) -> int:
    """The folder with the residual stream cut to ``kept`` (norms times ``scales``) into the empty ``dest``,
    shard by shard under the same shard names; the number of params written."""
    torch = _torch()
    idx = torch.tensor(kept)

    def shape_of(key: str, shape: list[int]) -> list[int]:
        axis = axis_of(key)
        return shape if axis is None else [len(kept) if i == axis else n for i, n in enumerate(shape)]

    def transform(key: str, t: Any) -> Any:
        axis = axis_of(key)
        if axis is None:
            return t
        t = t.index_select(axis, idx)
        if is_norm(key):
            t = (t.double() * scales[key]).to(t.dtype)
        return t

    total, params = 0, 0
    for shard in source.shard_files():
        keys = [k for k in source.weight_map if source.weight_map[k] == shard]
        total += _copy_tensors(source.folder / shard, {k: k for k in keys}, dest / shard, shape_of, transform)
        params += sum(math.prod(shape_of(k, source.shapes[k])) for k in keys)
    if (source.folder / INDEX_FILE).is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(source.weight_map.items()))}
        (dest / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (dest / "config.json").write_text(json.dumps(hidden_config(source, len(kept)), indent=2) + "\n")
    copy_small_files(source, dest)
    add_plan_entry(dest, entry, previous=source.folder / PLAN_FILE, key="hidden")
    return params


# ------------------------------------------------------------------------------------------ verification
def _masked_original(
    model: Any, written: Any, kept: list[int], scales: dict[str, float], hidden: int, stored: Any
) -> None:
    """Turn ``model`` (the original, float64) into the masked original the written model must equal; the
    written norm weights must be the original's kept ones times their scale (to the rounding of ``stored``)."""
    torch = _torch()
    drop = torch.ones(hidden, dtype=torch.bool)
    drop[torch.tensor(kept)] = False
    factor = len(kept) / hidden
    got = dict(written.named_parameters())
    eps = float(torch.finfo(stored).eps)
    with torch.no_grad():
        for name, p in model.named_parameters():
            axis = axis_of(name)
            if axis is None:
                continue
            if is_norm(name):
                want = p[~drop] * scales[name]
                if not torch.allclose(got[name].to(p.dtype), want, rtol=2 * eps, atol=0.0):
                    raise VerificationError(
                        f"verification failed: the written {name} is not the original's kept weights times "
                        f"{scales[name]:.6g}; nothing was written"
                    )
                new = torch.zeros_like(p)
                new[~drop] = got[name].to(p.dtype) * math.sqrt(factor)
                p.copy_(new)
            elif _ends(name, "model.embed_tokens.weight") or "o_proj" in name or "down_proj" in name:
                p.index_fill_(axis, drop.nonzero().flatten(), 0.0)
        for name, mod in _norm_modules(model, hidden).items():
            if not hasattr(mod, "variance_epsilon"):
                raise SlimnetError(f"--hidden-ratio: the norm {name} has no variance_epsilon (an unexpected norm)")
            mod.variance_epsilon = mod.variance_epsilon * factor


def verify_hidden(
    original: Any, folder: Path, kept: list[int], scales: dict[str, float], batches: list[dict[str, Any]],
    hidden: int, stored: Any,
) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The approximation against the (unmasked, float32) ``original`` on all ``batches``: mean KL(original ||
    cut) per token and top-1 agreement; then, in float64 on the first batch, the relative max difference between
    ``folder``'s logits and the masked original's (``original`` is made into it: the caller's copy is spent)."""
    torch = _torch()
    from ..load.hf import _transformers

    written = _load_plain(_transformers(), folder, torch.float32)
    if written.config.hidden_size != len(kept):
        raise VerificationError(f"the written folder's hidden_size is {written.config.hidden_size}, not {len(kept)}")
    kl, agree, tokens = 0.0, 0, 0
    with torch.inference_mode():
        for b in batches:
            mask = _mask(b, b["input_ids"]).bool()
            ref = original(**b, use_cache=False).logits[mask].double()
            got = written(**b, use_cache=False).logits[mask].double()
            p_log = torch.log_softmax(ref, -1)
            kl += float((p_log.exp() * (p_log - torch.log_softmax(got, -1))).sum())
            agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
            tokens += int(mask.sum())
            del ref, got, p_log
    original, written = original.double(), written.double()  # exact: both hold float32 (or narrower) values
    _masked_original(original, written, kept, scales, hidden, stored)
    b = batches[0]
    with torch.inference_mode():
        mask = _mask(b, b["input_ids"]).bool()
        ref = original(**b, use_cache=False).logits[mask]
        got = written(**b, use_cache=False).logits[mask]
        worst = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
    return worst, {"kl": kl / max(tokens, 1), "top1_agreement": agree / max(tokens, 1), "tokens": tokens}


# ------------------------------------------------------------------------------------------ the step
@dataclass
class HiddenResult:
    """What ``--hidden-ratio`` did: the report's ``hidden`` object and the params before and after."""

    ratio: float
    hidden: tuple[int, int]
    kept: list[int]
    scales: dict[str, float]
    params: tuple[int, int]
    max_rel_diff: float
    approximation: dict[str, float]
    tokens: int

    def plan_entry(self) -> dict[str, Any]:
        """The ``hidden`` entry of slimnet_plan.json: the kept channels and the norm scales."""
        return {"ratio": self.ratio, "hidden_size": list(self.hidden), "kept": self.kept, "norm_scales": self.scales,
                "rank": "activation"}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The ``hidden`` object of the --json report."""
        scales = list(self.scales.values())
        return {
            "ratio": self.ratio,
            "hidden_before": self.hidden[0],
            "hidden_after": self.hidden[1],
            "rank": "activation",
            "exact": False,
            "approximation": self.approximation,
            "norm_scale_range": [min(scales), max(scales)] if scales else None,
            "verified_against": "the masked original (dropped channels zeroed, norms rescaled)",
            "max_rel_diff": self.max_rel_diff,
            "tolerance": TOLERANCE,
            "tokens": self.tokens,
        }


def cut_hidden(
    source: Source, ratio: float, batches: list[dict[str, Any]], dest: Path, stages: Any = None
) -> HiddenResult:
    """Rank the residual channels on ``batches``, write the folder with the top ones into ``dest`` (in a
    temporary folder beside it, renamed at the end), verify it against the masked original."""
    from .._util import scratch_dir

    torch = _torch()
    keep_n = check_hidden(source, ratio)
    hidden = int(source.config["hidden_size"])
    stage = stages if stages is not None else _no_stage
    with stage("rank"):
        from ..load.hf import _transformers

        model = _load_plain(_transformers(), source.folder, torch.float32)
        scores, tokens = rank_channels(model, batches, hidden)
        kept = sorted(int(i) for i in torch.argsort(scores, descending=True, stable=True)[:keep_n])
        scales = norm_scales(model, batches, hidden, kept)
    missing = [k for k in source.shapes if is_norm(k) and k not in scales]
    if missing:
        raise SlimnetError(f"--hidden-ratio: the norm {missing[0]} never ran on the calibration data")
    with scratch_dir(dest) as work:
        tmp = work / dest.name
        tmp.mkdir()
        with stage("write"):
            result = HiddenResult(ratio, (hidden, keep_n), kept, scales, (source.params, 0), 0.0, {}, tokens)
            params = write_hidden(source, kept, scales, tmp, result.plan_entry())
        with stage("verify"):
            diff, approx = verify_hidden(model, tmp, kept, scales, batches, hidden, _stored_dtype(source))
            del model
        if not diff <= TOLERANCE:
            raise VerificationError(
                f"verification failed: the written model's logits differ from the masked original's by {diff:.3g} "
                f"(relative; at most {TOLERANCE:g} expected); nothing was written"
            )
        if dest.exists():
            dest.rmdir()  # an empty folder (checked before)
        os.replace(tmp, dest)
    result.params, result.max_rel_diff, result.approximation = (source.params, params), diff, approx
    return result


def shrink_hidden(
    model: str, ratio: float, data: str | None, batch_size: int, calib_batches: int, dest: Path, stages: Any
) -> dict[str, Any]:
    """``shrink MODEL --hidden-ratio R``: the checks (in the "load" stage), the cut into the folder ``dest`` and
    the --json report (the shrink report's fields that apply, and ``hidden``)."""
    from ..load.spec import parse_spec

    spec = parse_spec(model)
    if spec.kind != "hf":
        raise SlimnetError(f"--hidden-ratio needs a Hugging Face decoder LM (hf:FOLDER); {model} is not one")
    with stages("load"):
        source = inspect_folder(spec.target)
        check_hidden(source, ratio)
        if data is None:
            raise SlimnetError(
                "--hidden-ratio ranks the residual channels on calibration text: give --data FILE.txt (one example "
                "per line, tokenised with the model folder's tokenizer)"
            )
        batches = text_batches(source, data, batch_size, calib_batches)
    result = cut_hidden(source, ratio, batches, dest, stages)
    return {
        "model": model,
        "output": str(dest),
        "plan": str(dest / PLAN_FILE),
        "params": list(result.params),
        "params_before": result.params[0],
        "params_after": result.params[1],
        "max_abs_diff": None,
        "exact": False,
        "verified": True,
        "verify_inputs": [data],
        "hidden": result.describe(),
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The text report of a residual-width cut (the --json report's ``hidden`` object in words)."""
    h = report["hidden"]
    a = h["approximation"]
    lo, hi = h["norm_scale_range"] or (1.0, 1.0)
    return [
        f"residual stream {h['hidden_before']} -> {h['hidden_after']} channels (ranked by activation on "
        f"{h['tokens']} tokens; norm weights rescaled by {lo:.3f}-{hi:.3f})",
        f"APPROXIMATE (not exact): against the original on the calibration tokens, mean KL {a['kl']:.4g} nats per "
        f"token, top-1 prediction kept on {a['top1_agreement']:.1%} of {a['tokens']} tokens",
        f"verified: the written folder equals the masked original (dropped channels zeroed, norms rescaled) within "
        f"{h['max_rel_diff']:.2g} (relative; tolerance {h['tolerance']:g})",
    ]
