"""Every Markdown document that the code, tests, notebooks, profiles and README cite ships with the repository.

Two module docstrings and a test once cited ``NIH_FORMATS.md``, which never shipped (issue 25): a reader sent
to it found nothing. A cited name resolves by its file name anywhere in the repository, outside what is
generated or downloaded (the virtual environment, runs, reports, data) and hidden folders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

THIS_FILE = Path(__file__).resolve()  # its names are examples of what the search finds
ROOT = THIS_FILE.parents[2]
# Where citations are looked for, as globs under the repository root.
CITING_FILES = ("cxrutils/**/*.py", "tests/**/*.py", "notebooks/*.ipynb", "configs/**/*", "README.md")
# Generated or downloaded, never shipped: a file there does not make a citation good.
NOT_SHIPPED = {".venv", "runs", "reports", "data"}
CITED_DOCUMENT = re.compile(r"[\w.-]+\.md\b")
# Names cited as files of a download, not of this repository, and why.
FILES_OF_A_DOWNLOAD = {
    # Every phantom root carries a README.md that marks it synthetic (cxrutils.demo.roots and
    # cxrutils.demo.external_roots write it, and their tests read it), as the datasets' downloads carry theirs.
    "README.md": "the README of a phantom root (data/demo/README.md), a file of that root",
}


def _citations() -> dict[str, list[str]]:
    """Each cited ``*.md`` name -> the files that cite it (relative to the repository root)."""
    cited: dict[str, list[str]] = {}
    for pattern in CITING_FILES:
        for path in sorted(ROOT.glob(pattern)):
            if not path.is_file() or "__pycache__" in path.parts or path == THIS_FILE:
                continue
            for name in set(CITED_DOCUMENT.findall(path.read_text(encoding="utf-8", errors="replace"))):
                cited.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return cited


def _shipped_names() -> set[str]:
    """The file name of every file in the repository, bar generated, downloaded and hidden folders."""
    names = set()
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if name not in NOT_SHIPPED and not name.startswith(".")]
        names.update(files)
    return names


def test_every_cited_markdown_document_ships():
    cited = _citations()
    assert cited, "no citation found: the search itself is broken"
    shipped = _shipped_names()
    missing = {name: files for name, files in cited.items() if name not in shipped and name not in FILES_OF_A_DOWNLOAD}
    assert not missing, f"cited but not in the repository (ship it, or cite what ships): {missing}"


def test_the_search_finds_a_document_that_does_not_ship():
    """The pattern catches a name in prose, in a path and in a Markdown link, and only a whole .md name."""
    text = "see NIH_FORMATS.md; docs/setup-guide.md and [x](notes/v1.2.md), not data.mdx or sums.md5"
    assert sorted(CITED_DOCUMENT.findall(text)) == ["NIH_FORMATS.md", "setup-guide.md", "v1.2.md"]
    assert "NIH_FORMATS.md" not in _shipped_names()


def test_each_name_allowed_as_a_file_of_a_download_is_still_cited_so():
    cited = _citations()
    for name in FILES_OF_A_DOWNLOAD:
        assert any(path.startswith("cxrutils/demo/") for path in cited.get(name, [])), name
