"""The figures the evaluation and comparison reports show, end to end, against scikit-learn and numpy.

A trained run's predictions are replaced by designed ones: perfect for some findings,
reversed for others, constant for one, noisy for the rest, on a phantom root whose
labels give every finding positives and negatives in every subgroup. The predictions
CSVs are written with their rows shuffled and their columns in a random order, so a
figure computed from a column's position instead of its name, or a film's metadata
joined by row instead of by image, comes out wrong. Every expected value below is
computed here from the designed arrays, by name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import built_once
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrutils.compare import run as compare_module
from cxrutils.compare.run import compare_run
from cxrutils.data.metadata import age_band
from cxrutils.engine import run_folder
from cxrutils.evaluate import evaluation
from cxrutils.labels import FINDINGS
from cxrutils.stats.delong import delong_paired_test
from cxrutils.stats.metrics import MEAN_ROW

PERFECT = ("Atelectasis", "Effusion")  # every positive scores above every negative: AUROC 1
REVERSED = ("Cardiomegaly", "Mass")  # every positive scores below every negative: AUROC 0
CONSTANT, CONSTANT_VALUE = "Nodule", 0.35  # one score for every film: AUROC 0.5, AP the prevalence
SAME_FOR_TXV = "Edema"  # TorchXRayVision's scores equal ours: difference 0, p = 1
NO_THRESHOLD = "Hernia"  # thresholds.json holds null for it
TXV_MODEL = "densenet121-res224-pc"
N_BOOTSTRAP = 50
K = {finding: k for k, finding in enumerate(FINDINGS)}


# --------------------------------------------------------------------------- the designed run


def _relabelled(sample_rows):
    """The demo's row sampler with labels drawn at 40% each, so every finding has both classes everywhere."""

    def sample(metadata, spec):
        rows = sample_rows(metadata, spec).copy()
        rng = np.random.default_rng(spec.seed)
        rows[list(FINDINGS)] = (rng.random((len(rows), len(FINDINGS))) < 0.4).astype(int)
        rows["no_finding"] = (rows[list(FINDINGS)].sum(axis=1) == 0).astype(int)
        return rows

    return sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A one-batch run on a 60-patient phantom root (half the patients in test), read-only."""
    from cxrutils.demo import roots
    from cxrutils.engine.train import train
    from cxrutils.settings import load_train_config

    def build(folder: Path) -> None:
        spec = roots.DemoSpec(n_patients=60, image_size=64, seed=11, min_images_per_finding=0,
                              max_images_per_patient=3, test_fraction=0.5)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(roots, "sample_rows", _relabelled(roots.sample_rows))
            root = roots.build_demo_dataset(folder / "root", spec, workers=1)
        (root / roots.BBOX_NAME).unlink()  # Grad-CAM on every box is not a figure of the predictions: skip it
        train(load_train_config("tiny", {"data_root": str(root), "runs_dir": str(folder / "runs"),
                                         "cache_dir": str(folder / "cache"), "name": "designed", "epochs": 1,
                                         "limit_train_batches": 1, "val_fraction": 0.25}))

    return built_once("designed_run", tmp_path_factory, build) / "runs" / "designed"


class Design:
    """Films of one split with their labels, patients, metadata and the designed scores of both models."""

    def __init__(self, rows: pd.DataFrame, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.rows = rows.reset_index(drop=True)
        self.images = self.rows["image"].to_numpy()
        self.patients = self.rows["patient_id"].to_numpy()
        self.labels = self.rows[list(FINDINGS)].to_numpy(dtype=int)
        y, n = self.labels, len(self.rows)
        ours = 1 / (1 + np.exp(-(1.2 * y + rng.normal(size=y.shape))))
        for finding in PERFECT:
            ours[:, K[finding]] = 0.55 + 0.3 * y[:, K[finding]] + 0.1 * rng.random(n)
        for finding in REVERSED:
            ours[:, K[finding]] = 0.45 - 0.3 * y[:, K[finding]] + 0.1 * rng.random(n)
        ours[:, K[CONSTANT]] = CONSTANT_VALUE
        txv = 1 / (1 + np.exp(-(0.6 * y + rng.normal(size=y.shape))))
        txv[:, K[SAME_FOR_TXV]] = ours[:, K[SAME_FOR_TXV]]
        self.ours, self.txv = ours, txv

    def csv(self, path: Path, seed: int) -> list[str]:
        """Our predictions table, rows shuffled and columns in a random order; returns the column order."""
        table = pd.DataFrame({"image": self.images, "patient_id": self.patients})
        for k, finding in enumerate(FINDINGS):
            table[f"prob_{finding}"] = self.ours[:, k]
            table[finding] = self.labels[:, k]
        rng = np.random.default_rng(seed)
        table = table.iloc[rng.permutation(len(table)), rng.permutation(table.shape[1])]
        table.to_csv(path, index=False)  # full precision: what is read back is exactly self.ours
        return list(table.columns)


@pytest.fixture(scope="module")
def designed(trained: Path, tmp_path_factory) -> tuple[Path, Design, Design, dict[str, float | None]]:
    """A private copy of the run with designed test and validation predictions and thresholds."""
    run_dir = Path(shutil.copytree(trained, tmp_path_factory.mktemp("designed") / "designed"))
    metadata = run_folder.open_run(run_dir).dataset.metadata
    test = Design(metadata[metadata["split"] == "test"], seed=1)
    validation = Design(metadata[metadata["split"] == "val"], seed=2)
    canonical = ["image", "patient_id", *(f"prob_{f}" for f in FINDINGS), *FINDINGS]
    assert test.csv(run_dir / "predictions_test.csv", seed=3) != canonical  # the columns really moved
    validation.csv(run_dir / "predictions_val.csv", seed=4)
    thresholds = {f: round(float(t), 3) for f, t in zip(FINDINGS, np.random.default_rng(5).uniform(0.3, 0.7, 14))}
    thresholds[NO_THRESHOLD] = None
    (run_dir / run_folder.THRESHOLDS_NAME).write_text(json.dumps({"youden": thresholds, "max_f1": thresholds}))
    return run_dir, test, validation, thresholds


# --------------------------------------------------------------------------- independent figures


def scorable(labels: np.ndarray, patients: np.ndarray, min_positives: int = 2) -> bool:
    """The report's rule, written out: enough positive and negative films, from at least 2 patients each."""
    positive = labels == 1
    return bool(positive.sum() >= max(min_positives, 2) and (~positive).sum() >= 2
                and np.unique(patients[positive]).size >= 2 and np.unique(patients[~positive]).size >= 2)


