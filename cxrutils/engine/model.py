"""The chest film classifier: a torchvision backbone (``arch``) for 14 findings on 1-channel films.

- Backbones (``BACKBONES``, one per ``settings.ARCHITECTURES``): DenseNet121 (the
  default), ResNet-50, EfficientNet-V2-S and ConvNeXt-Tiny, each torchvision's own
  modules under ``features`` (its feature extractor) and a new 14-way ``classifier``.
- Grayscale input without tripling memory: the first convolution's ImageNet RGB
  weights are summed into one input channel, which is exactly what the RGB network
  computes on a gray image copied into three channels.
- ImageNet weights: torchvision's file for the architecture's DEFAULT weights, read
  from ``$TORCH_HOME/hub/checkpoints`` (never downloaded: put there by hand).
- Heads: global average pooling + linear (default), or log-sum-exp pooling over the
  final feature map (the partial fine-tune recipe), which moves between average
  (small r) and max (large r) pooling. ConvNeXt keeps its LayerNorm before the
  linear layer, EfficientNet its dropout.
- Fine-tune strategies: ``full``, ``head_only``, and ``freeze_through_denseblock3``:
  everything but the last stage frozen (``Backbone.last_stage``: DenseNet121's
  denseblock4 and norm5, ResNet-50's layer4, EfficientNet-V2-S's last MBConv stage
  and 1x1 head convolution, ConvNeXt-Tiny's last stage). Frozen BatchNorm layers
  stay in eval mode so their running statistics never move.
- Named stages with their strides (``Backbone.stages``: denseblock1-4, layer1-4,
  stage1-4, every family at strides 4, 8, 16, 32) for Grad-CAM on a finer grid;
  ``gradcam_layer`` is the last.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from torch import nn

from cxrutils.files import sha256_of
from cxrutils.labels import FINDINGS
from cxrutils.settings import ARCHITECTURES, TrainConfig

DEFAULT_ARCH: str = TrainConfig.arch  # a run recorded before arch existed trained this one
Head = Literal["gap", "lse"]
Strategy = Literal["full", "freeze_through_denseblock3", "head_only"]
STRATEGIES: tuple[str, ...] = ("full", "freeze_through_denseblock3", "head_only")
# Old-style keys in torchvision's ImageNet DenseNet file ('norm.1' for 'norm1').
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


class WeightsNotFoundError(FileNotFoundError):
    """A pretrained weights file is not where it must be put by hand (we are offline)."""


@dataclass(frozen=True)
class Backbone:
    """One torchvision classification network, as the chest film classifier uses it.

    Paths (``stem``, ``stages``, ``last_stage``) are module names under the model's
    ``features``. ``stages``: name -> (path, input pixels per feature-map pixel at its
    output), shallow to deep; the last is the Grad-CAM layer.
    """

    arch: str
    title: str  # as a reader writes it: "ResNet-50"
    stem: str  # the first convolution: folded to one input channel
    stages: dict[str, tuple[str, int]]
    last_stage: tuple[str, ...]  # children of features that freeze_through_denseblock3 leaves trainable
    parts: Callable[[nn.Module], tuple[nn.Module, nn.Module | None, float, int]]  # features, head norm, dropout, width
    imagenet_key: Callable[[str], str | None]  # torchvision's ImageNet key -> ours; None: its 1000-class head
    final_relu: bool = False  # DenseNet: torchvision applies a ReLU after features (norm5)

    @property
    def imagenet_weights(self) -> Any:
        """torchvision's DEFAULT ImageNet weights enum member for the architecture."""
        return torchvision.models.get_model_weights(self.arch).DEFAULT

    @property
    def imagenet_file(self) -> str:
        """The weights file's name, as torchvision caches it (the URL's basename)."""
        return self.imagenet_weights.url.rsplit("/", 1)[-1]

    @property
    def strides(self) -> dict[str, int]:
        return {name: stride for name, (_, stride) in self.stages.items()}

    @property
    def gradcam_stage(self) -> str:
        return list(self.stages)[-1]


def _densenet_parts(base: nn.Module) -> tuple[nn.Module, nn.Module | None, float, int]:
    return base.features, None, 0.0, base.classifier.in_features


def _resnet_parts(base: nn.Module) -> tuple[nn.Module, nn.Module | None, float, int]:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(base, name)) for name in names)), None, 0.0, base.fc.in_features


def _efficientnet_parts(base: nn.Module) -> tuple[nn.Module, nn.Module | None, float, int]:
    dropout, linear = base.classifier
    return base.features, None, float(dropout.p), linear.in_features


def _convnext_parts(base: nn.Module) -> tuple[nn.Module, nn.Module | None, float, int]:
    norm, _, linear = base.classifier
    return base.features, norm, 0.0, linear.in_features


def _densenet_key(key: str) -> str | None:
    match = _LEGACY_KEY.match(key)
    key = match.group(1) + match.group(2) if match else key
    return key if key.startswith("features.") else None


def _resnet_key(key: str) -> str | None:
    return None if key.startswith("fc.") else f"features.{key}"


