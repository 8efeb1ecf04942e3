"""benchmarks/bench_localization.py on the tiny run: it times the heatmaps the evaluation computes, whichever API.

The before/after timing of notebook 03's localization is only worth something if both
sides compute the evaluation's own maps: this checks the figures against the boxes counted
here, the maps against ``evaluation.localize``'s, and the older API's path (used for a
checkout before ``evaluation.run_box_heatmaps``) against the current one.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
from pytest import approx

from cxrutils.paths import PROJ_ROOT

SCRIPT = PROJ_ROOT / "benchmarks" / "bench_localization.py"
_spec = importlib.util.spec_from_file_location("bench_localization", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_the_bench_times_the_evaluations_maps_of_every_test_box_through_either_api(tiny_run, monkeypatch):
    from cxrutils.engine import run_folder
    from cxrutils.engine.gradcam import gradcam_films_per_pass, gradcam_layer_for
    from cxrutils.evaluate import evaluation, localization

    run = run_folder.open_run(tiny_run)
    test_films = set(run.dataset.metadata.query("split == 'test'")["image"]) & set(run.image_cache().usable_names)
    boxes = run.dataset.boxes[run.dataset.boxes["image"].isin(test_films)].reset_index(drop=True)
    layer = gradcam_layer_for(run.config.input_size, "auto", run.config.arch)
    located = evaluation.localize(run, boxes, layer, repeats=1, n_bootstrap=2)
    passes: list[int] = []
    box_heatmaps = localization.box_heatmaps

    def counted(*args, **kwargs):
        passes.append(kwargs["batch_size"])
        return box_heatmaps(*args, **kwargs)

    monkeypatch.setattr(localization, "box_heatmaps", counted)
    figures, maps = bench.measure(tiny_run, None)
    assert figures["boxes"] == len(located.boxes) > 0 and figures["films"] == located.boxes["image"].nunique()
    assert figures["heatmap_call"] == "evaluation.run_box_heatmaps" and figures["synthetic"] is True
    assert figures["seconds"] > 0 and figures["peak_rss_mb"] >= figures["peak_rss_mb_before_heatmaps"] > 0
    np.testing.assert_array_equal(maps, located.heatmaps)  # the evaluation's own maps
    # The evaluation's films per pass: inference's pixel bound at the run's input size, not the training batch.
    assert passes == [gradcam_films_per_pass(run.config.input_size)] != [run.config.batch_size]

    # A checkout from before run_box_heatmaps: its localize's call, the training batch a pass; the same maps.
    monkeypatch.delattr(evaluation, "run_box_heatmaps")
    old_figures, old_maps = bench.measure(tiny_run, None, max_boxes=3)
    assert old_figures["heatmap_call"].startswith("localization.box_heatmaps") and old_figures["boxes"] == 3
    assert passes[-1] == run.config.batch_size
    np.testing.assert_allclose(old_maps, maps[:3], atol=1e-5)


def test_the_command_writes_its_figures_and_compares_maps_saved_by_another_run(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # --code puts a checkout first: this one, then undone
    monkeypatch.setenv("PYTHONPATH", "")
    out, maps = tmp_path / "figures.json", tmp_path / "maps.npy"
    assert bench.main(["--run", str(tiny_run), "--max-boxes", "2", "--out", str(out), "--maps", str(maps),
                       "--code", str(PROJ_ROOT)]) == 0
    figures = json.loads(out.read_text())
    assert figures["boxes"] == 2 and figures["code"] == str(PROJ_ROOT) and np.load(maps).shape[0] == 2
    shifted = np.load(maps) + 0.25
    np.save(tmp_path / "other.npy", shifted)
    assert bench.main(["--run", str(tiny_run), "--max-boxes", "2", "--out", str(out), "--compare",
                       str(tmp_path / "other.npy")]) == 0
    assert json.loads(out.read_text())["largest_difference"] == approx(0.25, abs=1e-6)  # float32 maps