def auroc_or_nan(labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, min_positives: int = 2) -> float:
    return float(roc_auc_score(labels, scores)) if scorable(labels, patients, min_positives) else np.nan


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    tp, fp = int((flagged & (labels == 1)).sum()), int((flagged & (labels == 0)).sum())
    fn, tn = int((~flagged & (labels == 1)).sum()), int((~flagged & (labels == 0)).sum())
    ratio = lambda a, b: a / b if b else np.nan  # noqa: E731
    return {"tp": tp, "fp": fp, "tn": tn, "fn": fn, "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
            "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def youden_j(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    flagged = scores >= threshold
    return flagged[labels == 1].mean() - flagged[labels == 0].mean()


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """(ECE over equal-width bins, Brier score); the designed scores never sit on a bin edge."""
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    gap = sum(abs(labels[which == b].sum() - probabilities[which == b].sum()) for b in range(bins))
    return gap / len(labels), float(np.mean((probabilities - labels) ** 2))


def close(actual, expected) -> bool:
    return bool(np.isnan(expected) and np.isnan(actual)) or actual == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------- the evaluation report


@pytest.fixture(scope="module")
def evaluated(designed):
    run_dir, *_ = designed

    def the_designed_table(run, split, tta_hflip=False):  # evaluate_run's scoring step, reading our CSV instead
        return pd.read_csv(run.run_dir / run_folder.predictions_name(split))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "predict_split", the_designed_table)
        return evaluation.evaluate_run(run_dir, n_bootstrap=N_BOOTSTRAP, gallery_per_kind=2)