def _efficientnet_key(key: str) -> str | None:
    return key if key.startswith("features.") else None


def _convnext_key(key: str) -> str | None:
    if key.startswith("classifier.0."):
        return "head_norm." + key.removeprefix("classifier.0.")
    return key if key.startswith("features.") else None


BACKBONES: dict[str, Backbone] = {
    backbone.arch: backbone for backbone in (
        Backbone("densenet121", "DenseNet121", "conv0",
                 {"denseblock1": ("denseblock1", 4), "denseblock2": ("denseblock2", 8),
                  "denseblock3": ("denseblock3", 16), "denseblock4": ("denseblock4", 32)},
                 ("denseblock4", "norm5"), _densenet_parts, _densenet_key, final_relu=True),
        Backbone("resnet50", "ResNet-50", "conv1",
                 {"layer1": ("layer1", 4), "layer2": ("layer2", 8), "layer3": ("layer3", 16), "layer4": ("layer4", 32)},
                 ("layer4",), _resnet_parts, _resnet_key),
        # features.4 and .6 also end at strides 16 and 32; the stage is the deepest module at its stride.
        Backbone("efficientnet_v2_s", "EfficientNet-V2-S", "0.0",
                 {"stage1": ("2", 4), "stage2": ("3", 8), "stage3": ("5", 16), "stage4": ("7", 32)},
                 ("6", "7"), _efficientnet_parts, _efficientnet_key),
        Backbone("convnext_tiny", "ConvNeXt-Tiny", "0.0",
                 {"stage1": ("1", 4), "stage2": ("3", 8), "stage3": ("5", 16), "stage4": ("7", 32)},
                 ("7",), _convnext_parts, _convnext_key),
    )
}
if tuple(BACKBONES) != ARCHITECTURES:
    raise ImportError(f"cxrutils.engine.model builds {tuple(BACKBONES)}, but settings.ARCHITECTURES lists "
                      f"{ARCHITECTURES}: keep the two in step")
# Every stage name means one stride, whatever the backbone: a Grad-CAM grid follows from the name alone.
STAGE_STRIDES: dict[str, int] = {name: stride for b in BACKBONES.values() for name, stride in b.strides.items()}
if any(stride != STAGE_STRIDES[name] for b in BACKBONES.values() for name, stride in b.strides.items()):
    raise ImportError("a stage name has two strides in cxrutils.engine.model.BACKBONES")
# Input pixels per feature-map pixel at each dense block's output.
DENSE_BLOCK_STRIDES: dict[str, int] = BACKBONES["densenet121"].strides
IMAGENET_DENSENET121_FILE = BACKBONES["densenet121"].imagenet_file  # densenet121-a639ec97.pth


def backbone(arch: str) -> Backbone:
    """The registry entry of ``arch``; a ValueError naming the choices for any other."""
    if arch not in BACKBONES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[arch]


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


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


class ChestXrayNet(nn.Module):
    """A torchvision backbone's ``features`` with a 1-channel stem, then a GAP or LSE head for ``num_classes``.

    DenseNet121's state_dict keys are those of the runs trained before ``arch`` existed.
    """

    def __init__(self, num_classes: int = len(FINDINGS), head: Head = "gap", lse_r: float = 10.0,
                 arch: str = DEFAULT_ARCH) -> None:
        super().__init__()
        spec = backbone(arch)
        self.arch = arch
        features, head_norm, dropout, width = spec.parts(torchvision.models.get_model(arch, weights=None))
        parent, _, name = spec.stem.rpartition(".")
        rgb = features.get_submodule(spec.stem)
        holder = features.get_submodule(parent) if parent else features
        setattr(holder, name, nn.Conv2d(1, rgb.out_channels, kernel_size=rgb.kernel_size, stride=rgb.stride,
                                        padding=rgb.padding, dilation=rgb.dilation, bias=rgb.bias is not None))
        self.features = features
        if head not in ("gap", "lse"):
            raise ValueError(f"head must be 'gap' or 'lse', got {head!r}")
        self.final_activation: nn.Module = nn.ReLU() if spec.final_relu else nn.Identity()
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if head == "gap" else LSEPool2d(lse_r)
        self.head_norm: nn.Module = head_norm if head_norm is not None else nn.Identity()  # ConvNeXt's LayerNorm
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier = nn.Linear(width, num_classes)
        nn.init.zeros_(self.classifier.bias)
        self.frozen_prefixes: tuple[str, ...] = ()

    @property
    def backbone(self) -> Backbone:
        return BACKBONES[self.arch]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.head_norm(self.pool(self.final_activation(self.features(x))))
        return self.classifier(self.dropout(torch.flatten(pooled, 1)))

    def train(self, mode: bool = True) -> ChestXrayNet:
        super().train(mode)
        # Frozen BatchNorm layers keep their ImageNet/checkpoint statistics.
        for name, module in self.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and _is_under(name, self.frozen_prefixes):
                module.eval()
        return self

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last stage (DenseNet121: denseblock4), for Grad-CAM."""
        return self.stage(self.backbone.gradcam_stage)

    def stage(self, name: str) -> nn.Module:
        """A stage by name (``Backbone.stages``: denseblock1-4, layer1-4 or stage1-4), e.g. for a finer Grad-CAM."""
        stages = self.backbone.stages
        if name not in stages:
            raise ValueError(f"unknown stage {name!r} of {self.arch}; choose one of {list(stages)}")
        return self.features.get_submodule(stages[name][0])

    dense_block = stage  # the name from when every model was a DenseNet


ChestXrayDenseNet = ChestXrayNet  # the name from when every model was a DenseNet: builds densenet121 by default


def frozen_prefixes(model: ChestXrayNet, strategy: str) -> tuple[str, ...]:
    """The module names a fine-tune strategy freezes (every module under one of them)."""
    if strategy == "full":
        return ()
    if strategy == "head_only":
        return ("features",)
    if strategy == "freeze_through_denseblock3":
        trainable = model.backbone.last_stage
        return tuple(f"features.{name}" for name, _ in model.features.named_children() if name not in trainable)
    raise ValueError(f"unknown fine-tune strategy {strategy!r}; choose one of {STRATEGIES}")


def apply_strategy(model: ChestXrayNet, strategy: Strategy) -> None:
    """Freeze parameters per the fine-tune strategy (and their BatchNorm statistics)."""
    prefixes = frozen_prefixes(model, strategy)
    model.frozen_prefixes = prefixes
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not _is_under(name, prefixes))
    model.train(model.training)


def imagenet_weights_path(arch: str = DEFAULT_ARCH) -> Path:
    """Where torchvision keeps the architecture's ImageNet file: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / backbone(arch).imagenet_file


