"""External validation (``evaluate.external``, ``compare.external_validation``) against independent computations.

The run is the tiny trained run, evaluated on its NIH test films (``predictions_test.csv``); the
collections are phantom roots in their published layouts, built from the metadata torchxrayvision
ships. Each figure is computed again here without the module: scikit-learn's AUROC on the mapped
labels read from the collection's own CSV with pandas, prevalences by counting, the drop from the
two bootstrap distributions, the operating point by thresholding, the probabilities through the
inference path (``inference.scoring.infer_films``), and the paired test through ``stats.delong``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.compare.external_provenance import TRAINED_ON, external_provenance, headline_model
from cxrutils.compare.external_validation import compare_on_collection, validate_external, write_external_validation
from cxrutils.compare.provenance import PROVENANCE
from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.data.external import COLLECTIONS, ExternalOptions, external_label_map, load_external
from cxrutils.demo.external_roots import ExternalRootSpec, build_external_root
from cxrutils.engine import run_folder
from cxrutils.engine.predict import predict_split
from cxrutils.evaluate.external import (
    RESULT_NAME,
    evaluate_external,
    external_dir,
    run_provenance,
    write_external,
)
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.stats.delong import delong_paired_test
from cxrutils.stats.intervals import percentile_interval

N_BOOTSTRAP = 40
CHEXPERT_CSV = "CheXpert-v1.0-small/train.csv"
# The CheXpert column a reader of the paper would score for each NIH finding the map takes from CheXpert.
CHEXPERT_COLUMNS = {"Atelectasis": "Atelectasis", "Cardiomegaly": "Cardiomegaly", "Effusion": "Pleural Effusion",
                    "Pneumonia": "Pneumonia", "Pneumothorax": "Pneumothorax", "Consolidation": "Consolidation",
                    "Edema": "Edema"}


@pytest.fixture(scope="module")
def evaluated_run(tiny_run: Path, tmp_path_factory) -> Path:
    """A private copy of the tiny run, scored on its NIH test films (the home side)."""
    run_dir = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("external_run") / "runs" / tiny_run.name,
                                   ignore=shutil.ignore_patterns(run_folder.LAST_CHECKPOINT)))
    predict_split(run_folder.open_run(run_dir), "test")
    return run_dir


@pytest.fixture(scope="module")
def chexpert_root(tmp_path_factory) -> Path:
    """A phantom CheXpert root with one listed film deleted and one film's file replaced by garbage."""
    root = build_external_root(tmp_path_factory.mktemp("chexpert") / "chexpert",
                               ExternalRootSpec("chexpert", n_patients=10, seed=5, image_size=64,
                                                positives_per_finding=1))
    films = load_external("chexpert", root).present
    Path(films["path"].iloc[0]).unlink()  # listed, not on disk: missing
    Path(films["path"].iloc[1]).write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")  # there, does not decode: refused
    return root


@pytest.fixture(scope="module")
def chexpert_evaluation(evaluated_run, chexpert_root):
    films = load_external("chexpert", chexpert_root)
    return evaluate_external(evaluated_run, films, n_bootstrap=N_BOOTSTRAP, num_workers=0)


def _independent_chexpert_labels(root: Path) -> pd.DataFrame:
    """The frontal rows of the root's train.csv with each mapped finding as 1 / 0 / NaN (uncertain excluded)."""
    raw = pd.read_csv(root / CHEXPERT_CSV, dtype=str, keep_default_na=False)
    raw = raw[raw["Frontal/Lateral"] == "Frontal"]
    labels = pd.DataFrame({"film": raw["Path"].to_numpy()})
    for finding, column in CHEXPERT_COLUMNS.items():
        values = raw[column].to_numpy()
        labels[finding] = np.where(np.isin(values, ["1.0", "1"]), 1.0,
                                   np.where(np.isin(values, ["-1.0", "-1"]), np.nan, 0.0))
    return labels.set_index("film")


