"""A film's way to the network, part two (torch): the cached uint8 square -> the normalised input batch.

Part one, decoding a file into the cached square, is ``cxrutils.data.preparation``.
Training, validation, prediction, evaluation, inference and the ONNX export's
verification all call ``prepare_batch``; nothing else normalises a film.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.engine.augment import random_affine
from cxrutils.settings import AugmentConfig


def prepare_batch(
    pixels: torch.Tensor,
    device: torch.device,
    input_size: int,
    channels_last: bool,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 (B, 1, S, S) from the cache -> normalized float (B, 1, input_size, input_size) on ``device``.

    Without augmentation the films are resized with an antialiased filter (what
    validation, prediction and inference see). With it, the random warp resamples
    them to ``input_size`` itself: one interpolation per training image, not two.
    """
    images = pixels.to(device, non_blocking=True).float().div_(255.0)
    if augment is not None and not augment.is_identity():
        images = random_affine(images, augment, generator, output_size=input_size)
    elif images.shape[-1] != input_size:
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", antialias=True)
    images = normalize(images)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] grayscale -> the ImageNet-gray scale the stem expects."""
    return (images - GRAY_MEAN) / GRAY_STD


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """A normalised input back to [0, 1] grayscale, for pictures of what the network saw."""
    return (images * GRAY_STD + GRAY_MEAN).clamp(0, 1)
