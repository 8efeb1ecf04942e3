"""Banners at the top of every report: where the data came from, and whether it is real."""

from __future__ import annotations

from IPython.display import HTML

from cxrutils.data.dataset import NIHDataset
from cxrutils.show.display import box
from cxrutils.text import html_text

SYNTHETIC_TEXT = (
    "SYNTHETIC DATA. The images in this report are rendered phantoms, not chest X-rays "
    "(their metadata rows are real NIH rows). No figure here says anything about real patients "
    "or real model performance."
)


def dataset_banner(dataset: NIHDataset) -> HTML:
    """A red banner for phantom data, a neutral one otherwise."""
    source = html_text(dataset.description)
    if dataset.synthetic:
        return box(f"<b>{SYNTHETIC_TEXT}</b><br><small>{source}</small>", "red")
    if dataset.metadata_only:
        return box(f"<b>Metadata only.</b> {source}. Sections that need images are skipped.", "blue")
    return box(f"<b>Data:</b> {source}", "neutral")
