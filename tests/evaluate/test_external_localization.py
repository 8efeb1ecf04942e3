"""Grad-CAM against external collections' regions (``evaluate.external_localization``), against independent computations.

The geometry is checked by drawing the region into a film and sending the film the way the
scoring does (``dicom.orient``, ``to_square``); the scores against from-definition pointing,
IoBB and IoU on hand-made masks and against ``evaluate.localization``'s box functions; the
bootstrap against a loop over the same draws; and the evaluation on tiny RSNA and VinDr-CXR phantom roots by
recomputing each region's Grad-CAM through ``engine.gradcam.gradcam`` on ``prepare_film``'s pixels.
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrutils.data.dicom import orient, write_dicom
from cxrutils.data.external import ExternalFilms, ExternalOptions, external_label_map, load_external
from cxrutils.data.preparation import prepare_film, to_square
from cxrutils.demo.external_roots import ExternalRootSpec, build_external_root
from cxrutils.engine import run_folder
from cxrutils.engine.gradcam import gradcam, gradcam_layer_for
from cxrutils.engine.network_input import prepare_batch
from cxrutils.evaluate import external_localization as located
from cxrutils.evaluate import localization
from cxrutils.evaluate.external import RESULT_NAME, evaluate_external, write_external

N_BOOTSTRAP = 30


def _box(x, y, w, h, frame=np.nan, kind="box", encodings=""):
    return {"x": x, "y": y, "w": w, "h": h, "frame_width": frame, "frame_height": frame, "kind": kind,
            "encodings": encodings}


# --------------------------------------------------------------------------- the model frame


@pytest.mark.parametrize("steps", list(itertools.product((False, True), repeat=3)))
def test_a_box_on_a_non_square_stored_film_lands_where_the_film_is_drawn_in_the_model_frame(steps):
    """Draw the box into a 30 x 50 film, orient and square it as the scoring does: the mapped region is that ink."""
    stored = np.zeros((30, 50), dtype=np.uint8)
    box = (7, 4, 20, 9)  # x, y, w, h in the stored DICOM frame, whole pixels
    stored[box[1] : box[1] + box[3], box[0] : box[0] + box[2]] = 255
    film = orient(stored, steps)
    side = max(film.shape)
    ink = to_square(film, side) > 0  # no resize: one model pixel per stored pixel
    geometry = located.FilmGeometry(30, 50, steps)
    assert geometry.decoded_shape == film.shape
    region = located.region_in_model_frame(_box(*box), geometry, side)
    assert np.array_equal(region, ink)


def test_a_box_maps_as_localization_box_to_heatmap_maps_it_and_a_1024_frame_is_scaled_onto_the_stored_film():
    geometry = located.FilmGeometry(stored_height=300, stored_width=200)  # portrait: padded left and right
    box = (31.3, 47.9, 90.2, 121.7)
    expected = localization.box_mask(localization.box_to_heatmap(box, 200, 300, 64), (64, 64))
    assert np.array_equal(located.region_in_model_frame(_box(*box), geometry, 64), expected)
    # Drawn on a 1024 frame (RSNA, SIIM) and stored at 200 x 300: scaled per axis first, as NIH's boxes are.
    scaled = (box[0] * 200 / 1024, box[1] * 300 / 1024, box[2] * 200 / 1024, box[3] * 300 / 1024)
    expected = localization.box_mask(localization.box_to_heatmap(scaled, 200, 300, 64), (64, 64))
    assert np.array_equal(located.region_in_model_frame(_box(*box, frame=1024.0), geometry, 64), expected)
    # A box in the film's own frame that reaches past the film is set apart, one inside it is not.
    assert located.beyond_stored_film(_box(150, 10, 60, 10), geometry)
    assert not located.beyond_stored_film(_box(150, 10, 50, 10), geometry)


def test_a_mask_is_read_at_the_nearest_pixel_of_its_frame():
    from cxrutils.data.external import siim

    mask = np.zeros((1024, 1024), dtype=bool)
    mask[256:512, 512:768] = True  # rows 256-511, columns 512-767
    columns = [c for c in range(1024)]
    flat = mask[:, columns].T.ravel()  # column-major
    starts = np.flatnonzero(np.diff(np.concatenate([[0], flat.astype(int)])) == 1)
    ends = np.flatnonzero(np.diff(np.concatenate([flat.astype(int), [0]])) == -1) + 1
    numbers, last = [], 0
    for start, end in zip(starts, ends):
        numbers += [start - last, end - start]
        last = end
    encoded = " ".join(map(str, numbers))
    assert np.array_equal(siim.decode_rle(encoded), mask)
    geometry = located.FilmGeometry(512, 512)  # a film stored at half the challenge's size
    region = located.region_in_model_frame(_box(0, 0, 0, 0, frame=1024.0, kind="mask", encodings=encoded), geometry, 32)
    expected = np.zeros((32, 32), dtype=bool)
    expected[8:16, 16:24] = True
    assert np.array_equal(region, expected)


def test_films_decode_exactly_as_prepare_film_decodes_them(tmp_path):
    pixels = (np.arange(40 * 24).reshape(40, 24) % 251).astype(np.uint8)
    png = tmp_path / "film.png"
    Image.fromarray(pixels).save(png)
    dicom = tmp_path / "film.dcm"
    write_dicom(dicom, pixels, modality="CR", view=None)
    for path in (png, dicom):
        square, geometry = located.decode_film(str(path), 32)
        assert np.array_equal(square, prepare_film(path, 32))
        assert (geometry.stored_height, geometry.stored_width) == (40, 24)


# --------------------------------------------------------------------------- scores


def _from_definition(heatmap: np.ndarray, region: np.ndarray, threshold: float = 0.5) -> tuple[bool, float, float]:
    detected = heatmap >= threshold
    inter, union = (detected & region).sum(), (detected | region).sum()
    peak = np.argwhere(heatmap == heatmap.max())
    row, col = peak[np.argmin(((peak - peak.mean(axis=0)) ** 2).sum(axis=1))]
    return bool(region[row, col]), inter / detected.sum() if detected.any() else 0.0, inter / union if union else 0.0


def test_pointing_iobb_and_iou_on_hand_made_masks():
    heatmap = np.zeros((8, 8))
    heatmap[1:4, 1:4] = 0.6
    heatmap[2, 2] = 1.0
    region = np.zeros((8, 8), dtype=bool)
    region[2:6, 2:6] = True  # a 4 x 4 region; the detected 3 x 3 block shares a 2 x 2 corner
    scores = located.region_scores(heatmap[None], region[None])
    row = scores.iloc[0]
    assert row["pointing_hit"] and row["iobb"] == pytest.approx(4 / 9) and row["iou"] == pytest.approx(4 / 21)
    assert (row["t_iobb_0.25"], row["t_iobb_0.5"], row["t_iou_0.1"], row["t_iou_0.2"]) == (1.0, 0.0, 1.0, 0.0)
    assert (row["region_pixels"], row["detected_pixels"]) == (16, 9)
    # A heatmap that detects nothing scores 0, not NaN.
    assert located.region_scores(np.zeros((1, 8, 8)) + 0.1, region[None])[["iobb", "iou"]].to_numpy().tolist() == [
        [0.0, 0.0]]


def test_scores_match_the_definitions_and_localizations_box_functions_on_random_maps():
    heatmaps = localization.random_heatmaps(40, 32, seed=3, grid=5)
    rng = np.random.default_rng(1)
    boxes = [(rng.uniform(0, 20), rng.uniform(0, 20), rng.uniform(2, 12), rng.uniform(2, 12)) for _ in range(40)]
    masks = np.stack([localization.box_mask(box, (32, 32)) for box in boxes])
    scores = located.region_scores(heatmaps, masks)
    for k, box in enumerate(boxes):
        hit, iobb, iou = _from_definition(heatmaps[k], masks[k])
        assert scores["pointing_hit"].iloc[k] == hit == localization.pointing_game_hit(heatmaps[k], box)
        assert scores["iobb"].iloc[k] == pytest.approx(iobb) == localization.iobb(heatmaps[k], box)
        assert scores["iou"].iloc[k] == pytest.approx(iou) == localization.iou(heatmaps[k], box)


# --------------------------------------------------------------------------- the evaluation


def test_a_collection_without_regions_says_why():
    films = ExternalFilms("chexpert", external_label_map("chexpert"), ExternalOptions(), (), pd.DataFrame())
    result = located.localize_external("unused", films, pd.DataFrame())
    assert not result.available and result.reason == "CheXpert publishes no boxes or masks for these films"
    assert result.to_document() == {"available": False, "reason": result.reason}
    assert "PadChest publishes no boxes" in located.no_regions_reason("padchest")


@pytest.fixture(scope="module")
def external_run(tiny_run: Path, tmp_path_factory) -> Path:
    """A private copy of the tiny run (external.json is written into it)."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("localization_run") / "runs" / tiny_run.name,
                                ignore=shutil.ignore_patterns(run_folder.LAST_CHECKPOINT)))


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory) -> Path:
    return build_external_root(tmp_path_factory.mktemp("rsna") / "rsna",
                               ExternalRootSpec("rsna", n_patients=8, seed=2, image_size=64, positives_per_finding=4))


