"""Google's radiologist labels (Majkowska et al. 2019): the shipped file, the mapping, and the scores against them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from cxrutils.data.metadata import SHIPPED_METADATA_NAME, read_metadata, shipped_data_file
from cxrutils.data.radiologist_labels import (
    AIRSPACE_FINDINGS,
    MAPPING,
    NOT_SCORED,
    RadiologistLabelsError,
    read_radiologist_labels,
)
from cxrutils.evaluate.radiologist import score_against_radiologists
from cxrutils.labels import FINDINGS
from cxrutils.predictions import predictions_table


@pytest.fixture(scope="module")
def radiologist() -> pd.DataFrame:
    return read_radiologist_labels()


def test_the_shipped_file_holds_the_published_sets(radiologist: pd.DataFrame) -> None:
    # Majkowska et al. 2019: 1,962 test films of 860 patients, 2,414 validation films; 4 findings as 0/1.
    assert len(radiologist) == 4376 and radiologist.index.is_unique
    assert radiologist["set"].value_counts().to_dict() == {"val": 2414, "test": 1962}
    assert radiologist.loc[radiologist["set"] == "test", "patient_id"].nunique() == 860
    for finding in ("Pneumothorax", "Nodule or mass", "Airspace opacity", "Fracture"):
        assert set(radiologist[finding].unique()) <= {0, 1} and 0 < radiologist[finding].sum() < len(radiologist)
    # Its patients are NIH's: every labelled film is in the shipped NIH metadata, with the same patient.
    metadata = read_metadata(shipped_data_file(SHIPPED_METADATA_NAME)).set_index("image")
    assert radiologist.index.isin(metadata.index).all()
    assert (metadata.loc[radiologist.index, "patient_id"].to_numpy() == radiologist["patient_id"].to_numpy()).all()


def test_the_mapping_covers_three_findings_and_says_why_fracture_is_not_scored() -> None:
    assert MAPPING == {"Pneumothorax": ("Pneumothorax",), "Nodule or mass": ("Nodule", "Mass"),
                       "Airspace opacity": AIRSPACE_FINDINGS}
    assert set(AIRSPACE_FINDINGS) <= set(FINDINGS) and "Atelectasis" not in AIRSPACE_FINDINGS
    assert "Fracture" in NOT_SCORED and "Fracture" not in MAPPING


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.drop(columns=["Fracture"]), "missing column"),
    (lambda raw: raw.assign(Pneumothorax="maybe"), "YES or NO"),
])
def test_a_malformed_file_is_refused_with_its_name(tmp_path, change, message) -> None:
    raw = pd.DataFrame({"Image Index": ["00000001_000.png"], "Patient ID": ["1"], "Set Id": ["test"],
                        "Fracture": ["NO"], "Pneumothorax": ["YES"], "Airspace opacity": ["NO"],
                        "Nodule or mass": ["NO"]})
    path = tmp_path / "labels.csv"
    change(raw).to_csv(path, index=False)
    with pytest.raises(RadiologistLabelsError, match=message) as caught:
        read_radiologist_labels(str(path))
    assert str(path) in str(caught.value)


def _predictions(radiologist: pd.DataFrame, n_labelled: int, n_other: int, findings=FINDINGS, seed: int = 0):
    """A predictions table on real Google test films (plus films without radiologist labels), labels NIH-like."""
    rng = np.random.default_rng(seed)
    labelled = radiologist[radiologist["set"] == "test"].iloc[:n_labelled]
    images = list(labelled.index) + [f"9999{k:04d}_000.png" for k in range(n_other)]
    patients = list(labelled["patient_id"]) + list(range(10**6, 10**6 + n_other))
    labels = rng.random((len(images), len(FINDINGS))) < 0.3
    # Scores that follow the radiologists a little, so the AUROCs are not all 0.5.
    scores = rng.random((len(images), len(findings)))
    for finding, outputs in MAPPING.items():
        for output in outputs:
            if output in findings:
                scores[:n_labelled, list(findings).index(output)] += 0.3 * labelled[finding].to_numpy()
    return predictions_table(images, patients, scores, labels, findings=findings), labelled


def test_scores_are_sklearn_aurocs_of_the_mapped_outputs_against_both_label_sets(radiologist: pd.DataFrame) -> None:
    table, labelled = _predictions(radiologist, n_labelled=600, n_other=50)
    result = score_against_radiologists(table, radiologist, n_resamples=30, seed=1)
    assert result is not None
    assert result.films == 600 and result.patients == labelled["patient_id"].nunique() and result.sets == {"test": 600}
    on_films = table.iloc[:600]
    for finding, outputs in MAPPING.items():
        row = result.table.loc[finding]
        score = on_films[[f"prob_{o}" for o in outputs]].max(axis=1)
        nih = on_films[list(outputs)].max(axis=1)
        truth = labelled[finding].to_numpy()
        assert row["AUROC (radiologists)"] == pytest.approx(roc_auc_score(truth, score), abs=1e-12)
        assert row["AUROC (NIH labels)"] == pytest.approx(roc_auc_score(nih, score), abs=1e-12)
        assert row["radiologist positives"] == truth.sum() and row["NIH positives"] == nih.sum()
        assert row["agreement"] == pytest.approx((truth == nih).mean())
        assert row["kappa"] == pytest.approx(cohen_kappa_score(truth, nih))
        assert row["radiologists CI low"] <= row["AUROC (radiologists)"] <= row["radiologists CI high"]
        assert row["scored by"] == " / ".join(outputs)


def test_a_model_without_some_outputs_is_scored_on_those_it_has(radiologist: pd.DataFrame) -> None:
    findings = [f for f in FINDINGS if f not in ("Nodule", "Pneumothorax")]  # e.g. a CheXpert-labelled model
    table, labelled = _predictions(radiologist, n_labelled=400, n_other=0, findings=findings)
    result = score_against_radiologists(table, radiologist, n_resamples=20)
    nodule_or_mass = result.table.loc["Nodule or mass"]
    assert nodule_or_mass["scored by"] == "Mass"
    assert nodule_or_mass["AUROC (radiologists)"] == pytest.approx(
        roc_auc_score(labelled["Nodule or mass"], table["prob_Mass"]))
    assert result.table.loc["Pneumothorax", "scored by"] == "no output of this model"
    assert np.isnan(result.table.loc["Pneumothorax", "AUROC (radiologists)"])


def test_films_without_radiologist_labels_give_no_result(radiologist: pd.DataFrame) -> None:
    table, _ = _predictions(radiologist, n_labelled=0, n_other=40)
    assert score_against_radiologists(table, radiologist, n_resamples=10) is None


def _resampled_auroc_by_definition(truth: np.ndarray, score: np.ndarray, patients: np.ndarray,
                                   counts: np.ndarray) -> float:
    """One resample's AUROC by sklearn, each film weighted by how often its patient was drawn."""
    codes = pd.factorize(patients)[0]
    weights = counts[codes]
    keep = weights > 0
    if len(set(truth[keep])) < 2:
        return np.nan
    return roc_auc_score(truth[keep], score[keep], sample_weight=weights[keep])


