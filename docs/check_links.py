"""Check that every relative link and image in README.md and docs/*.md resolves, files and #anchors alike.

Run from anywhere: `python docs/check_links.py`. Exits 1 and names each broken link.
"""

from __future__ import annotations

import re
import sys
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


def main() -> int:
    """Print the broken links and a count; 1 if any is broken."""
    checked, broken = broken_links(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
    for line in broken:
        print(line)
    print(f"{checked} relative links checked, {len(broken)} broken")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
