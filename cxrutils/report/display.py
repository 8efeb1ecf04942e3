"""Small display pieces the reports share: boxed notes, figures shown in place, numbers as people read them."""

from __future__ import annotations

import html
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display
from matplotlib.figure import Figure

_BOX = "padding:.7em 1em;border-radius:6px;margin:.5em 0;"
TONES = {
    "amber": _BOX + "background:#fff4e5;color:#5f3b00;border-left:6px solid #e69500;",
    "red": _BOX + "background:#b00020;color:white;",
    "neutral": _BOX + "background:#f1f3f4;color:#222;border-left:6px solid #888;",
    "blue": _BOX + "background:#e8f0fe;color:#174ea6;",
    "green": _BOX + "background:#e6f4ea;color:#0d652d;border-left:6px solid #188038;",
}


def box(inner_html: str, tone: str = "amber") -> HTML:
    """``inner_html`` (already escaped) in a coloured box: ``amber``, ``red``, ``neutral`` or ``blue``."""
    return HTML(f"<div style='{TONES[tone]}'>{inner_html}</div>")


def note(text: str | None, tone: str = "amber") -> HTML:
    """A short boxed note shown in place of (or beside) a section; nothing when ``text`` is empty."""
    return box(html.escape(text), tone) if text else HTML("")


def show_figure(figure: Figure) -> None:
    """Display a figure where the call is (inside a loop, not at the end of the cell) and close it."""
    display(figure)
    plt.close(figure)


def interval_text(value: Any, low: Any, high: Any, signed: bool = False) -> str:
    """``0.811 [0.789, 0.836]`` (``+0.012 [...]`` when ``signed``); the value alone without an interval."""
    if pd.isna(value):
        return ""
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(value)
    return text if pd.isna(low) else f"{text} [{fmt.format(low)}, {fmt.format(high)}]"


def p_text(value: Any) -> str:
    return "" if pd.isna(value) else f"{value:.2g}"
