"""A film's way to the network, part one (no torch): decode -> centred square -> resize to the cache size.

The whole way, the same for training, validation, evaluation, comparison, inference and
the export's metadata:

1. ``prepare_film`` (here): read any PNG, JPEG or DICOM as 2-D uint8
   (``cxrutils.data.images.read_image``), pad it to a centred square, resize it to the
   cache size (``to_square``). The image cache stores exactly this; inference calls the
   same function on each new film.
2. ``cxrutils.engine.network_input.prepare_batch`` (torch): uint8 -> [0, 1], resize to
   the input size (or the training augmentation's warp), then normalise with
   ``GRAY_MEAN`` and ``GRAY_STD`` (below).

This half stays free of torch because the cache's worker processes run it.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from cxrutils.data import images

# ImageNet statistics averaged over RGB, for 1-channel input.
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def prepare_film(path: str | os.PathLike[str], size: int, max_pixels: int | None = None) -> np.ndarray:
    """The film at ``path`` as the cache stores it: uint8 (size, size), padded to a centred square.

    ``ImageReadError`` (with its reason) when the file cannot be read or is refused.
    """
    return to_square(images.read_image(path, max_pixels), size)  # looked up at call time, so tests can patch it


def to_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pad a 2-D uint8 image to a centred square with zeros, then resize to ``size``².

    Padding instead of cropping keeps the whole film (costophrenic angles and apices
    sit at the edges). The resize is PIL's antialiased bilinear filter, whose support
    widens with the reduction, so downscaling averages like an area filter.
    """
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    height, width = pixels.shape
    side = max(height, width)
    if height != width:
        square = np.zeros((side, side), dtype=np.uint8)
        top, left = (side - height) // 2, (side - width) // 2
        square[top : top + height, left : left + width] = pixels
        pixels = square
    if side == size:
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    resized = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR, reducing_gap=3.0
    )
    return np.asarray(resized, dtype=np.uint8)
