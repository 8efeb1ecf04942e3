"""Comparing our model with a TorchXRayVision model on synthetic paired predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.compare import comparison
from cxrutils.compare.comparison import LEAKAGE_CAVEAT, pair_with_txv
from cxrutils.compare.txv import RANDOM_INIT_LABEL
from cxrutils.labels import FINDINGS
from cxrutils.stats import paired as paired_stats
from cxrutils.stats.delong import adjust_p_values
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.stats.paired import classification_comparison, compare_auroc, side_by_side, subgroup_comparison
from cxrutils.stats.thresholds import choose_thresholds

# The findings a CheXpert-trained model scores.
SHARED = ["Atelectasis", "Cardiomegaly", "Effusion", "Pneumonia", "Pneumothorax", "Consolidation", "Edema"]


def _predictions(n_patients: int = 250, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Ours (14 findings), TorchXRayVision's (7, shuffled rows), and metadata, on the same films.

    Ours is clearly better on Effusion; both give identical scores on Edema; Hernia
    has a single positive.
    """
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 5, n_patients)
    patient_ids = np.repeat(np.arange(1000, 1000 + n_patients), films)
    n = patient_ids.size
    images = [f"{p:08d}_{k:03d}.png" for p, k in zip(patient_ids, np.concatenate([np.arange(f) for f in films]))]
    tendency = rng.normal(size=(n_patients, len(FINDINGS)))[patient_ids - 1000]
    labels = (tendency + rng.normal(size=tendency.shape) > 1.3).astype(int)
    labels[:, FINDINGS.index("Hernia")] = 0
    labels[5, FINDINGS.index("Hernia")] = 1
    signal_ours = np.full(len(FINDINGS), 1.2)
    ours_scores = signal_ours * labels + rng.normal(size=labels.shape)
    txv_scores = 1.0 * labels + rng.normal(size=labels.shape)
    effusion, edema = FINDINGS.index("Effusion"), FINDINGS.index("Edema")
    ours_scores[:, effusion] = 3.0 * labels[:, effusion] + rng.normal(size=n)
    txv_scores[:, effusion] = 0.2 * labels[:, effusion] + rng.normal(size=n)
    txv_scores[:, edema] = ours_scores[:, edema]
    ours = pd.DataFrame({"image": images, "patient_id": patient_ids})
    sigmoid = 1 / (1 + np.exp(-ours_scores))
    for k, finding in enumerate(FINDINGS):
        ours[f"prob_{finding}"] = sigmoid[:, k]
    for k, finding in enumerate(FINDINGS):
        ours[finding] = labels[:, k]
    txv = pd.DataFrame({"image": images, "patient_id": patient_ids})
    for finding in SHARED:
        txv[f"prob_{finding}"] = 1 / (1 + np.exp(-txv_scores[:, FINDINGS.index(finding)]))
    for k, finding in enumerate(FINDINGS):
        txv[finding] = labels[:, k]
    txv = txv.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    sexes = rng.choice(["M", "F"], n_patients)[patient_ids - 1000]
    metadata = pd.DataFrame({"image": images, "patient_id": patient_ids, "sex": sexes,
                             "view": rng.choice(["PA", "AP"], n)})
    return ours, txv, metadata


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    return _predictions()


