"""One copy each of the small helpers that every stage needs (tensor helpers: :mod:`slimnet._tensors`).

Nothing here imports torch, so that the command line can check its arguments before paying for it.

* Errors: :func:`first_line` is the one way an exception becomes part of a one-line message.
* Registries keyed by module class: :func:`lookup` finds a class's entry along its MRO, by the class itself or
  by its qualified name (so that optional libraries never have to be imported to build a table).
* Outputs: :func:`write_atomic`, :func:`save_atomic` and :func:`scratch_dir` write beside the destination and
  rename at the end, so a failure or an interrupt never leaves a half-written file; the file ends with the
  permissions a plain ``open()`` would have given it (:func:`plain_mode`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


# ------------------------------------------------------------------------------------------ errors
def first_line(exc: BaseException, empty: str | None = None, limit: int = 240) -> str:
    """An exception as one short line: its message's first line, cut at ``limit`` characters; for an
    exception without a message, ``empty`` (by default its type name)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if empty is None else empty
    return text.splitlines()[0][:limit]


# ------------------------------------------------------------------------------------------ registries
def qualname(cls: type) -> str:
    """``module.Class``: the key under which optional libraries' classes sit in slimnet's registries."""
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup(table: Mapping[Any, T], cls: type) -> T | None:
    """The entry of ``cls`` or of its nearest base class, keyed by the class or by its qualified name."""
    for base in cls.__mro__:
        found = table.get(base)
        if found is None:
            found = table.get(qualname(base))
        if found is not None:
            return found
    return None


def bind_once(table: dict[Any, T], key: Any, value: T, what: str) -> None:
    """``table[key] = value``, refused when ``key`` is already bound to something else (as NNCF's registry
    asserts): two rules for one op would make the winner depend on import order."""
    old = table.get(key)
    if old is not None and old is not value:
        name = getattr(key, "__qualname__", None) or str(key)
        raise RuntimeError(f"{what} for {name} is bound twice: {_name(old)} and {_name(value)}")
    table[key] = value


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"


# ------------------------------------------------------------------------------------------ outputs
def save_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename: never a half-written output. The file
    gets :func:`plain_mode` (a temporary file is private, 0600, until then)."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(dir=dest.resolve().parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, plain_mode(dest))
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def plain_mode(dest: Path) -> int:
    """The permissions ``open(dest, "w")`` would leave: an existing file keeps its own, a new one gets 0666
    less the user's umask (0644 under the usual 022)."""
    try:
        return stat.S_IMODE(dest.stat().st_mode)
    except OSError:
        return 0o666 & ~umask()


def umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set
    and restored at once, which is how POSIX lets a process read it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    save_atomic(path, lambda tmp: tmp.write_bytes(data))


@contextlib.contextmanager
def scratch_dir(beside: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder in the folder of ``beside`` (so a final rename stays on one file system), removed
    at the end whatever happens; move what it holds into place before leaving."""
    dest = Path(beside)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.resolve().parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