@pytest.fixture(scope="module")
def rsna_evaluation(external_run, rsna_root):
    return evaluate_external(external_run, load_external("rsna", rsna_root), n_bootstrap=N_BOOTSTRAP, device="cpu")


def test_rsna_phantoms_localize_every_box_of_a_positive_scored_film_as_an_independent_recomputation(
        external_run, rsna_root, rsna_evaluation):
    result = rsna_evaluation.localization
    assert result.available and result.synthetic
    with open(rsna_root / "stage_2_train_labels.csv", newline="") as handle:
        boxes = [row for row in csv.DictReader(handle) if row["Target"] == "1"]
    scored = rsna_evaluation.predictions.set_index("film")
    expected = [row for row in boxes if row["patientId"] in scored.index]
    assert len(expected) >= 4 and len(result.regions) == len(expected) == result.counts["regions_scored"]

    model, config, _ = run_folder.load_run_model(external_run)
    layer = model.stage(gradcam_layer_for(config.input_size, "auto", config.arch))
    regions = result.regions.reset_index(drop=True)
    heatmaps: dict[str, np.ndarray] = {}
    for k, row in enumerate(expected):  # regions keep the CSV's order
        assert regions.at[k, "film"] == row["patientId"]
        if row["patientId"] not in heatmaps:
            pixels = torch.from_numpy(prepare_film(scored.at[row["patientId"], "path"], config.cache_size).copy())
            inputs = prepare_batch(pixels[None, None], torch.device("cpu"), config.input_size, False)
            heatmaps[row["patientId"]] = gradcam(model, inputs, "Pneumonia", layer=layer)[0].numpy()
        heatmap = heatmaps[row["patientId"]]
        stored = 64  # the phantom films' size: the 1024-px box scaled onto it, then into the model frame
        box = tuple(float(row[c]) * stored / 1024 for c in ("x", "y", "width", "height"))
        mapped = localization.box_to_heatmap(box, stored, stored, config.input_size)
        assert regions.at[k, "pointing_hit"] == localization.pointing_game_hit(heatmap, mapped)
        assert regions.at[k, "iobb"] == pytest.approx(localization.iobb(heatmap, mapped), abs=1e-9)

    table = result.table.set_index(["finding", "metric"])
    everything = table.loc[(located.ALL_ROW, "pointing_game")]
    assert everything["gradcam"] == pytest.approx(regions["pointing_hit"].mean())
    assert everything["random"] == pytest.approx(regions["random_pointing_game"].mean())
    assert everything["ci_low"] <= everything["gradcam"] <= everything["ci_high"]
    assert everything["difference"] == pytest.approx(everything["gradcam"] - everything["random"])
    for t in located.T_IOU:
        assert table.loc[("Pneumonia", f"t_iou_{t:g}"), "gradcam"] == pytest.approx((regions["iou"] >= t).mean())
    assert 0 < everything["random"] < 1  # twenty random maps per box: a chance level, not a 0 or a 1