def test_per_finding_auroc_ap_and_their_intervals_follow_the_column_names(designed, evaluated):
    _, test, _, _ = designed
    result, document = evaluated, evaluated.to_document()
    in_mean = []
    for finding, k in K.items():
        expected = auroc_or_nan(test.labels[:, k], test.ours[:, k], test.patients)
        row = result.auroc.loc[finding]
        assert close(row["auroc"], expected), finding
        assert close(document["per_class"][finding]["auroc"], expected), finding
        assert row["positives"] == test.labels[:, k].sum()
        assert result.average_precision[k] == pytest.approx(average_precision_score(test.labels[:, k],
                                                                                    test.ours[:, k])), finding
        if np.isfinite(expected):
            in_mean.append(finding)
    for finding in PERFECT:
        assert tuple(result.auroc.loc[finding, ["auroc", "ci_low", "ci_high"]]) == (1.0, 1.0, 1.0)
    for finding in REVERSED:
        assert tuple(result.auroc.loc[finding, ["auroc", "ci_low", "ci_high"]]) == (0.0, 0.0, 0.0)
    assert tuple(result.auroc.loc[CONSTANT, ["auroc", "ci_low", "ci_high"]]) == (0.5, 0.5, 0.5)
    assert result.average_precision[K[CONSTANT]] == pytest.approx(test.labels[:, K[CONSTANT]].mean())
    assert result.auroc.attrs["mean_over"] == in_mean and len(in_mean) >= 12
    mean = np.mean([roc_auc_score(test.labels[:, K[f]], test.ours[:, K[f]]) for f in in_mean])
    assert result.auroc.loc[MEAN_ROW, "auroc"] == pytest.approx(mean)
    assert document["mean_auroc"]["auroc"] == pytest.approx(mean)
    assert result.context.iloc[0]["mean_auroc"] == pytest.approx(mean)
    assert result.n_images == len(test.images) and result.n_patients == np.unique(test.patients).size


def test_operating_points_and_the_classification_report_use_the_runs_thresholds_by_name(designed, evaluated):
    _, test, _, thresholds = designed
    result = evaluated
    table = result.summary_table()
    for finding, k in K.items():
        point = result.operating.loc[finding]
        if thresholds[finding] is None:
            assert np.isnan(point["threshold"]) and np.isnan(point["sensitivity"])
            assert "no validation threshold" in table.loc[finding, "note"]
            assert finding in result.report.attrs["excluded"]
            continue
        expected = at_threshold(test.labels[:, k], test.ours[:, k], thresholds[finding])
        assert point["threshold"] == thresholds[finding]
        for column in ("tp", "fp", "tn", "fn", "sensitivity", "specificity", "ppv", "npv"):
            assert close(point[column], expected[column]), (finding, column)
        assert close(table.loc[finding, "sensitivity"], expected["sensitivity"])
        assert close(table.loc[finding, "specificity"], expected["specificity"])
        assert close(result.report.loc[finding, "recall"], expected["sensitivity"])
        assert close(result.report.loc[finding, "f1-score"], expected["f1"])
    document = result.to_document()
    assert document["thresholds"]["values"] == thresholds
    assert {f: p["threshold"] for f, p in document["operating_points"].items() if thresholds[f] is not None} == {
        f: t for f, t in thresholds.items() if t is not None}
    # The gallery's calls are the films' own probabilities at their finding's threshold.
    scored = pd.DataFrame(test.ours, columns=list(FINDINGS), index=test.images)
    truth = pd.DataFrame(test.labels, columns=list(FINDINGS), index=test.images)
    assert len(result.gallery.examples) > 0
    for example in result.gallery.examples.itertuples():
        probability, label = scored.loc[example.image, example.finding], truth.loc[example.image, example.finding]
        assert example.probability == pytest.approx(probability) and example.threshold == thresholds[example.finding]
        assert (label == 1, probability >= example.threshold) == {"TP": (True, True), "FP": (False, True),
                                                                   "FN": (True, False)}[example.kind]


