"""A small copy of NIH's box release on a local HTTP server: twelve real tar.gz archives of tiny PNGs.

Each archive is laid out as the box's are (an ``images/`` folder entry, then
``images/<film>.png``), with NIH-style film names, so ``cxrutils download nih`` and the
README's ``tar`` line unpack it as they would the real one. The server is the standard
library's static file server: it answers every request with the whole file (200), which the
download takes as a server that ignores Range (tests/data/test_download.py has a server
that answers Range, cuts responses and fails on purpose).
"""

from __future__ import annotations

import functools
import io
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

ARCHIVES = 12  # images_001.tar.gz ... images_012.tar.gz, as the box release has


def noise_png(seed: int, size: int = 24) -> bytes:
    """A small grey PNG of noise (each film's bytes differ, so a film unpacked from the wrong archive shows)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def box_archive(films: dict[str, bytes]) -> bytes:
    """A tar.gz as the box's: an ``images`` folder entry, then ``images/NAME`` for each film."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        folder = tarfile.TarInfo("images")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in films.items():
            member = tarfile.TarInfo(f"images/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def write_box_release(folder: Path, films_per_archive: int = 2) -> dict[str, bytes]:
    """The twelve archives in ``folder``; returns every film's name and bytes (what unpacking must give)."""
    folder.mkdir(parents=True, exist_ok=True)
    every_film: dict[str, bytes] = {}
    for number in range(1, ARCHIVES + 1):
        films = {f"{number * 100 + k:08d}_000.png": noise_png(number * 100 + k) for k in range(films_per_archive)}
        (folder / f"images_{number:03d}.tar.gz").write_bytes(box_archive(films))
        every_film.update(films)
    return every_film


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # a test's output stays the command's own
        pass


@contextmanager
def serving(folder: Path) -> Iterator[str]:
    """Serve ``folder``'s files on 127.0.0.1 while the block runs; yields the base URL (no trailing slash)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
