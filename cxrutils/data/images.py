"""Read one chest X-ray file, whatever its storage mode, as a 2-D uint8 array."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND_TRAILER = b"IEND\xaeB`\x82"
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


class ImageReadError(OSError):
    """An image file is missing, corrupt, truncated or in an unsupported mode."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode a PNG or JPEG into a (H, W) uint8 array.

    - ``L``: as stored. ``RGBA``/``LA``: the first channel (519 NIH films are RGBA
      with R=G=B; averaging in alpha would brighten them).
    - ``RGB``: luminance.
    - 16-bit: scaled from the smallest bit depth (10, 12, 14 or 16) that holds
      the image's maximum, so 12-bit data is not crushed into the dark end.
    """
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncation raises here and names the path
            return _to_uint8_gray(image)
    except FileNotFoundError:
        raise ImageReadError(path, "file does not exist") from None
    except (UnidentifiedImageError, SyntaxError, ValueError, OSError) as err:
        if isinstance(err, ImageReadError):
            raise
        raise ImageReadError(path, f"{type(err).__name__}: {err}") from err


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
        with open(path, "rb") as handle:
            head = handle.read(8)
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 12))
            tail = handle.read()
    except FileNotFoundError:
        return "file does not exist"
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if head.startswith(_PNG_SIGNATURE):
        return None if tail.endswith(_PNG_IEND_TRAILER) else "PNG is truncated (no IEND chunk)"
    if head.startswith(_JPEG_START):
        return None if tail.rstrip(b"\x00").endswith(_JPEG_END) else "JPEG is truncated"
    return f"not a PNG or JPEG (starts with {head[:8]!r})"


def full_integrity_problem(path: str | os.PathLike[str]) -> str | None:
    """Full decode; slower, but also catches corrupt data inside the file."""
    try:
        read_image(path)
    except ImageReadError as err:
        return err.reason
    return None