# VinDr-CXR's classes and the NIH findings each feeds, written out here (Nodule/Mass feeds both Mass and Nodule).
VINDR_FINDINGS = {"Atelectasis": ("Atelectasis",), "Cardiomegaly": ("Cardiomegaly",), "Pleural effusion": ("Effusion",),
                  "Infiltration": ("Infiltration",), "Nodule/Mass": ("Mass", "Nodule"),
                  "Pneumothorax": ("Pneumothorax",), "Consolidation": ("Consolidation",),
                  "Pulmonary fibrosis": ("Fibrosis",), "Pleural thickening": ("Pleural_Thickening",)}


@pytest.fixture(scope="module")
def vindr_root(tmp_path_factory) -> Path:
    return build_external_root(tmp_path_factory.mktemp("vindr") / "vindr",
                               ExternalRootSpec("vindr", n_patients=4, seed=2, image_size=64, positives_per_finding=1))


def test_vindr_phantoms_localize_every_box_of_a_positive_scored_film_as_an_independent_recomputation(
        external_run, vindr_root):
    # The films as scored (localize_external reads only their names, paths, patients and labels): the three films
    # positive for the fewest findings (one Grad-CAM map per film and finding: seconds on a CPU); the other films'
    # boxes are counted as on films not scored.
    films = load_external("vindr", vindr_root)
    nih_findings = sorted({finding for fed in VINDR_FINDINGS.values() for finding in fed})
    present = films.films[films.films["present"]]
    positives = present[nih_findings].eq(1).sum(axis=1)
    fewest = positives[positives > 0].sort_values(kind="stable").index[:3]
    scored = present.loc[fewest].set_index("film", drop=False)
    result = located.localize_external(external_run, films, scored.reset_index(drop=True), max_films=None,
                                       n_bootstrap=N_BOOTSTRAP, repeats=4, device="cpu", show_progress=False)
    assert result.available and result.synthetic and result.counts["malformed_rows"] == 0

    # Independently, from the root's CSV: each box of a class drawn by at least two of the film's readers (the
    # default min_readers), on a scored film labelled positive, once per NIH finding its class feeds.
    with open(vindr_root / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    readers: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        readers.setdefault((row["image_id"], row["class_name"]), set()).add(row["rad_id"])
    model, config, _ = run_folder.load_run_model(external_run)
    size, stored = config.input_size, 64  # the model frame; the phantom films' size, which the boxes were scaled to
    expected_scored, expected_tiny, on_other_films = {}, set(), 0
    for line, row in enumerate(rows, start=2):  # the header is line 1
        for finding in VINDR_FINDINGS.get(row["class_name"], ()):
            if row["image_id"] not in scored.index:
                on_other_films += 1
                continue
            if len(readers[(row["image_id"], row["class_name"])]) < 2 or scored.at[row["image_id"], finding] != 1:
                continue
            x_min, y_min, x_max, y_max = (float(row[c]) for c in ("x_min", "y_min", "x_max", "y_max"))
            assert 0 <= x_min < x_max <= stored and 0 <= y_min < y_max <= stored  # inside its phantom film
            mapped = localization.box_to_heatmap((x_min, y_min, x_max - x_min, y_max - y_min), stored, stored, size)
            if localization.box_mask(mapped, (size, size)).any():
                expected_scored[(line, finding)] = (row["image_id"], mapped)
            else:
                expected_tiny.add((line, finding))
    regions = result.regions
    assert len(expected_scored) >= 5 and set(zip(regions["row"], regions["finding"])) == set(expected_scored)
    assert len(regions) == len(expected_scored) == result.counts["regions_scored"]
    assert result.counts["on_films_not_scored"] == on_other_films > 0
    after_reading = result.set_apart.iloc[len(result.set_apart) - result.counts["set_apart_after_reading"]:]
    assert set(after_reading["reason"]) <= {"smaller than one pixel of the model frame"}  # none beyond its film
    assert {(row, value.split(" (")[0]) for row, value in zip(after_reading["row"], after_reading["value"])} \
        == expected_tiny

    layer = model.stage(gradcam_layer_for(config.input_size, "auto", config.arch))
    heatmaps: dict[tuple[str, str], np.ndarray] = {}
    for region in regions.itertuples():
        film, mapped = expected_scored[(region.row, region.finding)]
        if (film, region.finding) not in heatmaps:
            pixels = torch.from_numpy(prepare_film(scored.at[film, "path"], config.cache_size).copy())
            inputs = prepare_batch(pixels[None, None], torch.device("cpu"), size, False)
            heatmaps[(film, region.finding)] = gradcam(model, inputs, region.finding, layer=layer)[0].numpy()
        heatmap = heatmaps[(film, region.finding)]
        assert region.pointing_hit == localization.pointing_game_hit(heatmap, mapped)
        assert region.iobb == pytest.approx(localization.iobb(heatmap, mapped), abs=1e-9)
    table = result.table.set_index(["finding", "metric"])
    assert set(result.table["metric"]) == set(localization.metric_keys())
    assert set(result.table["finding"]) == {located.ALL_ROW, *regions["finding"]}
    everything = table.loc[(located.ALL_ROW, "pointing_game")]
    assert everything["gradcam"] == pytest.approx(regions["pointing_hit"].mean())
    assert everything["regions"] == len(regions) and everything["films"] == regions["film"].nunique()
    assert table.loc[(located.ALL_ROW, "t_iobb_0.5"), "gradcam"] == pytest.approx((regions["iobb"] >= 0.5).mean())


def test_the_localization_section_is_written_and_the_cap_draws_whole_patients_reproducibly(
        external_run, rsna_evaluation):
    saved = json.loads(write_external(rsna_evaluation).read_text())
    section = saved["localization"]
    assert saved == json.loads((external_run / "external" / "rsna" / RESULT_NAME).read_text())
    assert section["available"] is True and "SYNTHETIC" in section["note"] and section["sampled"]["max_films"] == 500
    assert {row["metric"] for row in section["table"]} == set(localization.metric_keys())
    assert section["settings"]["t_iobb"] == list(located.T_IOBB)

    films = rsna_evaluation.films
    capped = [located.localize_external(external_run, films, rsna_evaluation.predictions, max_films=2,
                                        n_bootstrap=10, seed=5, repeats=2, device="cpu", show_progress=False)
              for _ in range(2)]
    assert capped[0].sampled["films_chosen"] == 2 and capped[0].sampled["films_with_regions"] > 2
    assert set(capped[0].regions["film"]) == set(capped[1].regions["film"]) and capped[0].regions["film"].nunique() == 2
    pd.testing.assert_frame_equal(capped[0].table, capped[1].table)


def test_the_view_renders_the_localization_marked_synthetic(rsna_evaluation):
    import matplotlib.pyplot as plt

    from cxrutils.compare.external_validation import ExternalValidation
    from cxrutils.show import external_view as view

    result = ExternalValidation(evaluation=rsna_evaluation, models={}, requested_txv=[], missing_weights=[],
                                comparisons=pd.DataFrame(), headline_txv=None, random_txv=False)
    assert view.localization_available(result)
    assert "SYNTHETIC" in view.localization_note(result).data
    page = view.localization_display(result).to_html()
    assert "T(IoU) 0.7" in page and "pointing game" in page and "SYNTHETIC phantoms" in page
    counts = view.localization_counts_display(result).to_html()
    assert str(rsna_evaluation.localization.counts["regions_scored"]) in counts
    for figure in (view.localization_figure(result), view.localization_examples_figure(result)):
        titles = [text.get_text() for text in figure.texts] + [ax.get_title() for ax in figure.axes]
        assert any("SYNTHETIC" in title for title in titles)
        plt.close(figure)
