"""DenseNet121 for 14 findings on 1-channel chest films.

- Grayscale input without tripling memory: ImageNet's RGB ``conv0`` weights are
  summed into one input channel, which is exactly what the RGB network computes
  on a gray image copied into three channels.
- Heads: global average pooling + linear (default), or log-sum-exp pooling
  (the partial fine-tune recipe), which moves between average (small r) and max
  (large r) pooling.
- Fine-tune strategies: ``full``, ``freeze_through_denseblock3`` (denseblock4,
  norm5 and the head train; frozen BatchNorm layers stay in eval mode so their
  running statistics never move), ``head_only``.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cxrutils.files import sha256_of
from cxrutils.labels import FINDINGS

IMAGENET_DENSENET121_FILE = "densenet121-a639ec97.pth"
Head = Literal["gap", "lse"]
Strategy = Literal["full", "freeze_through_denseblock3", "head_only"]
STRATEGIES: tuple[str, ...] = ("full", "freeze_through_denseblock3", "head_only")
# Input pixels per feature-map pixel at each dense block's output.
DENSE_BLOCK_STRIDES: dict[str, int] = {"denseblock1": 4, "denseblock2": 8, "denseblock3": 16, "denseblock4": 32}
_FROZEN_PREFIXES: dict[str, tuple[str, ...]] = {
    "full": (),
    "freeze_through_denseblock3": (
        "features.conv0", "features.norm0", "features.denseblock1", "features.transition1",
        "features.denseblock2", "features.transition2", "features.denseblock3", "features.transition3",
    ),
    "head_only": ("features",),
}
# Old-style keys in torchvision's ImageNet file ('norm.1' for 'norm1').
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file is not where it must be put by hand (we are offline)."""


class LSEPool2d(nn.Module):
    """Log-sum-exp pooling: (1/r) log(mean(exp(r x))) over H, W, computed stably."""

    def __init__(self, r: float = 10.0) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LSE pooling needs r > 0, got {r}")
        self.r = float(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2).float() * self.r
        pooled = torch.logsumexp(flat, dim=2) - math.log(flat.shape[2])
        return (pooled / self.r).to(x.dtype)


class ChestXrayDenseNet(nn.Module):
    """torchvision's DenseNet121 features, 1-channel stem, GAP or LSE head."""

    def __init__(self, num_classes: int = len(FINDINGS), head: Head = "gap", lse_r: float = 10.0) -> None:
        super().__init__()
        base = torchvision.models.densenet121(weights=None)
        base.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.features = base.features
        if head not in ("gap", "lse"):
            raise ValueError(f"head must be 'gap' or 'lse', got {head!r}")
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if head == "gap" else LSEPool2d(lse_r)
        self.classifier = nn.Linear(base.classifier.in_features, num_classes)
        nn.init.zeros_(self.classifier.bias)
        self.frozen_prefixes: tuple[str, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.features(x))
        return self.classifier(torch.flatten(self.pool(features), 1))

    def train(self, mode: bool = True) -> ChestXrayDenseNet:
        super().train(mode)
        # Frozen BatchNorm layers keep their ImageNet/checkpoint statistics.
        for name, module in self.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and name.startswith(self.frozen_prefixes or ("\0",)):
                module.eval()
        return self

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last dense block, for Grad-CAM."""
        return self.features.denseblock4

    def dense_block(self, name: str) -> nn.Module:
        """A dense block by name (``denseblock1`` ... ``denseblock4``), e.g. for Grad-CAM on a finer grid."""
        if name not in DENSE_BLOCK_STRIDES:
            raise ValueError(f"unknown dense block {name!r}; choose one of {sorted(DENSE_BLOCK_STRIDES)}")
        return getattr(self.features, name)


def apply_strategy(model: ChestXrayDenseNet, strategy: Strategy) -> None:
    """Freeze parameters per the fine-tune strategy (and their BatchNorm statistics)."""
    if strategy not in _FROZEN_PREFIXES:
        raise ValueError(f"unknown fine-tune strategy {strategy!r}; choose one of {STRATEGIES}")
    prefixes = _FROZEN_PREFIXES[strategy]
    model.frozen_prefixes = prefixes
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(prefixes) if prefixes else True)
    model.train(model.training)


def imagenet_weights_path() -> Path:
    """Where torchvision keeps the file: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_DENSENET121_FILE


def load_imagenet_features(model: ChestXrayDenseNet, path: str | os.PathLike[str] | None = None) -> None:
    """Load torchvision's ImageNet DenseNet121 into ``model.features``, conv0 folded to 1 channel."""
    path = Path(path) if path else imagenet_weights_path()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights {IMAGENET_DENSENET121_FILE} not found in {path.parent}. This machine cannot "
            f"download them: copy {IMAGENET_DENSENET121_FILE} (from "
            f"https://download.pytorch.org/models/{IMAGENET_DENSENET121_FILE}) into {path.parent}/, "
            f"or set weights: none to train from scratch."
        )
    state = load_tensors(path)
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    features = {k.removeprefix("features."): v for k, v in renamed.items() if k.startswith("features.")}
    features["conv0.weight"] = features["conv0.weight"].sum(dim=1, keepdim=True)
    model.features.load_state_dict(features, strict=True)


def build_model(
    weights: str = "imagenet",
    head: Head = "gap",
    lse_r: float = 10.0,
    strategy: Strategy = "full",
    num_classes: int = len(FINDINGS),
) -> ChestXrayDenseNet:
    """A model ready to train: ``weights`` is ``imagenet``, ``none`` or a path to one of our checkpoints."""
    model = ChestXrayDenseNet(num_classes=num_classes, head=head, lse_r=lse_r)
    if weights == "imagenet":
        load_imagenet_features(model)
    elif weights != "none":
        load_checkpoint_weights(model, weights)
    apply_strategy(model, strategy)
    return model


def initial_weights(weights: str) -> dict[str, str | None]:
    """Which weights a run started from: the kind, the file, and its sha256 (for the model card)."""
    if weights == "none":
        return {"kind": "none (random initialisation)", "file": None, "sha256": None}
    path = imagenet_weights_path() if weights == "imagenet" else Path(weights)
    kind = "torchvision ImageNet DenseNet121" if weights == "imagenet" else "a cxrutils checkpoint"
    return {"kind": kind, "file": str(path), "sha256": sha256_of(path)}


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Model weights from a cxrutils checkpoint, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = load_tensors(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} has no 'model' entry: not a cxrutils checkpoint")
    model.load_state_dict(checkpoint["model"], strict=True)


def load_tensors(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain values only, never code stored in the file.

    Every checkpoint and weights file cxrutils reads comes through here. A file whose
    unpickling would call anything else (a pickled module, a crafted file) or that is not
    a torch file at all is refused with a ValueError naming it; nothing in it runs.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path} is not a cxrutils checkpoint or weights file that loads with weights_only=True (tensors and "
            f"plain values only; a pickled module or other code is never run): {type(err).__name__}: {err}"
        ) from err
