"""Opening a film file safely: the guards every reader (``images``, ``dicom``) goes through before it decodes.

A path that is not a regular file (a FIFO, a device, a socket, a folder named like a
film) is never opened; a film is opened without blocking and checked again; an image
whose header declares more pixels than the limit is refused before it is decoded; and
no reason quotes a file's bytes. This module sits below both readers, so ``images``
(which hands DICOM files to ``dicom``) and ``dicom`` share it without importing each other.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from cxrutils.settings import DEFAULT_MAX_PIXELS, MAX_PIXELS_VARIABLE

_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class ImageReadError(OSError):
    """An image file is missing, corrupt, truncated or in an unsupported mode."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def max_pixels_allowed(max_pixels: int | None = None) -> int:
    """``max_pixels``, else ``$CXRUTILS_MAX_IMAGE_PIXELS``, else ``DEFAULT_MAX_PIXELS``."""
    if max_pixels is not None:
        return int(max_pixels)
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip().replace("_", "")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r} is not a number of pixels (e.g. 40000000)") from None


def too_many_pixels(pixels: int, what: str, max_pixels: int | None = None) -> str | None:
    """The refusal for an image of ``pixels`` pixels (``what`` says how they were counted); None when it is allowed."""
    limit = max_pixels_allowed(max_pixels)
    if pixels <= limit:
        return None
    return (f"{what} = {pixels:,} pixels, above the limit of {limit:,}: not decoded (a decompression bomb, or a "
            f"film far larger than any chest radiograph; raise {MAX_PIXELS_VARIABLE} if it is genuine)")


def not_a_regular_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must not be opened as a film (missing, a folder, a FIFO, a device, ...); None for a regular file.

    ``os.stat`` follows a symbolic link: what counts is what it points to.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file does not exist" if not os.path.islink(path) else "symbolic link to a file that does not exist"
    except OSError as err:
        return f"cannot be read: {type(err).__name__}: {err.strerror or err}"
    return _kind_problem(mode)


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    return f"{kind}, not a regular file: never opened as a film"


def open_film_file(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for reading, or ``ImageReadError`` when it is not a regular file (never blocks on a FIFO).

    The descriptor is opened without blocking and checked again, so a file swapped for a
    FIFO after the first check cannot hang the read either.
    """
    problem = not_a_regular_file(path)
    if problem:
        raise ImageReadError(path, problem)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as err:
        raise ImageReadError(path, f"cannot be opened: {type(err).__name__}: {err.strerror or err}") from err
    try:
        problem = _kind_problem(os.fstat(descriptor).st_mode)
        if problem:
            raise ImageReadError(path, problem)
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def describe_start(head: bytes) -> str:
    """What a file's first bytes are, without quoting them (a link to a private file must not leak its content)."""
    if not head:
        return "the file is empty"
    printable = sum(32 <= byte < 127 or byte in (9, 10, 13) for byte in head) == len(head)
    return "it starts with text" if printable else "it starts with bytes of no image format"
