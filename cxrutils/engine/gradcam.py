"""Grad-CAM (Selvaraju et al. 2017): where in a film the network found a finding.

``gradcam_per_film`` works on the model's ``gradcam_layer`` (its last stage) or any
named stage, from a forward hook and ``autograd.grad``, so no parameter's ``.grad`` is
touched; each film goes through the network once for all the findings asked of it
(``gradcam``: one finding per image). Evaluation (maps against the radiologists'
boxes) and inference (overlays on new films) both use it; ``gradcam_layer_for`` picks
the architecture's stage whose grid is fine enough at an input size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cxrutils.engine.model import DEFAULT_ARCH, STAGE_STRIDES, backbone
from cxrutils.labels import FINDINGS

AUTO_GRADCAM_LAYER = "auto"
# Grad-CAM on a grid coarser than this cannot point anywhere: its upsampled maximum is a quadrant.
MIN_GRADCAM_GRID = 4
# Input pixels per Grad-CAM pass (16 films at 224 px, one at 1024 px; small inputs share a pass): the
# forward's activations and the autograd record above the Grad-CAM layer grow with the films in a pass.
# The one bound of inference, the evaluation's box heatmaps and external localization (gradcam_films_per_pass).
GRADCAM_PIXELS_PER_PASS = 16 * 224 * 224


def gradcam_layer_for(input_size: int, requested: str = AUTO_GRADCAM_LAYER, arch: str | None = None) -> str:
    """The stage Grad-CAM reads: ``requested``, or for ``auto`` the deepest of ``arch`` with a grid of at least 4 x 4.

    Every architecture's stages end at strides 4, 8, 16 and 32: for DenseNet121 at
    224 px ``auto`` is denseblock4 (7 x 7), at the CPU demo's 64 px denseblock3 (4 x 4),
    at 32 px denseblock2 (4 x 4); ResNet-50's layer4, layer3, layer2 likewise, and
    EfficientNet-V2-S's and ConvNeXt-Tiny's stage4, stage3, stage2. A named stage must
    be one of ``arch``'s. Without ``arch`` (a caller that does not know the run's
    architecture) a named stage may be any architecture's, the model's ``stage`` then
    refusing one not its own, and ``auto`` is densenet121's, as before ``arch`` existed.
    """
    strides = backbone(arch or DEFAULT_ARCH).strides
    if requested != AUTO_GRADCAM_LAYER:
        known = strides if arch else STAGE_STRIDES
        if requested not in known:
            raise ValueError(f"gradcam_layer must be 'auto' or a stage{f' of {arch}' if arch else ''}, one of "
                             f"{list(known)}; got {requested!r}")
        return requested
    fine_enough = [name for name, stride in strides.items() if input_size // stride >= MIN_GRADCAM_GRID]
    return fine_enough[-1] if fine_enough else next(iter(strides))


def is_last_stage(layer: str, arch: str = DEFAULT_ARCH) -> bool:
    """Whether ``layer`` is the architecture's last stage (its ``gradcam_layer``, the usual Grad-CAM layer)."""
    return layer == backbone(arch).gradcam_stage


