"""Documentation: the site builds strictly, the README is short and its links resolve, every
command's help points to its page."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from faceclip.cli import DOCS_PAGES, build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                          "-d", str(site)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    # The API reference lists public functions from their docstrings, shapes and units included.
    facemodel = (site / "reference" / "facemodel" / "index.html").read_text()
    assert "load_face_model" in facemodel and "vertices_mm" in facemodel
    outputs = (site / "reference" / "io-outputs" / "index.html").read_text()
    assert "write_result_folder" in outputs and "safe_name" in outputs
    assert (site / "reconstruct" / "index.html").is_file()


def _links(markdown: str) -> list[str]:
    return [m for m in re.findall(r"\]\(([^)\s]+)\)", markdown) if not m.startswith(("http", "#"))]


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    links = _links(text)
    assert links, "the README links into the docs"
    for link in links:
        assert (ROOT / link.split("#")[0]).exists(), link


def test_readme_set_up_commands_match_ci():
    text = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text  # .ci/run runs exactly README command (b)


@pytest.mark.parametrize("name", sorted(DOCS_PAGES))
def test_help_points_to_an_existing_docs_page(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    epilog = sub.choices[name].epilog
    page = re.search(r"documentation: docs/(\S+)", epilog).group(1)
    assert (ROOT / "docs" / page).is_file()


def test_site_home_page_is_the_readme():
    """docs/index.md is generated from README.md (tools/readme_to_index.py): they must agree."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_to_index.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
