"""DICOM test files: variants that read back exactly, and pydicom's own test data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom


def windowed_copy(pixels: np.ndarray, bits: int, signed: bool = False, function: str = "LINEAR_EXACT") -> dict[str, Any]:
    """Arguments for ``cxrutils.data.dicom.write_dicom`` that store 8-bit ``pixels`` at ``bits`` and window them back exactly.

    The values are ``pixels * 2**(bits - 8)``; signed files store them shifted by
    -2**(bits - 1) with a RescaleIntercept that undoes it. The window spans
    0 .. 255 * 2**(bits - 8), so it maps each value back to its 8-bit grey level.
    """
    scale = 2 ** (bits - 8)
    values = pixels.astype(np.int64) * scale
    centre, width = 255 * scale / 2, 255 * scale
    if function == "LINEAR":  # LINEAR's window is half a value wider on each side (PS3.3 C.11.2.1.2.1)
        centre, width = centre + 0.5, width + 1
    arguments: dict[str, Any] = {"bits_stored": bits, "window": (centre, width, function)}
    if signed:
        arguments.update(stored=values - 2 ** (bits - 1), signed=True, rescale=(1.0, float(2 ** (bits - 1))))
    else:
        arguments.update(stored=values)
    return arguments


def pydicom_test_file(name: str) -> Path:
    """A file of the test data inside the installed pydicom wheel (never downloaded)."""
    found = pydicom.data.get_testdata_file(name, download=False)
    assert found is not None, f"{name} is not in pydicom's installed test data"
    return Path(found)
