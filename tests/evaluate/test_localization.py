import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrutils.data.preparation import to_square
from cxrutils.engine.model import ChestXrayDenseNet
from cxrutils.evaluate import localization

# --------------------------------------------------------------------------- Grad-CAM


class HalvesActivation(nn.Module):
    """Two channels at 1/4 resolution: the image's left half, and its right half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool2d(x, 4)
        left = torch.zeros_like(pooled)
        left[..., : pooled.shape[-1] // 2] = 1
        return torch.cat([pooled * left, pooled * (1 - left)], dim=1)


class HalvesNet(nn.Module):
    """Class 0 reads the left half, class 1 the right half, class 2 is evidence against the left half."""

    def __init__(self) -> None:
        super().__init__()
        self.halves = HalvesActivation()
        self.scale = nn.Parameter(torch.ones(()))

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.halves

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_means = self.halves(x).mean(dim=(2, 3)) * self.scale
        return torch.stack([channel_means[:, 0], channel_means[:, 1], -channel_means[:, 0]], dim=1)


def two_blob_image() -> torch.Tensor:
    """A dim blob on the left (rows 8-15, cols 8-15) and a brighter one on the right (cols 44-51)."""
    image = torch.zeros(1, 1, 64, 64)
    image[..., 8:16, 8:16] = 0.5
    image[..., 40:48, 44:52] = 1.0
    return image


def test_gradcam_follows_the_evidence_of_the_chosen_class_not_the_brightest_pixel():
    model = HalvesNet()
    image = two_blob_image()
    left = localization.gradcam(model, image, 0)[0]
    right = localization.gradcam(model, image, 1)[0]
    against = localization.gradcam(model, image, 2)[0]
    assert left.shape == (64, 64)
    row, col = np.unravel_index(int(left.argmax()), left.shape)
    assert 8 <= row < 16 and 8 <= col < 16  # the dim left blob, not the bright right one
    row, col = np.unravel_index(int(right.argmax()), right.shape)
    assert 40 <= row < 48 and 44 <= col < 52
    assert float(left.max()) == pytest.approx(1.0) and float(left.min()) == pytest.approx(0.0)
    assert float(left[:, 40:].max()) == 0.0  # nothing from the half the class ignores
    assert torch.count_nonzero(against) == 0  # negative evidence only: ReLU leaves nothing
    per_image = localization.gradcam(model, torch.cat([image, image]), [0, 1])
    torch.testing.assert_close(per_image, torch.stack([left, right]))


def test_gradcam_on_the_densenet_is_per_image_leaves_no_gradients_and_restores_the_mode():
    torch.manual_seed(0)
    model = ChestXrayDenseNet()
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # a frozen model must still work
    model.train()
    images = torch.randn(2, 1, 64, 64)  # 64 px: a 2 x 2 map after the last block
    heatmaps = localization.gradcam(model, images, "Effusion")
    assert heatmaps.shape == (2, 64, 64)
    assert float(heatmaps.min()) >= 0.0 and float(heatmaps.max()) <= 1.0
    torch.testing.assert_close(heatmaps.amax(dim=(1, 2)), torch.ones(2))  # each map scaled on its own
    alone = localization.gradcam(model, images[1:2], "Effusion")
    torch.testing.assert_close(alone[0], heatmaps[1], atol=1e-5, rtol=0)  # eval mode: no batch coupling
    assert model.training
    assert all(p.grad is None for p in model.parameters())


# --------------------------------------------------------------------------- scores


def test_pointing_game_takes_the_centre_of_a_flat_maximum_not_its_first_pixel():
    heatmap = np.zeros((16, 16))
    heatmap[0:8, 0:8] = 1.0  # a coarse cell's plateau reaching the image corner
    assert localization.pointing_game_hit(heatmap, (2, 2, 4, 4))  # around the plateau's centre (3.5, 3.5)
    assert not localization.pointing_game_hit(heatmap, (0, 0, 2, 2))  # its first pixel's corner only


def test_pointing_game_on_hand_made_heatmaps():
    heatmap = np.zeros((10, 10))
    heatmap[6, 3] = 1.0  # row 6, column 3: pixel centre (3.5, 6.5)
    assert localization.pointing_game_hit(heatmap, (2, 5, 3, 3))  # x 2-5, y 5-8
    assert not localization.pointing_game_hit(heatmap, (4, 5, 3, 3))  # starts right of the peak
    assert not localization.pointing_game_hit(heatmap, (2, 0, 3, 6))  # ends above the peak (y < 6)


def test_iobb_on_hand_made_heatmaps():
    heatmap = np.zeros((10, 10))
    heatmap[2:6, 2:6] = 0.8  # a 4 x 4 region
    assert localization.iobb(heatmap, (4, 4, 4, 4), threshold=0.5) == pytest.approx(4 / 16)
    assert localization.iobb(heatmap, (0, 0, 10, 10), threshold=0.5) == pytest.approx(1.0)
    assert localization.iobb(heatmap, (7, 7, 2, 2), threshold=0.5) == 0.0
    assert localization.iobb(heatmap, (0, 0, 10, 10), threshold=0.9) == 0.0  # nothing detected


def test_localization_scores_per_finding_and_overall():
    heatmaps = np.zeros((3, 20, 20))
    heatmaps[0, 2:6, 2:6] = 1.0  # inside its box
    heatmaps[1, 2:6, 2:6] = 1.0  # half inside its box
    heatmaps[2, 15:18, 15:18] = 1.0  # outside its box
    boxes = pd.DataFrame(
        {
            "image": ["a", "b", "c"],
            "finding": ["Mass", "Mass", "Nodule"],
            "x": [0, 4, 0],
            "y": [0, 0, 0],
            "w": [10, 10, 5],
            "h": [10, 10, 5],
        }
    )
    table = localization.localization_scores(heatmaps, boxes, threshold=0.5)
    assert list(table.index) == ["Mass", "Nodule", "all"]
    assert list(table["boxes"]) == [2, 1, 3]
    assert table.loc["Mass", "t_iobb_0.1"] == 1.0 and table.loc["Mass", "t_iobb_0.5"] == 1.0
    assert table.loc["Mass", "pointing_game"] == 0.5  # b's plateau (cols 2-5) points at col 3, left of x=4
    assert table.loc["Nodule", "t_iobb_0.1"] == 0.0
    assert table.loc["all", "t_iobb_0.25"] == pytest.approx(2 / 3)


def test_random_baseline_is_seeded_and_depends_on_box_size():
    boxes = pd.DataFrame(
        {
            "image": ["a", "b"],
            "finding": ["Cardiomegaly", "Nodule"],
            "x": [0.0, 30.0],
            "y": [0.0, 30.0],
            "w": [64.0, 4.0],
            "h": [64.0, 4.0],
        }
    )
    first = localization.random_baseline_scores(boxes, 64, seed=1, repeats=10)
    again = localization.random_baseline_scores(boxes, 64, seed=1, repeats=10)
    pd.testing.assert_frame_equal(first, again)
    assert first.loc["Cardiomegaly", "pointing_game"] == 1.0  # a box over the whole image always wins
    assert first.loc["Nodule", "t_iobb_0.1"] < 0.3
    maps = localization.random_heatmaps(4, 32, seed=3)
    assert maps.shape == (4, 32, 32) and maps.min() == 0.0 and maps.max() == pytest.approx(1.0)
    assert not np.allclose(maps, localization.random_heatmaps(4, 32, seed=4))


# --------------------------------------------------------------------------- box geometry


@pytest.mark.parametrize(("width", "height"), [(200, 100), (100, 200), (201, 120), (64, 64)])
def test_box_mapping_follows_the_cache_padding_and_resize(width, height):
    box = (30.0, 20.0, 40.0, 50.0) if width >= 100 and height >= 100 else (10.0, 10.0, 20.0, 30.0)
    film = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = (int(v) for v in box)
    film[y : y + h, x : x + w] = 255
    size = 50
    square = to_square(film, size)
    mapped = localization.box_to_heatmap(box, width, height, size)
    rows, cols = np.nonzero(square > 127)
    mx, my, mw, mh = mapped
    assert abs(cols.min() - mx) <= 1 and abs(cols.max() + 1 - (mx + mw)) <= 1
    assert abs(rows.min() - my) <= 1 and abs(rows.max() + 1 - (my + mh)) <= 1


def test_box_mapping_by_hand_and_for_a_frame():
    # 200 wide x 100 high: padded to 200 x 200 with 50 rows on top, then halved to 100.
    assert localization.box_to_heatmap((20, 10, 40, 30), 200, 100, 100) == (10.0, 30.0, 20.0, 15.0)
    assert localization.box_to_heatmap((20, 10, 40, 30), 100, 200, 100) == (35.0, 5.0, 20.0, 15.0)
    boxes = pd.DataFrame(
        {
            "image": ["wide", "tall"],
            "finding": ["Mass", "Mass"],
            "x": [20.0, 20.0],
            "y": [10.0, 10.0],
            "w": [40.0, 40.0],
            "h": [30.0, 30.0],
        }
    )
    sizes = pd.DataFrame({"width": [200, 100], "height": [100, 200]}, index=["wide", "tall"])
    mapped = localization.boxes_to_heatmap(boxes, sizes, 100)
    assert mapped[["x", "y", "w", "h"]].to_numpy().tolist() == [[10, 30, 20, 15], [35, 5, 20, 15]]
    with pytest.raises(KeyError, match="wide"):
        localization.boxes_to_heatmap(boxes, sizes.drop(index="wide"), 100)


def test_stored_image_sizes_reads_the_file_not_the_metadata(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((30, 50), dtype=np.uint8)).save(tmp_path / "wide.png")
    paths = pd.Series({"wide.png": str(tmp_path / "wide.png")})
    sizes = localization.stored_image_sizes(paths)
    assert sizes.loc["wide.png"].tolist() == [50, 30]
    assert localization.boxed_image_sizes(paths, ["wide.png", "wide.png"]).shape == (1, 2)
    with pytest.raises(FileNotFoundError, match="gone.png"):
        localization.boxed_image_sizes(paths, ["gone.png"])


def test_localization_gallery_draws_one_rectangle_per_box():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.patches import Rectangle

    from cxrutils.show import plots

    maps = localization.random_heatmaps(2, 16, seed=0)
    fig = plots.localization_gallery(np.zeros((2, 16, 16)), maps, [(2, 3, 4, 5), None], ["boxed", "no box"])
    rectangles = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert [(r.get_x(), r.get_y(), r.get_width(), r.get_height()) for r in rectangles] == [(2, 3, 4, 5)]
    matplotlib.pyplot.close("all")


def test_box_heatmaps_and_box_mapping_agree_end_to_end_on_non_square_films(tmp_path):
    """Films 64 wide x 32 high go through the real cache (padded to a square); boxes follow them."""
    from PIL import Image

    from cxrutils.data.cache import build_cache

    films = {"left.png": (8, 10), "right.png": (44, 12)}  # blob's top-left corner (x, y), 8 x 8 px
    paths = {}
    for name, (x, y) in films.items():
        pixels = np.full((32, 64), 20, dtype=np.uint8)
        pixels[y : y + 8, x : x + 8] = 250
        Image.fromarray(pixels).save(tmp_path / name)
        paths[name] = str(tmp_path / name)
    paths = pd.Series(paths)
    cache = build_cache(paths, tmp_path / "cache", size=64, workers=1)
    # HalvesNet: class 0 (Atelectasis) reads the left half, class 1 (Cardiomegaly) the right half.
    boxes = pd.DataFrame(
        {
            "image": ["left.png", "right.png"],
            "finding": ["Atelectasis", "Cardiomegaly"],
            "x": [8.0, 44.0],
            "y": [10.0, 12.0],
            "w": [8.0, 8.0],
            "h": [8.0, 8.0],
        }
    )
    heatmaps = localization.box_heatmaps(HalvesNet(), cache, boxes, input_size=64)
    mapped = localization.boxes_to_heatmap(boxes, localization.stored_image_sizes(paths), 64)
    assert mapped["y"].tolist() == [26.0, 28.0]  # 16 rows of padding above
    table = localization.localization_scores(heatmaps, mapped, threshold=0.5)
    assert table.loc["all", "pointing_game"] == 1.0
    assert table.loc["all", "t_iobb_0.5"] == 1.0
    unmapped = localization.localization_scores(heatmaps, boxes, threshold=0.5)  # forgetting the padding
    assert unmapped.loc["all", "pointing_game"] == 0.0


def test_gradcam_can_read_a_finer_dense_block_and_unknown_blocks_are_named():
    from cxrutils.engine.model import build_model

    torch.manual_seed(0)
    model = build_model("none")
    images = torch.randn(2, 1, 64, 64)
    finer = localization.gradcam(model, images, "Nodule", layer=model.dense_block("denseblock3"))
    assert finer.shape == (2, 64, 64) and float(finer.max()) <= 1.0
    # At 64 px denseblock4 is a 2 x 2 grid: its upsampled maximum is a flat 16 x 16 corner block.
    # denseblock3 is 4 x 4: its flat maximum is at most an 8 x 8 corner block.
    coarse = localization.gradcam(model, images, "Nodule")

    def plateau(heatmap: torch.Tensor) -> int:
        return int((heatmap >= heatmap.max() - 1e-6).sum())

    assert plateau(coarse[0]) == 256
    assert plateau(finer[0]) <= 64
    with pytest.raises(ValueError, match="denseblock9"):
        model.dense_block("denseblock9")


def test_boxes_from_the_1024_px_frame_find_their_blob_on_films_stored_smaller(tmp_path):
    """A 256 px release of a 1024 px film: the box is scaled onto it before Grad-CAM is scored against it."""
    from PIL import Image

    from cxrutils.data.cache import build_cache

    pixels = np.full((256, 256), 20, dtype=np.uint8)
    pixels[40:72, 16:48] = 250  # the blob, in the left half, in the stored film's pixels
    Image.fromarray(pixels).save(tmp_path / "film.png")
    Image.fromarray(np.zeros((128, 256), dtype=np.uint8)).save(tmp_path / "other.png")
    paths = pd.Series({"film.png": str(tmp_path / "film.png"), "other.png": str(tmp_path / "other.png")})
    cache = build_cache(paths, tmp_path / "cache", size=64, workers=1)
    # BBox_List_2017.csv coordinates: the same blob in the 1024-px frame (x4). The second box reaches
    # y = 1128, beyond any 1024-px film: drawn in another frame, it cannot be placed on its film.
    boxes = pd.DataFrame({"image": ["film.png", "other.png"], "finding": ["Atelectasis", "Atelectasis"],
                          "x": [64.0, 64.0], "y": [160.0, 1000.0], "w": [128.0, 128.0], "h": [128.0, 128.0]})
    mapped, outside = localization.place_boxes(boxes, paths, 64)
    # Read as pixels of the 256 px film, the box would sit 4 times too far right and down, off the blob.
    assert mapped[["x", "y", "w", "h"]].to_numpy().tolist() == [[4.0, 10.0, 8.0, 8.0]]
    assert outside[["image", "film_width", "film_height"]].to_numpy().tolist() == [["other.png", 256, 128]]
    heatmaps = localization.box_heatmaps(HalvesNet(), cache, mapped, input_size=64)
    assert localization.localization_scores(heatmaps, mapped).loc["all", "pointing_game"] == 1.0
