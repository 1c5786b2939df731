"""Peak memory and time of ``slimnet shrink hf:DIR`` on a Llama-sized decoder: the low-memory path (one decoder
layer at a time from safetensors, slimnet.llm) against the in-memory path (``--in-memory``). Writes the
``## Memory`` section of docs/llm.md (other sections of that file are kept as they are).

    OMP_NUM_THREADS=2 python tools/llm_memory.py                       # TinyLlama-1.1B shapes, bf16, both paths
    OMP_NUM_THREADS=2 python tools/llm_memory.py --size 7b --no-in-memory   # Llama-2-7B shapes (13.5 GB)

The model is random (weights ~ N(0, 0.02), norms 1) in the real shapes, written shard by shard (2 GB shards, the
writer holds one), so the writer itself stays small; ``--keep`` keeps the folders (``--work DIR``, default
/tmp/slimnet-llm-memory), else they are deleted. Each shrink runs in its own process; its peak RSS is that
process's ``ru_maxrss`` (``os.wait4``), its time the wall clock from start to exit, imports included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from slimnet.llm.stream import nbytes, write_safetensors  # noqa: E402

#: Llama shapes: TinyLlama-1.1B (GQA, 4 key/value heads) and Llama-2-7B (32 key/value heads).
SIZES = {
    "1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}  # fmt: skip
SHARD = 2 << 30
HEADING = "## Memory"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_model(folder: Path, size: str, dtype: torch.dtype = torch.bfloat16) -> int:
    """A random Llama folder of ``size`` shapes, written tensor by tensor into 2 GB shards; its bytes."""
    shapes = SIZES[size]
    h, i = shapes["hidden_size"], shapes["intermediate_size"]
    hd = h // shapes["num_attention_heads"]
    q, kv, v = shapes["num_attention_heads"] * hd, shapes["num_key_value_heads"] * hd, shapes["vocab_size"]
    folder.mkdir(parents=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", **shapes,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 2048}))
    plan: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(shapes["num_hidden_layers"]):
        p = f"model.layers.{n}."
        plan += [
            (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
            (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
        ]  # fmt: skip
    plan += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    gen = torch.Generator().manual_seed(0)
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    pending, total, files = 0, 0, []

    def flush() -> None:
        nonlocal pending
        name = f".part-{len(files) + 1:05d}"
        write_safetensors(folder / name, shards[-1])
        files.append((name, [n for n, _ in shards[-1]]))
        shards[-1], pending = [], 0

    for name, shape in plan:
        t = torch.ones(shape, dtype=dtype) if len(shape) == 1 else (torch.randn(shape, generator=gen) * 0.02).to(dtype)
        if pending and pending + nbytes(t) > SHARD:
            flush()
        shards[-1].append((name, t))
        pending += nbytes(t)
        total += nbytes(t)
    flush()
    weight_map = {}
    for k, (tmp, names) in enumerate(files, 1):
        final = f"model-{k:05d}-of-{len(files):05d}.safetensors"
        os.replace(folder / tmp, folder / final)
        weight_map.update({n: final for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; its wall time, peak RSS (``ru_maxrss`` of that process, GiB) and exit code."""
    log("$ " + " ".join(cmd))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    report = {}
    try:
        report = json.loads(out.decode().strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        pass
    return {"seconds": round(seconds, 1), "peak_gib": round(usage.ru_maxrss / 2**20, 2), "rc": proc.returncode,
            "report": report}  # fmt: skip


def check_output(folder: Path) -> str:
    """The output's config against its shard headers (no weights loaded): q/k/v/o and MLP shapes agree."""
    from safetensors import safe_open

    cfg = json.loads((folder / "config.json").read_text())
    hd = cfg["head_dim"]
    want = {
        "model.layers.0.self_attn.q_proj.weight": [cfg["num_attention_heads"] * hd, cfg["hidden_size"]],
        "model.layers.0.self_attn.k_proj.weight": [cfg["num_key_value_heads"] * hd, cfg["hidden_size"]],
        "model.layers.0.mlp.down_proj.weight": [cfg["hidden_size"], cfg["intermediate_size"]],
    }
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():
                if name in want and list(h.get_slice(name).get_shape()) != want[name]:
                    return f"{name} is {h.get_slice(name).get_shape()}, config says {want[name]}"
    return "shapes agree with config.json"


def write_doc(path: Path, section: str) -> None:
    """Replace (or add) the ``## Memory`` section of ``path``, keeping every other section."""
    text = path.read_text() if path.exists() else "# Decoder language models at scale\n"
    lines = text.splitlines()
    start = next((k for k, line in enumerate(lines) if line.strip() == HEADING), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("## ")), len(lines))
        new = "\n".join(lines[:start] + section.rstrip("\n").splitlines() + [""] + lines[end:]).rstrip("\n") + "\n"
    path.write_text(new if new.endswith("\n") else new + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", action="append", choices=sorted(SIZES), help="shapes (repeatable; default 1.1b)")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--no-in-memory", action="store_true", help="skip the in-memory path (a 7B does not fit here)")
    ap.add_argument("--work", default="/tmp/slimnet-llm-memory")
    ap.add_argument("--keep", action="store_true", help="keep the model folders")
    ap.add_argument("--results", default=None, help="JSON file of earlier results to merge (and update)")
    ap.add_argument("--doc", default="docs/llm.md")
    args = ap.parse_args()
    work = Path(args.work)
    results_file = Path(args.results) if args.results else work / "results.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for size in args.size or ["1.1b"]:
        src = work / f"llama-{size}"
        shutil.rmtree(src, ignore_errors=True)
        log(f"writing random Llama {size} to {src}")
        t0 = time.perf_counter()
        total = write_model(src, size)
        row: dict[str, Any] = {"size": size, "bytes": total, "write_s": round(time.perf_counter() - t0, 1)}
        base = [sys.executable, "-m", "slimnet", "shrink", f"hf:{src}", "--ratio", str(args.ratio), "-c",
                args.criterion, "--json", "--quiet"]  # fmt: skip
        out = work / f"llama-{size}-low"
        shutil.rmtree(out, ignore_errors=True)
        row["low"] = run([*base, "-o", str(out), "--low-memory"])
        row["low"]["check"] = check_output(out) if row["low"]["rc"] == 0 else "failed"
        row["low"]["params"] = row["low"]["report"].get("params")
        row["low"].pop("report")
        if not args.no_in_memory:
            mem = work / f"llama-{size}-mem"
            shutil.rmtree(mem, ignore_errors=True)
            row["mem"] = run([*base, "-o", str(mem), "--in-memory"])
            row["mem"]["params"] = row["mem"]["report"].get("params")
            row["mem"].pop("report")
            same = _same_tensors(out, mem) if row["mem"]["rc"] == 0 and row["low"]["rc"] == 0 else None
            row["mem"]["identical_tensors"] = same
            shutil.rmtree(mem, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        if "mem" not in row and "mem" in results.get(size, {}):
            row["mem"] = {**results[size]["mem"], "earlier_run": True}  # kept from an earlier run of this tool
        log(json.dumps(row))
        results[size] = row
        results_file.parent.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=2))
    write_doc(Path(args.doc), section(results, args))
    log(f"wrote {args.doc}")