def gradcam_grid(input_size: int, layer: str) -> int:
    """Cells per side of a stage's output at ``input_size`` (the Grad-CAM map before upsampling).

    A stage's name fixes its stride in every architecture (``model.STAGE_STRIDES``).
    """
    if layer not in STAGE_STRIDES:
        raise ValueError(f"unknown stage {layer!r}; the stages are {sorted(STAGE_STRIDES)}")
    return max(1, input_size // STAGE_STRIDES[layer])


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
    1 x 1 activation from a too-small input) is all zeros. Several findings of one
    film: ``gradcam_per_film``, which runs the film through the network once.
    """
    if isinstance(class_index, (int, str)):
        targets = [finding_index(class_index)] * images.shape[0]
    else:
        targets = [finding_index(c) for c in class_index]
    return gradcam_per_film(model, images, [[target] for target in targets], layer=layer,
                            films_per_pass=max(1, len(images)))


def gradcam_films_per_pass(input_size: int, pixels_per_pass: int = GRADCAM_PIXELS_PER_PASS) -> int:
    """How many films of ``input_size``² share one Grad-CAM pass within ``pixels_per_pass`` input pixels."""
    return max(1, pixels_per_pass // input_size**2)


def gradcam_per_film(
    model: nn.Module,
    images: torch.Tensor,
    findings: Sequence[Sequence[int | str]],
    layer: nn.Module | None = None,
    films_per_pass: int | None = None,
) -> torch.Tensor:
    """Grad-CAM of every finding asked of every film: (P, H, W) in [0, 1], like ``gradcam``'s maps.

    ``findings[i]`` lists the findings (indices or names) wanted for ``images[i]``; row p
    is the p-th (film, finding) pair of ``findings`` flattened, and a film with none adds
    no row and is not run. Each film goes through the network once, however many
    findings it has: the layer's activation is kept by a forward hook, and round j
    backpropagates a one-hot at (film i, its j-th finding) for every film at once.
    That gives each film its own gradient because the films of a pass are independent
    (eval-mode BatchNorm; nothing in the network mixes the batch). A pass costs one
    forward and, above the layer only, as many backwards as its films' most findings;
    only that part is recorded for autograd. ``films_per_pass`` bounds a pass's memory
    (default: ``gradcam_films_per_pass`` at the images' size).
    """
    layer = layer if layer is not None else getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{type(model).__name__} has no gradcam_layer module to take Grad-CAM on")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    if len(findings) != images.shape[0]:
        raise ValueError(f"need one list of findings per image: {images.shape[0]} images, {len(findings)} lists")
    wanted = [[finding_index(finding) for finding in film] for film in findings]
    films = [i for i, film in enumerate(wanted) if film]
    per_pass = gradcam_films_per_pass(max(images.shape[-2:])) if films_per_pass is None else films_per_pass
    if per_pass < 1:
        raise ValueError(f"films_per_pass must be at least 1, got {per_pass}")
    maps = [
        _gradcam_pass(model, layer, images[films[start : start + per_pass]],
                      [wanted[i] for i in films[start : start + per_pass]])
        for start in range(0, len(films), per_pass)
    ]
    return torch.cat(maps) if maps else images.new_zeros((0, *images.shape[-2:]), dtype=torch.float32)


def _gradcam_pass(model: nn.Module, layer: nn.Module, images: torch.Tensor, wanted: list[list[int]]) -> torch.Tensor:
    """``gradcam_per_film`` on one pass's films, each with at least one finding."""
    logits, activation = _forward_keeping_activation(model, layer, images)
    return _maps(logits, activation, wanted, images.shape[-2:])


def scores_and_gradcam(
    model: nn.Module,
    images: torch.Tensor,
    choose: Callable[[torch.Tensor], Sequence[Sequence[int]]],
    layer: nn.Module | None = None,
    films_per_pass: int | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and Grad-CAM maps from one forward: what inference needs when it scores in float32.

    ``choose(logits)`` receives a pass's logits (films, classes), detached, and returns
    the findings (indices) to map for each of its films, e.g. those called positive.
    Returns every film's logits (B, classes) float32, and per film a (k, H, W) tensor of
    its k chosen findings' maps, in the order ``choose`` gave them (``gradcam_per_film``'s
    maps exactly). A film costs one forward whether or not it gets maps, where scoring
    and then ``gradcam_per_film`` would cost two.
    """
    layer = layer if layer is not None else getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{type(model).__name__} has no gradcam_layer module to take Grad-CAM on")
    per_pass = gradcam_films_per_pass(max(images.shape[-2:])) if films_per_pass is None else films_per_pass
    if per_pass < 1:
        raise ValueError(f"films_per_pass must be at least 1, got {per_pass}")
    all_logits: list[torch.Tensor] = []
    film_maps: list[torch.Tensor] = []
    for start in range(0, images.shape[0], per_pass):
        logits, activation = _forward_keeping_activation(model, layer, images[start : start + per_pass])
        wanted = [[finding_index(finding) for finding in film] for film in choose(logits.detach())]
        if len(wanted) != logits.shape[0]:
            raise ValueError(f"choose gave {len(wanted)} lists of findings for {logits.shape[0]} films")
        mapped = [i for i, film in enumerate(wanted) if film]
        maps = _maps(logits, activation, wanted, images.shape[-2:])
        by_film = iter(maps.split([len(wanted[i]) for i in mapped])) if mapped else iter(())
        empty = maps.new_zeros((0, *images.shape[-2:]))
        film_maps += [next(by_film) if film else empty for film in wanted]
        all_logits.append(logits.detach().float())
    return torch.cat(all_logits), film_maps


def _forward_keeping_activation(model: nn.Module, layer: nn.Module,
                                images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits, and the layer's activation as a leaf from which the rest of the forward is recorded."""
    captured: list[torch.Tensor] = []

    def keep_activation(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        # Below the layer the network runs without autograd; from this activation on it is recorded,
        # so the backward and its memory cover only the part above the layer. A fresh leaf also
        # has a gradient when every parameter is frozen.
        activation = output.detach().requires_grad_(True)
        captured.append(activation)
        torch.set_grad_enabled(True)
        return activation

    hook = layer.register_forward_hook(keep_activation)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # on exit the caller's grad mode is back, whatever the hook set
            logits = model(images.detach().float())
    finally:
        hook.remove()
        model.train(was_training)  # the graph is recorded: the backward does not depend on the mode any more
    if not captured:
        raise ValueError(f"the Grad-CAM layer ({type(layer).__name__}) is not run by {type(model).__name__}")
    return logits, captured[-1]


def _maps(logits: torch.Tensor, activation: torch.Tensor, wanted: list[list[int]],
          size: Sequence[int]) -> torch.Tensor:
    """(P, H, W): the (film, finding) pairs of ``wanted``, in order, from one recorded forward."""
    pair_round = torch.tensor([j for film in wanted for j in range(len(film))], dtype=torch.long)
    if not len(pair_round):
        return torch.zeros((0, *size), dtype=torch.float32, device=logits.device)
    pair_film = torch.tensor([i for i, film in enumerate(wanted) for _ in film], dtype=torch.long)
    rounds = int(pair_round.max()) + 1
    # Round j's one-hot: (film i, its j-th finding) for every film that has one.
    selections = torch.zeros((rounds, *logits.shape), dtype=logits.dtype)
    selections[pair_round, pair_film, torch.tensor([f for film in wanted for f in film], dtype=torch.long)] = 1
    selections = selections.to(logits.device)
    weights = []  # alpha_k per round, (films, channels): the pooled gradient of each film's j-th finding
    for j in range(rounds):
        (gradient,) = torch.autograd.grad(logits, activation, selections[j], retain_graph=j < rounds - 1)
        weights.append(gradient.float().mean(dim=(2, 3)))
    pair_round, pair_film = pair_round.to(activation.device), pair_film.to(activation.device)
    pair_weights = torch.stack(weights)[pair_round, pair_film][:, :, None, None]
    cam = F.relu((pair_weights * activation.detach()[pair_film].float()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))