def test_every_figure_of_a_mapped_finding_matches_an_independent_computation(evaluated_run, chexpert_root,
                                                                           chexpert_evaluation):
    evaluation = chexpert_evaluation
    scored = evaluation.predictions.set_index("film")
    labels = _independent_chexpert_labels(chexpert_root).loc[scored.index]
    home = run_folder.read_predictions(evaluated_run, "test")
    table = evaluation.findings
    checked = 0
    for finding in CHEXPERT_COLUMNS:
        row = table.loc[finding]
        known = labels[finding].notna()
        y, p = labels.loc[known, finding].to_numpy(), scored.loc[known, probability_column(finding)].to_numpy()
        assert row["status"] == "mapped"
        assert row["away_positives"] == int(y.sum()) and row["away_negatives"] == int((y == 0).sum())
        assert row["away_prevalence"] == pytest.approx(y.mean())
        assert row["away_excluded"] == int((~known).sum())
        assert row["home_prevalence"] == pytest.approx(home[finding].mean())
        assert row["home_positives"] == int(home[finding].sum()) and row["home_films"] == len(home)
        if np.isfinite(row["away_auroc"]):
            assert row["away_auroc"] == pytest.approx(roc_auc_score(y, p))
            assert row["away_ci_low"] <= row["away_auroc"] <= row["away_ci_high"]
            checked += 1
        if np.isfinite(row["home_auroc"]):
            assert row["home_auroc"] == pytest.approx(roc_auc_score(home[finding], home[probability_column(finding)]))
        if np.isfinite(row["drop"]):
            assert row["drop"] == pytest.approx(row["home_auroc"] - row["away_auroc"])
            home_draws, away_draws = evaluation.home_draws[finding].draws, evaluation.away_draws[finding].draws
            low, high, _ = percentile_interval(home_draws - away_draws)
            assert (row["drop_ci_low"], row["drop_ci_high"]) == pytest.approx((low, high))
            # Different patients: the two sides are not resampled alike (independent draws, not the same ones).
            assert not np.allclose(home_draws, away_draws, equal_nan=True)
    assert checked >= 3


def test_operating_points_use_the_runs_validation_thresholds_untouched(evaluated_run, chexpert_root,
                                                                      chexpert_evaluation):
    thresholds = json.loads((evaluated_run / run_folder.THRESHOLDS_NAME).read_text())["youden"]
    scored = chexpert_evaluation.predictions.set_index("film")
    labels = _independent_chexpert_labels(chexpert_root).loc[scored.index]
    for finding, row in chexpert_evaluation.operating.iterrows():
        cut = thresholds[finding]
        assert (row["threshold"] if cut is not None else None) == (cut if cut is None else pytest.approx(cut))
        if cut is None:
            continue
        known = labels[finding].notna()
        called = scored.loc[known, probability_column(finding)].to_numpy() >= cut
        truth = labels.loc[known, finding].to_numpy() == 1
        assert (row["tp"], row["fp"], row["fn"]) == ((called & truth).sum(), (called & ~truth).sum(),
                                                     (~called & truth).sum())


def test_findings_the_collection_does_not_label_are_listed_with_the_maps_reason_and_never_scored(chexpert_evaluation):
    label_map = external_label_map("chexpert")
    shown = chexpert_evaluation.not_available.set_index("finding")["reason"]
    assert list(shown.index) == list(label_map.not_available) and "Infiltration" in shown.index
    for finding in label_map.not_available:
        assert shown[finding] == label_map[finding].reason
        assert np.isnan(chexpert_evaluation.findings.loc[finding, "away_auroc"])
    assert set(chexpert_evaluation.operating.index) <= set(label_map.mapped)


def test_a_missing_film_and_an_unreadable_one_are_reported_and_the_rest_is_scored(chexpert_root, chexpert_evaluation):
    films = load_external("chexpert", chexpert_root)
    evaluation = chexpert_evaluation
    assert len(evaluation.missing) == 1 and evaluation.missing["film"].iloc[0] in set(films.missing)
    assert len(evaluation.refused) == 1 and evaluation.refused["reason"].iloc[0]
    assert len(evaluation.predictions) == len(films.present) - 1
    assert not set(evaluation.refused["film"]) & set(evaluation.predictions["film"])
    assert np.isfinite(evaluation.predictions[[probability_column(f) for f in FINDINGS]].to_numpy()).all()


def test_films_are_scored_as_the_inference_path_scores_them(evaluated_run, chexpert_evaluation):
    from cxrutils.inference.scoring import infer_films

    sample = chexpert_evaluation.predictions.head(4)
    inferred = infer_films(evaluated_run, sample["path"].tolist(), with_gradcam=False, num_workers=0,
                           show_progress=False).table.set_index("path")
    columns = [probability_column(f) for f in FINDINGS]
    np.testing.assert_allclose(inferred.loc[sample["path"], columns].to_numpy(), sample[columns].to_numpy(),
                               atol=2e-6)


def test_subgroups_apply_the_minimum_positive_patients_rule(chexpert_evaluation):
    subgroups = chexpert_evaluation.subgroups
    assert set(subgroups["subgroup"]) <= {"sex", "age band", "view"}
    scored = subgroups[subgroups["auroc"].notna()]
    assert (scored["positive_patients"] >= chexpert_evaluation.subgroup_min_positive_patients).all()


