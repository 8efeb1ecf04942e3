"""Small display pieces the reports share: boxed notes, figures shown in place, numbers as people read them.

``table`` is how every table of every report is shown, so numbers read the same
everywhere: counts with thousands separators (``112,120``), proportions, AUROCs and
other measures to 3 decimals, an estimate with its interval in one column
(``0.811 [0.789, 0.836]``), percentages to 2 decimals, p-values to 2 significant
digits, and a dash where there is no value. Every cell, row label, column label and
caption is shown as text (``cxrutils.text.html_text``): a file name, a metadata field
or a DICOM header that holds ``<script>`` or ``onerror=`` is never live markup.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import HTML, display
from matplotlib.figure import Figure
from pandas.io.formats.style import Styler

from cxrutils.stats.intervals import CONFIDENCE
from cxrutils.text import html_text

MISSING = "—"
# Whole numbers that name something rather than count it: shown as they are, without separators.
_IDENTIFIERS = re.compile(r"(^|[\s_])(id|patient_id|follow_up|follow-up|epoch|seed|year)$", re.IGNORECASE)
_COUNTS = re.compile(r"(^|[\s_])(count|n|images|films|patients|boxes|positives|negatives|support|resamples|"
                     r"findings|findings in mean|files|problems)$", re.IGNORECASE)
_LOW = re.compile(r"^(?P<prefix>.*?)[\s_]?ci[\s_]low$", re.IGNORECASE)

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
    return box(html_text(text), tone) if text else HTML("")


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


def _column_name(column: Any) -> str:
    return str(column[-1] if isinstance(column, tuple) else column).strip()


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array in a cell
        return False


def number_text(value: Any, column: str = "") -> str:
    """One cell as the reports print it; ``column`` (its header) tells counts, identifiers and percentages apart."""
    if _missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    if _IDENTIFIERS.search(column):
        return str(int(value)) if float(value).is_integer() else str(value)
    if isinstance(value, (int, np.integer)) or (_COUNTS.search(column) and float(value).is_integer()):
        return f"{int(value):,}"
    lowered = column.lower()
    if "%" in lowered or "percent" in lowered:
        return f"{value:.2f}"
    if lowered == "p" or lowered.startswith(("p ", "p_", "p-value")) or lowered.endswith((" p", "p-value")):
        return f"{value:.2g}"
    if "threshold" in lowered:
        return f"{value:.3g}"
    return f"{value:,.3f}"


def _merge_intervals(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Each ``<estimate>, [prefix] CI low, [prefix] CI high`` run of columns as one ``<estimate> [95% CI]`` column."""
    columns = list(frame.columns)
    merged = frame.copy()
    for position, column in enumerate(columns):
        match = _LOW.match(_column_name(column))
        if not match or position == 0:
            continue
        high_name = re.sub(r"low$", "high", _column_name(column), flags=re.IGNORECASE)
        high = next((c for c in columns if _column_name(c) == high_name), None)
        value = columns[position - 1]
        if high is None or value not in merged.columns:
            continue
        label = f"{_column_name(value)} [{confidence:.0%} CI]"
        if isinstance(value, tuple):
            label = (*value[:-1], label)
        texts = [interval_text(v, lo, hi) or MISSING for v, lo, hi in zip(frame[value], frame[column], frame[high])]
        merged.insert(merged.columns.get_loc(value), label, texts)
        merged = merged.drop(columns=[value, column, high])
    return merged


def table(
    frame: pd.DataFrame | pd.Series,
    caption: str | None = None,
    formats: Mapping[Any, str | Callable[[Any], str]] | None = None,
    signed: bool = False,
    index: bool = True,
) -> Styler:
    """Any table of a report, every number formatted as the module says; intervals merged into one column.

    ``formats`` sets a column's format where the rules do not fit (``{"pos_weight": "{:.1f}"}``, or
    ``str`` for settings shown as written); ``signed`` prints other numbers as differences (``+0.012``);
    ``index=False`` hides a row index that only counts rows.
    """
    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    confidence = float(frame.attrs.get("confidence", CONFIDENCE))
    shown = _merge_intervals(frame, confidence)
    overrides = dict(formats or {})
    for column in shown.columns:
        if shown[column].dtype == object and column not in overrides and _column_name(column) not in overrides:
            shown[column] = [number_text(value, str(label[-1] if isinstance(label, tuple) else label))
                             for label, value in zip(shown.index, shown[column])]

    def formatter(column: Any) -> Callable[[Any], str]:
        shown_as = _cell_text(column)
        return lambda value: html_text(shown_as(value))  # numbers hold no markup; text from outside may

    def _cell_text(column: Any) -> Callable[[Any], str]:
        special = overrides.get(column, overrides.get(_column_name(column)))
        if callable(special):
            return lambda value: MISSING if _missing(value) else special(value)
        if isinstance(special, str):
            return lambda value: MISSING if _missing(value) else special.format(value)
        name = _column_name(column)
        if shown[column].dtype == object:  # a listing of mixed facts: each row's label says what its value is
            return lambda value: value if isinstance(value, str) else number_text(value, name)
        if signed:
            return lambda value: (number_text(value, name) if isinstance(value, (int, np.integer)) or _missing(value)
                                  or not isinstance(value, (float, np.floating)) else f"{value:+.3f}")
        return lambda value: number_text(value, name)

    styler = shown.style.format({column: formatter(column) for column in shown.columns})
    styler = styler.format_index(html_text, axis=0).format_index(html_text, axis=1)
    if not index:
        styler = styler.hide(axis="index")
    return styler.set_caption(html_text(caption)) if caption else styler
