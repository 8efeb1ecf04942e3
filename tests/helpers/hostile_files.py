"""A folder of odd and hostile files, as a PACS export or a colleague's share can hold them (issue 19).

``hostile_folder(folder, good_pngs)`` writes, beside copies of good films under names
that are markup, a formula, mathtext and bytes that are not UTF-8: a decompression
bomb, a PNG whose header declares 12,600 x 12,600 16-bit pixels, a DICOM whose header
claims 65,535 x 65,535 RLE pixels, a DICOM whose Modality is markup and whose
BodyPartExamined is a formula, a FIFO named like a film, a link to a private file
outside the folder, and a link loop. ``live_markup(page)`` lists what in an HTML page
would run or load: the checks of every report that shows these names.
"""

from __future__ import annotations

import os
import shutil
import struct
import warnings
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

SCRIPT_NAME = "<img src=x onerror=alert(1)>.png"
FORMULA_NAME = "=1+1.png"
MATHTEXT_NAME = "$\\frac{$.png"
NOT_UTF8_NAME = b"bad\xff\xfe.png"
SECRET = "SECRET-LINE-root:x:0:0"
MARKUP_MODALITY = "<img src=X onerror=alert(4)>"
FORMULA_BODY_PART = '=HYPERLINK("http://x","y")'


def png_declaring(path: Path, width: int, height: int, bit_depth: int = 8) -> Path:
    """A few hundred bytes: a PNG whose header declares ``width`` x ``height`` grey pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 4096)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def dicom_claiming(path: Path, rows: int, columns: int) -> Path:
    """An RLE DICOM of 16 x 16 real pixels whose header then claims ``rows`` x ``columns``."""
    import pydicom
    from pydicom.uid import RLELossless

    from cxrutils.data.dicom import write_dicom

    write_dicom(path, np.full((16, 16), 100, dtype=np.uint16), bits_stored=12, transfer_syntax=RLELossless)
    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.save_as(path)
    return path


def hostile_folder(folder: Path, good_pngs: list[Path], outside: Path) -> dict[str, object]:
    """Fill ``folder`` (module docstring); the names it used: good (scored) and bad (refused) by their kind."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    good = [SCRIPT_NAME, FORMULA_NAME, MATHTEXT_NAME, "plain.png"]
    for name, source in zip(good, good_pngs):
        shutil.copyfile(source, folder / name)
    not_utf8 = os.path.join(os.fsencode(folder), NOT_UTF8_NAME)
    shutil.copyfile(os.fsencode(good_pngs[len(good)]), not_utf8)
    png_declaring(folder / "bomb.png", 60_000, 60_000)
    png_declaring(folder / "huge_16bit.png", 12_600, 12_600, bit_depth=16)
    dicom_claiming(folder / "huge_rle.dcm", 65_535, 65_535)
    from cxrutils.data.dicom import write_dicom

    with warnings.catch_warnings():  # pydicom warns that both values are longer than a CS may be: that is the point
        warnings.simplefilter("ignore", UserWarning)
        write_dicom(folder / "markup_modality.dcm", np.full((32, 32), 90, dtype=np.uint8), modality=MARKUP_MODALITY,
                    extra={"BodyPartExamined": FORMULA_BODY_PART})
    os.mkfifo(folder / "fifo.png")
    (outside / "passwd").write_text(SECRET + "\n")
    (folder / "private.png").symlink_to(outside / "passwd")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    return {"good": good, "not_utf8": os.fsdecode(NOT_UTF8_NAME),
            "bad": ["bomb.png", "huge_16bit.png", "huge_rle.dcm", "markup_modality.dcm", "fifo.png", "private.png",
                    "loop"]}


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name.startswith("on") and "alert" in (value or "").lower():
                self.found.append(f"<{tag} {name}={value!r}>")
        if tag == "img" and dict(attrs).get("src") in ("x", "X"):
            self.found.append(f"<img src={dict(attrs)['src']}>")
        self._script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self._script and "alert(" in data.lower():
            self.found.append(f"<script>{data[:60]}")

    def handle_endtag(self, tag: str) -> None:
        self._script = False


def live_markup(page: str) -> list[str]:
    """Elements of ``page`` that a hostile name or field would have made live: event handlers, src=x, alert()."""
    parser = _Elements()
    parser.feed(page)
    return parser.found
