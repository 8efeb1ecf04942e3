"""An executed notebook as the HTML page a person reads: navigation on top, nothing fetched from the internet.

Every report gets, from its own markdown headings, a short table of contents and a
link back to the index, so a new notebook needs nothing of its own. The page loads
no script from a CDN (nbconvert's lab template loads require.js, MathJax and mermaid
from cdnjs): the reports show tables and inline PNG figures, which need none, and so
read the same offline, on a hospital network or from an e-mail attachment. MathJax
is kept for a notebook whose markdown has TeX, mermaid for one with a diagram.

A cell tagged ``headline-figure`` gives the index its thumbnail: its first PNG,
scaled down, saved beside the report's summary.
"""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from cxrutils import files
from cxrutils.text import html_text

HEADLINE_FIGURE_TAG = "headline-figure"
THUMBNAIL_NAME = "thumbnail.png"
THUMBNAIL_WIDTH = 360
INDEX_PAGE = "index.html"
_NAV_PLACEHOLDER = "<!--cxrutils-navigation-->"
_TEX = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")
_MERMAID = re.compile(r"^```mermaid", re.MULTILINE)

_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- if resources.cxrutils_math -%}{{ super() }}{%- endif -%}{%- endblock -%}
{%- block html_head_js_mermaidjs -%}{%- if resources.cxrutils_mermaid -%}{{ super() }}{%- endif -%}{%- endblock -%}
{%- block extra_css -%}
<style type="text/css">
.cxr-nav { margin: 0 0 1.2em; padding: .6em .9em; background: #f6f8fa; border: 1px solid #d8dee4;
  border-radius: 6px; font-family: system-ui, sans-serif; font-size: 14px; line-height: 1.6; }
.cxr-nav a { color: #0b57d0; text-decoration: none; }
.cxr-nav a:hover { text-decoration: underline; }
.cxr-nav .cxr-index { font-weight: 600; margin-right: 1.2em; }
.cxr-nav .cxr-toc-title { color: #555; margin-right: .5em; }
.cxr-nav ul { display: inline; margin: 0; padding: 0; }
.cxr-nav li { display: inline; margin-right: .9em; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}""" + _NAV_PLACEHOLDER + """{%- endblock body_header -%}
"""


class _Headings(HTMLParser):
    """The ``h2`` headings of a page, with the ids nbconvert gave them (their anchor-link text left out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, str]] = []
        self._current: tuple[str, list[str]] | None = None
        self._in_anchor = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "h2" and attributes.get("id"):
            self._current = (str(attributes["id"]), [])
        elif tag == "a" and self._current is not None and "anchor-link" in (attributes.get("class") or ""):
            self._in_anchor = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._in_anchor = False
        elif tag == "h2" and self._current is not None:
            anchor, parts = self._current
            self.found.append((anchor, " ".join("".join(parts).split())))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and not self._in_anchor:
            self._current[1].append(data)


def section_headings(page: str) -> list[tuple[str, str]]:
    """(id, text) of each ``h2`` of an HTML page, in order."""
    parser = _Headings()
    parser.feed(page)
    return parser.found


def navigation(headings: list[tuple[str, str]], index_href: str = INDEX_PAGE) -> str:
    """The block at the top of a report: back to the index, then the sections."""
    items = "".join(f"<li><a href='#{html_text(anchor)}'>{html_text(text)}</a></li>" for anchor, text in headings)
    contents = f"<span class='cxr-toc-title'>Contents:</span><ul>{items}</ul>" if items else ""
    return (f"<nav class='cxr-nav' aria-label='Report navigation'><a class='cxr-index' href='{html_text(index_href)}'>"
            f"&larr; All reports</a>{contents}</nav>")


def export_html(executed: Path, html_path: Path, show_code: bool = False, index_href: str = INDEX_PAGE) -> Path:
    """The HTML of an executed notebook, code cells hidden unless ``show_code``, with its navigation on top."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(executed, as_version=4)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    exporter = HTMLExporter(template_name="lab", raw_template=_TEMPLATE, exclude_input=not show_code,
                            exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(
        notebook, resources={"cxrutils_math": bool(_TEX.search(markdown)),
                             "cxrutils_mermaid": bool(_MERMAID.search(markdown))})
    page = body.replace(_NAV_PLACEHOLDER, navigation(section_headings(body), index_href), 1)
    return files.atomic_write_text(html_path, page)


def headline_figure(notebook: Any) -> bytes | None:
    """The first PNG output of the cell tagged ``headline-figure`` in an executed notebook, if any."""
    for cell in notebook.cells:
        if cell.cell_type != "code" or HEADLINE_FIGURE_TAG not in cell.metadata.get("tags", []):
            continue
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                return base64.b64decode(png if isinstance(png, str) else "".join(png))
    return None


def write_thumbnail(executed: Path, folder: Path) -> Path | None:
    """``folder/thumbnail.png``: the headline figure scaled to the index's width; None (and no file) without one."""
    import nbformat
    from PIL import Image

    target = folder / THUMBNAIL_NAME
    target.unlink(missing_ok=True)
    figure = headline_figure(nbformat.read(executed, as_version=4))
    if figure is None:
        return None
    with Image.open(io.BytesIO(figure)) as image:
        width = min(THUMBNAIL_WIDTH, image.width)
        small = image.convert("RGB").resize((width, max(1, round(image.height * width / image.width))),
                                            Image.Resampling.LANCZOS)
    files.atomic_write(target, lambda temporary: small.save(temporary, format="PNG", optimize=True))
    return target
