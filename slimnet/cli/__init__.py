"""The command line: a thin typer shell over :mod:`slimnet.api`.

Every command prints a rich table, or with ``--json`` exactly one JSON object on stdout. Every user error is
one line on stderr and a non-zero exit (2 for bad input, 3 for a failed verification, 130 for Ctrl-C), with
the traceback only under ``--debug``. Outputs are written to temporary files and renamed at the end, so an
error or an interrupt never leaves a half-written file, and the input is never modified.

Only this module imports the command modules (:mod:`.core`: shrink, apply, graph; :mod:`.bench`: export,
bench; :mod:`.data`: sensitivity, distill, and the calibration options shrink shares; :mod:`.evaluate`:
eval-lm); they share
:mod:`.common`. Nothing in slimnet imports this package.

Threads: torch's OpenMP threads spin while they wait for each other. On a machine where another job holds a
core, a spinning thread waits for one that is not running, at every parallel op: on a 2-core machine with one
core busy, a resnet50 shrink took 212-283 s with torch's defaults (2 threads, active waiting) and 27-49 s with
``OMP_WAIT_POLICY=PASSIVE`` (1 thread: 33-43 s); see docs/shrink-time.md. So the command line asks for passive
waiting before torch is imported, unless the user set the variable.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before anything imports torch; see the docstring

import typer  # noqa: E402 - after the environment that torch reads when it loads

from . import bench, core, data, evaluate  # noqa: E402
from .common import APP_HELP, Command, Group, Version  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, help=APP_HELP, pretty_exceptions_enable=False, cls=Group)


@app.callback()
def main(version: Version = False) -> None:
    """slimnet: shrink PyTorch models into physically smaller dense ones, with every cut verified."""


app.command("shrink", cls=Command)(core.shrink)
app.command("apply", cls=Command)(core.apply)
app.command("graph", cls=Command)(core.graph)
app.command("export", cls=Command)(bench.export_command)
app.command("bench", cls=Command)(bench.bench_command)
app.command("sensitivity", cls=Command)(data.sensitivity)
app.command("distill", cls=Command)(data.distill)
app.command("eval-lm", cls=Command)(evaluate.eval_lm)
