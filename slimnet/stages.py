"""Pipeline stages: how long each took (the report's ``timings``), and who is told when one starts and ends.

The API functions run their work in named stages (``trace``, ``groups``, ``rank``, ``cut``, ``verify``,
``measure``; the command line adds ``load`` and ``write``) through one :class:`Stages` object, which sums the
wall-clock seconds per stage and calls an optional listener. The command line's listener draws a status line on
stderr; Python users pass their own, or none::

    stages = Stages(lambda name, seconds: print(name, "done" if seconds is not None else "...", seconds))
    slimnet.shrink(model, x, ratio=0.5, stages=stages)
    stages.timings   # {"trace": 0.41, "groups": 0.87, ...}
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

#: ``listener(stage, None)`` when a stage starts, ``listener(stage, seconds)`` when it ends.
Listener = Callable[[str, "float | None"], None]


class Stages:
    """Seconds per stage, summed when a stage runs more than once."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.listener is not None:
            self.listener(name, None)
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            if self.listener is not None:
                self.listener(name, seconds)

    def rounded(self) -> dict[str, float]:
        """The timings as the report carries them (milliseconds precision)."""
        return {k: round(v, 3) for k, v in self.timings.items()}
