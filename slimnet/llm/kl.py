"""Logit distillation loss for decoder LMs: KL(teacher || student) at temperature ``T`` (Minitron), in chunks.

A decoder's logits are ``tokens x vocab``: for a batch of 8 windows of 512 tokens and a 128k vocabulary that is
2 GB per model in float32, twice that with the softmaxes, and autograd would keep the student's for backward. So
the loss is computed from the two models' *final hidden states* (after the last norm) and their output heads,
``chunk`` tokens at a time: each chunk's logits of both models are made, turned into the chunk's KL sum, and
dropped; under autograd each chunk runs inside :func:`torch.utils.checkpoint.checkpoint`, so backward keeps only
the hidden states and recomputes one chunk's logits at a time. Peak memory: a few ``chunk x vocab`` tensors.

``kl_sum`` returns the *sum* over tokens of ``KL(softmax(t / T) || softmax(s / T))`` (not scaled): the caller
divides by the token count (the same on every rank: windows are all full) and multiplies by ``T**2`` (Hinton: the
gradients keep their size whatever T). :func:`eval_sums` adds both models' next-token negative log-likelihoods
(perplexity, at T = 1) for the held-out lines. Logits are soft-capped where the model does it (Gemma 2's
``final_logit_softcapping``: ``cap * tanh(logits / cap)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

#: Tokens per chunk by default.
CHUNK_TOKENS = 1024


@dataclass(frozen=True)
class Head:
    """An output head: ``logits = hidden @ weight.T + bias``, then the soft cap if any."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = F.linear(hidden, self.weight, self.bias).float()
        if self.softcap:
            out = torch.tanh(out / self.softcap) * self.softcap
        return out


def _chunk_kl(s_h: torch.Tensor, t_h: torch.Tensor, s_head: Head, t_head: Head, temperature: float) -> torch.Tensor:
    log_s = F.log_softmax(s_head.logits(s_h) / temperature, dim=-1)
    with torch.no_grad():
        log_t = F.log_softmax(t_head.logits(t_h) / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="sum")


def kl_sum(
    s_hidden: torch.Tensor,
    s_head: Head,
    t_hidden: torch.Tensor,
    t_head: Head,
    temperature: float,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """The sum over tokens of KL(teacher || student) at ``temperature``, ``chunk`` tokens at a time (module
    docstring). Hidden states: ``[..., hidden]`` (the two models' widths may differ), the same tokens."""
    s_flat = s_hidden.reshape(-1, s_hidden.shape[-1])
    t_flat = t_hidden.reshape(-1, t_hidden.shape[-1]).detach()
    if s_flat.shape[0] != t_flat.shape[0]:
        raise ValueError(f"student and teacher hidden states cover {s_flat.shape[0]} and {t_flat.shape[0]} tokens")
    grad = torch.is_grad_enabled() and s_flat.requires_grad
    total = s_flat.new_zeros((), dtype=torch.float32)
    for lo in range(0, s_flat.shape[0], max(1, chunk)):
        s_c, t_c = s_flat[lo : lo + chunk], t_flat[lo : lo + chunk]
        if grad:
            part = checkpoint(_chunk_kl, s_c, t_c, s_head, t_head, temperature, use_reentrant=False)
        else:
            part = _chunk_kl(s_c, t_c, s_head, t_head, temperature)
        total = total + part
    return total


def whole_kl_sum(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The same sum from whole logits at once: the reference the chunked one is tested against."""
    log_s = F.log_softmax(s_logits.float().reshape(-1, s_logits.shape[-1]) / temperature, dim=-1)
    log_t = F.log_softmax(t_logits.float().reshape(-1, t_logits.shape[-1]) / temperature, dim=-1)
    return F.kl_div(log_s, log_t.detach(), log_target=True, reduction="sum")


@torch.no_grad()
def eval_sums(
    s_hidden: torch.Tensor,
    s_head: Head,
    t_hidden: torch.Tensor,
    t_head: Head,
    ids: torch.Tensor,
    weights: torch.Tensor,
    temperature: float,
    chunk: int = CHUNK_TOKENS,
) -> torch.Tensor:
    """Per held-out batch ``[B, L]``: ``[kl_sum, student_nll_sum, teacher_nll_sum, kl_tokens, nll_tokens]``
    with window ``b`` counted ``weights[b]`` times (0 for the padding of :meth:`Windows.held_share`). The KL is
    at ``temperature`` over every position, the NLL of each next token (positions 0..L-2) at T = 1."""
    b, length = ids.shape
    out = torch.zeros(5, dtype=torch.float64)
    rows_per_chunk = max(1, chunk // length)
    for lo in range(0, b, rows_per_chunk):
        sl = slice(lo, lo + rows_per_chunk)
        w = weights[sl].to(torch.float64)
        s_log = s_head.logits(s_hidden[sl])  # [r, L, V]: at most one chunk of rows (a window is never split)
        t_log = t_head.logits(t_hidden[sl])
        ls, lt = F.log_softmax(s_log / temperature, -1), F.log_softmax(t_log / temperature, -1)
        kl = (lt.exp() * (lt - ls)).sum(-1).sum(-1).double()
        target = ids[sl, 1:]
        s_nll = -F.log_softmax(s_log[:, :-1], -1).gather(-1, target[..., None]).squeeze(-1).sum(-1).double()
        t_nll = -F.log_softmax(t_log[:, :-1], -1).gather(-1, target[..., None]).squeeze(-1).sum(-1).double()
        out += torch.stack([(kl * w).sum(), (s_nll * w).sum(), (t_nll * w).sum(), w.sum() * length,
                            w.sum() * (length - 1)]).cpu()  # fmt: skip
    return out
