"""Patient-bootstrap intervals for the localization accuracies, and the comparison with random heatmaps.

Checked against a patient bootstrap written here from its definition, a coverage simulation on clustered
synthetic boxes, and heatmaps whose relation to chance is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrutils.evaluate import localization

FINDING_CYCLE = ["Mass", "Nodule", "Effusion"]


def clustered_boxes(n_patients: int, seed: int, true_rate: float = 0.4, concentration: float = 2.0):
    """Patients with 1-6 boxes each; a patient's boxes share its hit probability (Beta around ``true_rate``)."""
    rng = np.random.default_rng(seed)
    boxes_per_patient = rng.integers(1, 7, n_patients)
    patient_rate = rng.beta(true_rate * concentration, (1 - true_rate) * concentration, n_patients)
    patients = np.repeat(np.arange(n_patients), boxes_per_patient)
    hits = (rng.random(patients.size) < patient_rate[patients]).astype(float)
    return patients, hits


def test_intervals_match_a_patient_bootstrap_written_from_its_definition():
    rng = np.random.default_rng(4)
    n_boxes = 90
    patient_ids = np.array([f"p{k:03d}" for k in rng.integers(0, 35, n_boxes)])
    findings = np.array([FINDING_CYCLE[k % 3] for k in range(n_boxes)])
    hits = pd.DataFrame({"pointing_game": rng.random(n_boxes) < 0.6, "t_iobb_0.1": rng.random(n_boxes) < 0.3},
                        dtype=float)
    random_rates = pd.DataFrame({"pointing_game": rng.random(n_boxes) * 0.5, "t_iobb_0.1": rng.random(n_boxes) * 0.2})
    n_resamples, seed = 300, 11  # three chunks of draws
    result = localization.localization_intervals(hits, random_rates, findings, patient_ids, n_resamples, seed)

    # From the definition: draw as many patients as there are (sorted ids), with replacement; take all their
    # boxes each time; the accuracy is the mean over the resampled boxes of the finding.
    patients = np.unique(patient_ids)
    draws = np.random.default_rng(seed).integers(0, len(patients), size=(n_resamples, len(patients)))
    for row in [*FINDING_CYCLE, "all"]:
        member = np.ones(n_boxes, bool) if row == "all" else findings == row
        samples = {key: [] for key in ("gradcam", "random", "difference")}
        for drawn in draws:
            chosen = np.concatenate([np.flatnonzero((patient_ids == patients[d]) & member) for d in drawn])
            if chosen.size == 0:
                continue
            gradcam = hits["t_iobb_0.1"].to_numpy()[chosen].mean()
            chance = random_rates["t_iobb_0.1"].to_numpy()[chosen].mean()
            samples["gradcam"].append(gradcam)
            samples["random"].append(chance)
            samples["difference"].append(gradcam - chance)
        low, high = np.quantile(samples["gradcam"], [0.025, 0.975])
        assert (result.scores.loc[row, "t_iobb_0.1_ci_low"], result.scores.loc[row, "t_iobb_0.1_ci_high"]) == (
            pytest.approx(low), pytest.approx(high))
        low, high = np.quantile(samples["random"], [0.025, 0.975])
        assert result.baseline.loc[row, "t_iobb_0.1_ci_low"] == pytest.approx(low)
        assert result.baseline.loc[row, "t_iobb_0.1_ci_high"] == pytest.approx(high)
        compared = result.versus_random.set_index(["finding", "metric"]).loc[(row, "t_iobb_0.1")]
        low, high = np.quantile(samples["difference"], [0.025, 0.975])
        assert (compared["ci_low"], compared["ci_high"]) == (pytest.approx(low), pytest.approx(high))
        assert compared["resamples"] == len(samples["difference"])
        below = int((np.asarray(samples["difference"]) <= 0).sum())
        assert compared["p_one_sided"] == pytest.approx((1 + below) / (1 + len(samples["difference"])))
        # The point figures are plain means over the row's boxes.
        assert result.scores.loc[row, "t_iobb_0.1"] == pytest.approx(hits["t_iobb_0.1"][member].mean())
        assert compared["difference"] == pytest.approx(
            hits["t_iobb_0.1"][member].mean() - random_rates["t_iobb_0.1"][member].mean())
        assert result.scores.loc[row, "patients"] == len(set(patient_ids[member]))
    assert result.scores.attrs["n_resamples"] == n_resamples and result.scores.attrs["seed"] == seed


