"""Grad-CAM per film (one forward for all of a film's findings) against the per-pair definition."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxrutils.engine.gradcam import gradcam, gradcam_per_film
from cxrutils.engine.model import build_model
from cxrutils.engine.network_input import prepare_batch
from cxrutils.inference import scoring
from cxrutils.labels import FINDINGS

# Max abs difference allowed between a per-film map and the per-pair reference, both scaled to [0, 1].
TOLERANCE = 1e-5
# Films with 0, 1 and several findings.
FINDINGS_PER_FILM = [[], [3], [0, 5, 13], [7, 2], [], [9, 1, 4, 11]]


def reference_gradcam(model: nn.Module, images: torch.Tensor, targets: list[int], layer: nn.Module) -> torch.Tensor:
    """Selvaraju et al. 2017 one (image, class) pair per row, as cxrutils computed it before per-film batching.

    A full forward with autograd; alpha_k = spatial mean of d logit / d A_k; map = ReLU(sum_k alpha_k A_k),
    upsampled bilinearly (align_corners=False) to the input and scaled to [0, 1] by its min and max (flat: 0).
    """
    captured = []
    hook = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(images.detach().float().requires_grad_(True))
            chosen = logits.gather(1, torch.tensor(targets)[:, None]).sum()
            (gradient,) = torch.autograd.grad(chosen, captured[-1])
    finally:
        hook.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * captured[-1].detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))


def reference_per_pair(model: nn.Module, images: torch.Tensor, findings: list[list[int]], layer: nn.Module):
    rows = [i for i, film in enumerate(findings) for _ in film]
    return reference_gradcam(model, images[rows], [f for film in findings for f in film], layer)


def densenet(head: str = "gap") -> nn.Module:
    torch.manual_seed(0)
    model = build_model("none", head=head)
    nn.init.normal_(model.classifier.weight, std=0.05)  # every finding reads the features differently
    return model


def smooth_films(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 1, 8, 8, generator=generator)
    return (F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False) - 0.5) * 4


def assert_maps_match(maps: torch.Tensor, reference: torch.Tensor) -> None:
    assert maps.shape == reference.shape
    assert int((reference.amax(dim=(1, 2)) > 0).sum()) >= len(reference) // 2  # most maps are not flat
    assert float((maps - reference).abs().max()) < TOLERANCE


@pytest.mark.parametrize(
    ("head", "block"),
    [("gap", "denseblock4"), ("gap", "denseblock2"), ("lse", "denseblock3")],
)
def test_per_film_maps_equal_the_per_pair_definition(head, block):
    model = densenet(head)
    images = smooth_films(len(FINDINGS_PER_FILM))
    layer = model.dense_block(block)
    maps = gradcam_per_film(model, images, FINDINGS_PER_FILM, layer=layer, films_per_pass=2)
    assert_maps_match(maps, reference_per_pair(model, images, FINDINGS_PER_FILM, layer))


def test_each_film_goes_through_the_network_once_in_passes_of_at_most_films_per_pass():
    model = densenet()
    images = smooth_films(len(FINDINGS_PER_FILM))
    batches: list[int] = []
    hook = model.features.conv0.register_forward_hook(lambda module, inputs, output: batches.append(len(output)))
    maps = gradcam_per_film(model, images, FINDINGS_PER_FILM, films_per_pass=2)
    hook.remove()
    films_with_findings = sum(1 for film in FINDINGS_PER_FILM if film)
    assert sum(batches) == films_with_findings  # not one row per (film, finding) pair
    assert max(batches) <= 2
    assert len(maps) == sum(len(film) for film in FINDINGS_PER_FILM)


def test_per_film_grad_cam_takes_names_restores_modes_and_touches_no_gradient():
    model = densenet()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # a frozen model still has a gradient at the activation
    model.train()
    images = smooth_films(3)
    by_name = [[], ["Effusion"], ["Mass", "Atelectasis"]]
    by_index = [[FINDINGS.index(name) for name in film] for film in by_name]
    with torch.no_grad():
        maps = gradcam_per_film(model, images, by_name)
        assert not torch.is_grad_enabled()  # the caller's grad mode survives the hook's switch
    assert torch.is_grad_enabled()
    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    assert_maps_match(maps, reference_per_pair(model, images, by_index, model.gradcam_layer))
    # gradcam (one finding per image) is the same computation.
    torch.testing.assert_close(gradcam(model, images[1:], [FINDINGS.index("Effusion"), FINDINGS.index("Mass")]),
                               maps[[0, 1]], atol=TOLERANCE, rtol=0)


def test_no_findings_gives_no_maps_and_mismatched_lists_are_refused():
    model = densenet()
    images = smooth_films(2)
    assert gradcam_per_film(model, images, [[], []]).shape == (0, 64, 64)
    with pytest.raises(ValueError, match="2 images, 1 lists"):
        gradcam_per_film(model, images, [[0]])
    with pytest.raises(ValueError, match="unknown finding"):
        gradcam_per_film(model, images, [["Pneumonitis"], []])
    with pytest.raises(ValueError, match="films_per_pass"):
        gradcam_per_film(model, images, [[0], [1]], films_per_pass=0)


def test_inference_heatmaps_of_every_positive_call_equal_the_per_pair_definition(monkeypatch):
    model = densenet().to(memory_format=torch.channels_last)  # as load_inference_model leaves a demo run
    size = 64
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (len(FINDINGS_PER_FILM), 1, 16, 16), generator=generator, dtype=torch.uint8)
    pixels = F.interpolate(pixels.float(), size=(size, size), mode="bilinear").round().to(torch.uint8)
    films = []
    for found in FINDINGS_PER_FILM:
        calls = np.zeros(len(FINDINGS))
        calls[found] = 1.0
        films.append(scoring.ScoredFilm(None, calls, calls, pixels[0, 0].numpy()))  # type: ignore[arg-type]
    # 3 films per pass at 64 px: the positive films span several passes.
    loaded = SimpleNamespace(model=model, device=torch.device("cpu"), config=SimpleNamespace(input_size=size))
    layer = model.dense_block("denseblock3")
    monkeypatch.setattr(scoring, "GRADCAM_PIXELS_PER_PASS", 3 * size * size)
    scoring._add_heatmaps(loaded, layer, films, pixels)
    images = prepare_batch(pixels, torch.device("cpu"), size, channels_last=False)
    reference = reference_per_pair(model, images, FINDINGS_PER_FILM, layer)
    for film, found in zip(films, FINDINGS_PER_FILM):
        assert sorted(film.heatmaps) == sorted(FINDINGS[k] for k in found)
    maps = torch.from_numpy(np.stack([films[i].heatmaps[FINDINGS[k]] for i, found in enumerate(FINDINGS_PER_FILM)
                                      for k in found]))
    assert_maps_match(maps, reference)


class InMemoryCache:
    """The two things ``box_heatmaps`` reads from an ``ImageCache``: pixels (N, S, S) and rows by name."""

    def __init__(self, pixels: np.ndarray, names: list[str]) -> None:
        self.pixels = pixels
        self.names = names

    def rows(self, names):
        return np.array([self.names.index(name) for name in names])


def test_box_heatmaps_group_boxes_per_film_and_equal_the_per_pair_definition():
    from cxrutils.evaluate.localization import box_heatmaps

    model = densenet()
    size = 64
    films = smooth_films(4, size=32, seed=2)
    pixels = ((films - films.min()) / (films.max() - films.min()) * 255).round().to(torch.uint8)[:, 0].numpy()
    cache = InMemoryCache(pixels, ["a.png", "b.png", "c.png", "d.png"])
    # Interleaved films, a film with several findings, two boxes of one finding on one film, an unboxed film (c).
    boxes = pd.DataFrame({
        "image": ["b.png", "a.png", "b.png", "d.png", "a.png", "b.png", "b.png"],
        "finding": ["Mass", "Nodule", "Effusion", "Mass", "Nodule", "Atelectasis", "Mass"],
    })
    batches: list[int] = []
    hook = model.features.conv0.register_forward_hook(lambda module, inputs, output: batches.append(len(output)))
    layer = model.dense_block("denseblock3")
    maps = box_heatmaps(model, cache, boxes, size, batch_size=2, layer=layer)
    hook.remove()
    assert batches == [2, 1]  # b and a, then d: each boxed film once, at most batch_size a pass
    rows = cache.rows(boxes["image"].tolist())
    images = prepare_batch(torch.from_numpy(pixels[rows])[:, None], torch.device("cpu"), size, channels_last=False)
    reference = reference_gradcam(model, images, [FINDINGS.index(f) for f in boxes["finding"]], layer)
    assert_maps_match(torch.from_numpy(maps), reference)
    np.testing.assert_array_equal(maps[0], maps[6])  # the same film and finding: the same map
