"""Texts shipped with slimnet (``slimnet/llm/data/``, see its README for the source and licence), so that a
user without a corpus, a test and the study in docs/llm.md can calibrate and measure perplexity offline.

``builtin:NAME`` is how the command line names them; :func:`resolve_text` turns that, or a plain path, into a
path. The calibration and evaluation parts are disjoint: calibrate on ``shakespeare-calib``, measure on
``shakespeare-eval``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import SlimnetError

PREFIX = "builtin:"

#: name -> file in slimnet/llm/data/
BUILTIN_TEXTS = {
    "shakespeare-calib": "shakespeare-calib.txt",
    "shakespeare-eval": "shakespeare-eval.txt",
}


def builtin_text(name: str) -> Path:
    """The path of built-in text ``name`` (one of :data:`BUILTIN_TEXTS`)."""
    if name not in BUILTIN_TEXTS:
        raise SlimnetError(f"no built-in text {name!r}: give one of {', '.join(sorted(BUILTIN_TEXTS))}")
    path = Path(str(resources.files("slimnet.llm").joinpath("data", BUILTIN_TEXTS[name])))
    if not path.is_file():
        raise SlimnetError(f"built-in text {name} is missing from this install ({path}): reinstall slimnet")
    return path


def resolve_text(spec: str) -> str:
    """``builtin:NAME`` -> that file's path; anything else is returned as it is (a path)."""
    if spec.startswith(PREFIX):
        return str(builtin_text(spec[len(PREFIX) :]))
    return spec
