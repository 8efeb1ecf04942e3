"""Strings from outside (file names, CSV fields, DICOM headers) as text: never markup, a formula or unwritable bytes.

A film's name, a metadata field or a DICOM header comes from a PACS export, a
colleague's share or a half-finished download, and may hold anything. Every report,
CSV and JSON the project writes passes such strings through one of these:

- ``printable``: the string itself, except that bytes of a file name that are not
  UTF-8 (Python keeps them as lone surrogates, e.g. ``bad\\udcff.png``) are shown as
  ``\\xff``; any UTF-8 writer then accepts it, where ``"bad\\udcff".encode()`` raises.
- ``html_text``: ``printable``, HTML-escaped (quotes too, so it is safe in attributes).
- ``figure_text``: ``printable`` with ``$`` escaped, so matplotlib does not read
  ``$...$`` as mathtext (which draws it wrong, or raises on a malformed expression).
- ``spreadsheet_cell``: a text cell that a spreadsheet would run as a formula
  (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return; OWASP's
  "CSV injection") gets a leading ``'``, which spreadsheets show as text. A cell that
  is a number (``-0.5``) is left alone, and so are numeric columns. A cell starting
  with ``'`` gets one more, so ``from_spreadsheet_cell`` gives every cell back exactly.
"""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
_SURROGATES = re.compile("[\ud800-\udfff]")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def printable(value: Any) -> str:
    """``str(value)`` that any UTF-8 writer accepts: undecodable file-name bytes as ``\\xNN``; None is ""."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if not _SURROGATES.search(text):
        return text
    # Surrogate escapes (os.fsdecode's) go back to their bytes, shown as \xNN; any other lone surrogate as \udNNN.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if _only_escapes(text) \
        else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _only_escapes(text: str) -> bool:
    return all("\udc80" <= char <= "\udcff" for char in _SURROGATES.findall(text))


def html_text(value: Any) -> str:
    """``value`` as HTML text: never markup, whatever it holds."""
    return html.escape(printable(value), quote=True)


def figure_text(value: Any) -> str:
    """``value`` for a matplotlib title or label: ``$`` shown as a dollar sign, never as mathtext."""
    return printable(value).replace("$", r"\$")


def spreadsheet_cell(value: Any) -> Any:
    """A text cell that no spreadsheet runs as a formula (module docstring); anything else as it is."""
    if not isinstance(value, str):
        return value
    text = printable(value)
    if text.startswith(_QUOTE) or (text.startswith(FORMULA_STARTS) and not _NUMBER.match(text)):
        return _QUOTE + text
    return text


def from_spreadsheet_cell(value: Any) -> Any:
    """The text ``spreadsheet_cell`` was given (for a CSV this project wrote and reads back)."""
    return value[1:] if isinstance(value, str) and value.startswith(_QUOTE) else value


def _text_columns(frame: pd.DataFrame) -> list[Any]:
    return [column for column in frame.columns
            if pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column])]


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells, column names and index labels are safe spreadsheet cells."""
    safe = frame.copy()
    for column in _text_columns(safe):
        safe[column] = safe[column].map(spreadsheet_cell)
    safe.columns = [spreadsheet_cell(column) for column in safe.columns]
    if pd.api.types.is_object_dtype(safe.index) or pd.api.types.is_string_dtype(safe.index):
        safe.index = safe.index.map(spreadsheet_cell)
    return safe


def from_spreadsheet(frame: pd.DataFrame) -> pd.DataFrame:
    """``spreadsheet_safe`` undone on the text columns of a CSV read back with ``dtype=str``."""
    restored = frame.copy()
    for column in _text_columns(restored):
        restored[column] = restored[column].map(from_spreadsheet_cell)
    return restored
