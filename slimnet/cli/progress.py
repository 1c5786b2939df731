"""Progress on stderr: a status line for the stage that runs, and a line with its time when it ends.

The commands run their work in named stages (:class:`slimnet.stages.Stages`: ``load``, ``trace``, ``groups``,
``rank``, ``cut``, ``verify``, ``measure``, ``write``; bench adds ``macs``, ``export`` and ``time``) and pass
:class:`StageProgress` as the listener. Nothing of it goes to stdout, so ``--json`` output stays one object.

When it shows: by default only when stderr is a terminal (a person is watching), so that logs, pipes and CI keep
exactly what they had: one line per error. ``--progress`` shows the lines anywhere (a long job in a log file),
``--quiet`` never.
"""

from __future__ import annotations

from typing import Any, Optional

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from ..stages import Stages
from .common import err


def wanted(show: Optional[bool], console: Console = err) -> bool:
    """Whether progress shows: ``--progress`` yes, ``--quiet`` no, neither: only when stderr is a terminal. The
    one rule for every command (shrink's stages, the sensitivity sweep, distill's bar)."""
    return console.is_terminal if show is None else show


def stages_for(show: Optional[bool]) -> tuple[Stages, StageProgress]:
    """The stages of one command and their progress display (``show``: ``--progress/--quiet``, None: auto)."""
    progress = StageProgress(show)
    return Stages(progress), progress


class StageProgress:
    """A :class:`slimnet.stages.Stages` listener. A stage that runs twice in a row (``trace`` is timed in two
    pieces) is shown once, with its summed time; the line is printed when the next stage starts or at
    :meth:`close`."""

    def __init__(self, show: Optional[bool], console: Console = err) -> None:
        self.console = console
        self.enabled = wanted(show, console)
        self.live: Optional[Progress] = None  # the status line: spinner, stage, seconds so far
        self.task: Optional[TaskID] = None
        self.pending: Optional[tuple[str, float]] = None  # the last stage that ended, not printed yet

    def __call__(self, stage: str, seconds: Optional[float]) -> None:
        if not self.enabled:
            return
        if seconds is None:
            if self.pending is not None and self.pending[0] != stage:
                self._flush()
            self._spin(stage)
            return
        total = seconds + (self.pending[1] if self.pending and self.pending[0] == stage else 0.0)
        self.pending = (stage, total)

    def close(self) -> None:
        """Print the last stage's line and take the status line away (also after an error)."""
        self._stop()
        if self.enabled:
            self._flush()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _spin(self, stage: str) -> None:
        if not self.console.is_terminal:  # a spinner in a log file would be noise: the lines alone
            return
        text = f"[dim]slimnet:[/] {stage} ..."
        if self.live is None:
            # stdout is left alone (no redirection into this stderr display): --json output stays on stdout
            self.live = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self.live.start()
            self.task = self.live.add_task(text, total=None)
        elif self.task is not None:
            self.live.reset(self.task, description=text)

    def _stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
            self.task = None

    def _flush(self) -> None:
        if self.pending is not None:
            stage, seconds = self.pending
            self.console.print(f"[dim]slimnet:[/] {stage:<8} {seconds:7.1f} s", highlight=False)
            self.pending = None
