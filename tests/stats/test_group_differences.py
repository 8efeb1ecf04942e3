"""Between-group AUROC differences: the point against scikit-learn, the interval against a bootstrap written from
its definition, coverage on clustered data, Holm by hand, and the minimum of positive patients."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.stats.group_differences import between_group_differences, bootstrap_p_value, differences_by_variable


def _clustered(rng: np.random.Generator, n_patients: int = 80, effect: float = 1.0, shift_b: float = 0.0):
    """Films clustered in patients (1-5 each, a shared patient effect); group a/b drawn per film, so many patients
    have films in both groups; group b's positives score ``shift_b`` higher."""
    films = rng.integers(1, 6, size=n_patients)
    patient = np.repeat(np.arange(n_patients), films)
    frailty = rng.normal(0, 0.7, n_patients)[patient]
    label = (rng.random(patient.size) < 0.35).astype(int)
    group = np.where(rng.random(patient.size) < 0.5, "a", "b")
    score = frailty + effect * label + np.where(group == "b", shift_b * label, 0) + rng.normal(0, 1, patient.size)
    return label[:, None], score[:, None], patient.astype(str), pd.Series(group, name="sex")


def _from_definition(label, score, patient, group, level, reference, n_resamples, seed):
    """Draw patients with replacement; each group's AUROC over the drawn patients' films in it; the difference."""
    rng = np.random.default_rng(seed)
    patients = np.unique(patient)
    films_of = {p: np.flatnonzero(patient == p) for p in patients}
    out = []
    for _ in range(n_resamples):
        drawn = np.concatenate([films_of[p] for p in rng.choice(patients, size=patients.size, replace=True)])
        aurocs = []
        for name in (level, reference):
            films = drawn[group[drawn] == name]
            y = label[films, 0]
            aurocs.append(roc_auc_score(y, score[films, 0]) if 0 < y.sum() < y.size else np.nan)
        out.append(aurocs[0] - aurocs[1])
    return np.array(out)


def test_the_difference_is_sklearns_and_its_interval_a_joint_patient_bootstrap():
    rng = np.random.default_rng(3)
    label, score, patient, group = _clustered(rng, shift_b=0.8)
    table = between_group_differences(label, score, patient, group, n_resamples=2000, seed=1,
                                      class_names=["Effusion"])
    row = table[table["finding"] == "Effusion"].iloc[0]
    reference = table.attrs["reference"]
    level = row["value"]
    assert reference == group.value_counts().idxmax() and level != reference
    a, b = (group == level).to_numpy(), (group == reference).to_numpy()
    expected = roc_auc_score(label[a, 0], score[a, 0]) - roc_auc_score(label[b, 0], score[b, 0])
    assert row["difference"] == pytest.approx(expected, abs=1e-12)
    samples = _from_definition(label, score, patient, group.to_numpy(), level, reference, 2000, seed=7)
    low, high = np.nanquantile(samples, [0.025, 0.975])
    assert row["ci_low"] == pytest.approx(low, abs=0.025) and row["ci_high"] == pytest.approx(high, abs=0.025)
    assert row["p_value"] == pytest.approx(bootstrap_p_value(samples), abs=0.03)


def test_the_interval_covers_a_zero_difference_about_95_times_in_100_on_clustered_data():
    covered = []
    for replication in range(150):
        rng = np.random.default_rng(1000 + replication)
        label, score, patient, group = _clustered(rng, n_patients=60)
        row = between_group_differences(label, score, patient, group, n_resamples=300, seed=replication,
                                        class_names=["Effusion"]).iloc[0]
        covered.append(row["ci_low"] <= 0 <= row["ci_high"])
    coverage = float(np.mean(covered))
    print(f"coverage of a true zero difference: {coverage:.3f} over {len(covered)} replications")
    assert 0.90 <= coverage <= 0.99


def test_holm_covers_every_group_and_finding_of_a_variable_and_not_the_mean():
    rng = np.random.default_rng(5)
    n = 600
    patient = np.arange(n).astype(str)
    group = pd.Series(rng.choice(["<40", "40-59", "60+"], size=n, p=[0.5, 0.3, 0.2]), name="age band")
    label = (rng.random((n, 3)) < 0.3).astype(int)
    score = label * np.array([1.5, 0.5, 0.0]) + rng.normal(0, 1, (n, 3))
    table = between_group_differences(label, score, patient, group, n_resamples=400, seed=0,
                                      class_names=["A", "B", "C"])
    assert table.attrs["reference"] == "<40"
    assert set(table["value"]) == {"40-59", "60+"}
    family = table[table["finding"] != "mean"]
    p = family["p_value"].to_numpy()
    order = np.argsort(p)
    adjusted = np.maximum.accumulate(np.minimum(1, (len(p) - np.arange(len(p))) * p[order]))
    expected = np.empty_like(adjusted)
    expected[order] = adjusted
    np.testing.assert_allclose(family["p_holm"].to_numpy(float), expected)
    assert table.loc[table["finding"] == "mean", "p_holm"].isna().all()
    assert table.attrs["mean_over"] == ["A", "B", "C"]


def test_a_group_with_too_few_positive_patients_gets_no_difference_and_stays_out_of_the_family():
    rng = np.random.default_rng(9)
    label, score, patient, group = _clustered(rng, n_patients=100)
    small = (group == "b").to_numpy() & (label[:, 0] == 1)
    keep = ~small | np.isin(patient, np.unique(patient[small])[:3])  # group b keeps 3 positive patients
    table = between_group_differences(label[keep], score[keep], patient[keep], group[keep].reset_index(drop=True),
                                      reference="a", n_resamples=100, min_positive_patients=5,
                                      class_names=["Effusion"])
    row = table[table["finding"] == "Effusion"].iloc[0]
    assert row["positive_patients"] == 3 and np.isnan(row["difference"]) and np.isnan(row["p_holm"])
    assert not (table["finding"] == "mean").any()  # no finding scorable in both groups: no mean row


def test_reference_named_or_refused_and_one_group_gives_an_empty_table():
    rng = np.random.default_rng(2)
    label, score, patient, group = _clustered(rng)
    one = {"class_names": ["Effusion"], "n_resamples": 50}
    assert between_group_differences(label, score, patient, group, reference="b", **one).attrs["reference"] == "b"
    with pytest.raises(ValueError, match="not among the groups"):
        between_group_differences(label, score, patient, group, reference="x", **one)
    alone = between_group_differences(label, score, patient, pd.Series(["a"] * len(group), name="sex"), **one)
    assert alone.empty and alone.attrs["reference"] is None
    stacked = differences_by_variable({"sex": group, "view": pd.Series(["PA"] * len(group))}, label, score, patient,
                                      **one)
    assert set(stacked["subgroup"]) == {"sex"}
    assert stacked.attrs["reference"] == {"sex": group.value_counts().idxmax(), "view": None}


def test_bootstrap_p_value_from_its_definition():
    assert bootstrap_p_value(np.array([0.1, 0.2, 0.3, -0.1])) == pytest.approx(0.5)
    assert bootstrap_p_value(np.array([0.1, 0.2, np.nan])) == 0.0
    assert bootstrap_p_value(np.array([-1.0, 1.0])) == 1.0
    assert np.isnan(bootstrap_p_value(np.array([np.nan])))
