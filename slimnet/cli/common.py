"""What every command shares: the error policy (:func:`guarded`), output checks and default output names,
loading MODEL with its input, printing, the help layout (:class:`Command`), and the options that several
commands take, declared once as ``Annotated`` aliases.

Nothing here imports torch: ``slimnet --help`` and the argument checks stay fast. Commands import the heavy
modules inside their body, each import marked ``# lazy: CLI start-up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .._util import first_line
from .._version import __version__
from ..errors import SlimnetError
from ..load.spec import parse_spec

#: The width rich lays text out at when the stream is not a terminal (a log, a pipe, CI): wide enough that no
#: line is ever wrapped, so that a file name stays whole and ``grep`` finds it.
NO_WRAP_WIDTH = 100_000


class NoWrapConsole(Console):
    """A rich Console that wraps only on a terminal: elsewhere rich would assume 80 columns and cut lines (file
    names split in two) where nobody sees a screen's edge. An explicit ``width`` is kept."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(NO_WRAP_WIDTH, size.height)
        return size


out = NoWrapConsole()
err = NoWrapConsole(stderr=True)

# ------------------------------------------------------------------------------------------ help texts
APP_HELP = "slimnet: shrink PyTorch models into physically smaller dense ones, with every cut verified."
MODEL_HELP = "torchvision:NAME, timm:NAME, hf:FOLDER, FILE.py:FACTORY, or a torch.save(model) file."
TRUST_HELP = (
    "Fully unpickle model files whose classes are your own (runs code named in the file; only for files you "
    "trust); the current folder is importable."
)
DEBUG_HELP = "Show the full traceback on errors."
INPUT_HELP = "Example input saved with torch.save (tensor, tuple or dict of tensors)."
SHAPE_HELP = (
    "Example input shape, e.g. 1,3,320,320 (default 1,3,224,224; 299 for inception, 640 for ultralytics; hf: from "
    "the config)."
)
WEIGHTS_HELP = "state_dict to load into FILE.py:FACTORY."
JSON_HELP = "Print one JSON object on stdout instead of text."
PROGRESS_HELP = (
    "Progress per stage on stderr, with each stage's time: shown by default when stderr is a terminal; "
    "--progress shows it in logs too; --quiet never, nor the note that an existing output was replaced "
    "(warnings and errors still print)."
)


def output_option(help: str) -> Any:
    """``-o/--output``; what it writes, and where by default, differs by command, hence the help."""
    return typer.Option("-o", "--output", help=help, metavar="PATH", show_default=False)


class Command(TyperCommand):
    """typer's help, minus what reads as if flags took values: an on/off flag shows no ``<bool>``, and the usage
    line says ``MODEL`` rather than ``{model}``."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_metavar(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.*?)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]


class Group(TyperGroup):
    """The app's own help, laid out as :class:`Command`'s."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_bool_metavar(super().get_params(ctx))


