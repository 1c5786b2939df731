"""The slow property profile: 500+ random networks through shrink + independent re-verification.

    python tools/fuzz.py --examples 500 --out docs/reliability.md

Runs ``tests/test_properties.py`` under the ``slow`` hypothesis profile (not derandomised, so every run
explores new networks) and records the outcome in the reliability notes. A failure prints hypothesis's
minimal example; add it to ``REGRESSIONS`` in that file once fixed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=500)
    ap.add_argument("--out", default="docs/reliability.md")
    args = ap.parse_args()
    env = dict(os.environ, HYPOTHESIS_PROFILE="slow", SLIMNET_FUZZ_EXAMPLES=str(args.examples))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_properties.py::test_random_networks_shrink_exactly",
            "-q",
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    passing = re.search(r"(\d+) passing examples", text)
    failing = re.search(r"(\d+) failing examples", text)
    status = "passed" if proc.returncode == 0 else "FAILED"
    section = "\n".join(
        [
            "## Property-based testing (slow profile)",
            "",
            f"Command: `python tools/fuzz.py --examples {args.examples}`",
            "",
            f"Result: {status}; {passing.group(1) if passing else '?'} passing examples, "
            f"{failing.group(1) if failing else '0'} failing, in {seconds:.0f} s.",
            "",
            "Each example is a random network from `tests/randnet.py` (1d/2d/3d convs, depthwise and grouped convs, "
            "BN/GroupNorm/InstanceNorm/PReLU, residual adds, concats, chunks and splits, SE multiplies, spatial gates, "
            "a conv used twice, flatten or pooled Linear heads), shrunk at a random ratio in [0, 0.95], criterion and "
            "round-to, then re-verified independently (`tests/conftest.py::check`).",
            "",
        ]
    )
    out = ROOT / args.out
    old = out.read_text() if out.exists() else "# Reliability\n\n"
    start = old.find("## Property-based testing (slow profile)")
    if start >= 0:
        end = old.find("\n## ", start + 5)
        old = old[:start] + (old[end + 1 :] if end >= 0 else "")
    out.write_text(old.rstrip("\n") + "\n\n" + section)
    print(text[-3000:])
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
