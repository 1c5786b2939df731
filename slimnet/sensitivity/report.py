"""Reading a sensitivity result: the groups that hurt most, a text table, and a plot (matplotlib, imported only
here and only when a plot is asked for: it is the optional ``plot`` extra)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._util import save_atomic
from ..errors import SlimnetError

#: How many of the worst groups the plot labels.
LABELLED = 3


def worst(sens: dict[str, Any], n: int = LABELLED) -> list[dict[str, Any]]:
    """The ``n`` groups whose loss at the deepest measured ratio is largest (ties: the earlier group)."""
    return sorted(sens["groups"], key=lambda row: (-row["points"][-1]["loss"], row["id"]))[:n]


def rows(sens: dict[str, Any]) -> list[list[str]]:
    """The table: one row per group, its units, then the metric at each ratio."""
    out = []
    for row in sens["groups"]:
        out.append([row["group"], row["kind"], str(row["units"]), *(f"{p['value']:.4f}" for p in row["points"])])
    return out


def header(sens: dict[str, Any]) -> list[str]:
    return ["group", "kind", "units", *(f"{sens['metric']} @ {r:g}" for r in sens["ratios"])]


def pyplot() -> Any:
    """matplotlib's pyplot (headless), or the one-line error with the install hint: the command line calls it
    before the sweep, so that a missing matplotlib is said at once, not after minutes of work."""
    try:
        import matplotlib  # lazy: optional dependency (the plot extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SlimnetError("--plot needs matplotlib: pip install 'slimnet[plot]'") from None
    return plt


def plot(sens: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """One line per group (metric against ratio), the :data:`LABELLED` worst labelled; written atomically."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled = {row["id"] for row in worst(sens)}
    for row in sens["groups"]:
        xs = [0.0] + [p["ratio"] for p in row["points"]]
        ys = [sens["baseline"]] + [p["value"] for p in row["points"]]
        bad = row["id"] in labelled
        ax.plot(xs, ys, color="tab:red" if bad else "0.6", alpha=1.0 if bad else 0.5, lw=1.6 if bad else 0.8)
        if bad:
            ax.annotate(row["group"], (xs[-1], ys[-1]), fontsize=7, xytext=(4, 0), textcoords="offset points")
    ax.set_xlabel("ratio of the group's units dropped (that group alone)")
    ax.set_ylabel(sens["metric"] + (" (higher is better)" if sens["higher_is_better"] else " (lower is better)"))
    ax.set_title(f"sensitivity of {sens['model']} ({sens['criterion']}, {len(sens['groups'])} groups)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    suffix = Path(path).suffix.lstrip(".") or "png"
    save_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format=suffix))
    plt.close(fig)
