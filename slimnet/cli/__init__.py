"""The command line: a thin typer shell over :mod:`slimnet.api`.

Every command prints a rich table, or with ``--json`` exactly one JSON object on stdout. Every user error is
one line on stderr and a non-zero exit (2 for bad input, 3 for a failed verification, 130 for Ctrl-C), with
the traceback only under ``--debug``. Outputs are written to temporary files and renamed at the end, so an
error or an interrupt never leaves a half-written file, and the input is never modified.

Only this module imports the command modules (:mod:`.core`: shrink, apply, graph; :mod:`.bench`: export,
bench; :mod:`.data`: sensitivity, distill, and the calibration options shrink shares); they share
:mod:`.common`. Nothing in slimnet imports this package.
"""

from __future__ import annotations

import typer

from . import bench, core, data
from .common import APP_HELP, Version

app = typer.Typer(add_completion=False, no_args_is_help=True, help=APP_HELP, pretty_exceptions_enable=False)


@app.callback()
def main(version: Version = False) -> None:
    """slimnet: shrink PyTorch models into physically smaller dense ones, with every cut verified."""


app.command("shrink")(core.shrink)
app.command("apply")(core.apply)
app.command("graph")(core.graph)
app.command("export")(bench.export_command)
app.command("bench")(bench.bench_command)
app.command("sensitivity")(data.sensitivity)
app.command("distill")(data.distill)
