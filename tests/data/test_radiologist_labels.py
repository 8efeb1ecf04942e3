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