def test_the_result_is_written_under_external_and_names_stay_text(evaluated_run, chexpert_evaluation):
    saved = write_external(chexpert_evaluation)
    assert saved == external_dir(evaluated_run, "chexpert") / RESULT_NAME
    document = json.loads(saved.read_text())
    assert document["collection"] == "chexpert" and document["synthetic"] is True
    assert {row["finding"] for row in document["not_available"]} == set(external_label_map("chexpert").not_available)
    assert len(document["missing"]) == 1 and len(document["refused"]) == 1
    assert document["bootstrap"]["n_resamples"] == N_BOOTSTRAP
    # A hostile film name is carried as text, not interpreted (printable JSON, a spreadsheet-safe CSV).
    hostile = chexpert_evaluation.predictions.copy()
    hostile.loc[0, "film"] = "=HYPERLINK(\"x\")<script>\udcff.jpg"
    chexpert_evaluation.predictions, original = hostile, chexpert_evaluation.predictions
    try:
        saved = write_external(chexpert_evaluation)
    finally:
        chexpert_evaluation.predictions = original
    text = (saved.parent / "predictions.csv").read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and "\\xff.jpg" in text


# --------------------------------------------------------------------------- provenance


@pytest.mark.parametrize(("model", "collection", "external"), [
    ("densenet121-res224-chex", "chexpert", False), ("densenet121-res224-chex", "padchest", True),
    ("densenet121-res224-pc", "padchest", False), ("densenet121-res224-pc", "chexpert", True),
    ("densenet121-res224-all", "chexpert", False), ("densenet121-res224-all", "padchest", False),
    ("densenet121-res224-all", "vindr", True), ("resnet50-res512-all", "vindr", False),
    ("densenet121-res224-nih", "chexpert", True), ("densenet121-res224-nih", "rsna", False),
    ("densenet121-res224-nih", "siim", False), ("densenet121-res224-rsna", "siim", False),
    ("densenet121-res224-rsna", "rsna", False), ("densenet121-res224-mimic_nb", "siim", True),
])
def test_a_model_is_external_only_where_it_never_trained_on_the_films(model, collection, external):
    origin = external_provenance(model, collection)
    assert origin.external is external and origin.verdict == ("external" if external else "not external")
    assert origin.why and origin.sources


def test_every_torchxrayvision_model_has_its_external_provenance_and_the_headline_is_never_not_external():
    assert set(TRAINED_ON) == set(PROVENANCE)
    for collection in COLLECTIONS:
        lead = headline_model(list(TRAINED_ON), collection)
        assert lead is None or external_provenance(lead, collection).external
    assert headline_model(["densenet121-res224-chex", "densenet121-res224-pc"], "chexpert") == "densenet121-res224-pc"
    assert headline_model(["densenet121-res224-pc"], "padchest") is None
    # A run trained on NIH films is not external on NIH films relabelled.
    assert [run_provenance(c)["external"] for c in COLLECTIONS] == [c not in ("rsna", "siim") for c in COLLECTIONS]


# --------------------------------------------------------------------------- TorchXRayVision and the summary


@pytest.fixture(scope="module")
def padchest_validation(evaluated_run, tmp_path_factory):
    root = build_external_root(tmp_path_factory.mktemp("padchest") / "padchest",
                               ExternalRootSpec("padchest", n_patients=6, seed=2, image_size=64,
                                                positives_per_finding=1))
    empty = tmp_path_factory.mktemp("no_weights")
    return validate_external(evaluated_run, "padchest", root, n_bootstrap=N_BOOTSTRAP, max_films=14,
                             txv_models=["densenet121-res224-pc", "densenet121-res224-chex"], random_txv=True,
                             weights_dir=empty)


def test_torchxrayvision_on_the_same_films_with_provenance_and_a_paired_test(padchest_validation):
    result = padchest_validation
    assert list(result.models) == ["run", "densenet121-res224-pc", "densenet121-res224-chex"]
    pc, chex = result.models["densenet121-res224-pc"], result.models["densenet121-res224-chex"]
    assert (pc.external, chex.external) == (False, True) and result.headline_txv == "densenet121-res224-chex"
    assert RANDOM_INIT_LABEL in pc.display_name and result.headline.startswith(RANDOM_INIT_LABEL)
    films = result.evaluation.predictions
    assert list(pc.away["film"]) == list(films["film"])  # the very films the run scored
    assert set(chex.findings) <= set(pc.findings) <= set(external_label_map("padchest").mapped)
    tested = result.comparisons[result.comparisons["p_value"].notna()]
    assert len(tested) >= 1
    for _, row in tested.iterrows():
        model = result.models[row["model"]]
        column = probability_column(row["finding"])
        known = films[row["finding"]].notna().to_numpy()
        paired = delong_paired_test(films.loc[known, row["finding"]].astype(int), films.loc[known, column],
                                    model.away.loc[known, column], clusters=films.loc[known, "patient_id"])
        assert row["difference"] == pytest.approx(paired.difference)
        assert row["p_value"] == pytest.approx(paired.p_value)
        assert ("not external" in row["verdict"]) is (not model.external)
    # The drop of each model, and the difference of the drops, from the same draws.
    for name, model in result.models.items():
        for finding, row in model.table.iterrows():
            if np.isfinite(row["drop"]):
                assert row["drop"] == pytest.approx(row["home_auroc"] - row["away_auroc"])
    saved = write_external_validation(result)
    document = json.loads(saved.read_text())
    assert document["models"]["densenet121-res224-pc"]["verdict"] == "not external"
    assert document["headline_txv"] == "densenet121-res224-chex" and document["random_txv"] is True


