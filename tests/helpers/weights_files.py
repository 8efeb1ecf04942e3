"""Weights files in their publishers' real formats, with random values (the real ones cannot be downloaded here)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torchvision


def write_imagenet_densenet121(path: Path) -> torch.nn.Module:
    """torchvision's ImageNet DenseNet121 file format: legacy 'norm.1' keys, RGB conv0, no num_batches_tracked.

    Returns the torchvision model whose (random) values the file holds.
    """
    reference = torchvision.models.densenet121(weights=None)
    state = {}
    for key, value in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        legacy = re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)
        state[legacy] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return reference