def test_the_difference_between_reference_standards_is_paired_on_the_same_patient_draws(radiologist) -> None:
    """Radiologists minus NIH: the point from sklearn, the interval from the same draws recomputed by definition."""
    from cxrutils.stats.metrics import _patient_draw_chunks

    table, labelled = _predictions(radiologist, n_labelled=300, n_other=0, seed=3)
    n_resamples, seed = 200, 5
    result = score_against_radiologists(table, radiologist, n_resamples=n_resamples, seed=seed)
    patients = table["patient_id"].to_numpy()
    n_patients = pd.unique(patients).size
    draws = np.concatenate(list(_patient_draw_chunks(n_patients, n_resamples, seed)))
    for finding, outputs in MAPPING.items():
        score = table[[f"prob_{o}" for o in outputs]].max(axis=1).to_numpy()
        truth, nih = labelled[finding].to_numpy(), table[list(outputs)].max(axis=1).to_numpy()
        row = result.table.loc[finding]
        assert row["difference (radiologists - NIH)"] == pytest.approx(
            roc_auc_score(truth, score) - roc_auc_score(nih, score), abs=1e-12)
        differences = np.array([_resampled_auroc_by_definition(truth, score, patients, counts)
                                - _resampled_auroc_by_definition(nih, score, patients, counts) for counts in draws])
        low, high = np.nanquantile(differences, [0.025, 0.975])
        assert row["difference CI low"] == pytest.approx(low, abs=1e-9)
        assert row["difference CI high"] == pytest.approx(high, abs=1e-9)
    # Identical label sets differ by exactly zero in every resample: a paired interval, not two unpaired ones.
    same = radiologist.copy()
    for finding, outputs in MAPPING.items():
        same.loc[labelled.index, finding] = table[list(outputs)].max(axis=1).to_numpy().astype(np.int8)
    paired = score_against_radiologists(table, same, n_resamples=50, seed=0).table
    assert (paired.loc[list(MAPPING), ["difference (radiologists - NIH)", "difference CI low",
                                       "difference CI high"]].to_numpy() == 0).all()


