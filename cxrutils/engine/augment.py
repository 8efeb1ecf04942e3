"""Batched augmentation on the training device.

One affine warp per batch (``affine_grid`` + ``grid_sample``) applies each
image's own rotation, zoom, translation and horizontal flip on the GPU, so the
CPU data path only copies uint8 pixels and never starves the accelerator. The warp
also resamples the cached film to the network's input size (``output_size``), so a
training image is interpolated once, not resized and then warped. Validation and
test images are never augmented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxrutils.settings import AugmentConfig


def random_affine(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None,
    output_size: int | None = None,
) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) in [0, 1] into (B, C, output_size, output_size) (default: H x W).

    Areas brought in from outside are black (air). The grid spans the whole image
    whatever its size, so resampling to ``output_size`` happens in the same step.
    With an identity config and no size change the batch is returned as it is.
    """
    size = output_size or images.shape[-1]
    if config.is_identity() and size == images.shape[-1]:
        return images
    batch = images.shape[0]
    device = images.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(batch, generator=generator, device=device) * (high - low) + low

    angle = uniform(-config.rotation_degrees, config.rotation_degrees) * (math.pi / 180)
    scale = uniform(config.scale_min, config.scale_max)
    shift_x = uniform(-config.translate_fraction, config.translate_fraction) * 2  # grid spans [-1, 1]
    shift_y = uniform(-config.translate_fraction, config.translate_fraction) * 2
    flip = torch.where(torch.rand(batch, generator=generator, device=device) < config.hflip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output coordinates to input ones: dividing by scale zooms in.
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift_x], dim=1), torch.stack([sin * flip, cos, shift_y], dim=1)], dim=1
    ).to(images.dtype)
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