def test_calibration_follows_the_column_names(designed, evaluated):
    _, test, _, _ = designed
    for finding, k in K.items():
        ece, brier = calibration(test.labels[:, k], test.ours[:, k])
        row = evaluated.calibration.loc[finding]
        assert row["ece"] == pytest.approx(ece) and row["brier"] == pytest.approx(brier), finding
        assert row["mean_probability"] == pytest.approx(test.ours[:, k].mean())
        assert row["prevalence"] == pytest.approx(test.labels[:, k].mean())
    reliability = evaluated.reliability[evaluated.reliability["finding"] == CONSTANT]
    assert reliability["mean_probability"].tolist() == pytest.approx([CONSTANT_VALUE])
    assert reliability["fraction_positive"].tolist() == pytest.approx([test.labels[:, K[CONSTANT]].mean()])


def test_subgroup_figures_join_each_film_to_its_own_sex_age_and_view(designed, evaluated):
    _, test, _, _ = designed
    groups = {"sex": test.rows["sex"], "age band": age_band(test.rows["age_years"]), "view": test.rows["view"]}
    table = evaluated.subgroups
    compared = 0
    for variable, values in groups.items():
        levels = [level for level in pd.unique(values.dropna())]
        masks = {level: (values == level).to_numpy() for level in levels}
        common = [f for f in FINDINGS if all(scorable(test.labels[m, K[f]], test.patients[m]) for m in masks.values())]
        assert table.attrs["mean_over"][variable] == common
        for level, mask in masks.items():
            rows = table[(table["subgroup"] == variable) & (table["value"] == level)].set_index("finding")
            assert rows["images"].iloc[0] == mask.sum()
            assert rows["patients"].iloc[0] == np.unique(test.patients[mask]).size
            for finding, k in K.items():
                expected = auroc_or_nan(test.labels[mask, k], test.ours[mask, k], test.patients[mask])
                assert close(rows.loc[finding, "auroc"], expected), (variable, level, finding)
                compared += np.isfinite(expected)
            if common:
                expected_mean = np.mean([roc_auc_score(test.labels[mask, K[f]], test.ours[mask, K[f]])
                                         for f in common])
                assert rows.loc[MEAN_ROW, "auroc"] == pytest.approx(expected_mean)
    assert compared >= 40  # most (group, finding) pairs are scored, so the check has teeth


# --------------------------------------------------------------------------- the comparison report


@pytest.fixture(scope="module")
def compared(designed, tmp_path_factory):
    run_dir, test, validation, _ = designed
    designed_txv = pd.concat([pd.DataFrame(d.txv, columns=list(FINDINGS), index=d.images) for d in (test, validation)])

    def the_designed_txv_scores(model, cache, names):  # the TorchXRayVision model's scores on the named films
        return designed_txv.loc[list(names), list(model.findings)].to_numpy()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare_module, "predict_txv", the_designed_txv_scores)
        result = compare_run(run_dir, [TXV_MODEL], weights_dir=tmp_path_factory.mktemp("no_weights"),
                             random_init=True, n_bootstrap=N_BOOTSTRAP)
    (comparison,) = result.comparisons
    return comparison