@pytest.fixture(scope="module")
def paired(frames: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> paired_stats.PairedPredictions:
    ours, txv, _ = frames
    return pair_with_txv(ours, txv, txv_name="densenet121-res224-chex")


@pytest.fixture(scope="module")
def result(paired: paired_stats.PairedPredictions) -> paired_stats.AurocComparison:
    return compare_auroc(paired, n_resamples=300, seed=1)


# --------------------------------------------------------------------------- pairing


def test_pairing_aligns_rows_and_keeps_only_shared_findings(frames, paired) -> None:
    ours, txv, _ = frames
    assert paired.findings == [f for f in FINDINGS if f in SHARED]
    np.testing.assert_array_equal(paired.images, ours["image"].to_numpy())
    by_image = txv.set_index("image")
    np.testing.assert_allclose(paired.txv[:, paired.findings.index("Effusion")],
                               by_image.loc[paired.images, "prob_Effusion"].to_numpy())
    np.testing.assert_array_equal(paired.labels[:, 0], ours["Atelectasis"].to_numpy())


def test_pairing_refuses_different_images_labels_or_patients(frames) -> None:
    ours, txv, _ = frames
    with pytest.raises(ValueError, match=r"1 only in ours .*" + ours["image"].iloc[0]):
        pair_with_txv(ours, txv[txv["image"] != ours["image"].iloc[0]], txv_name="densenet121-res224-chex")
    flipped = txv.copy()
    flipped.loc[:2, "Effusion"] = 1 - flipped.loc[:2, "Effusion"]
    with pytest.raises(ValueError, match="Effusion differs .* on 3 images"):
        pair_with_txv(ours, flipped, txv_name="densenet121-res224-chex")
    moved = txv.copy()
    moved.loc[0, "patient_id"] = -1
    with pytest.raises(ValueError, match="different patient ids"):
        pair_with_txv(ours, moved, txv_name="densenet121-res224-chex")
    with pytest.raises(ValueError, match="no .*prob_<finding>.* column"):
        pair_with_txv(ours, txv[["image", "patient_id", "Effusion"]], txv_name="densenet121-res224-chex")
    only_hernia = txv[["image", "patient_id", "Effusion"]].assign(prob_Hernia=0.5)
    with pytest.raises(ValueError, match="no finding is scored by both"):
        pair_with_txv(ours.drop(columns="prob_Hernia"), only_hernia, txv_name="densenet121-res224-chex")


def test_caveats_follow_the_model_and_random_weights(frames) -> None:
    ours, txv, _ = frames
    nih = pair_with_txv(ours, txv, txv_name="densenet121-res224-nih")
    assert any(LEAKAGE_CAVEAT in c for c in nih.caveats)
    assert any(LEAKAGE_CAVEAT in c for c in comparison.comparison_caveats("densenet121-res224-rsna"))
    chex = pair_with_txv(ours, txv, txv_name="densenet121-res224-chex")
    assert not any(LEAKAGE_CAVEAT in c for c in chex.caveats) and any("CheXpert" in c for c in chex.caveats)
    # An NIH-trained model's validation-chosen thresholds come from films it likely trained on, and the report says so.
    assert any("thresholds are chosen" in c for c in comparison.comparison_caveats("densenet121-res224-nih"))
    assert not any("thresholds are chosen" in c for c in chex.caveats)
    fake = pair_with_txv(ours, txv, txv_name="densenet121-res224-all", random_init=True)
    assert RANDOM_INIT_LABEL in fake.names["txv"] and any(RANDOM_INIT_LABEL in c for c in fake.caveats)
    assert "NIH ChestX-ray14" in LEAKAGE_CAVEAT and "official test" in LEAKAGE_CAVEAT


# --------------------------------------------------------------------------- AUROC


def test_per_class_aurocs_and_differences_are_the_real_ones(paired, result) -> None:
    table = result.table
    assert list(table.index) == paired.findings + [MEAN_ROW]
    for k, finding in enumerate(paired.findings):
        assert table.loc[finding, "auroc_ours"] == pytest.approx(roc_auc_score(paired.labels[:, k], paired.ours[:, k]))
        assert table.loc[finding, "auroc_txv"] == pytest.approx(roc_auc_score(paired.labels[:, k], paired.txv[:, k]))
        row = table.loc[finding]
        assert row["difference"] == pytest.approx(row["auroc_ours"] - row["auroc_txv"])
        assert row["ours_ci_low"] <= row["auroc_ours"] <= row["ours_ci_high"]
        assert row["txv_ci_low"] <= row["auroc_txv"] <= row["txv_ci_high"]
        assert row["positives"] == paired.labels[:, k].sum()


def test_a_clear_difference_is_significant_and_identical_scores_are_not(result) -> None:
    table = result.table
    effusion, edema = table.loc["Effusion"], table.loc["Edema"]
    assert effusion["difference"] > 0.2 and effusion["diff_ci_low"] > 0.1
    assert effusion["p_value"] < 1e-8 and effusion["p_holm"] < 1e-6
    assert edema["difference"] == 0 and edema["p_value"] == 1.0
    assert edema["diff_ci_low"] == 0 and edema["diff_ci_high"] == 0  # paired: same resamples for both models


def test_adjusted_p_values_are_holm_and_bh_over_the_tested_findings(result) -> None:
    table = result.table.drop(index=MEAN_ROW)
    np.testing.assert_allclose(table["p_holm"], adjust_p_values(table["p_value"], "holm"))
    np.testing.assert_allclose(table["p_bh"], adjust_p_values(table["p_value"], "bh"))
    assert (table["p_holm"] >= table["p_bh"] - 1e-15).all() and (table["p_bh"] >= table["p_value"] - 1e-15).all()


def test_mean_row_averages_the_shared_findings_with_a_paired_interval(paired, result) -> None:
    mean = result.table.loc[MEAN_ROW]
    per_class = result.table.drop(index=MEAN_ROW)
    assert result.mean_over == paired.findings
    assert mean["auroc_ours"] == pytest.approx(per_class["auroc_ours"].mean())
    assert mean["difference"] == pytest.approx(per_class["difference"].mean())
    assert mean["diff_ci_low"] < mean["difference"] < mean["diff_ci_high"]
    # The mean difference is far less variable than Effusion's alone, and its interval excludes 0 here.
    assert mean["diff_ci_high"] - mean["diff_ci_low"] < per_class.loc["Effusion", "diff_ci_high"] - per_class.loc[
        "Effusion", "diff_ci_low"]
    assert mean["diff_ci_low"] > 0 and np.isnan(mean["p_value"])
    assert mean["n_resamples"] == 300


def test_unscorable_findings_are_reported_not_scored() -> None:
    ours, txv, _ = _predictions()
    txv["prob_Hernia"] = 0.5  # both score Hernia now, which has one positive
    paired = pair_with_txv(ours, txv, txv_name="densenet121-res224-nih")
    table = compare_auroc(paired, n_resamples=50).table
    assert "1 positives" in table.loc["Hernia", "note"] and np.isnan(table.loc["Hernia", "p_value"])
    assert "Hernia" not in compare_auroc(paired, n_resamples=50).mean_over
    assert table.loc["Hernia", "negatives"] == (ours["Hernia"] == 0).sum()
    for not_scored in (["Hernia"], ["Edema", "Nodule"]):  # one not scorable here, one not scored by both models
        with pytest.raises(ValueError, match="not scored here"):
            compare_auroc(paired, n_resamples=10, mean_over=not_scored)


def test_same_seed_same_intervals(paired, result) -> None:
    again = compare_auroc(paired, n_resamples=300, seed=1).table
    pd.testing.assert_frame_equal(again, result.table)
    other = compare_auroc(paired, n_resamples=300, seed=2).table
    assert not np.allclose(other["diff_ci_low"].to_numpy(float), result.table["diff_ci_low"].to_numpy(float),
                           equal_nan=True)


def test_patient_clustering_discounts_repeated_films() -> None:
    ours, txv, _ = _predictions(n_patients=120, seed=4)
    tripled_ours = pd.concat([ours.assign(image=ours["image"] + f"#{r}") for r in range(3)], ignore_index=True)
    tripled_txv = pd.concat([txv.assign(image=txv["image"] + f"#{r}") for r in range(3)], ignore_index=True)
    once = compare_auroc(pair_with_txv(ours, txv, txv_name="densenet121-res224-chex"), n_resamples=20).table
    paired3 = pair_with_txv(tripled_ours, tripled_txv, txv_name="densenet121-res224-chex")
    by_patient = compare_auroc(paired3, n_resamples=20).table
    by_image = compare_auroc(paired3, n_resamples=20, delong_clusters="image").table
    tested = once.index[(once["note"] == "") & (once["difference"] != 0)].drop(MEAN_ROW, errors="ignore")
    np.testing.assert_allclose(by_patient.loc[tested, "z"], once.loc[tested, "z"], rtol=1e-9)
    assert (by_image.loc[tested, "z"].abs() > 1.5 * once.loc[tested, "z"].abs()).all()


# --------------------------------------------------------------------------- thresholds


def test_classification_uses_validation_thresholds_and_the_published_ones(frames) -> None:
    ours, txv, _ = frames
    validation_ours, validation_txv, _ = _predictions(n_patients=200, seed=9)
    test = pair_with_txv(ours, txv, txv_name="densenet121-res224-chex")
    validation = pair_with_txv(validation_ours, validation_txv, txv_name="densenet121-res224-chex")
    published = pd.Series({f: 0.3 for f in test.findings})
    report = classification_comparison(test, validation, method="youden", txv_op_thresholds=published)
    assert len(report) == 3 * len(test.findings)
    chosen_ours = choose_thresholds(validation.labels, validation.ours, "youden")
    rows = report[(report["model"] == test.names["ours"]) & (report["thresholds"] == "validation youden")]
    np.testing.assert_allclose(rows["threshold"], chosen_ours)
    chosen_txv = choose_thresholds(validation.labels, validation.txv, "youden")
    rows_txv = report[(report["model"] == test.names["txv"]) & (report["thresholds"] == "validation youden")]
    np.testing.assert_allclose(rows_txv["threshold"], chosen_txv)
    assert not np.allclose(chosen_ours, chosen_txv)
    at_published = report[report["thresholds"] == "TorchXRayVision op_threshs"].set_index("finding")
    k = test.findings.index("Effusion")
    positive = test.labels[:, k] == 1
    assert at_published.loc["Effusion", "threshold"] == 0.3
    assert at_published.loc["Effusion", "sensitivity"] == pytest.approx((test.txv[positive, k] >= 0.3).mean())
    assert at_published.loc["Effusion", "specificity"] == pytest.approx((test.txv[~positive, k] < 0.3).mean())
    tp, fp, fn = (int(at_published.loc["Effusion", c]) for c in ("tp", "fp", "fn"))
    assert at_published.loc["Effusion", "f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    wide = side_by_side(report)
    assert wide.shape == (len(test.findings), 3 * 4) and list(wide.index) == test.findings
    assert wide.columns[0] == (test.names["ours"], "validation youden", "sensitivity")
    with pytest.raises(ValueError, match="no value for"):
        classification_comparison(test, validation, txv_op_thresholds=published.drop("Edema"))


# --------------------------------------------------------------------------- subgroups


def test_subgroups_by_sex_and_view(frames, paired) -> None:
    _, _, metadata = frames
    table = subgroup_comparison(paired, metadata, n_resamples=40, min_positive_patients=5)
    assert set(table["subgroup"]) == {"sex", "view"}
    for column in ("sex", "view"):
        groups = table[(table["subgroup"] == column) & (table["finding"] == MEAN_ROW)]
        assert groups["images"].sum() == len(paired)
        assert len(groups) == 2
    females = table[(table["subgroup"] == "sex") & (table["value"] == "F")].set_index("finding")
    mask = metadata.set_index("image").loc[paired.images, "sex"].to_numpy() == "F"
    k = paired.findings.index("Effusion")
    assert females.loc["Effusion", "auroc_ours"] == pytest.approx(
        roc_auc_score(paired.labels[mask, k], paired.ours[mask, k]))
    assert females.loc["Effusion", "images"] == mask.sum()
    assert females.loc["Effusion", "patients"] == pd.unique(paired.patient_ids[mask]).size
    positive = paired.labels[mask, k] == 1
    assert females.loc["Effusion", "positive_patients"] == pd.unique(paired.patient_ids[mask][positive]).size
    # A finding is scored in a group only with enough patients with a positive film there, however many films.
    strict = subgroup_comparison(paired, metadata, n_resamples=10,
                                 min_positive_patients=int(females.loc["Effusion", "positive_patients"]) + 1)
    strict_females = strict[(strict["subgroup"] == "sex") & (strict["value"] == "F")].set_index("finding")
    assert np.isnan(strict_females.loc["Effusion", "auroc_ours"]) and "not scored" in strict_females.loc[
        "Effusion", "note"]
    with pytest.raises(ValueError, match="not in the metadata"):
        subgroup_comparison(paired, metadata.iloc[1:], n_resamples=10)
    with pytest.raises(ValueError, match="no 'age' column"):
        subgroup_comparison(paired, metadata, by=("age",), n_resamples=10)


# --------------------------------------------------------------------------- figures


def test_comparison_figures_show_both_models_and_the_random_label(frames) -> None:
    import matplotlib.pyplot as plt

    from cxrutils.show import plots

    ours, txv, _ = frames
    fake = pair_with_txv(ours, txv, txv_name="densenet121-res224-chex", random_init=True)
    result = compare_auroc(fake, n_resamples=30)
    roc = plots.comparison_roc_curves(fake, result.table)
    panels = [ax for ax in roc.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == fake.findings
    effusion = panels[fake.findings.index("Effusion")]
    assert len(effusion.get_lines()) == 3  # chance diagonal + two models
    legend = [text.get_text() for text in effusion.get_legend().get_texts()]
    assert legend[0].startswith(f"ours {result.table.loc['Effusion', 'auroc_ours']:.3f}")
    assert "random weights" in legend[1]
    assert RANDOM_INIT_LABEL in roc._suptitle.get_text()
    forest = plots.auroc_difference_forest(result.table, result.names, result.confidence)
    ax = forest.axes[0]
    assert [t.get_text().split(" (")[0] for t in ax.get_yticklabels()] == fake.findings + [MEAN_ROW]
    assert "RANDOMLY INITIALISED" in ax.get_title().replace("\n", " ")
    notes = [t.get_text() for t in ax.texts]
    assert f"p(Holm) {result.table.loc['Effusion', 'p_holm']:.2g}" in notes
    plt.close("all")


def test_a_capped_comparison_keeps_whole_patients_and_is_seeded() -> None:
    from cxrutils.compare.run import patient_sample as _patient_sample

    frame = pd.DataFrame({"image": [f"{i}.png" for i in range(300)], "patient_id": np.repeat(np.arange(60), 5)})
    capped = _patient_sample(frame, 42, seed=3)
    assert len(capped) == 40  # whole patients of 5 films: 8 of them fit under 42
    assert frame.groupby("patient_id").size().reindex(capped["patient_id"].unique()).eq(5).all()
    assert capped.groupby("patient_id").size().eq(5).all()
    assert capped.equals(_patient_sample(frame, 42, seed=3)) and not capped.equals(_patient_sample(frame, 42, seed=4))
    assert _patient_sample(frame, 1_000, seed=3) is frame


def test_f1_is_zero_not_undefined_when_the_only_positive_is_missed():
    """tp = fp = 0 and fn = 1: F1 = 2 tp / (2 tp + fp + fn) = 0; it is undefined only with no film on either side."""
    labels = np.array([[1], [0], [0], [0], [0], [0]], dtype=np.int8)
    scores = np.array([[0.2], [0.1], [0.3], [0.4], [0.1], [0.2]])
    pair = paired_stats.PairedPredictions(np.array([f"{i}.png" for i in range(6)]), np.arange(6), ["Edema"], labels,
                                          scores, scores.copy(), {"ours": "ours", "txv": "txv"})
    report = classification_comparison(pair, pair, txv_op_thresholds={"Edema": 0.99})
    at_published = report[report["thresholds"] == "TorchXRayVision op_threshs"].iloc[0]
    assert (at_published["tp"], at_published["fp"], at_published["fn"]) == (0, 0, 1)
    assert at_published["f1"] == 0.0
