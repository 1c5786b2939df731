"""``slimnet shrink hf:FOLDER`` for Llama-style decoders in a fraction of the model's size in memory.

The steps (each module of this room is one of them):

1. :mod:`.families`: the folder's ``model_type`` is one the path knows and it holds safetensors;
2. :mod:`.meta`: the model on the meta device (names, shapes, dtypes; no weights) and slimnet's channel analysis
   of one decoder layer, reused for every layer (the layers run the same code);
3. the kept counts: :func:`slimnet.allocate.uniform_counts` on one layer's groups, the in-memory default
   (``--ratio R --round-to N``), the same in every layer because every layer has the same groups;
4. :mod:`.stream`, one decoder layer at a time: its tensors read from the shards, each group scored by
   :func:`slimnet.rank.criteria.score` (the in-memory criterion itself, so the kept indices are the same), ranked
   by :class:`slimnet.allocate.Ranking` (ties keep the earlier unit), the plan entries made by
   :func:`slimnet.plan.build_plan`, the tensors sliced and handed to the shard writer; the tensors outside the
   layers (embeddings, final norm, ``lm_head``) are copied;
5. the folder: :func:`.config.standard_config`, the plan as ``slimnet_plan.json``, the tokenizer and other files
   copied; written to a temporary folder beside the output and renamed at the end (an error leaves nothing).

Memory: one decoder layer's tensors, their float32 scratch for the criterion, and at most one output shard.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util import scratch_dir
from ..allocate import Ranking, uniform_counts
from ..allocate.decide import Decision
from ..allocate.decoder import check_whole_kv_groups, mark_mlp_groups
from ..errors import SlimnetError, VerificationError
from ..groups import Analysis, Group
from ..load.hf import config_text
from ..plan import build_plan, dumps
from ..rank.criteria import score
from ..rank.statistics import Statistics, owner
from ..settings import ShrinkSettings
from .calib import STREAMED_DATA_CRITERIA, LayerStatistics
from .config import standard_config
from .families import WEIGHT_CRITERIA, check_family, read_config, weight_files
from .meta import MetaModel, head_dim_of, layer_groups, meta_model, renamed
from .stream import SHARD_BYTES, ShardWriter, Weights
from .verify import LayerVerifier

#: The plan's file in the output folder.
PLAN_FILE = "slimnet_plan.json"
#: Files of the input folder that are weights (streamed or left behind), not copied as they are.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
#: Files written anew.
WRITTEN = ("config.json", "model.safetensors.index.json", PLAN_FILE)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def check_settings_streamable(settings: ShrinkSettings, with_data: bool = False) -> None:
    """What the low-memory path does not do, refused in one line (the in-memory path does it). With calibration
    data (``with_data``) the activation criteria are read too, layer by layer (:mod:`.calib`)."""
    readable = (*WEIGHT_CRITERIA, *STREAMED_DATA_CRITERIA) if with_data else WEIGHT_CRITERIA
    if settings.criterion not in readable:
        needs = " (with --data)" if settings.criterion in STREAMED_DATA_CRITERIA else ""
        raise SlimnetError(
            f"criterion {settings.criterion}{needs} is not one the low-memory path reads ({', '.join(readable)}): "
            "use --in-memory"
        )
    other = [
        flag
        for flag, on in (
            ("--target-*", settings.target_kind is not None), ("--global", settings.use_global),
            ("--ratios", bool(settings.ratios)), ("--ignore", bool(settings.ignore)),
            ("--prune-norm", settings.prune_norm),
        )
        if on
    ]  # fmt: skip
    if other:
        raise SlimnetError(f"the low-memory path cuts every layer alike by --ratio; {other[0]} needs --in-memory")


def prunable_groups(meta: MetaModel) -> tuple[list[Group], dict[int, str]]:
    """One layer's groups the path cuts, and what each is: ``"heads"`` (whole key/value groups of attention
    heads) or ``"mlp"``; a prunable group of any other kind is refused (the config could not state it)."""
    groups, shapes = layer_groups(meta)
    chosen, kinds = [], {}
    for g in groups:
        if g.reason is not None or g.normalised:
            continue
        if g.kind == "heads":
            kinds[g.id] = "heads"
        elif all(t.startswith("mlp.") for t, _ in g.members):
            kinds[g.id] = "mlp"
        else:
            raise SlimnetError(
                f"the analysis of one {meta.layer_class.__name__} found a group the low-memory path cannot state in "
                f"config.json ({g.name}: {', '.join(f'{t}[{d}]' for t, d in g.members)}): use --in-memory"
            )
        for t, d in g.members:  # the proxy layer must agree with the model on every pruned dim
            real = meta.shapes.get(f"{meta.prefix}0.{t}")
            if real is None or real[d] != shapes[t][d]:
                raise SlimnetError(f"one-layer analysis: {t} dim {d} is {shapes[t][d]}, the model's {real}")
        chosen.append(g)
    if list(kinds.values()).count("heads") > 1 or list(kinds.values()).count("mlp") > 1:
        raise SlimnetError(f"one {meta.layer_class.__name__} has several attention or MLP groups: use --in-memory")
    return chosen, kinds


def _layer_of(name: str, prefix: str) -> int | None:
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _chunks(names: list[str], prefix: str) -> list[tuple[int | None, list[str]]]:
    """The tensors in file order, one chunk per decoder layer and one per tensor outside the layers."""
    chunks: list[tuple[int | None, list[str]]] = []
    by_layer: dict[int, list[str]] = {}
    for name in names:
        i = _layer_of(name, prefix)
        if i is None:
            chunks.append((None, [name]))
        elif i in by_layer:
            by_layer[i].append(name)
        else:
            by_layer[i] = [name]
            chunks.append((i, by_layer[i]))
    return chunks


def _check_names(meta: MetaModel, weights: Weights, folder: Path) -> list[str]:
    """The folder's tensor names in the meta model's order; one-line errors for missing or unknown ones."""
    names = set(weights.names())
    unknown = sorted(names - set(meta.shapes))
    if unknown:
        raise SlimnetError(f"hf:{folder}: the safetensors hold {unknown[0]}, which the config's model has not")
    missing = sorted(n for n in meta.params if n not in names and n not in meta.tied)
    if missing:
        raise SlimnetError(f"hf:{folder}: the safetensors lack {missing[0]} (and {len(missing) - 1} more)")
    return [n for n in meta.shapes if n in names]


def shrink_folder(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    settings: ShrinkSettings,
    *,
    model_name: str = "",
    log: Callable[[str], None] | None = _stderr,
    shard_bytes: int = SHARD_BYTES,
    verify: bool = True,
    batches: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Shrink the Hugging Face folder ``source`` into the standard folder ``output`` (see the module docstring);
    ``log`` gets one line per decoder layer (None: quiet); ``verify``: check every cut layer against its masked
    original (:mod:`.verify`; a failure raises :class:`slimnet.errors.VerificationError` and writes nothing).
    Returns the report. ``batches``: tokenised calibration batches, for the activation criteria (wanda,
    activation, apoz), whose statistics are gathered one layer at a time (:class:`.calib.LayerStatistics`)."""
    start = time.perf_counter()
    say = log or (lambda _line: None)
    folder, out = Path(source), Path(output)
    check_settings_streamable(settings, with_data=batches is not None)
    if settings.criterion in STREAMED_DATA_CRITERIA and batches is None:
        raise SlimnetError(f"criterion {settings.criterion} looks at the data: give calibration data (--data)")
    check_family(folder)
    files = weight_files(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SlimnetError(f"output {out} exists and is not an empty folder: give a new folder name")
    meta = meta_model(folder)
    weights = Weights(files)
    order = _check_names(meta, weights, folder)
    groups, kinds = prunable_groups(meta)
    first = [renamed(g, f"{meta.prefix}0.") for g in groups]
    mark_mlp_groups(first)  # the in-memory planner's decoder rules (slimnet.allocate.decoder), so both paths agree
    check_whole_kv_groups(first, settings.ratio, settings.head_ratio, None)
    floors = [g.round_to for g in first if g.round_to > settings.round_to]
    counts = uniform_counts(first, settings.ratio, settings.round_to, settings.head_ratio)
    for g in first:
        if counts[g.id] < 1:
            raise SlimnetError(f"--ratio {settings.ratio} leaves no unit of {g.name}: give a smaller ratio")
    widths = _widths(meta, first, kinds, counts)
    say(
        f"low-memory path: {meta.n_layers} x {meta.layer_class.__name__}; per layer heads "
        f"{meta.config.num_attention_heads} -> {widths['heads']}, key/value heads {meta.config.num_key_value_heads} "
        f"-> {widths['kv_heads']}, MLP {meta.config.intermediate_size} -> {widths['intermediate']}"
    )
    name = model_name or f"hf:{folder}"
    layer_stats = LayerStatistics(folder, batches or []) if settings.criterion in STREAMED_DATA_CRITERIA else None
    verifier = LayerVerifier(meta, widths, head_dim_of(meta.config)) if verify else None
    worst = (0.0, 0.0)  # the largest difference and its tolerance
    tensors: dict[str, dict[str, list[int]]] = {}
    head: dict[str, Any] = {}
    params = [0, 0]
    with scratch_dir(out) as work:
        tmp = work / out.name
        tmp.mkdir()
        writer = ShardWriter(tmp, order, shard_bytes)
        for layer, names in _chunks(order, meta.prefix):
            t0 = time.perf_counter()
            loaded = dict(weights.read(names))
            for n, t in loaded.items():
                if tuple(t.shape) != meta.shapes[n]:
                    shape = tuple(t.shape)
                    raise SlimnetError(f"hf:{folder}: {n} is {shape} in the shards, {meta.shapes[n]} in config.json")
            if layer is not None:
                stats = _statistics(layer_stats, meta, groups, layer)
                plan = _layer_plan(meta, groups, layer, loaded, counts, settings, name, stats)
                head = {k: v for k, v in plan.items() if k != "tensors"}
                tensors.update(plan["tensors"])
                cut = {n: _sliced(t, plan["tensors"].get(n)) for n, t in loaded.items()}
                note = ""
                if verifier is not None:
                    check = verifier.check(layer, loaded, cut, plan["tensors"])
                    if not check.passed:
                        raise VerificationError(
                            f"layer {layer}: the cut layer differs from its masked original by {check.max_abs_diff:.3g}"
                            f" (tolerance {check.tolerance:.3g}); nothing was written"
                        )
                    worst = max(worst, (check.max_abs_diff, check.tolerance))
                    note = f", verified: max abs diff {check.max_abs_diff:.3g}"
                loaded = cut
            for n, t in loaded.items():
                if n in meta.params:
                    params[0] += int(np.prod(meta.shapes[n]))
                    params[1] += t.numel()
                writer.add(n, t)
            del loaded
            if layer is not None:
                say(f"layer {layer + 1}/{meta.n_layers} cut in {time.perf_counter() - t0:.1f} s{note}")
        shards = writer.close()
        plan = {**head, **({"mlp_round_to": max(floors)} if floors else {})}
        plan.update(allocation="uniform", settings=settings.recorded())
        plan["tensors"] = dict(sorted(tensors.items()))
        (tmp / PLAN_FILE).write_text(dumps(plan))
        config = standard_config(read_config(folder), heads=widths["heads"], kv_heads=widths["kv_heads"],
                                 intermediate=widths["intermediate"], head_dim=head_dim_of(meta.config))  # fmt: skip
        (tmp / "config.json").write_text(config_text(config))
        copied = _copy_others(folder, tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    return {
        "model": name,
        "path": "low-memory",
        "family": meta.config.model_type,
        "layers": meta.n_layers,
        "criterion": settings.criterion,
        "ratio": settings.ratio,
        "round_to": settings.round_to,
        "mlp_round_to": max(floors) if floors else None,
        "folder": "standard",
        "folder_note": None,
        "params": params,
        "heads": [int(meta.config.num_attention_heads), widths["heads"]],
        "kv_heads": [int(meta.config.num_key_value_heads), widths["kv_heads"]],
        "intermediate": [int(meta.config.intermediate_size), widths["intermediate"]],
        "head_dim": head_dim_of(meta.config),
        "verified": verifier is not None,
        "max_abs_diff": worst[0] if verifier is not None else None,
        "tolerance": worst[1] if verifier is not None else None,
        "output": str(out),
        "plan": str(out / PLAN_FILE),
        "files": sorted([*shards, "config.json", PLAN_FILE, *copied]),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _widths(meta: MetaModel, first: list[Group], kinds: dict[int, str], counts: dict[int, int]) -> dict[str, int]:
    """The per-layer widths config.json states after the cut."""
    cfg = meta.config
    widths = {"heads": int(cfg.num_attention_heads), "kv_heads": int(cfg.num_key_value_heads),
              "intermediate": int(cfg.intermediate_size)}  # fmt: skip
    for g in first:
        n, k = len(g.units), counts[g.id]
        if kinds[g.id] == "heads":
            if widths["heads"] % n or widths["kv_heads"] % n:
                raise SlimnetError(f"{g.name}: {n} head units do not split {widths['heads']} heads evenly")
            widths["heads"], widths["kv_heads"] = widths["heads"] // n * k, widths["kv_heads"] // n * k
        else:
            if widths["intermediate"] % n:
                raise SlimnetError(f"{g.name}: {n} units do not split the MLP's {widths['intermediate']} channels")
            widths["intermediate"] = widths["intermediate"] // n * k
    return widths


def _statistics(layer_stats: LayerStatistics | None, meta: MetaModel, groups: list[Group], layer: int) -> Any:
    """Layer ``layer``'s calibration statistics for the data criteria (None for the weight criteria): the modules
    that own a member of its groups, hooked as the in-memory path hooks them."""
    if layer_stats is None:
        return None
    placed = [renamed(g, f"{meta.prefix}{layer}.") for g in groups]
    return layer_stats.layer(layer, {owner(t) for g in placed for t, _ in g.members if t in meta.params})


def _layer_plan(meta: MetaModel, groups: list[Group], layer: int, loaded: dict[str, torch.Tensor],
                counts: dict[int, int], settings: ShrinkSettings, name: str,
                stats: Statistics | None = None) -> dict[str, Any]:  # fmt: skip
    """The plan entries of one decoder layer: its groups scored by the in-memory criterion on its tensors,
    ranked and cut to ``counts`` as :func:`slimnet.allocate.decide.choose` does."""
    placed = [renamed(g, f"{meta.prefix}{layer}.") for g in groups]
    cache: dict = {"wanted": {(id(loaded[n]), d) for g in placed for n, d in g.members if n in loaded}}
    raw, used = {}, {}
    for g in placed:
        raw[g.id], used[g.id] = score(g, loaded, meta.params, settings.criterion, settings.seed, stats, cache)
    ranking = Ranking.from_scores(raw, used)
    decisions = [
        Decision(group=g, keep=sorted(int(i) for i in ranking.orders[g.id][: counts[g.id]]), criterion=used[g.id])
        for g in placed
    ]
    analysis = Analysis(groups=placed, aliases={}, shapes={n: meta.shapes[n] for n in loaded})
    return build_plan(analysis, decisions, model_name=name, criterion=settings.criterion, ratio=settings.ratio,
                      round_to=settings.round_to, seed=settings.seed, head_ratio=settings.head_ratio)  # fmt: skip


def _sliced(t: torch.Tensor, dims: dict[str, list[int]] | None) -> torch.Tensor:
    """``t`` keeping the plan's indices along each of its listed dims (a new, contiguous tensor)."""
    for dim, kept in (dims or {}).items():
        t = t.index_select(int(dim), torch.tensor(kept, dtype=torch.long))
    return t.contiguous()


def _copy_others(folder: Path, dest: Path) -> list[str]:
    """Every plain file of the input folder that is neither weights nor written anew (tokenizer files,
    generation_config.json, chat template, licence...)."""
    copied = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name in WRITTEN or p.name.endswith(WEIGHT_SUFFIXES) or p.name.startswith("."):
            continue
        if p.name.endswith(".plan.json") or p.name == "slimnet_pruned.py":
            continue
        shutil.copy2(p, dest / p.name)
        copied.append(p.name)
    return copied
