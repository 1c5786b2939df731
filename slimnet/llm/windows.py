"""Training text for decoder-LM distillation: one token stream cut into windows, and each rank's share.

The text file is tokenised whole with the model folder's tokenizer (in blocks of lines, so a large file never
becomes one giant string in the tokenizer) and cut into consecutive windows of ``window`` tokens, the last
partial one dropped: every window has the same length, so no padding, no attention mask, and every token counts
the same in the loss on every rank. The last windows (a tenth, at most :data:`HELD_OUT`) are held out for the
KL/perplexity lines; the rest are the training windows.

Order: the training windows are read as an endless stream of permutations, one per epoch, each drawn from a
generator seeded with ``seed + epoch``; step ``s`` takes the stream's items ``s * batch .. (s + 1) * batch`` (the
global batch) and rank ``r`` of ``world`` the ``r``-th contiguous slice of it. The global batch of a step depends
only on the seed and the step, never on the number of processes or on where a run was resumed: that is what
makes 2 processes follow 1 and a resumed run the uninterrupted one (as DistributedSampler does, without its
padding: the batch must divide among the ranks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import SlimnetError

#: At most this many windows are held out for evaluation.
HELD_OUT = 8
#: Lines tokenised at once.
BLOCK_LINES = 4096


def tokenize(path: str | Path, tokenizer: Any) -> torch.Tensor:
    """The whole text of ``path`` as one 1-D tensor of token ids (no special tokens: the windows are cut from
    running text, and a BOS in the middle of a window would be noise)."""
    p = Path(path)
    if not p.is_file():
        raise SlimnetError(f"--data {path} does not exist: give a UTF-8 text file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        raise SlimnetError(f"--data {path} is not UTF-8 text") from None
    if hasattr(tokenizer, "model_max_length"):
        tokenizer.model_max_length = 1 << 62  # no "sequence longer than the model's limit" warning: we cut windows
    pieces = []
    for i in range(0, len(lines), BLOCK_LINES):
        block = "".join(lines[i : i + BLOCK_LINES])
        if block.strip():
            ids = tokenizer(block, add_special_tokens=False, return_attention_mask=False)["input_ids"]
            pieces.append(torch.as_tensor(ids, dtype=torch.long))
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


class Windows:
    """``ids`` cut into windows of ``window`` tokens: ``train`` and ``held`` (module docstring)."""

    def __init__(self, ids: torch.Tensor, window: int, source: str = "the text") -> None:
        if window < 2:
            raise SlimnetError(f"--window {window} must be at least 2 tokens")
        count = ids.numel() // window
        if count < 1:
            raise SlimnetError(
                f"{source} is shorter than one window ({ids.numel()} tokens < --window {window}): give more text "
                "or a smaller --window"
            )
        windows = ids[: count * window].view(count, window)
        held = max(1, min(HELD_OUT, count // 10)) if count >= 2 else 0
        self.window = window
        self.tokens = int(ids.numel())
        self.train = windows[: count - held]
        #: with a single window it is trained on and evaluated on (``disjoint`` False)
        self.held = windows[count - held :] if held else windows
        self.disjoint = held > 0

    def indices(self, step: int, batch_size: int, seed: int) -> list[int]:
        """The training windows of step ``step``'s global batch (module docstring)."""
        n = len(self.train)
        out, cache = [], {}
        for i in range(step * batch_size, (step + 1) * batch_size):
            epoch = i // n
            if epoch not in cache:
                cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            out.append(cache[epoch][i % n])
        return out

    def batch(self, step: int, rank: int, world: int, batch_size: int, seed: int) -> torch.Tensor:
        """Rank ``rank``'s share of step ``step``'s global batch: ``[batch_size // world, window]`` token ids."""
        if batch_size % world:
            raise SlimnetError(f"--batch-size {batch_size} does not divide among {world} processes: give a multiple")
        share = batch_size // world
        picked = self.indices(step, batch_size, seed)[rank * share : (rank + 1) * share]
        return self.train[picked]

    def held_share(self, rank: int, world: int) -> tuple[torch.Tensor, int]:
        """Rank ``rank``'s held-out windows and how many of them count: every rank runs the same number of
        windows (sharded models compute collectively), the ranks short of one repeat the first with weight 0."""
        per = -(-len(self.held) // world)
        mine = self.held[rank::world]
        counted = len(mine)
        if counted < per:
            mine = torch.cat([mine, self.held[:1].expand(per - counted, -1)])
        return mine, counted

    def describe(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "window": self.window,
            "train_windows": len(self.train),
            "held_out_windows": len(self.held),
            "disjoint": self.disjoint,
        }