def test_patient_bootstrap_covers_the_true_rate_of_clustered_boxes_and_a_box_bootstrap_does_not():
    """Coverage of a known hit rate when a patient's boxes share a patient effect (intra-patient correlation 1/3)."""
    replications, n_resamples, true_rate = 300, 300, 0.4
    covered = covered_by_boxes = 0
    for replication in range(replications):
        patients, hits = clustered_boxes(50, seed=1000 + replication, true_rate=true_rate)
        findings = np.full(hits.size, "Mass")
        _, resampled = localization.resampled_accuracies(hits, findings, patients, n_resamples, seed=replication)
        low, high = np.quantile(resampled[:, -1, 0], [0.025, 0.975])
        covered += low <= true_rate <= high
        # The same boxes, each its own "patient": the intervals ignore the clustering.
        _, resampled = localization.resampled_accuracies(hits, findings, np.arange(hits.size), n_resamples,
                                                         seed=replication)
        low, high = np.quantile(resampled[:, -1, 0], [0.025, 0.975])
        covered_by_boxes += low <= true_rate <= high
    coverage, box_coverage = covered / replications, covered_by_boxes / replications
    print(f"\ncoverage of the true hit rate over {replications} replications: patient bootstrap {coverage:.3f}, "
          f"box bootstrap {box_coverage:.3f}")
    assert 0.90 <= coverage <= 0.99
    assert box_coverage < 0.90  # the simulation is clustered enough to tell the two apart


def peaked_heatmaps(boxes: pd.DataFrame, size: int) -> np.ndarray:
    """A Gaussian blob centred on each box: the maximum is always in the box and the region mostly is."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    maps = []
    for box in boxes.itertuples():
        centre_x, centre_y = box.x + box.w / 2, box.y + box.h / 2
        maps.append(np.exp(-((cols - centre_x) ** 2 + (rows - centre_y) ** 2) / (2 * (box.w / 4) ** 2)))
    return np.stack(maps)


@pytest.fixture
def small_boxes() -> pd.DataFrame:
    """80 boxes of 6-8 px on 32 px maps, two per patient, two findings."""
    rng = np.random.default_rng(2)
    n = 80
    size = rng.integers(6, 9, n).astype(float)
    return pd.DataFrame({"image": [f"film{k // 2}.png" for k in range(n)],
                         "finding": ["Nodule" if k % 2 else "Mass" for k in range(n)],
                         "x": rng.uniform(0, 24, n), "y": rng.uniform(0, 24, n), "w": size, "h": size,
                         "patient_id": [f"patient{k // 2}" for k in range(n)]})


def test_a_heatmap_that_always_peaks_in_the_box_beats_chance_and_a_random_one_does_not(small_boxes):
    chance = localization.random_baseline_hits(small_boxes, 32, seed=0, repeats=5)
    compared = {}
    for name, maps in (("peaked", peaked_heatmaps(small_boxes, 32)),
                       ("random", localization.random_heatmaps(len(small_boxes), 32, seed=777))):
        hits = localization.box_hits(localization.score_boxes(maps, small_boxes))
        result = localization.localization_intervals(hits, chance, small_boxes["finding"], small_boxes["patient_id"],
                                                     n_resamples=400, seed=0)
        compared[name] = result.versus_random.set_index(["finding", "metric"])
    peaked, random = compared["peaked"], compared["random"]
    for metric in ("pointing_game", "t_iobb_0.1"):
        for row in ("Mass", "Nodule", "all"):
            assert peaked.loc[(row, metric), "ci_low"] > 0 and peaked.loc[(row, metric), "beats_chance"]
            assert peaked.loc[(row, metric), "p_one_sided"] < 0.025
        assert random.loc[("all", metric), "ci_low"] <= 0 <= random.loc[("all", metric), "ci_high"]
        assert not random.loc[("all", metric), "beats_chance"]
    assert peaked.loc[("all", "pointing_game"), "gradcam"] == 1.0


def test_a_finding_boxed_on_one_patient_gets_no_interval():
    hits = pd.DataFrame({"pointing_game": [1.0, 0.0, 1.0, 1.0, 0.0]})
    result = localization.localization_intervals(hits, hits * 0.5, ["Mass", "Mass", "Nodule", "Nodule", "Nodule"],
                                                 ["a", "a", "b", "c", "d"], n_resamples=50)
    assert result.scores.loc["Mass", "pointing_game"] == 0.5
    assert np.isnan(result.scores.loc["Mass", "pointing_game_ci_low"])
    assert np.isfinite(result.scores.loc["Nodule", "pointing_game_ci_low"])
    mass = result.versus_random.set_index(["finding", "metric"]).loc[("Mass", "pointing_game")]
    assert mass["resamples"] == 0 and not mass["beats_chance"] and np.isnan(mass["p_one_sided"])


def test_intervals_refuse_boxes_that_do_not_pair():
    hits = pd.DataFrame({"pointing_game": [1.0, 0.0]})
    with pytest.raises(ValueError, match="same boxes"):
        localization.localization_intervals(hits, hits.iloc[:1], ["Mass", "Mass"], ["a", "b"])
    with pytest.raises(ValueError, match="missing"):
        localization.localization_intervals(hits, hits, ["Mass", "Mass"], ["a", None])
