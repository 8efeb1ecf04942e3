"""Fast DeLong against its O(n^2) definition, the bootstrap, and hand-computed adjustments."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrutils.stats.delong import (
    adjust_p_values,
    delong_auroc,
    delong_covariance,
    delong_paired_test,
    delong_per_class,
    midrank,
    structural_components,
)


def _brute_force(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and covariance from the pair table: psi = 1, 1/2 on ties, 0 (DeLong 1988)."""
    y = labels.astype(bool)
    m, n = int(y.sum()), int((~y).sum())
    v10, v01 = np.empty((len(scores), m)), np.empty((len(scores), n))
    for r, s in enumerate(scores):
        positive, negative = s[y], s[~y]
        psi = np.empty((m, n))
        for i in range(m):
            for j in range(n):
                psi[i, j] = 1.0 if positive[i] > negative[j] else 0.5 if positive[i] == negative[j] else 0.0
        v10[r], v01[r] = psi.mean(axis=1), psi.mean(axis=0)
    aurocs = v10.mean(axis=1)
    s10 = (v10 - aurocs[:, None]) @ (v10 - aurocs[:, None]).T / (m - 1)
    s01 = (v01 - aurocs[:, None]) @ (v01 - aurocs[:, None]).T / (n - 1)
    return aurocs, s10 / m + s01 / n


def _correlated_scores(rng: np.random.Generator, n: int, prevalence: float = 0.3):
    labels = (rng.random(n) < prevalence).astype(int)
    shared = rng.normal(size=n)
    scores_a = 1.0 * labels + shared + 0.7 * rng.normal(size=n)
    scores_b = 0.6 * labels + shared + 0.7 * rng.normal(size=n)
    return labels, scores_a, scores_b


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    y = labels.astype(bool)
    m, n = y.sum(), (~y).sum()
    return float((midrank(scores)[y].sum() - m * (m + 1) / 2) / (m * n))


def test_midrank_averages_tied_ranks() -> None:
    np.testing.assert_array_equal(midrank([3.0, 1.0, 3.0, 2.0, 3.0]), [4.0, 1.0, 4.0, 2.0, 4.0])
    np.testing.assert_array_equal(midrank([5.0, 5.0]), [1.5, 1.5])


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, 1), (2, 0)])
def test_fast_delong_equals_the_pair_table_definition(seed: int, decimals: int | None) -> None:
    rng = np.random.default_rng(seed)
    labels, scores_a, scores_b = _correlated_scores(rng, 90)
    scores = np.vstack([scores_a, scores_b, -scores_a + 0.3 * scores_b])
    if decimals is not None:  # coarse rounding makes many ties, within and across classes
        scores = np.round(scores, decimals)
    aurocs, covariance = delong_covariance(labels, scores)
    expected_aurocs, expected_covariance = _brute_force(labels, scores)
    np.testing.assert_allclose(aurocs, expected_aurocs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(covariance, expected_covariance, rtol=0, atol=1e-12)
    assert covariance[0, 1] > 0  # the shared component makes the two AUROCs correlated
    for r in range(len(scores)):
        assert aurocs[r] == pytest.approx(roc_auc_score(labels, scores[r]), abs=1e-12)


def test_structural_components_are_the_pair_table_means() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1])
    scores = np.array([0.9, 0.9, 0.2, 0.1, 0.5, 0.5])
    aurocs, v10, v01 = structural_components(labels, scores)
    # positives 0.9, 0.2, 0.5 against negatives 0.9, 0.1, 0.5
    np.testing.assert_allclose(v10[0], [(0.5 + 1 + 1) / 3, (0 + 1 + 0) / 3, (0 + 1 + 0.5) / 3])
    np.testing.assert_allclose(v01[0], [(0.5 + 0 + 0) / 3, (1 + 1 + 1) / 3, (1 + 0 + 0.5) / 3])
    assert aurocs[0] == pytest.approx(roc_auc_score(labels, scores))