def test_the_comparisons_aurocs_differences_and_p_values_follow_the_column_names(designed, compared):
    _, test, _, _ = designed
    table = compared.auroc.table
    assert compared.test.findings == list(FINDINGS)
    p_values = {}
    for finding, k in K.items():
        y, ours, txv = test.labels[:, k], test.ours[:, k], test.txv[:, k]
        if not scorable(y, test.patients):
            assert np.isnan(table.loc[finding, "auroc_ours"]) and "not scored" in table.loc[finding, "note"]
            continue
        assert table.loc[finding, "auroc_ours"] == pytest.approx(roc_auc_score(y, ours)), finding
        assert table.loc[finding, "auroc_txv"] == pytest.approx(roc_auc_score(y, txv)), finding
        assert table.loc[finding, "difference"] == pytest.approx(roc_auc_score(y, ours) - roc_auc_score(y, txv))
        # DeLong's statistic is checked against its definition in test_delong.py; here: on the right columns.
        expected = delong_paired_test(y, ours, txv, clusters=test.patients)
        assert table.loc[finding, "p_value"] == pytest.approx(expected.p_value), finding
        p_values[finding] = expected.p_value
    assert table.loc[SAME_FOR_TXV, "difference"] == 0 and table.loc[SAME_FOR_TXV, "p_value"] == 1
    ordered = sorted(p_values, key=p_values.get)
    holm = np.minimum(np.maximum.accumulate([(len(ordered) - i) * p_values[f] for i, f in enumerate(ordered)]), 1)
    assert table.loc[ordered, "p_holm"].to_numpy() == pytest.approx(holm)
    tested = list(p_values)
    assert table.loc[MEAN_ROW, "auroc_ours"] == pytest.approx(np.mean([table.loc[f, "auroc_ours"] for f in tested]))
    assert table.loc[MEAN_ROW, "difference"] == pytest.approx(
        np.mean([roc_auc_score(test.labels[:, K[f]], test.ours[:, K[f]]) - roc_auc_score(test.labels[:, K[f]],
                                                                                         test.txv[:, K[f]])
                 for f in tested]))
    document = compared.to_document()
    per_class = {row["finding"]: row for row in document["per_class"]}
    assert per_class[PERFECT[0]]["auroc_ours"] == 1.0 and per_class[REVERSED[0]]["auroc_ours"] == 0.0


def test_the_comparisons_operating_points_use_thresholds_chosen_on_each_models_own_validation_scores(designed,
                                                                                                      compared):
    _, test, validation, _ = designed
    report = compared.classification
    op_thresholds = compared.model.op_thresholds
    for finding, k in K.items():
        for model, scores, val_scores in (("ours", test.ours, validation.ours), ("txv", test.txv, validation.txv)):
            name = compared.names[model]
            row = report[(report["model"] == name) & (report["thresholds"] == "validation youden")
                         & (report["finding"] == finding)].iloc[0]
            y_val = validation.labels[:, k]
            if y_val.min() == y_val.max():
                assert np.isnan(row["threshold"])
                continue
            best = max(youden_j(y_val, val_scores[:, k], t) for t in np.unique(val_scores[:, k]))
            assert youden_j(y_val, val_scores[:, k], row["threshold"]) == pytest.approx(best), (model, finding)
            expected = at_threshold(test.labels[:, k], scores[:, k], row["threshold"])
            for column in ("tp", "fp", "sensitivity", "specificity", "ppv", "f1"):
                assert close(row[column], expected[column]), (model, finding, column)
        published = report[(report["thresholds"] == "TorchXRayVision op_threshs") & (report["finding"] == finding)]
        expected = at_threshold(test.labels[:, k], test.txv[:, k], op_thresholds[finding])
        assert published["threshold"].iloc[0] == op_thresholds[finding]
        assert close(published["sensitivity"].iloc[0], expected["sensitivity"])
        assert close(published["specificity"].iloc[0], expected["specificity"])


def test_the_comparison_by_sex_and_view_joins_each_film_to_its_own_metadata(designed, compared):
    _, test, _, _ = designed
    table = compared.subgroups
    scored = 0
    for variable in ("sex", "view"):
        values = test.rows[variable].to_numpy()
        for level in np.unique(values):
            mask = values == level
            rows = table[(table["subgroup"] == variable) & (table["value"] == level)].set_index("finding")
            assert rows["images"].iloc[0] == mask.sum()
            for finding, k in K.items():
                expected_ours = auroc_or_nan(test.labels[mask, k], test.ours[mask, k], test.patients[mask], 5)
                expected_txv = auroc_or_nan(test.labels[mask, k], test.txv[mask, k], test.patients[mask], 5)
                assert close(rows.loc[finding, "auroc_ours"], expected_ours), (variable, level, finding)
                assert close(rows.loc[finding, "auroc_txv"], expected_txv), (variable, level, finding)
                scored += np.isfinite(expected_ours)
    assert scored >= 20