def load_imagenet_features(model: ChestXrayNet, path: str | os.PathLike[str] | None = None) -> None:
    """torchvision's ImageNet weights of ``model.arch`` into all but the new classifier, the stem folded to 1 channel."""
    spec = model.backbone
    path = Path(path) if path else imagenet_weights_path(model.arch)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights {spec.imagenet_file} not found in {path.parent}. This machine cannot "
            f"download them: copy {spec.imagenet_file} (from {spec.imagenet_weights.url}) into {path.parent}/, "
            f"or set weights: none to train from scratch."
        )
    state = {}
    for key, value in load_tensors(path).items():
        ours = spec.imagenet_key(key)
        if ours is not None:
            state[ours] = value
    stem = f"features.{spec.stem}.weight"
    if stem not in state:
        raise ValueError(f"{path} has no {stem.removeprefix('features.')!r}: not torchvision's ImageNet {spec.title}")
    state[stem] = state[stem].sum(dim=1, keepdim=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the new 14-way classifier starts untrained.
    if set(missing) != {"classifier.weight", "classifier.bias"} or unexpected:
        raise ValueError(f"{path} does not fit torchvision's {spec.title}: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")


def build_model(
    weights: str = "imagenet",
    head: Head = "gap",
    lse_r: float = 10.0,
    strategy: Strategy = "full",
    num_classes: int = len(FINDINGS),
    arch: str = DEFAULT_ARCH,
) -> ChestXrayNet:
    """A model ready to train: ``weights`` is ``imagenet``, ``none`` or a path to one of our checkpoints."""
    model = ChestXrayNet(num_classes=num_classes, head=head, lse_r=lse_r, arch=arch)
    if weights == "imagenet":
        load_imagenet_features(model)
    elif weights != "none":
        load_checkpoint_weights(model, weights)
    apply_strategy(model, strategy)
    return model


def initial_weights(weights: str, arch: str = DEFAULT_ARCH) -> dict[str, str | None]:
    """Which weights a run started from: the kind, the file, and its sha256 (for the model card)."""
    if weights == "none":
        return {"kind": "none (random initialisation)", "file": None, "sha256": None}
    if weights == "imagenet":
        spec = backbone(arch)
        path = imagenet_weights_path(arch)
        kind = f"torchvision ImageNet {spec.title} ({spec.imagenet_weights.name})"
    else:
        path, kind = Path(weights), "a cxrutils checkpoint"
    return {"kind": kind, "file": str(path), "sha256": sha256_of(path)}


def checkpoint_arch(checkpoint: dict[str, Any]) -> str | None:
    """The architecture a cxrutils checkpoint records: its ``arch``, else its config's, else densenet121 (runs from
    before ``arch`` existed); None for a file with neither (a bare state dict saved by hand)."""
    if "arch" in checkpoint:
        return str(checkpoint["arch"])
    if isinstance(checkpoint.get("config"), dict):
        return str(checkpoint["config"].get("arch", DEFAULT_ARCH))
    return None


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Model weights from a cxrutils checkpoint, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {path} does not exist")
    checkpoint = load_tensors(path)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(f"{path} has no 'model' entry: not a cxrutils checkpoint")
    recorded = checkpoint_arch(checkpoint)
    arch = getattr(model, "arch", None)
    if recorded is not None and arch is not None and recorded != arch:
        raise ValueError(f"{path} holds a {recorded} model; this run builds {arch}. Set arch: {recorded}, or start "
                         f"from weights of a {arch} run")
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
