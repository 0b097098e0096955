"""The documentation holds together: the README stays a short page for users, and every relative link and image
in README.md and docs/*.md resolves, files and #anchors alike."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCED_BLOCK = re.compile(r"```.*?```", flags=re.S)
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def slug(heading: str) -> str:
    """The anchor GitHub makes of a heading: markup dropped, lower case, punctuation but - and _ dropped."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).lower()
    kept = ("-" if char == " " else char for char in text if char in "-_ " or unicodedata.category(char)[0] in "LN")
    return "".join(kept)


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, outside fenced code; repeated ones get -1, -2, ..."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    in_fence = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            name = slug(match.group(2))
            repeats = seen.get(name, 0)
            seen[name] = repeats + 1
            found.add(name if repeats == 0 else f"{name}-{repeats}")
    return found


def broken_links(root: Path) -> tuple[int, list[str]]:
    """How many relative links README.md and docs/*.md hold, and a line for each that does not resolve."""
    checked, broken = 0, []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in LINK.findall(FENCED_BLOCK.sub("", page.read_text())):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                broken.append(f"{page.relative_to(root)}: no file {target}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{page.relative_to(root)}: no heading for {target}")
    return checked, broken


# The README is the package's long description and a user's first page: detail belongs in docs/.
MAX_README_BYTES = 25 * 1024


def test_the_readme_stays_within_25_kb():
    assert len((ROOT / "README.md").read_bytes()) <= MAX_README_BYTES


def test_every_relative_link_of_the_readme_and_docs_resolves():
    checked, broken = broken_links(ROOT)
    assert checked > 0
    assert not broken, "\n".join(broken)