def test_airspace_opacity_is_also_scored_by_each_mapped_output_alone(radiologist) -> None:
    table, labelled = _predictions(radiologist, n_labelled=400, n_other=0, seed=2)
    result = score_against_radiologists(table, radiologist, n_resamples=20, seed=0)
    assert list(result.heads.index) == list(AIRSPACE_FINDINGS)
    nih = table[list(AIRSPACE_FINDINGS)].max(axis=1)
    for output in AIRSPACE_FINDINGS:
        row = result.heads.loc[output]
        assert row["AUROC (radiologists)"] == pytest.approx(
            roc_auc_score(labelled["Airspace opacity"], table[f"prob_{output}"]), abs=1e-12)
        assert row["AUROC (NIH labels)"] == pytest.approx(roc_auc_score(nih, table[f"prob_{output}"]), abs=1e-12)
        assert row["radiologists CI low"] <= row["AUROC (radiologists)"] <= row["radiologists CI high"]
    document = result.to_document()
    assert "highest probability" in document["combination_rule"] and len(document["airspace_heads"]) == 4


def test_a_fracture_output_is_scored_against_the_radiologists_only(radiologist) -> None:
    """TorchXRayVision's Fracture output: NIH has no fracture label, so only the radiologists' AUROC exists."""
    table, labelled = _predictions(radiologist, n_labelled=500, n_other=20, seed=4)
    without = score_against_radiologists(table, radiologist, n_resamples=10)
    assert "Fracture" not in without.table.index and "Fracture" in without.to_document()["not_scored"]
    rng = np.random.default_rng(0)
    fracture = rng.random(len(table))
    fracture[:500] += 0.5 * labelled["Fracture"].to_numpy()
    table["prob_Fracture"] = fracture
    result = score_against_radiologists(table, radiologist, n_resamples=30, seed=1)
    row = result.table.loc["Fracture"]
    assert row["AUROC (radiologists)"] == pytest.approx(roc_auc_score(labelled["Fracture"], fracture[:500]), abs=1e-12)
    assert row["radiologists CI low"] <= row["AUROC (radiologists)"] <= row["radiologists CI high"]
    assert np.isnan(row["AUROC (NIH labels)"]) and np.isnan(row["difference (radiologists - NIH)"])
    document = result.to_document()
    assert document["scored_against_radiologists_only"] == ["Fracture"] and "Fracture" not in document["not_scored"]
    # The mapped findings are scored exactly as without the extra column.
    pd.testing.assert_frame_equal(result.table.loc[list(MAPPING)], score_against_radiologists(
        table.drop(columns="prob_Fracture"), radiologist, n_resamples=30, seed=1).table, check_dtype=False)


def test_radiologist_only_outputs_are_found_by_name_in_a_txv_models_outputs() -> None:
    from cxrutils.compare.txv import TXV_PATHOLOGIES, radiologist_only_outputs

    assert radiologist_only_outputs(TXV_PATHOLOGIES) == {"Fracture": list(TXV_PATHOLOGIES).index("Fracture")}
    untrained = ["" if name == "Fracture" else name for name in TXV_PATHOLOGIES]
    assert radiologist_only_outputs(untrained) == {}
