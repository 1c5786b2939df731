"""Perplexity of a causal language model on a text: the quality number that LLM pruning is judged by.

Why perplexity and not agreement with the original: a pruned LM that agrees with its teacher on the argmax token
of a few calibration rows can still be useless as a language model (the issue saw 23.8 -> 853 on SmolLM2), and
every pruning paper (LLM-Pruner, FLAP, SliceGPT, Wanda) reports perplexity on held-out text, so this is the
number a user can compare with theirs.

How it is computed (the papers' procedure, stated so that numbers can be compared):

* the whole text is tokenised once with the model's tokenizer, with its default special tokens (a Llama
  tokenizer prepends one BOS, as in the papers' WikiText evaluation);
* the token stream is cut into windows of ``window`` tokens starting every ``stride`` tokens (default: ``stride =
  window``, non-overlapping windows); only whole windows count (a shorter tail is dropped, so every prediction
  sees a context of the same bounded length);
* each window runs alone (batch 1, no padding, no attention mask tricks); in window ``k`` the targets are the
  positions ``t`` in ``[max(begin_k + 1, end_{k-1}), end_k)``, each predicted from the logits at ``t - 1``: with
  non-overlapping windows, every token of a window but its first; with ``stride < window`` (a sliding window)
  only the tokens that the previous window did not score, each with at least ``window - stride`` tokens of
  context; so no token is scored twice;
* mean NLL = the sum of the targets' negative log-likelihoods (natural log, in float32 whatever the model's
  dtype) over their count; perplexity = ``exp(mean NLL)``.

:func:`perplexity` takes token ids, :func:`tokenize` makes them from a text, :func:`windows` is the window plan
alone (what the report's counts are computed from). Nothing here reads files other than the text, or downloads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from ..errors import SlimnetError

DEFAULT_WINDOW = 512


class Window(NamedTuple):
    """One window of the token stream: ``ids[begin:end]`` runs through the model; targets ``[first, end)``."""

    begin: int
    end: int
    first: int  # the first scored target position (> begin: a window's first token has no context in it)


def windows(
    n_tokens: int, window: int, stride: Optional[int] = None, max_windows: Optional[int] = None
) -> list[Window]:
    """The windows over ``n_tokens`` tokens (see the module docstring): whole windows only, the first
    ``max_windows`` of them if given. An empty list when the text is shorter than one window."""
    stride = window if stride is None else stride
    if window < 2:
        raise SlimnetError(f"--window {window} is too short: a window needs at least 2 tokens (one to predict from)")
    if stride < 1:
        raise SlimnetError(f"--stride {stride} must be a positive number of tokens")
    if max_windows is not None and max_windows < 1:
        raise SlimnetError(f"--max-windows {max_windows} must be at least 1")
    out: list[Window] = []
    prev_end = 0
    begin = 0
    while begin + window <= n_tokens and (max_windows is None or len(out) < max_windows):
        end = begin + window
        out.append(Window(begin, end, max(begin + 1, prev_end)))
        prev_end = end
        begin += stride
    return out


def is_causal_lm(model: nn.Module) -> bool:
    """A transformers causal LM (a ``...ForCausalLM`` / ``...LMHeadModel`` class, or one that transformers
    lists as a causal LM), a slimnet-pruned one included (it keeps its original class)."""
    if getattr(model, "config", None) is None or getattr(model.config, "is_encoder_decoder", False):
        return False
    names = {c.__name__ for c in type(model).__mro__}
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:
        return False
    return bool(names & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()))


def check_causal_lm(model: nn.Module, name: str = "the model") -> None:
    """One line when ``model`` is not a causal LM (perplexity of a classifier or an encoder means nothing)."""
    if not is_causal_lm(model):
        raise SlimnetError(
            f"{name} is not a causal language model ({type(model).__name__}): perplexity needs a decoder LM "
            "such as a ...ForCausalLM folder (hf:DIR)"
        )


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, or a one-line error (missing, not a file, not UTF-8, empty)."""
    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"--text {path} does not exist or is not a file: give a UTF-8 text file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SlimnetError(f"--text {path} is not UTF-8 text") from None
    if not text.strip():
        raise SlimnetError(f"--text {path} is empty")
    return text


def tokenize(text: str, tokenizer: Any) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, with the tokenizer's default special tokens."""
    import transformers  # lazy: optional dependency

    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "sequence longer than the model's maximum": windows cut it
    try:
        ids = tokenizer(text)["input_ids"]
    finally:
        transformers.logging.set_verbosity(level)
    return torch.tensor(ids, dtype=torch.long)


def perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    window: int = DEFAULT_WINDOW,
    stride: Optional[int] = None,
    max_windows: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> dict[str, Any]:
    """Perplexity of causal LM ``model`` on the token stream ``ids`` (1-D), windows as in the module docstring.

    Returns ``window``, ``stride``, ``windows`` (used), ``windows_available`` (whole windows in the text),
    ``tokens`` (targets scored), ``text_tokens``, ``mean_nll`` (nats per token), ``perplexity`` and ``seconds``.
    ``progress(done, total)`` is called after each window. The model is put in eval mode and not changed."""
    check_causal_lm(model)
    ids = ids.reshape(-1)
    stride = window if stride is None else stride
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and window > limit:
        raise SlimnetError(
            f"--window {window} is longer than the model's {limit} positions: give --window {limit} or less"
        )
    available = len(windows(len(ids), window, stride))
    plan = windows(len(ids), window, stride, max_windows)
    if not plan:
        raise SlimnetError(
            f"the text has {len(ids)} tokens, fewer than one window of {window}: give a longer text or a "
            "smaller --window"
        )
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.eval()
    total = 0.0
    count = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for i, w in enumerate(plan):
            chunk = ids[w.begin : w.end].unsqueeze(0).to(device)
            logits = model(input_ids=chunk, use_cache=False).logits[0].float()
            # logits[j] predicts position begin + j + 1: the targets [first, end) use logits [first-1-begin, ...)
            pred = logits[w.first - 1 - w.begin : w.end - 1 - w.begin]
            target = chunk[0, w.first - w.begin : w.end - w.begin]
            nll = torch.nn.functional.cross_entropy(pred, target, reduction="sum")
            total += float(nll)
            count += int(target.numel())
            if progress is not None:
                progress(i + 1, len(plan))
    mean = total / count
    return {
        "window": window,
        "stride": stride,
        "windows": len(plan),
        "windows_available": available,
        "tokens": count,
        "text_tokens": int(len(ids)),
        "mean_nll": mean,
        "perplexity": math.exp(mean),
        "seconds": time.perf_counter() - start,
    }
