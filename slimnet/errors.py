"""The one exception type the CLI turns into a single clear line.

Every failure a user can cause (bad file, bad flag, untraceable model, plan that does not fit) is raised
as :class:`SlimnetError` with a message that names the problem and what to do; anything else is a bug and
keeps its traceback under ``--debug``.
"""

from __future__ import annotations


class SlimnetError(Exception):
    """A user-facing error: its message is printed as one line, and the CLI exits non-zero."""

    exit_code = 2


class VerificationError(SlimnetError):
    """The pruned model does not compute what the masked original computes."""

    exit_code = 3


class RepairWarning(UserWarning):
    """A repair step made the model agree less with the original on held-out data and was taken back."""
