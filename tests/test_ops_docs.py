"""The user docs stay inside the repository: every relative link in the README and docs/
resolves to a file (and heading) here, none points outside, and the docs name what ships."""

from __future__ import annotations

import re
from pathlib import Path

from processor.ops.metrics import METRIC_NAMES

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks are not links
    return LINK.findall(text)


def test_every_relative_link_resolves_inside_the_repository() -> None:
    """Each relative link names an existing file under the repository root (and an existing
    heading when it has a #fragment); nothing links to ../shared or another folder outside."""
    problems = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"^[a-z]+:", target):
                continue  # an absolute URL (https:, mailto:)
            path_part, _, fragment = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if ROOT not in resolved.parents and resolved != ROOT:
                problems.append(f"{page.name}: {target} points outside the repository")
            elif not resolved.exists():
                problems.append(f"{page.name}: {target} does not exist")
            elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
                problems.append(f"{page.name}: {target}: no such heading")
    assert problems == []


def test_docs_index_lists_every_page() -> None:
    """docs/index.md links every page in docs/, so a new page cannot go unnoticed."""
    listed = set(_links(ROOT / "docs" / "index.md"))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"index.md"}
    assert pages <= listed


def test_operator_guide_names_every_metric() -> None:
    """Every metric a worker can expose has a row in docs/operating.md."""
    text = (ROOT / "docs" / "operating.md").read_text()
    assert [name for name in METRIC_NAMES if f"`{name}`" not in text] == []
