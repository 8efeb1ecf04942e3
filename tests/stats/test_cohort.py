"""Films per patient, the top decile's share and the children: against pandas, on designed and on the real metadata."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrutils.labels import FINDINGS
from cxrutils.stats.cohort import cluster_facts, paediatric_counts


def _films(seed: int = 0) -> pd.DataFrame:
    """Patients with 1 to 40 films (a few with many), random labels, shuffled rows, string patient ids."""
    rng = np.random.default_rng(seed)
    per_patient = np.minimum(rng.geometric(0.25, 137), 40)
    patients = np.repeat([f"p{i:04d}" for i in range(per_patient.size)], per_patient)
    table = pd.DataFrame({"image": [f"{i}.png" for i in range(patients.size)], "patient_id": patients})
    for finding in FINDINGS:
        table[finding] = (rng.random(patients.size) < 0.15).astype(int)
    table["Hernia"] = 0  # a finding without positives
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_cluster_facts_are_the_figures_pandas_gives():
    table = _films()
    facts = cluster_facts(table)
    counts = table["patient_id"].value_counts()
    top = int(np.ceil(len(counts) / 10))
    assert (facts.films, facts.patients) == (len(table), table["patient_id"].nunique())
    assert facts.films_per_patient_mean == pytest.approx(counts.mean())
    assert facts.films_per_patient_median == counts.median() and facts.films_per_patient_max == counts.max()
    assert facts.top_decile_patients == top
    assert facts.top_decile_share == pytest.approx(counts.nlargest(top).sum() / len(table))
    for finding in FINDINGS:
        positive = table[table[finding] == 1]
        assert facts.per_finding.loc[finding, "positive films"] == len(positive)
        assert facts.per_finding.loc[finding, "positive patients"] == positive["patient_id"].nunique()
    assert facts.per_finding.loc["Hernia"].tolist() == [0, 0]
    document = facts.to_document()
    assert document["per_finding"]["Effusion"]["positive_patients"] == table.loc[table["Effusion"] == 1,
                                                                                 "patient_id"].nunique()
    sentence = facts.sentence("test films")
    assert f"These {len(table):,} test films come from {counts.size:,} patients" in sentence
    assert f"{counts.mean():.2f} films per patient" in sentence and f"up to {counts.max():,}" in sentence
    assert f"hold {counts.nlargest(top).sum() / len(table):.0%} of them" in sentence


def test_one_film_per_patient_has_no_concentration_and_no_films_nothing_to_describe():
    table = pd.DataFrame({"patient_id": np.arange(20), "Mass": np.r_[np.ones(3), np.zeros(17)].astype(int)})
    facts = cluster_facts(table)
    assert facts.films_per_patient_mean == 1.0 and facts.top_decile_patients == 2
    assert facts.top_decile_share == pytest.approx(0.1)
    assert list(facts.per_finding.index) == ["Mass"] and facts.per_finding.loc["Mass"].tolist() == [3, 3]
    empty = cluster_facts(table.iloc[:0])
    assert empty.films == 0 and empty.sentence() == "There are no films to describe."
    with pytest.raises(ValueError, match="patient_id"):
        cluster_facts(table.rename(columns={"patient_id": "patient"}))


def test_children_are_counted_below_18_and_missing_ages_nowhere():
    rows = pd.DataFrame({"patient_id": [1, 1, 2, 3, 4, 5], "age_years": [17, 18, 3, np.nan, 414, 0.5]})
    counts = paediatric_counts(rows)
    assert (counts["films"], counts["patients"], counts["films_with_age"]) == (3, 3, 5)
    assert counts["share_of_films"] == pytest.approx(3 / 6)


# --------------------------------------------------------------------------- the real NIH metadata


@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    from cxrutils.data.metadata import read_metadata

    return read_metadata(None)  # the v2020 file shipped in torchxrayvision


def test_the_whole_dataset_averages_3_6_films_per_patient(metadata):
    facts = cluster_facts(metadata)
    assert (facts.films, facts.patients) == (112_120, 30_805)
    assert round(facts.films_per_patient_mean, 2) == 3.64 and facts.films_per_patient_max == 184
    assert facts.per_finding.loc["Pneumothorax", "positive films"] == 5_302  # the published count
    children = paediatric_counts(metadata)
    young = metadata[metadata["age_years"] < 18]
    assert (children["films"], children["patients"]) == (len(young), young["patient_id"].nunique()) == (5_402, 1_637)


def test_an_official_shaped_test_list_has_the_official_lists_concentration(metadata):
    """The real test_list.txt is not shipped (it comes with NIH's release: README.md, "Getting the data"); the
    rehearsal builder draws a list of its size and shape from the shipped metadata: 25,596 films, every boxed and
    radiologist-test film in it. On it the figures
    are computed by pandas, and they sit near the official list's (2,797 patients, 9.15 films per patient, up to
    184, the top tenth of patients holding 56% of the films; 1,070 films of 132 patients under 18)."""
    from cxrutils.demo.roots import RehearsalSpec, official_shaped_split

    lists = official_shaped_split(metadata, RehearsalSpec())
    test = metadata[metadata["image"].isin(lists.index[lists == "test"])]
    facts = cluster_facts(test)
    counts = test.groupby("patient_id").size()
    top = int(np.ceil(counts.size / 10))
    assert facts.films == 25_596 and facts.patients == counts.size
    assert facts.films_per_patient_mean == pytest.approx(len(test) / counts.size)
    assert facts.top_decile_share == pytest.approx(counts.sort_values().iloc[-top:].sum() / len(test))
    assert abs(facts.patients - 2_797) < 0.05 * 2_797
    assert facts.films_per_patient_mean == pytest.approx(9.15, rel=0.05)
    assert facts.top_decile_share == pytest.approx(0.56, abs=0.03) and facts.films_per_patient_max == 184
    children = paediatric_counts(test)
    young = test[test["age_years"] < 18]
    assert (children["films"], children["patients"]) == (len(young), young["patient_id"].nunique())
    assert children["films"] == pytest.approx(1_070, rel=0.1) and children["patients"] == pytest.approx(132, rel=0.1)
