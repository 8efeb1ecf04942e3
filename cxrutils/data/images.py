"""Read one chest X-ray file, PNG, JPEG or DICOM, whatever its storage mode, as a 2-D uint8 array.

Every film is opened through ``cxrutils.data.film_files`` (as in ``cxrutils.data.dicom``),
and a file that must not be decoded is refused with ``ImageReadError`` and its reason
before anything large is read:

- anything but a regular file (a FIFO, a device, a socket, a folder named like a
  film) is never opened: ``os.stat`` first, then the descriptor opened without
  blocking is checked again, so a FIFO cannot hang a check and a device is not read;
- an image larger than ``max_pixels`` (``DEFAULT_MAX_PIXELS``, or the environment
  variable ``CXRUTILS_MAX_IMAGE_PIXELS``, or the caller's argument) is refused from
  its header: PNG and JPEG width x height, DICOM rows x columns x frames (and the
  bytes its bit depth implies), so a 600-byte PNG that declares 60000 x 60000 or a
  DICOM header claiming 65535 x 65535 costs nothing; PIL's own decompression-bomb
  guard is caught and reported the same way;
- no reason quotes a file's bytes (a link to a private file must not leak it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrutils.data.film_files import ImageReadError, describe_start, max_pixels_allowed, open_film_file, too_many_pixels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
FILM_FORMATS = ("png", "jpeg", "dicom")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND_TRAILER = b"IEND\xaeB`\x82"
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
def film_format(path: str | os.PathLike[str]) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the file's first bytes, whatever its name; None for anything else.

    PACS exports often have no suffix at all, so the content decides. A DICOM file
    without its 128-byte preamble (older files) is recognised by its suffix.
    ``ImageReadError`` when the path is not a regular file.
    """
    with open_film_file(path) as handle:
        head = handle.read(132)
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(_JPEG_START):
        return "jpeg"
    if head[128:132] == b"DICM" or os.fspath(path).lower().endswith(DICOM_SUFFIXES):
        return "dicom"
    return None


def read_image(path: str | os.PathLike[str], max_pixels: int | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM into a (H, W) uint8 array.

    A file that is not a regular file, or whose header declares more than
    ``max_pixels`` (module docstring), is refused with ``ImageReadError`` before decoding.

    DICOM goes through ``cxrutils.data.dicom.read_dicom`` (rescale, window,
    MONOCHROME1, orientation); files named .png/.jpg/.jpeg are read by PIL without
    looking at their content first. For PNG and JPEG:

    - ``L``: as stored. ``RGBA``/``LA``: the first channel (519 NIH films are RGBA
      with R=G=B; averaging in alpha would brighten them).
    - ``RGB``: luminance.
    - 16-bit: scaled from the smallest bit depth (10, 12, 14 or 16) that holds
      the image's maximum, so 12-bit data is not crushed into the dark end.
    """
    max_pixels = max_pixels_allowed(max_pixels)  # a wrong setting stops here, not as every film's refusal
    if not os.fspath(path).lower().endswith(IMAGE_SUFFIXES) and film_format(path) == "dicom":
        from cxrutils.data.dicom import read_dicom  # pydicom loads only when a DICOM is read

        return read_dicom(path, max_pixels=max_pixels)
    with open_film_file(path) as handle, _pil_errors(path):
        with Image.open(handle) as image:
            problem = too_many_pixels(image.size[0] * image.size[1],
                                      f"{image.size[0]:,} x {image.size[1]:,} declared in the header", max_pixels)
            if problem:
                raise ImageReadError(path, problem)
            image.load()  # decode now, so truncation raises here and names the path
            return _to_uint8_gray(image)


@contextmanager
def _pil_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Whatever PIL raises on a damaged or hostile file, as ``ImageReadError`` naming the path."""
    with warnings.catch_warnings():
        # PIL warns above its own limit (89 MP); the caller's limit, checked from the header, decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except ImageReadError:
            raise
        except Image.DecompressionBombError as err:  # above twice PIL's limit: not an OSError, so named here
            raise ImageReadError(path, f"refused by PIL's decompression-bomb guard: {err}") from err
        except (UnidentifiedImageError, SyntaxError, ValueError, OSError, EOFError) as err:
            raise ImageReadError(path, f"{type(err).__name__}: {err}") from err
        except MemoryError as err:
            raise ImageReadError(path, "MemoryError while decoding: the file needs more memory than is free") from err


def image_header(path: str | os.PathLike[str]) -> tuple[int, int, str]:
    """(width, height, PIL mode) of a PNG or JPEG from its header alone; ``ImageReadError`` when unreadable."""
    with open_film_file(path) as handle, _pil_errors(path):
        with Image.open(handle) as image:
            return image.size[0], image.size[1], image.mode


def bits_of_mode(mode: str) -> int:
    """Bits per grey sample of a PIL mode: 16 for the I;16 modes, 32 for I, else 8."""
    if mode.startswith("I;16"):
        return 16
    return 32 if mode in ("I", "F") else 8


def _to_uint8_gray(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in ("RGBA", "LA"):
        return np.asarray(image.getchannel(0), dtype=np.uint8).copy()
    if mode in ("RGB", "P", "1", "CMYK", "YCbCr"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit int)
        return scale_high_bit_depth(np.asarray(image))
    raise ValueError(f"unsupported PIL mode {mode!r}")


def scale_high_bit_depth(pixels: np.ndarray) -> np.ndarray:
    """Map integer pixels of 10-16 bit depth onto 0-255."""
    values = pixels.astype(np.float64)
    peak = float(values.max()) if values.size else 0.0
    bits = next((b for b in (8, 10, 12, 14, 16) if peak < 2**b), None)
    if bits is None:
        raise ValueError(f"pixel values up to {peak:.0f} exceed 16 bits")
    return np.round(values * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)


def quick_integrity_problem(path: str | os.PathLike[str]) -> str | None:
    """Cheap check without decoding: signature and end-of-file marker.

    Catches truncated and non-image files in two small reads, which makes it
    affordable on 112k files. Returns a reason, or None when the file looks whole.
    """
    try:
        with open_film_file(path) as handle:
            head = handle.read(8)
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 12))
            tail = handle.read()
    except ImageReadError as err:
        return err.reason
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    if head.startswith(_PNG_SIGNATURE):
        return None if tail.endswith(_PNG_IEND_TRAILER) else "PNG is truncated (no IEND chunk)"
    if head.startswith(_JPEG_START):
        return None if tail.rstrip(b"\x00").endswith(_JPEG_END) else "JPEG is truncated"
    return f"not a PNG or JPEG ({describe_start(head)})"


def full_integrity_problem(path: str | os.PathLike[str], max_pixels: int | None = None) -> str | None:
    """Full decode; slower, but also catches corrupt data inside the file."""
    try:
        read_image(path, max_pixels)
    except ImageReadError as err:
        return err.reason
    return None
