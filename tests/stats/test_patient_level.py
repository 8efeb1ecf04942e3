"""AUROC by patient (first film, 1/n-weighted) against scikit-learn, and the rule for a subgroup's positive patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.stats import metrics
from cxrutils.stats.metrics import MEAN_ROW
from cxrutils.stats.patient_level import first_film_mask, patient_level_auroc, patient_weights

NAMES = ["common", "only_later_films", "rare"]


def _design(seed: int = 0):
    """Patients with 1 to 30 films (follow-ups shuffled, rows shuffled); a finding seen only on later films; a
    heavy patient whose films the model ranks badly, so weighing patients moves the AUROC."""
    rng = np.random.default_rng(seed)
    per_patient = np.minimum(rng.geometric(0.2, 150), 30)
    per_patient[0] = 60
    patients = np.repeat(np.arange(500, 500 + per_patient.size), per_patient)
    follow_up = np.concatenate([rng.permutation(n) + 3 for n in per_patient])  # first film: not always 0
    n = patients.size
    labels = (rng.random((n, 3)) < [0.3, 0.25, 0.08]).astype(int)
    labels[follow_up == (pd.Series(follow_up).groupby(patients).transform("min").to_numpy()), 1] = 0
    scores = 2 * labels + rng.normal(size=labels.shape)
    heavy = patients == 500
    scores[heavy] = -2 * labels[heavy] + rng.normal(size=(heavy.sum(), 3))
    order = rng.permutation(n)
    images = np.array([f"{p:08d}_{f:03d}.png" for p, f in zip(patients, follow_up)])
    return labels[order], scores[order], patients[order], follow_up[order], images[order]


def test_the_first_film_is_the_lowest_follow_up_of_each_patient():
    _, _, patients, follow_up, images = _design()
    mask = first_film_mask(patients, follow_up, images)
    films = pd.DataFrame({"patient": patients, "follow_up": follow_up})
    expected = np.zeros(len(films), dtype=bool)
    expected[films.groupby("patient")["follow_up"].idxmin().to_numpy()] = True
    np.testing.assert_array_equal(mask, expected)
    tie = first_film_mask([7, 7, 8], [2, 2, 0], ["b.png", "a.png", "c.png"])
    assert tie.tolist() == [False, True, True]  # equal follow-ups: the first image name
    with pytest.raises(ValueError, match="no follow-up number"):
        first_film_mask([1, 2], [0, np.nan])
    with pytest.raises(ValueError, match="one of each per film"):
        first_film_mask([1, 2], [0])


def test_patient_level_auroc_is_scikit_learns_on_first_films_and_with_sample_weights():
    labels, scores, patients, follow_up, images = _design()
    table = patient_level_auroc(labels, scores, patients, follow_up, images, n_resamples=30, seed=3,
                                class_names=NAMES)
    films = pd.DataFrame({"patient": patients, "follow_up": follow_up})
    first = films.groupby("patient")["follow_up"].idxmin().to_numpy()
    weights = 1.0 / pd.Series(patients).map(pd.Series(patients).value_counts()).to_numpy()
    np.testing.assert_allclose(patient_weights(patients), weights)
    for k, name in enumerate(NAMES):
        assert table.loc[name, "auroc_films"] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]))
        assert table.loc[name, "auroc_weighted"] == pytest.approx(
            roc_auc_score(labels[:, k], scores[:, k], sample_weight=weights))
        if name == "only_later_films":  # no first film is positive: no first-film AUROC, and out of the mean
            assert np.isnan(table.loc[name, "auroc_first_film"]) and table.loc[name, "first_film_positives"] == 0
            continue
        assert table.loc[name, "auroc_first_film"] == pytest.approx(roc_auc_score(labels[first, k], scores[first, k]))
        assert table.loc[name, "first_film_positives"] == labels[first, k].sum()
    assert table.attrs["mean_over"] == ["common", "rare"] and table.attrs["patients"] == np.unique(patients).size
    for column in ("auroc_films", "auroc_first_film", "auroc_weighted"):
        assert table.loc[MEAN_ROW, column] == pytest.approx(table.loc[["common", "rare"], column].mean())
    # The heavy, badly ranked patient counts 60 times at film level and once when patients weigh the same.
    assert table.loc["common", "auroc_weighted"] > table.loc["common", "auroc_films"] + 0.02


def test_the_weighted_intervals_resample_patients_and_weigh_their_films_one_over_n():
    """Each resample: the patients the film-level bootstrap draws (same seed), each film weighing (times its patient
    was drawn) / (its patient's films): scikit-learn's weighted AUROC on those weights, resample by resample."""
    labels, scores, patients, follow_up, images = _design(seed=1)
    n_resamples, seed = 25, 4
    table = patient_level_auroc(labels, scores, patients, follow_up, images, n_resamples=n_resamples, seed=seed,
                                class_names=NAMES)
    codes, uniques = pd.factorize(patients, sort=True)
    draws = np.random.default_rng(seed).integers(0, uniques.size, size=(n_resamples, uniques.size))
    drawn = np.stack([np.bincount(row, minlength=uniques.size) for row in draws])  # the bootstrap's patient draws
    per_film = 1.0 / np.bincount(codes)[codes]
    expected = np.array([[roc_auc_score(labels[:, k], scores[:, k], sample_weight=drawn[r, codes] * per_film)
                          for k in range(3)] for r in range(n_resamples)])
    resampled = metrics.bootstrap_resample_aurocs(labels, scores, patients, n_resamples, seed, image_weights=per_film)
    np.testing.assert_allclose(resampled, expected, rtol=1e-9)
    for k, name in enumerate(NAMES):
        assert (table.loc[name, "weighted_ci_low"], table.loc[name, "weighted_ci_high"]) == pytest.approx(
            tuple(np.quantile(expected[:, k], [0.025, 0.975])))
    # The first-film intervals: one film per patient, so the same patient draws pick those films.
    first = first_film_mask(patients, follow_up, images)
    first_expected = [roc_auc_score(np.repeat(labels[first, 0], drawn[r, codes[first]]),
                                    np.repeat(scores[first, 0], drawn[r, codes[first]])) for r in range(n_resamples)]
    assert (table.loc["common", "first_ci_low"], table.loc["common", "first_ci_high"]) == pytest.approx(
        tuple(np.quantile(first_expected, [0.025, 0.975])))
    unweighted = metrics.bootstrap_resample_aurocs(labels, scores, patients, n_resamples, seed)
    np.testing.assert_allclose(metrics.bootstrap_resample_aurocs(labels, scores, patients, n_resamples, seed,
                                                                 image_weights=np.ones(len(labels))), unweighted)
    with pytest.raises(ValueError, match="image_weights"):
        metrics.bootstrap_resample_aurocs(labels, scores, patients, 2, image_weights=-per_film)


def test_a_subgroup_cell_needs_its_positive_films_from_enough_patients():
    # 6 positive films: from 2 patients in group A, from 6 patients in group B.
    patients = np.r_[[1, 1, 1, 2, 2, 2], np.arange(10, 16), np.arange(20, 40)]
    labels = np.r_[np.ones(12), np.zeros(20)].astype(int)[:, None]
    scores = labels + np.random.default_rng(0).normal(size=labels.shape)
    groups = pd.Series(np.r_[["A"] * 6, ["B"] * 6, ["A", "B"] * 10], name="group")
    assert metrics.positive_patients(labels, patients).tolist() == [8]
    assert metrics.scorable(labels[groups == "A"], patients[groups == "A"]).tolist() == [True]
    assert metrics.scorable(labels[groups == "A"], patients[groups == "A"], min_positive_patients=5).tolist() == [False]
    table = metrics.subgroup_auroc(labels, scores, patients, groups, n_resamples=20, class_names=["x"],
                                   min_positive_patients=5)
    cells = table.set_index(["value", "finding"])
    assert np.isnan(cells.loc[("A", "x"), "auroc"]) and cells.loc[("A", "x"), "positive_patients"] == 2
    mask = (groups == "B").to_numpy()
    assert cells.loc[("B", "x"), "auroc"] == pytest.approx(roc_auc_score(labels[mask, 0], scores[mask, 0]))
    assert cells.loc[("B", "x"), "positive_patients"] == 6 and table.attrs["min_positive_patients"] == 5
    assert table.attrs["mean_over"] == []  # not scored in every group: no group mean
