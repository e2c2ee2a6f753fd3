"""Regenerate docs/index.md (the documentation site's home page) from README.md.

The README links into ``docs/``; on the site those pages are siblings of the home page, so
``](docs/X)`` becomes ``](X)``, and the paragraph that points to the documentation describes the
site instead. ``tests/test_docs.py`` checks that the two agree.

Usage::

    python tools/readme_to_index.py            # writes docs/index.md
    python tools/readme_to_index.py --check    # exit 1 if docs/index.md is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_DOCS_LINE = "[`docs/`](docs/index.md) (site: `.venv/bin/mkdocs serve`): "
SITE_DOCS_LINE = "This site (`.venv/bin/mkdocs serve` serves it locally): "


def index_from_readme(readme: str) -> str:
    """The site's home page for a README text."""
    text = readme.replace(README_DOCS_LINE, SITE_DOCS_LINE)
    return re.sub(r"\]\(docs/([^)]*)\)", r"](\1)", text)


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    if README_DOCS_LINE not in readme:
        print("error: README.md no longer holds the documentation paragraph this script rewrites", file=sys.stderr)
        return 1
    want = index_from_readme(readme)
    target = ROOT / "docs" / "index.md"
    if "--check" in sys.argv[1:]:
        if target.read_text() != want:
            print("docs/index.md is out of date: run python tools/readme_to_index.py", file=sys.stderr)
            return 1
        return 0
    target.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