def _same_tensors(low: Path, mem: Path) -> bool:
    """Whether both outputs hold the same tensors bit for bit (read one at a time)."""
    from safetensors import safe_open

    def where(folder: Path) -> dict[str, Path]:
        out = {}
        for f in folder.glob("*.safetensors"):
            with safe_open(str(f), framework="pt") as h:
                out.update({n: f for n in h.keys()})
        return out

    a, b = where(low), where(mem)
    if set(a) != set(b):
        return False
    for name in a:
        with safe_open(str(a[name]), framework="pt") as ha, safe_open(str(b[name]), framework="pt") as hb:
            if not torch.equal(ha.get_tensor(name), hb.get_tensor(name)):
                return False
    return True


def section(results: dict[str, Any], args: argparse.Namespace) -> str:
    cpu = f"{os.cpu_count()} cores, {platform.machine()}"
    mem_total = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem_total = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    lines = [
        HEADING,
        "",
        "Peak resident memory and wall time of `slimnet shrink hf:DIR` on random-weight Llama folders in real "
        "shapes (bf16 safetensors, 2 GB shards), the low-memory path (`slimnet.llm`: the model on the meta device, "
        "one decoder layer analysed and reused, one layer's tensors at a time from the shards) against the "
        f"in-memory path (`--in-memory`). `--ratio {args.ratio} -c {args.criterion}`, default `--round-to 8`. "
        f"Peak RSS is the shrinking process's `ru_maxrss`; time is from start to exit, imports included. "
        f"Machine: {cpu}{mem_total}, shared with other jobs (times are indicative).",
        "",
        "| shapes | on disk | path | peak RSS | time | params after | output |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, row in results.items():
        disk = f"{row['bytes'] / 1e9:.1f} GB"
        low = row["low"]
        after = f"{low['params'][1] / 1e9:.2f} B" if low.get("params") else "-"
        lines.append(f"| {size} | {disk} | low-memory | {low['peak_gib']:.2f} GiB | {low['seconds']:.0f} s | {after} "
                     f"| {low['check']} |")  # fmt: skip
        mem = row.get("mem")
        if mem:
            ok = {True: "tensors bit-identical to low-memory", False: "tensors DIFFER", None: "-"}
            status = ok[mem.get("identical_tensors")] if mem["rc"] == 0 else f"failed (exit {mem['rc']})"
            lines.append(f"| {size} | {disk} | in-memory | {mem['peak_gib']:.2f} GiB | {mem['seconds']:.0f} s | "
                         f"{after if mem['rc'] == 0 else '-'} | {status} |")  # fmt: skip
    lines += [
        "",
        "What the low-memory path holds at once: one decoder layer's tensors (a 7B layer is 0.4 GB in bf16), the "
        "float32 scratch of the criterion for its largest weight, the sliced layer, and no output shard "
        "(none: each tensor is written to the shard as it is cut). The in-memory path holds the "
        "model, its fx trace and the verification copy at once.",
        "",
        "Reproduce: `OMP_NUM_THREADS=2 python tools/llm_memory.py` (1.1B, both paths) and "
        "`OMP_NUM_THREADS=2 python tools/llm_memory.py --size 7b --no-in-memory` (the 7B folder is written, "
        "shrunk and deleted; ~27 GB of disk while it runs).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
