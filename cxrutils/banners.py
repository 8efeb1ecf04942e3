"""Banners at the top of every report: where the data came from, and whether it is real."""

from __future__ import annotations

import html

from IPython.display import HTML

from cxrutils.dataset import NIHDataset

_STYLE = "padding:.8em 1em;border-radius:6px;margin:.5em 0;font-size:1.05em;"
SYNTHETIC_TEXT = (
    "SYNTHETIC DATA. The images in this report are rendered phantoms, not chest X-rays "
    "(their metadata rows are real NIH rows). No figure here says anything about real patients "
    "or real model performance."
)


def dataset_banner(dataset: NIHDataset) -> HTML:
    """A red banner for phantom data, a neutral one otherwise."""
    source = html.escape(dataset.description)
    if dataset.synthetic:
        return HTML(
            f"<div style='{_STYLE}background:#b00020;color:white;'><b>{SYNTHETIC_TEXT}</b>"
            f"<br><small>{source}</small></div>"
        )
    if dataset.metadata_only:
        return HTML(
            f"<div style='{_STYLE}background:#e8f0fe;color:#174ea6;'><b>Metadata only.</b> "
            f"{source}. Sections that need images are skipped.</div>"
        )
    return HTML(f"<div style='{_STYLE}background:#f1f3f4;color:#222;'><b>Data:</b> {source}</div>")