def test_delong_variance_matches_a_large_image_bootstrap() -> None:
    rng = np.random.default_rng(7)
    labels, scores_a, scores_b = _correlated_scores(rng, 400)
    estimate = delong_auroc(labels, scores_a)
    paired = delong_paired_test(labels, scores_a, scores_b)
    boot_a, boot_diff = [], []
    while len(boot_a) < 4000:
        index = rng.integers(0, labels.size, labels.size)
        y = labels[index]
        if y.min() == y.max():
            continue
        a = _auroc(y, scores_a[index])
        boot_a.append(a)
        boot_diff.append(a - _auroc(y, scores_b[index]))
    assert estimate.variance == pytest.approx(np.var(boot_a, ddof=1), rel=0.10)
    assert paired.variance == pytest.approx(np.var(boot_diff, ddof=1), rel=0.10)
    assert estimate.ci_low < estimate.auroc < estimate.ci_high


def test_clustered_variance_ignores_duplicated_films_while_image_level_halves() -> None:
    rng = np.random.default_rng(3)
    labels, scores_a, _ = _correlated_scores(rng, 150)
    singletons = np.arange(labels.size)
    once = delong_auroc(labels, scores_a, clusters=singletons)
    twice = delong_auroc(np.repeat(labels, 2), np.repeat(scores_a, 2), clusters=np.repeat(singletons, 2))
    assert twice.auroc == pytest.approx(once.auroc, abs=1e-12)
    assert twice.variance == pytest.approx(once.variance, rel=1e-10)
    image_level_twice = delong_auroc(np.repeat(labels, 2), np.repeat(scores_a, 2))
    assert image_level_twice.variance < 0.6 * once.variance  # pretends to know twice as much


