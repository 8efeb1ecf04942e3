"""Grad-CAM (Selvaraju et al. 2017): where in a film the network found a finding.

``gradcam`` works on the model's ``gradcam_layer`` or any dense block, from a forward
hook and ``autograd.grad``, so no parameter's ``.grad`` is touched. Evaluation (maps
against the radiologists' boxes) and inference (overlays on new films) both use it;
``gradcam_layer_for`` picks the block whose grid is fine enough at an input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrutils.engine.model import DENSE_BLOCK_STRIDES
from cxrutils.labels import FINDINGS

AUTO_GRADCAM_LAYER = "auto"
# Grad-CAM on a grid coarser than this cannot point anywhere: its upsampled maximum is a quadrant.
MIN_GRADCAM_GRID = 4


def gradcam_layer_for(input_size: int, requested: str = AUTO_GRADCAM_LAYER) -> str:
    """The dense block Grad-CAM reads: ``requested``, or for ``auto`` the deepest whose grid is at least 4 x 4.

    At 224 px that is denseblock4 (7 x 7), at the CPU demo's 64 px denseblock3 (4 x 4),
    at 32 px denseblock2 (4 x 4).
    """
    if requested != AUTO_GRADCAM_LAYER:
        if requested not in DENSE_BLOCK_STRIDES:
            raise ValueError(f"gradcam_layer must be 'auto' or one of {sorted(DENSE_BLOCK_STRIDES)}, got {requested!r}")
        return requested
    fine_enough = [name for name, stride in DENSE_BLOCK_STRIDES.items() if input_size // stride >= MIN_GRADCAM_GRID]
    return fine_enough[-1] if fine_enough else "denseblock1"


def gradcam_grid(input_size: int, layer: str) -> int:
    """Cells per side of a dense block's output at ``input_size`` (the Grad-CAM map before upsampling)."""
    return max(1, input_size // DENSE_BLOCK_STRIDES[layer])


def finding_index(class_index: int | str) -> int:
    if isinstance(class_index, str):
        if class_index not in FINDINGS:
            raise ValueError(f"unknown finding {class_index!r}; expected one of {FINDINGS}")
        return FINDINGS.index(class_index)
    return int(class_index)


def gradcam(
    model: nn.Module, images: torch.Tensor, class_index: int | str | Sequence[int], layer: nn.Module | None = None
) -> torch.Tensor:
    """Grad-CAM heatmaps (B, H, W) in [0, 1] at the input's size, on the input's device.

    ``images`` are normalized model inputs (B, 1, H, W); ``class_index`` is one class
    (index or finding name) for the whole batch, or one index per image. The model
    runs in eval mode (BatchNorm statistics fixed, so images do not influence each
    other) and is put back in its previous mode afterwards. Each map is scaled to
    [0, 1] by its own min and max; a flat map (no positive evidence, or a
    1 x 1 activation from a too-small input) is all zeros.
    """
    layer = layer if layer is not None else getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{type(model).__name__} has no gradcam_layer module to take Grad-CAM on")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    if isinstance(class_index, (int, str)):
        targets = torch.full((images.shape[0],), finding_index(class_index), dtype=torch.long)
    else:
        targets = torch.as_tensor([finding_index(c) for c in class_index], dtype=torch.long)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # A leaf that needs a gradient, so the hooked activation has one even when
            # every parameter is frozen.
            inputs = images.detach().float().requires_grad_(True)
            logits = model(inputs)
            activation = captured[-1]
            chosen = logits.gather(1, targets.to(logits.device)[:, None]).sum()
            (gradient,) = torch.autograd.grad(chosen, activation)
    finally:
        hook.remove()
        model.train(was_training)
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)  # alpha_k: pooled gradient per channel
    cam = F.relu((weights * activation.detach().float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam)).detach()