def test_missing_weights_are_listed_with_file_folder_and_url_and_the_run_is_still_scored(evaluated_run, tmp_path):
    root = build_external_root(tmp_path / "chexpert", ExternalRootSpec("chexpert", n_patients=2, seed=1,
                                                                       image_size=64, positives_per_finding=0))
    result = validate_external(evaluated_run, "chexpert", root, n_bootstrap=10,
                               txv_models=["densenet121-res224-chex"], weights_dir=tmp_path / "nothing_here")
    assert list(result.models) == ["run"] and result.headline_txv is None
    (missing,) = result.missing_weights
    assert missing.model == "densenet121-res224-chex" and missing.folder == tmp_path / "nothing_here"
    assert missing.url.startswith("https://") and result.comparisons.empty
    assert compare_on_collection(result.models["run"], [], result.evaluation.predictions, 10, 0).empty
    assert ExternalOptions().uncertain == result.evaluation.films.options.uncertain == "exclude"


def test_a_finding_without_films_both_models_scored_is_listed_untested_not_fatal():
    from cxrutils.compare.external_validation import ModelOnCollection

    films = pd.DataFrame({"film": ["a.jpg", "b.jpg"], "patient_id": ["1", "2"], **{f: [np.nan, np.nan] for f in FINDINGS}})
    away = films[["film", "patient_id"]].assign(**{probability_column("Atelectasis"): [0.1, 0.2]})
    run = ModelOnCollection("run", "the run", True, "", False, ("Atelectasis",), pd.DataFrame(), away)
    other = ModelOnCollection("m", "a model", True, "", False, ("Atelectasis",), pd.DataFrame(), away)
    (row,) = compare_on_collection(run, [other], films, 10, 0).to_dict(orient="records")
    assert row["films"] == 0 and row["verdict"].startswith("not tested") and "no film" in row["note"]


def test_external_reports_go_to_their_own_folder_and_the_index_lists_them_escaped(tmp_path):
    """Notebook 07 runs on request only, into reports/external/<run>-<collection>/, listed under its own heading."""
    from cxrutils.publish import runner
    from cxrutils.settings import SettingsError, load_profile

    available = runner.notebook_paths()
    assert "07_external_validation" not in {p.stem for p in runner.select_notebooks(load_profile("demo"), [],
                                                                                       available)}
    profile = load_profile("external")
    assert [p.stem for p in runner.select_notebooks(profile, [], available)] == ["07_external_validation"]
    assert runner.report_folder_name(profile) == "external/demo-chexpert"
    hostile = {**profile, "parameters": {**profile["parameters"], "collection": "../x"}}
    with pytest.raises(SettingsError, match="plain folder name"):
        runner.report_folder_name(hostile)
    folder = tmp_path / "reports" / "external" / "a#b-padchest"
    folder.mkdir(parents=True)
    (folder / runner.INDEX_JSON_NAME).write_text(json.dumps({"07_external_validation": {
        "status": "ok", "headline": "AUROC away <b>0.71</b>", "synthetic": True,
        "data_source": "SYNTHETIC phantom PadChest", "finished_at": "2026-12-05T20:00:00"}}))
    page = runner.write_runs_index(tmp_path / "reports").read_text()
    assert "<h2>External validation</h2>" in page and "href='external/a%23b-padchest/index.html'" in page
    assert "AUROC away &lt;b&gt;0.71&lt;/b&gt;" in page and "<b>0.71" not in page


def test_an_external_report_folder_gets_no_copy_of_the_runs_model_card(tmp_path):
    from cxrutils.publish import runner
    from cxrutils.settings import load_profile

    assert runner.write_card_if_trained(load_profile("external"), tmp_path) is None
    assert not list(tmp_path.iterdir())