def _no_bool_metavar(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


def _version(value: bool) -> None:
    if value:
        typer.echo(f"slimnet {__version__}")
        raise typer.Exit()


# ------------------------------------------------------------------------------------------ shared options
Model = Annotated[str, typer.Argument(help=MODEL_HELP, metavar="MODEL", show_default=False)]
Weights = Annotated[Optional[str], typer.Option("--weights", help=WEIGHTS_HELP)]
InputFile = Annotated[Optional[str], typer.Option("--input", help=INPUT_HELP)]
InputShape = Annotated[Optional[str], typer.Option("--input-shape", help=SHAPE_HELP)]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", help=TRUST_HELP)]
AsJson = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
ShowProgress = Annotated[Optional[bool], typer.Option("--progress/--quiet", help=PROGRESS_HELP, show_default=False)]
Debug = Annotated[bool, typer.Option("--debug", help=DEBUG_HELP)]
Version = Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")]


# ------------------------------------------------------------------------------------------ errors
@contextlib.contextmanager
def guarded(debug: bool) -> Iterator[None]:
    """Turn every failure into one line and an exit code (tracebacks only with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except SlimnetError as exc:
        if debug:
            raise
        err.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted: nothing was written", highlight=False)
        raise typer.Exit(130) from None
    except MemoryError:
        err.print("error: out of memory: try a smaller --input-shape", highlight=False)
        raise typer.Exit(1) from None
    except Exception as exc:  # noqa: BLE001 - a bug in slimnet; still one line unless --debug
        if debug:
            raise
        first = first_line(exc, "")
        text = f" {type(exc).__name__}: {first} (run again with --debug for the traceback, and please report it)"
        err.print(Text.assemble(("internal error:", "bold red"), text), highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


# ------------------------------------------------------------------------------------------ files
def default_output(model: str, suffix: str) -> str:
    """Where a command writes without ``-o``: beside the input, named after it (``model.pt`` with ``-slim.pt`` ->
    ``model-slim.pt``; ``net.py:make`` -> ``net-slim.pt``; ``hf:bert`` with ``-slim`` -> the folder
    ``bert-slim``); for a built-in (``torchvision:resnet50``) in the current folder (``resnet50-slim.pt``)."""
    spec = parse_spec(model)
    if spec.kind in ("torchvision", "timm"):
        return re.sub(r"[^\w.-]", "_", spec.target) + suffix
    p = Path(spec.target.rstrip("/\\") or ".")
    if not p.name:  # "." or ".."
        p = p.resolve()
    stem = p.name if spec.kind == "hf" else p.stem
    return str(p.with_name(stem + suffix))


def check_output(output: str, inputs: list[str], folder: bool = False) -> Path:
    """The output path must differ from every input (a FILE.py:FACTORY spec's file included), and its folder
    must exist and be writable."""
    p = Path(output)
    for i in inputs:
        if i and Path(i).exists() and p.exists() and p.resolve() == Path(i).resolve():
            raise SlimnetError(f"output {output} is the input: give another -o so that the input stays untouched")
        if i and Path(i).resolve() == p.resolve():
            raise SlimnetError(f"output {output} is the input: give another -o so that the input stays untouched")
    parent = p.resolve().parent
    if not parent.is_dir():
        raise SlimnetError(f"output folder {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK):
        raise SlimnetError(f"output folder {parent} is not writable")
    if p.is_dir() and not folder:
        raise SlimnetError(f"output {output} is a folder: give a file name such as model-slim.pt")
    if folder and p.exists() and (not p.is_dir() or any(p.iterdir())):
        raise SlimnetError(f"output {output} exists and is not an empty folder: give a new folder name")
    return p


def model_inputs(
    model: str, weights: Optional[str], input_file: Optional[str], input_shape: Optional[str], trust_pickle: bool
) -> tuple[Any, Any]:
    """MODEL and its example input (:func:`slimnet.load.loader.model_and_input`): the input's cheap checks first."""
    from ..load.loader import model_and_input  # lazy: CLI start-up

    return model_and_input(model, weights, input_file, input_shape, trust_pickle)


# ------------------------------------------------------------------------------------------ printing
def say(text: str) -> None:
    """A line of prose on stdout as it is: never wrapped by rich, and no markup read into it (a ``[timm]`` or a
    file name with brackets would vanish as a style tag)."""
    out.print(text, highlight=False, soft_wrap=True, markup=False)


def tell(text: str) -> None:
    """A line on stderr as it is (no markup, no wrapping): notes and warnings beside the result."""
    err.print(text, highlight=False, soft_wrap=True, markup=False)


class PlainTable(Table):
    """A rich table whose cells are shown as they are: a group name, a file path or a reason with brackets in it
    is text, never markup."""

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(Text(r) if isinstance(r, str) else r for r in renderables), **kwargs)


def show(table: Table, console: Console = out) -> None:
    """A rich table, its title printed as a line of its own: rich wraps a title to the table's width, which cut a
    long model path into a column of five-letter pieces."""
    title, table.title = table.title, None
    if title:
        console.print(Text(str(title), style="table.title"), highlight=False, soft_wrap=True)
    console.print(table)


def emit_json(obj: dict[str, Any]) -> None:
    """The one JSON object of ``--json``, alone on stdout."""
    sys.stdout.write(json.dumps(obj, default=str) + "\n")
    sys.stdout.flush()


def fmt(n: Optional[float]) -> str:
    """A count for a table: 1.23G, 4.50M, 7.00K, or as it is below a thousand ('-' for unknown)."""
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:g}"


def human_bytes(n: float) -> str:
    """A file size a person reads at a glance: 512 B, 41 KB, 3.2 MB, 1.45 GB (powers of 1000, as file managers and
    ``ls -h --si`` print them; "0.0 MB" for a 41 KB file said nothing)."""
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            value = n / div
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"
