"""Wang et al. 2017's Table 3 accuracies: IoU, every T(IoBB) and T(IoU), and how they are reported.

Each figure is checked against a count written here: pixels counted one by one, closed forms, and
per-box IoBB and IoU tallied by hand.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from cxrutils import files
from cxrutils.evaluate import localization
from cxrutils.evaluate.evaluation import LocalizationResult


def pixel_count_overlap(heatmap: np.ndarray, box: tuple[float, float, float, float], threshold: float):
    """(|region ∩ box|, |region|, |region ∪ box|), a pixel at a time: a pixel is in the box when its centre is."""
    x, y, w, h = box
    inter = region = union = 0
    for row in range(heatmap.shape[0]):
        for col in range(heatmap.shape[1]):
            detected = heatmap[row, col] >= threshold
            inside = x <= col + 0.5 < x + w and y <= row + 0.5 < y + h
            inter += detected and inside
            region += detected
            union += detected or inside
    return inter, region, union


def test_iou_on_hand_made_heatmaps():
    heatmap = np.zeros((10, 10))
    heatmap[2:6, 2:6] = 0.8  # a 4 x 4 region
    assert localization.iou(heatmap, (4, 4, 4, 4)) == pytest.approx(4 / 28)  # 2 x 2 shared, 16 + 16 - 4 in all
    assert localization.iou(heatmap, (2, 2, 4, 4)) == 1.0
    assert localization.iou(heatmap, (7, 7, 2, 2)) == 0.0
    assert localization.iou(heatmap, (0, 0, 10, 10)) == pytest.approx(16 / 100)  # IoBB would be 1
    assert localization.iou(heatmap, (0, 0, 10, 10), threshold=0.9) == 0.0  # nothing detected


@pytest.mark.parametrize(("region_side", "box_side"), [(12, 6), (6, 12), (10, 10), (20, 4)])
def test_iou_of_concentric_squares_is_the_ratio_of_their_areas(region_side, box_side):
    size = 24
    heatmap = np.zeros((size, size))
    start = (size - region_side) // 2
    heatmap[start : start + region_side, start : start + region_side] = 1.0
    corner = (size - box_side) / 2
    expected = min(region_side, box_side) ** 2 / max(region_side, box_side) ** 2
    assert localization.iou(heatmap, (corner, corner, box_side, box_side)) == pytest.approx(expected)


def test_score_boxes_iobb_and_iou_count_the_pixels_of_each_map_and_box():
    rng = np.random.default_rng(5)
    maps = localization.random_heatmaps(12, 20, seed=5, grid=4)
    boxes = pd.DataFrame({"image": [f"f{k}" for k in range(12)], "finding": ["Mass"] * 12,
                          "x": rng.uniform(-4, 18, 12), "y": rng.uniform(-4, 18, 12),  # some reach past the edge
                          "w": rng.uniform(0.3, 12, 12), "h": rng.uniform(0.3, 12, 12)})
    scored = localization.score_boxes(maps, boxes, threshold=0.4)
    for k, row in scored.iterrows():
        box = (row.x, row.y, row.w, row.h)
        inter, region, union = pixel_count_overlap(maps[k], box, 0.4)
        assert row["iou"] == pytest.approx(inter / union if union else 0.0)
        assert row["iobb"] == pytest.approx(inter / region if region else 0.0)
        assert row["iou"] == pytest.approx(localization.iou(maps[k], box, 0.4))
        assert row["iou"] <= row["iobb"] + 1e-12  # the union holds the region


def test_every_table3_threshold_is_the_share_of_boxes_at_or_above_it():
    rng = np.random.default_rng(9)
    n = 40
    maps = localization.random_heatmaps(n, 24, seed=1, grid=3)
    boxes = pd.DataFrame({"image": [f"f{k}" for k in range(n)],
                          "finding": rng.choice(["Nodule", "Cardiomegaly", "Mass"], n),
                          "x": rng.uniform(0, 12, n), "y": rng.uniform(0, 12, n),
                          "w": rng.uniform(4, 16, n), "h": rng.uniform(4, 16, n)})
    table = localization.localization_scores(maps, boxes)
    assert list(table.columns) == ["boxes", *localization.metric_keys()]
    assert list(table.index) == ["Cardiomegaly", "Mass", "Nodule", "all"]  # FINDINGS order, then all
    assert localization.T_IOBB == (0.1, 0.25, 0.5, 0.75, 0.9)
    assert localization.T_IOU == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    coordinates = boxes[["x", "y", "w", "h"]].to_numpy()
    iobbs = np.array([localization.iobb(m, tuple(b)) for m, b in zip(maps, coordinates)])
    ious = np.array([localization.iou(m, tuple(b)) for m, b in zip(maps, coordinates)])
    for row in table.index:
        member = np.ones(n, bool) if row == "all" else (boxes["finding"] == row).to_numpy()
        assert table.loc[row, "boxes"] == member.sum()
        for t in localization.T_IOBB:
            assert table.loc[row, f"t_iobb_{t:g}"] == sum(iobbs[member] >= t) / member.sum()
        for t in localization.T_IOU:
            assert table.loc[row, f"t_iou_{t:g}"] == sum(ious[member] >= t) / member.sum()
    assert table.loc["all", "t_iobb_0.1"] >= table.loc["all", "t_iobb_0.9"]  # a higher bar, fewer boxes
    assert (table.loc["all", "t_iou_0.1"] > 0) and table.loc["all", "t_iou_0.1"] <= table.loc["all", "t_iobb_0.1"]


def test_random_baseline_is_the_mean_over_draws_of_the_random_maps_scores():
    boxes = pd.DataFrame({"image": ["a", "b", "c"], "finding": ["Mass", "Mass", "Nodule"],
                          "x": [2.0, 10.0, 20.0], "y": [2.0, 8.0, 20.0], "w": [14.0, 8.0, 5.0], "h": [12.0, 8.0, 5.0]})
    repeats, seed = 4, 3
    expected = sum(localization.localization_scores(localization.random_heatmaps(3, 32, seed * 100003 + r), boxes)
                   for r in range(repeats)) / repeats
    baseline = localization.random_baseline_scores(boxes, 32, seed=seed, repeats=repeats)
    pd.testing.assert_frame_equal(baseline.drop(columns="boxes"), expected.drop(columns="boxes"))
    assert baseline.attrs == {"repeats": repeats, "seed": seed, "grid": 7}
    rates = localization.random_baseline_hits(boxes, 32, seed=seed, repeats=repeats)
    assert rates.loc[0, "t_iou_0.1"] == pytest.approx(np.mean([
        localization.iou(localization.random_heatmaps(3, 32, seed * 100003 + r)[0], (2.0, 2.0, 14.0, 12.0)) >= 0.1
        for r in range(repeats)]))
    # Chunked generation draws the same maps as one call.
    chunks = np.concatenate(list(localization._random_heatmap_chunks(5, 16, seed=2, grid=7, chunk=2)))
    np.testing.assert_array_equal(chunks, localization.random_heatmaps(5, 16, seed=2))


@pytest.fixture
def located() -> LocalizationResult:
    rng = np.random.default_rng(0)
    n = 60
    boxes = pd.DataFrame({"image": [f"film{k}" for k in range(n)], "finding": ["Nodule", "Effusion"] * (n // 2),
                          "x": rng.uniform(0, 20, n), "y": rng.uniform(0, 20, n), "w": np.full(n, 8.0),
                          "h": np.full(n, 8.0), "patient_id": [f"p{k // 3}" for k in range(n)]})
    maps = localization.random_heatmaps(n, 32, seed=9)
    scored = localization.score_boxes(maps, boxes)
    rates = localization.random_baseline_hits(boxes, 32, repeats=3)
    intervals = localization.localization_intervals(localization.box_hits(scored), rates, boxes["finding"],
                                                    boxes["patient_id"], n_resamples=60)
    return LocalizationResult(boxes=scored, heatmaps=maps, scores=intervals.scores, baseline=intervals.baseline,
                              heatmap_size=32, outside=boxes.iloc[:0], versus_random=intervals.versus_random,
                              random_rates=rates)


def test_the_table_has_wang_et_al_layout_with_intervals_and_the_published_column_where_there_is_one(located):
    table = located.table()
    assert list(table.index) == ["Effusion", "Nodule", "all"]
    labels = list(dict.fromkeys(label for label, _ in table.columns if label))
    assert labels == ["pointing game", "T(IoBB) 0.1", "T(IoBB) 0.25", "T(IoBB) 0.5", "T(IoBB) 0.75", "T(IoBB) 0.9",
                      "T(IoU) 0.1", "T(IoU) 0.2", "T(IoU) 0.3", "T(IoU) 0.4", "T(IoU) 0.5", "T(IoU) 0.6",
                      "T(IoU) 0.7"]
    assert table[("T(IoBB) 0.1", "Wang et al. 2017")].tolist()[:2] == [0.712, 0.165]
    assert ("T(IoU) 0.1", "Wang et al. 2017") not in table.columns
    assert table.loc["all", ("T(IoU) 0.3", "this model CI low")] == located.scores.loc["all", "t_iou_0.3_ci_low"]
    assert table.loc["Nodule", ("pointing game", "this model - random")] == pytest.approx(
        located.scores.loc["Nodule", "pointing_game"] - located.baseline.loc["Nodule", "pointing_game"])
    assert [label for label, _ in located.table("iou").columns if label][0] == "T(IoU) 0.1"
    beats = located.beats_chance()
    assert beats.shape == (3, 13) and beats.dtypes.eq(bool).all()


def test_the_document_keeps_the_model_cards_keys_and_adds_intervals_and_the_comparison(located):
    document = json.loads(json.dumps(files.plain(located.to_document()), allow_nan=False))
    scores, baseline = document["scores"], document["random_baseline"]
    assert scores["all"]["pointing_game"] == pytest.approx(located.boxes["pointing_hit"].mean())
    assert baseline["all"]["pointing_game"] == pytest.approx(located.random_rates["pointing_game"].mean())
    for key in localization.metric_keys():
        row = scores["Nodule"]
        assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"]
        compared = document["versus_random"]["all"][key]
        assert compared["difference"] == pytest.approx(scores["all"][key] - baseline["all"][key])
        assert compared["beats_chance"] == (compared["ci_low"] > 0)
    assert document["thresholds"] == {"t_iobb": [0.1, 0.25, 0.5, 0.75, 0.9],
                                      "t_iou": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "heatmap": 0.5}
    assert document["bootstrap"]["n_resamples"] == 60 and document["bootstrap"]["resampling"].startswith("patients")
    assert "thresholded map itself" in document["definitions"]["t_iobb_T"]
    assert document["random_baseline_repeats"] == 3


def test_the_views_show_every_threshold_with_its_interval_and_say_synthetic(located):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    from cxrutils.show import evaluation_view as view
    from cxrutils.show import plots
    from cxrutils.show.display import interval_text
    from cxrutils.stats.metrics import wang2017_localization

    result = SimpleNamespace(localization=located, split="test", synthetic=True)
    shown = view.localization_table(result, "iou").data
    assert list(shown.columns) == [f"T(IoU) {t:g}" for t in localization.T_IOU]
    scores = located.scores
    assert shown.loc[("all (60 boxes, 20 patients)", "Grad-CAM (this model)"), "T(IoU) 0.2"] == interval_text(
        *scores.loc["all", ["t_iou_0.2", "t_iou_0.2_ci_low", "t_iou_0.2_ci_high"]])
    iobb = view.localization_table(result, "iobb").data
    assert iobb.loc[("Nodule (30 boxes, 20 patients)", "Wang et al. 2017"), "T(IoBB) 0.1"] == "0.165"
    assert ("all (60 boxes, 20 patients)", "Wang et al. 2017") not in iobb.index  # nothing published for all
    differences = view.versus_random_table(result, "iobb").data
    assert differences.loc["all", "T(IoBB) 0.1"].startswith(("+", "-"))
    verdicts = view.beats_chance_table(result).data
    assert set(verdicts.to_numpy().ravel()) <= {"yes", "no", "no interval"}
    assert "SYNTHETIC" in view.localization_note(result).data
    assert "SYNTHETIC" in view.localization_table(result).caption

    figure = plots.localization_threshold_curves(scores, located.baseline, wang2017_localization())
    assert figure.axes[0].get_title() == "Effusion: T(IoBB)" and len(figure.axes) == 6
    bands = [c for c in figure.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # Grad-CAM and random, each with its interval
    published = [line for line in figure.axes[0].lines if line.get_label() == "Wang et al. 2017"]
    assert published[0].get_ydata().tolist() == [0.712]
    matplotlib.pyplot.close("all")


def test_localize_resamples_the_boxes_by_the_patient_of_their_film(tiny_run):
    from cxrutils.engine import run_folder
    from cxrutils.engine.gradcam import gradcam_layer_for
    from cxrutils.evaluate.evaluation import localize

    run = run_folder.open_run(tiny_run)
    test_films = run.dataset.metadata.query("split == 'test'")
    boxes = run.dataset.boxes[run.dataset.boxes["image"].isin(set(test_films["image"]))].reset_index(drop=True)
    layer = gradcam_layer_for(run.config.input_size, "auto", run.config.arch)
    result = localize(run, boxes, layer, seed=0, repeats=2, n_bootstrap=30)
    patient_of = dict(zip(test_films["image"], test_films["patient_id"]))
    assert result.boxes["patient_id"].tolist() == [patient_of[image] for image in result.boxes["image"]]
    assert result.scores.loc["all", "patients"] == result.boxes["patient_id"].nunique()
    assert result.scores.loc["all", "pointing_game"] == result.boxes["pointing_hit"].mean()
    assert result.versus_random.attrs["n_resamples"] == 30 and result.baseline.attrs["repeats"] == 2
    assert len(result.random_rates) == len(result.boxes)
