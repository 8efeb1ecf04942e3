"""Batched augmentation on the training device.

One affine warp per batch (``affine_grid`` + ``grid_sample``) applies each
image's own rotation, zoom, translation and horizontal flip on the GPU, so the
CPU data path only copies uint8 pixels and never starves the accelerator.
Validation and test images are never augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation_degrees: float = 10.0  # uniform in [-d, d]
    scale_min: float = 0.9  # zoom factor range; > 1 zooms in
    scale_max: float = 1.1
    translate_fraction: float = 0.05  # of the image side, in x and y independently
    hflip_probability: float = 0.5

    def is_identity(self) -> bool:
        return (
            self.rotation_degrees == 0
            and self.scale_min == self.scale_max == 1
            and self.translate_fraction == 0
            and self.hflip_probability == 0
        )


def random_affine(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) in [0, 1]; areas brought in from outside are black (air)."""
    if config.is_identity():
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
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
