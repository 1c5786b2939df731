"""The README is a user's guide: a table of contents that matches its headings, the API before any internals,
the quick start complete for a user's own classes (issue 25, items 6 and 13); internals live in docs/."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _anchor(heading: str) -> str:
    """GitHub's (and mkdocs') anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")


def _headings(text: str) -> list[str]:
    body = re.sub(r"(?ms)^```.*?^```", "", text)  # a "## " inside a code block is not a heading
    return re.findall(r"(?m)^## (.+)$", body)


def test_contents_lists_every_heading_and_every_link_resolves() -> None:
    headings = [h for h in _headings(README) if h != "Contents"]
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert links == [_anchor(h) for h in headings]
    for target in re.findall(r"\]\((docs/[^)#]+)", README):  # links into docs/ point at files that exist
        assert (ROOT / target).is_file(), target


def test_api_comes_before_internals_and_internals_moved_to_docs() -> None:
    headings = _headings(README)
    assert headings.index("Python API") <= 3
    for internal in ("How channels are grouped", "The plan, rounding and verification"):
        assert internal not in headings
        assert f"## {internal}" in (ROOT / "docs" / "internals.md").read_text()
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert {"Internals": "internals.md"} in nav


def test_quick_start_shows_trust_pickle_for_own_classes() -> None:
    quick = README.split("## Contents", 1)[0]
    blocks = re.findall(r"(?ms)^```bash\n(.*?)^```", quick)
    own = [b for b in blocks if "model.pt" in b and "--trust-pickle" in b]
    assert own, "the quick start shows no command with --trust-pickle for a user's own classes"
    assert all("--trust-pickle" in line for line in own[0].strip().splitlines())