def _obuchowski(labels: np.ndarray, scores: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs and covariance written out from Obuchowski (Biometrics 1997), with explicit loops.

    Per cluster i: the sum over its positive units of V10 and over its negative units of
    V01, psi-based like the pair table; then S10, S01 and S11 with their own corrections
    I10 / (I10 - 1), I01 / (I01 - 1) and I / (I - 1), and
    cov = S10 / M + S01 / N + (S11 + S11') / (M N).
    """
    y = labels.astype(bool)
    clusters = sorted(set(patients.tolist()))
    big_m, big_n = int(y.sum()), int((~y).sum())
    k = len(scores)
    theta = np.empty(k)
    v10_sum = np.zeros((k, len(clusters)))
    v01_sum = np.zeros((k, len(clusters)))
    for r, s in enumerate(scores):
        def psi(x: float, z: float) -> float:
            return 1.0 if x > z else 0.5 if x == z else 0.0

        positives = [(patients[t], s[t]) for t in range(len(s)) if y[t]]
        negatives = [(patients[t], s[t]) for t in range(len(s)) if not y[t]]
        theta[r] = sum(psi(x, z) for _, x in positives for _, z in negatives) / (big_m * big_n)
        for c, cluster in enumerate(clusters):
            v10_sum[r, c] = sum(sum(psi(x, z) for _, z in negatives) / big_n for p, x in positives if p == cluster)
            v01_sum[r, c] = sum(sum(psi(x, z) for _, x in positives) / big_m for p, z in negatives if p == cluster)
    m_i = np.array([sum(1 for t in range(len(y)) if y[t] and patients[t] == c) for c in clusters])
    n_i = np.array([sum(1 for t in range(len(y)) if not y[t] and patients[t] == c) for c in clusters])
    i10, i01, i_all = int((m_i > 0).sum()), int((n_i > 0).sum()), len(clusters)
    a = v10_sum - theta[:, None] * m_i[None, :]
    b = v01_sum - theta[:, None] * n_i[None, :]
    covariance = np.empty((k, k))
    for r in range(k):
        for q in range(k):
            s10 = i10 / ((i10 - 1) * big_m) * np.sum(a[r] * a[q])
            s01 = i01 / ((i01 - 1) * big_n) * np.sum(b[r] * b[q])
            s11 = i_all / (i_all - 1) * np.sum(a[r] * b[q])
            s11_swapped = i_all / (i_all - 1) * np.sum(a[q] * b[r])
            covariance[r, q] = s10 / big_m + s01 / big_n + (s11 + s11_swapped) / (big_m * big_n)
    return theta, covariance


def test_clustered_variance_with_one_image_per_patient_is_delong_exactly() -> None:
    rng = np.random.default_rng(4)
    labels, scores_a, scores_b = _correlated_scores(rng, 120)
    singletons = np.arange(labels.size)
    clustered = delong_auroc(labels, scores_a, clusters=singletons).variance
    assert clustered == pytest.approx(delong_auroc(labels, scores_a).variance, rel=0, abs=1e-12)
    paired = delong_paired_test(labels, scores_a, scores_b, clusters=singletons)
    assert paired.variance == pytest.approx(delong_paired_test(labels, scores_a, scores_b).variance, rel=0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustered_variance_equals_obuchowskis_estimator_written_out(seed: int) -> None:
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 6, 40)  # 1 to 5 films per patient
    patients = np.repeat(np.arange(40), films)
    tendency = rng.normal(size=40)[patients]
    labels = (tendency + rng.normal(size=patients.size) > 0.8).astype(int)
    scores = np.vstack([labels + tendency + rng.normal(size=patients.size),
                        0.5 * labels + tendency + rng.normal(size=patients.size)])
    scores[1] = np.round(scores[1], 1)  # ties within and across patients
    aurocs, covariance = delong_covariance(labels, scores, clusters=patients)
    expected_aurocs, expected = _obuchowski(labels, scores, patients)
    np.testing.assert_allclose(aurocs, expected_aurocs, rtol=0, atol=1e-12)
    np.testing.assert_allclose(covariance, expected, rtol=0, atol=1e-10)
    paired = delong_paired_test(labels, scores[0], scores[1], clusters=patients)
    difference_variance = expected[0, 0] + expected[1, 1] - 2 * expected[0, 1]
    assert paired.variance == pytest.approx(difference_variance, rel=0, abs=1e-10)


def test_few_positive_patients_are_not_underestimated_any_more() -> None:
    """5 positive patients with 2 films each among 60: one K/(K-1) factor made the variance too small."""
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(60), 2)
    labels = np.zeros(120, dtype=int)
    labels[:10] = 1  # patients 0-4
    scores = labels + rng.normal(size=120)
    clustered = delong_auroc(labels, scores, clusters=patients).variance
    _, expected = _obuchowski(labels, scores[None, :], patients)
    assert clustered == pytest.approx(expected[0, 0], rel=1e-10)
    y = labels.astype(bool)
    aurocs, v10, v01 = structural_components(labels, scores)
    codes = patients
    a = np.bincount(codes[y], weights=v10[0] - aurocs[0], minlength=60)
    b = np.bincount(codes[~y], weights=v01[0] - aurocs[0], minlength=60)
    one_factor = 60 / 59 * np.sum((a / y.sum() + b / (~y).sum()) ** 2)  # the old estimator
    assert clustered > 1.1 * one_factor


def test_clustered_variance_matches_a_patient_bootstrap() -> None:
    rng = np.random.default_rng(11)
    n_patients = 200
    films = rng.integers(1, 6, n_patients)
    patient = np.repeat(np.arange(n_patients), films)
    # A patient's films share a disease tendency and a score offset: strongly clustered.
    disease = rng.normal(size=n_patients)[patient]
    labels = (disease + 0.5 * rng.normal(size=patient.size) > 0.6).astype(int)
    scores = labels + rng.normal(size=n_patients)[patient] + 0.5 * rng.normal(size=patient.size)
    clustered = delong_auroc(labels, scores, clusters=patient).variance
    members = [np.flatnonzero(patient == p) for p in range(n_patients)]
    boot = []
    while len(boot) < 4000:
        index = np.concatenate([members[p] for p in rng.integers(0, n_patients, n_patients)])
        if labels[index].min() != labels[index].max():
            boot.append(_auroc(labels[index], scores[index]))
    assert clustered == pytest.approx(np.var(boot, ddof=1), rel=0.10)
    assert clustered > 1.3 * delong_auroc(labels, scores).variance  # image-level is too narrow here


def test_paired_test_of_identical_rankings_gives_p_one() -> None:
    rng = np.random.default_rng(5)
    labels, scores_a, _ = _correlated_scores(rng, 200)
    for other in (scores_a, np.exp(scores_a) * 3 + 1):  # identical, and a monotone transform
        test = delong_paired_test(labels, scores_a, other)
        assert test.difference == 0.0 and test.variance == 0.0
        assert test.z == 0.0 and test.p_value == 1.0
        clustered = delong_paired_test(labels, scores_a, other, clusters=np.arange(labels.size) // 3)
        assert clustered.p_value == 1.0


def test_paired_test_detects_a_strong_difference_and_is_antisymmetric() -> None:
    rng = np.random.default_rng(6)
    labels = (rng.random(500) < 0.4).astype(int)
    informative = 2.0 * labels + rng.normal(size=500)
    noise = rng.normal(size=500)
    forward = delong_paired_test(labels, informative, noise)
    backward = delong_paired_test(labels, noise, informative)
    assert forward.auroc_a > 0.85 and abs(forward.auroc_b - 0.5) < 0.08
    assert forward.p_value < 1e-12
    assert forward.ci_low > 0.2
    assert backward.difference == pytest.approx(-forward.difference)
    assert backward.z == pytest.approx(-forward.z)
    assert backward.p_value == pytest.approx(forward.p_value)


def test_paired_test_p_value_is_uniform_ish_under_the_null() -> None:
    # Two exchangeable models: p < 0.05 about 5% of the time (loose bounds: 200 trials).
    rng = np.random.default_rng(8)
    rejections = 0
    for _ in range(200):
        labels = (rng.random(120) < 0.3).astype(int)
        shared = labels + rng.normal(size=120)
        test = delong_paired_test(labels, shared + rng.normal(size=120), shared + rng.normal(size=120))
        rejections += test.p_value < 0.05
    assert 2 <= rejections <= 22


def test_all_tied_scores_give_one_half_and_zero_variance() -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    estimate = delong_auroc(labels, np.full(6, 0.3))
    assert estimate.auroc == 0.5 and estimate.variance == 0.0


def test_inputs_that_cannot_be_scored_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="0 positives"):
        delong_auroc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN or infinite"):
        delong_auroc([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4])
    with pytest.raises(ValueError, match="0 or 1"):
        delong_auroc([0, 2, 0, 1], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="cluster ids"):
        delong_auroc([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], clusters=[1, 2])


def test_per_class_table_tests_each_class_and_skips_unscorable_ones() -> None:
    rng = np.random.default_rng(9)
    labels, scores_a, scores_b = _correlated_scores(rng, 150)
    rare = np.zeros(150, dtype=int)
    rare[3] = 1
    table = delong_per_class(np.c_[labels, rare], np.c_[scores_a, scores_a], np.c_[scores_b, scores_b],
                             ["Effusion", "Hernia"])
    single = delong_paired_test(labels, scores_a, scores_b)
    assert table.loc["Effusion", "p_value"] == pytest.approx(single.p_value)
    assert table.loc["Effusion", "difference"] == pytest.approx(single.difference)
    assert np.isnan(table.loc["Hernia", "p_value"]) and "1 positives" in table.loc["Hernia", "note"]
    assert table.attrs["variance"].startswith("images independent")


def test_holm_and_benjamini_hochberg_match_hand_computed_values() -> None:
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(adjust_p_values(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04 -> running min from the top
    np.testing.assert_allclose(adjust_p_values(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    # BH's step-up lets a larger p pull a smaller one down: 0.04*3/2=0.06 > 0.045*3/3=0.045
    np.testing.assert_allclose(adjust_p_values([0.04, 0.045, 0.001], "bh"), [0.045, 0.045, 0.003])
    # capped at 1; NaN (untested classes) kept and not counted in m
    np.testing.assert_allclose(adjust_p_values([0.5, np.nan, 0.6], "holm"), [1.0, np.nan, 1.0])
    np.testing.assert_allclose(adjust_p_values([0.02, np.nan, 0.04], "bh"), [0.04, np.nan, 0.04])
    assert np.isnan(adjust_p_values([np.nan, np.nan])).all()
    with pytest.raises(ValueError, match="unknown adjustment"):
        adjust_p_values(p, "bonferroni")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        adjust_p_values([1.5])


# --------------------------------------------------------------------------- edges (each found by benchmarks/mutation.py)


def test_the_variance_needs_two_films_and_two_patients_on_each_side_and_no_more() -> None:
    labels = np.array([1, 1, 0, 0, 0])
    scores = np.array([0.9, 0.4, 0.6, 0.1, 0.2])
    assert delong_auroc(labels, scores).auroc == pytest.approx(5 / 6)  # two positives: enough
    assert delong_auroc(labels, scores, clusters=[1, 2, 3, 4, 5]).variance >= 0  # two positive patients: enough
    assert delong_auroc([1, 1, 1, 0, 0], scores).variance >= 0  # two negatives: enough
    assert delong_auroc([1, 1, 1, 0, 0], scores, clusters=[1, 2, 3, 4, 5]).variance >= 0  # two negative patients
    for too_few in ([1, 0, 0, 0, 0], [1, 0, 1, 1, 1]):
        with pytest.raises(ValueError, match="at least 2"):
            delong_auroc(too_few, scores)
    with pytest.raises(ValueError, match="from at least 2"):
        delong_auroc(labels, scores, clusters=[1, 1, 3, 4, 5])  # both positives from one patient
    with pytest.raises(ValueError, match="from at least 2"):
        delong_auroc([1, 1, 0, 0, 1], scores, clusters=[1, 2, 3, 3, 5])  # both negatives from one patient
    single = structural_components([1, 0, 0], [0.9, 0.2, 0.5])
    assert single[0][0] == 1.0  # one positive is enough for the AUROC itself
    with pytest.raises(ValueError, match="scores must be"):
        structural_components([1, 0, 0], np.zeros((2, 4)))


def test_intervals_are_the_normal_ones_at_the_asked_confidence() -> None:
    from scipy.stats import norm

    rng = np.random.default_rng(12)
    labels, scores_a, scores_b = _correlated_scores(rng, 150)
    z = norm.ppf(0.975)
    estimate = delong_auroc(labels, scores_a)
    assert estimate.ci_low == pytest.approx(estimate.auroc - z * np.sqrt(estimate.variance))
    assert estimate.ci_high == pytest.approx(min(1.0, estimate.auroc + z * np.sqrt(estimate.variance)))
    test = delong_paired_test(labels, scores_a, scores_b)
    assert test.ci_low == pytest.approx(test.difference - z * np.sqrt(test.variance))
    assert test.ci_high == pytest.approx(test.difference + z * np.sqrt(test.variance))
    for confidence in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            delong_auroc(labels, scores_a, confidence=confidence)
    # Different AUROCs with no variance at all (a perfect model against a constant one): an infinite z.
    perfect = delong_paired_test(labels, labels.astype(float), np.zeros(labels.size))
    assert (perfect.difference, perfect.z, perfect.p_value) == (0.5, np.inf, 0.0)


def test_the_per_class_table_counts_its_films_and_refuses_mismatched_shapes() -> None:
    rng = np.random.default_rng(13)
    labels, scores_a, scores_b = _correlated_scores(rng, 90)
    table = delong_per_class(labels[:, None], scores_a[:, None], scores_b[:, None], ["Edema"])
    assert (table.loc["Edema", "positives"], table.loc["Edema", "negatives"]) == (labels.sum(), (labels == 0).sum())
    with pytest.raises(ValueError, match="must all be"):
        delong_per_class(labels[:, None], scores_a[:, None], scores_b[:-1, None], ["Edema"])


def test_adjusting_one_p_value_or_a_zero_changes_nothing_it_should_not() -> None:
    assert adjust_p_values([0.3], "holm").tolist() == [0.3] and adjust_p_values([0.3], "bh").tolist() == [0.3]
    assert adjust_p_values([0.0, 0.5], "holm").tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="lie in"):
        adjust_p_values([-0.1, 0.5])
