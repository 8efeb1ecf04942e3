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
from cxrutils.predictions import predictions_table
from cxrutils.stats.delong import delong_paired_test
from cxrutils.stats.metrics import MEAN_ROW

PERFECT = ("Atelectasis", "Effusion")  # every positive scores above every negative: AUROC 1
REVERSED = ("Cardiomegaly", "Mass")  # every positive scores below every negative: AUROC 0
CONSTANT, CONSTANT_VALUE = "Nodule", 0.35  # one score for every film: AUROC 0.5, AP the prevalence
SAME_FOR_TXV = "Edema"  # TorchXRayVision's scores equal ours: difference 0, p = 1
NO_THRESHOLD = "Hernia"  # thresholds.json holds null for it
SUBGROUP_PATIENTS = 5  # the default of subgroup_min_positive_patients: patients with a positive film in a group
AGE_EDGES = (18, 40, 60, 80)  # the evaluation's age bands: <18, 18-39, 40-59, 60-79, 80+
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
        table = predictions_table(self.images, self.patients, self.ours, self.labels)
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


def scorable(labels: np.ndarray, patients: np.ndarray, min_positive_patients: int = 2) -> bool:
    """The report's rule, written out: 2 positive and 2 negative films, the positives from at least
    ``min_positive_patients`` patients (never fewer than 2) and the negatives from at least 2."""
    positive = labels == 1
    return bool(positive.sum() >= 2 and (~positive).sum() >= 2
                and np.unique(patients[positive]).size >= max(min_positive_patients, 2)
                and np.unique(patients[~positive]).size >= 2)


def auroc_or_nan(labels: np.ndarray, scores: np.ndarray, patients: np.ndarray, min_positive_patients: int = 2) -> float:
    return float(roc_auc_score(labels, scores)) if scorable(labels, patients, min_positive_patients) else np.nan


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
        assert (row["positives"], row["negatives"]) == (test.labels[:, k].sum(), (test.labels[:, k] == 0).sum())
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
        assert (point["positives"], point["negatives"]) == (test.labels[:, k].sum(), (test.labels[:, k] == 0).sum())
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
        assert row["prevalence"] == pytest.approx(test.labels[:, k].mean()) and row["images"] == len(test.images)
    reliability = evaluated.reliability[evaluated.reliability["finding"] == CONSTANT]
    assert reliability["mean_probability"].tolist() == pytest.approx([CONSTANT_VALUE])
    assert reliability["fraction_positive"].tolist() == pytest.approx([test.labels[:, K[CONSTANT]].mean()])


def test_subgroup_figures_join_each_film_to_its_own_sex_age_and_view(designed, evaluated):
    """Each cell is scored only with SUBGROUP_PATIENTS patients with a positive film in its group (before this
    setting, 2 films from 2 patients): the cells between the two rules are counted, and shown as NaN."""
    _, test, _, _ = designed
    ages = test.rows["age_years"].to_numpy(dtype=float)
    bands = pd.Series(np.select([ages < 18, ages < 40, ages < 60, ages < 80], ["<18", "18-39", "40-59", "60-79"],
                                "80+"))  # written out: the designed run's ages are all plausible
    assert (bands.astype(str) == age_band(ages, AGE_EDGES).astype(str)).all()
    groups = {"sex": test.rows["sex"], "age band": bands, "view": test.rows["view"]}
    table = evaluated.subgroups
    compared, hidden_by_the_patient_rule = 0, 0
    for variable, values in groups.items():
        levels = [level for level in pd.unique(values.dropna())]
        masks = {level: (values == level).to_numpy() for level in levels}
        common = [f for f in FINDINGS if all(scorable(test.labels[m, K[f]], test.patients[m], SUBGROUP_PATIENTS)
                                             for m in masks.values())]
        assert table.attrs["mean_over"][variable] == common
        for level, mask in masks.items():
            rows = table[(table["subgroup"] == variable) & (table["value"] == level)].set_index("finding")
            assert rows["images"].iloc[0] == mask.sum()
            assert rows["patients"].iloc[0] == np.unique(test.patients[mask]).size
            for finding, k in K.items():
                positive = test.labels[mask, k] == 1
                assert rows.loc[finding, "positive_patients"] == np.unique(test.patients[mask][positive]).size
                expected = auroc_or_nan(test.labels[mask, k], test.ours[mask, k], test.patients[mask],
                                        SUBGROUP_PATIENTS)
                assert close(rows.loc[finding, "auroc"], expected), (variable, level, finding)
                compared += np.isfinite(expected)
                hidden_by_the_patient_rule += (np.isnan(expected)
                                               and scorable(test.labels[mask, k], test.patients[mask]))
            if common:
                expected_mean = np.mean([roc_auc_score(test.labels[mask, K[f]], test.ours[mask, K[f]])
                                         for f in common])
                assert rows.loc[MEAN_ROW, "auroc"] == pytest.approx(expected_mean)
                fewest = min(np.unique(test.patients[mask][test.labels[mask, K[f]] == 1]).size for f in common)
                assert rows.loc[MEAN_ROW, "positive_patients"] == fewest
    assert compared >= 40  # most (group, finding) pairs are scored, so the check has teeth
    assert hidden_by_the_patient_rule > 0  # and the rule hides some cells the old one showed: it is applied
    assert evaluated.to_document()["subgroups"]["min_positive_patients"] == SUBGROUP_PATIENTS


def test_the_films_per_patient_and_the_patient_level_aurocs_are_those_of_the_scored_films(designed, evaluated):
    """Cluster facts by pandas on the split's metadata rows; first film by follow-up; weights 1 / films."""
    _, test, _, _ = designed
    counts = test.rows["patient_id"].value_counts()
    top = int(np.ceil(counts.size / 10))
    facts = evaluated.clusters
    assert (facts.films, facts.patients, facts.films_per_patient_max) == (len(test.rows), counts.size, counts.max())
    assert facts.films_per_patient_mean == pytest.approx(len(test.rows) / counts.size)
    assert facts.top_decile_share == pytest.approx(counts.nlargest(top).sum() / len(test.rows))
    for finding, k in K.items():
        assert facts.per_finding.loc[finding, "positive films"] == test.labels[:, k].sum()
        positive = test.labels[:, k] == 1
        assert facts.per_finding.loc[finding, "positive patients"] == np.unique(test.patients[positive]).size

    first = test.rows.groupby("patient_id")["follow_up"].idxmin().to_numpy()  # rows are 0..n-1
    weights = 1.0 / test.rows["patient_id"].map(counts).to_numpy()
    table = evaluated.patient_level
    for finding, k in K.items():
        y, scores = test.labels[:, k], test.ours[:, k]
        assert close(table.loc[finding, "auroc_films"], auroc_or_nan(y, scores, test.patients))
        assert close(table.loc[finding, "auroc_first_film"],
                     auroc_or_nan(y[first], scores[first], test.patients[first]))
        if np.isfinite(table.loc[finding, "auroc_weighted"]):
            expected = roc_auc_score(y, scores, sample_weight=weights)
            assert table.loc[finding, "auroc_weighted"] == pytest.approx(expected)
    assert tuple(table.loc[PERFECT[0], ["auroc_first_film", "auroc_weighted"]]) == pytest.approx((1.0, 1.0))
    assert tuple(table.loc[CONSTANT, ["auroc_first_film", "auroc_weighted"]]) == pytest.approx((0.5, 0.5))
    young = test.rows[test.rows["age_years"] < 18]
    assert (evaluated.paediatric["films"], evaluated.paediatric["patients"]) == (len(young),
                                                                               young["patient_id"].nunique())
    document = json.loads(json.dumps(evaluated.to_document()))
    assert document["clusters"]["films_per_patient"]["max"] == counts.max()
    assert document["patient_level_auroc"]["per_class"][PERFECT[0]]["auroc_first_film"] == pytest.approx(1.0)
    assert document["patient_level_auroc"]["mean_over"] == table.attrs["mean_over"]
    assert document["paediatric"]["films"] == len(young)


# --------------------------------------------------------------------------- the comparison report


@pytest.fixture(scope="module")
def compared(designed, tmp_path_factory):
    run_dir, test, validation, _ = designed
    designed_txv = pd.concat([pd.DataFrame(d.txv, columns=list(FINDINGS), index=d.images) for d in (test, validation)])

    def the_designed_txv_scores(model, cache, names, outputs=None):  # the TorchXRayVision model's scores
        scores = designed_txv.loc[list(names), list(model.findings)].to_numpy()
        extra = 0 if outputs is None else len(outputs) - len(model.findings)  # Fracture: not a designed figure
        return np.hstack([scores, np.full((len(scores), extra), 0.5)])

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
        assert (table.loc[finding, "positives"], table.loc[finding, "negatives"]) == (y.sum(), (y == 0).sum())
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
    from cxrutils.stats.paired import side_by_side

    assert list(side_by_side(compared.classification).index) == list(FINDINGS)
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
                expected_ours = auroc_or_nan(test.labels[mask, k], test.ours[mask, k], test.patients[mask],
                                             SUBGROUP_PATIENTS)
                expected_txv = auroc_or_nan(test.labels[mask, k], test.txv[mask, k], test.patients[mask],
                                            SUBGROUP_PATIENTS)
                positive = test.labels[mask, k] == 1
                assert rows.loc[finding, "positive_patients"] == np.unique(test.patients[mask][positive]).size
                assert close(rows.loc[finding, "auroc_ours"], expected_ours), (variable, level, finding)
                assert close(rows.loc[finding, "auroc_txv"], expected_txv), (variable, level, finding)
                scored += np.isfinite(expected_ours)
    assert scored >= 20


# --------------------------------------------------------------------------- what the report writes around the figures


def test_the_intervals_are_95_percent_patient_bootstrap_intervals(designed, evaluated):
    from cxrutils.stats.metrics import bootstrap_resample_aurocs

    _, test, _, _ = designed
    k = K["Infiltration"]
    resampled = bootstrap_resample_aurocs(test.labels[:, [k]], test.ours[:, [k]], test.patients,
                                          n_resamples=N_BOOTSTRAP, seed=0)[:, 0]
    row = evaluated.auroc.loc["Infiltration"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(np.quantile(resampled, [0.025, 0.975])))
    bootstrap = evaluated.to_document()["bootstrap"]
    assert (bootstrap["n_resamples"], bootstrap["seed"], bootstrap["confidence"]) == (N_BOOTSTRAP, 0, 0.95)


def test_metrics_json_holds_every_section_the_report_shows(designed, evaluated):
    run_dir, test, _, thresholds = designed
    path = evaluation.write_metrics(evaluated)
    assert path == run_dir / "metrics.json"
    document = json.loads(path.read_text())
    assert document == json.loads(json.dumps(evaluated.to_document()))
    assert document["n_images"] == len(test.images) and document["split"] == "test"
    located = document["localization"]
    assert located["available"] is False and "bounding-box" in located["note"]
    assert evaluated.report.loc["macro avg", "note"] == f"over 13 of 14 classes (without {NO_THRESHOLD})"
    assert document["classification_report"]["macro avg"]["f1-score"] == pytest.approx(
        evaluated.report.loc["macro avg", "f1-score"])
    assert evaluated.radiologist is None  # no designed film is one of the radiologist-labelled NIH films
    assert document["radiologist_labels"] == {"available": False, "films": 0}
    # Films that are: the section says so, with its own figures.
    import dataclasses

    from cxrutils.data.radiologist_labels import read_radiologist_labels
    from cxrutils.evaluate.radiologist import score_against_radiologists

    google = read_radiologist_labels().head(120)
    rng = np.random.default_rng(8)
    films = predictions_table(google.index, google["patient_id"], rng.random((120, 14)),
                              (rng.random((120, 14)) < 0.3).astype(int))
    scored = dataclasses.replace(evaluated, radiologist=score_against_radiologists(films, google, 10, 0))
    section = scored.to_document()["radiologist_labels"]
    assert section["available"] is True and section["films"] == 120
    assert document["subgroups"]["images_without_group"] == {
        "sex": 0, "view": 0, "age band": int(age_band(test.rows["age_years"], AGE_EDGES).isna().sum())}
    means = evaluated.subgroup_means()
    for (variable, _), row in means.iterrows():
        assert row["findings in mean"] == len(evaluated.subgroups.attrs["mean_over"][variable])
    assert len(means) == evaluated.subgroups[["subgroup", "value"]].drop_duplicates().shape[0]


def test_the_summary_table_says_why_a_finding_has_no_figure(designed, evaluated):
    import dataclasses

    from cxrutils.stats import metrics

    _, test, _, thresholds = designed
    labels = test.labels.copy()
    labels[:, K["Pneumonia"]] = 0  # no positives
    labels[:, K["Fibrosis"]] = 1  # no negatives
    labels[:, K["Edema"]] = 0
    labels[np.flatnonzero(test.patients == test.patients[0]), K["Edema"]] = 1  # positives from one patient only
    cut = metrics.threshold_array(thresholds)
    variant = dataclasses.replace(
        evaluated, labels=labels,
        auroc=metrics.bootstrap_auroc(labels, test.ours, test.patients, n_resamples=10),
        operating=metrics.operating_points(labels, test.ours, cut))
    notes = variant.summary_table()["note"]
    assert notes["Pneumonia"].startswith("no positives in this split")
    assert notes["Fibrosis"] == "no negatives in this split"
    assert notes["Edema"] == metrics.NOT_SCORABLE_NOTE
    assert notes[NO_THRESHOLD] == "no validation threshold" and notes["Atelectasis"] == ""
    assert notes[MEAN_ROW] == f"over {len(variant.auroc.attrs['mean_over'])} scorable findings"
    mean = evaluated.auroc.loc[MEAN_ROW]
    assert evaluated.headline == (f"mean AUROC {mean['auroc']:.3f} [{mean['ci_low']:.3f}, {mean['ci_high']:.3f}] "
                                  f"(test, n={len(test.images):,} images)")
    nothing = dataclasses.replace(evaluated, auroc=metrics.bootstrap_auroc(np.zeros_like(labels), test.ours,
                                                                           test.patients, n_resamples=5))
    assert nothing.headline.startswith("mean AUROC undefined")  # not "boolean value of NA is ambiguous"
    assert nothing.to_document()["mean_auroc"]["auroc"] is None


def test_the_gallery_shows_each_call_on_its_own_film(designed, evaluated):
    from cxrutils.data.cache import ImageCache

    _, test, _, thresholds = designed
    gallery = evaluated.gallery
    cache = ImageCache.open(evaluated.run.config.cache_dir)
    films = np.asarray(cache.pixels[cache.rows(gallery.examples["image"].tolist())]) / 255.0
    assert gallery.images.shape == films.shape  # the 32 px cache is the 32 px input: no resize
    np.testing.assert_allclose(gallery.images, films, atol=1e-6)
    assert gallery.heatmaps.shape == films.shape and len(gallery.titles) == len(gallery.examples)
    for kind in ("TP", "FP", "FN"):
        images, heatmaps, boxes, titles = gallery.of_kind(kind)
        expected = gallery.examples["kind"] == kind
        assert len(images) == len(titles) == expected.sum() > 0
        assert all(title.startswith(f"{kind}: ") for title in titles)
    empty = evaluation.gallery_panels(evaluated.run, evaluated.gradcam_layer, gallery.examples.iloc[:0])
    assert empty.images.shape == empty.heatmaps.shape == (0, 32, 32)
    assert evaluation.model_frame_images(evaluated.run, []).shape == (0, 32, 32)


def test_gallery_examples_pick_the_most_confident_calls_one_finding_at_a_time_boxed_ones_first():
    images = np.array([f"{i:08d}_000.png" for i in range(8)])
    labels = np.zeros((8, len(FINDINGS)), dtype=int)
    probabilities = np.full((8, len(FINDINGS)), 0.1)
    a, b = K["Atelectasis"], K["Mass"]
    labels[[0, 1, 2, 3], a] = 1
    probabilities[:, a] = [0.9, 0.8, 0.3, 0.5, 0.7, 0.2, 0.6, 0.1]  # TP 0, 1; FN 2, 3 (at 0.5: flagged); FP 4, 6
    labels[[4, 5], b] = 1
    probabilities[:, b] = [0.1, 0.1, 0.1, 0.1, 0.95, 0.2, 0.97, 0.1]  # TP 4; FN 5; FP 6
    thresholds = np.full(len(FINDINGS), np.nan)
    thresholds[[a, b]] = 0.5
    predictions = pd.DataFrame({"image": images})
    boxes = pd.DataFrame({"image": [images[1]], "finding": ["Atelectasis"], "x": [10.0], "y": [20.0], "w": [30.0],
                          "h": [40.0]})
    picked = evaluation.gallery_examples(predictions, labels, probabilities, thresholds, boxes, per_kind=3)
    by_kind = {kind: picked[picked["kind"] == kind] for kind in ("TP", "FP", "FN")}
    # TP: the boxed film first (0.8 over 0.9), then Mass's best before Atelectasis's second.
    assert list(zip(by_kind["TP"]["image"], by_kind["TP"]["finding"])) == [
        (images[1], "Atelectasis"), (images[4], "Mass"), (images[0], "Atelectasis")]
    assert by_kind["TP"][["x", "y", "w", "h"]].iloc[0].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert np.isnan(by_kind["TP"]["x"].iloc[1])
    assert list(by_kind["FP"]["image"]) == [images[6], images[4], images[6]]  # most confident first, Mass then A.
    assert list(by_kind["FP"]["finding"]) == ["Mass", "Atelectasis", "Atelectasis"]
    assert list(zip(by_kind["FN"]["image"], by_kind["FN"]["finding"])) == [
        (images[5], "Mass"), (images[2], "Atelectasis")]  # lowest probability first; a score at 0.5 is flagged
    one = evaluation.gallery_examples(predictions, labels, probabilities, thresholds, boxes, per_kind=1)
    assert one.groupby("kind").size().to_dict() == {"FN": 1, "FP": 1, "TP": 1}
    assert evaluation.gallery_examples(predictions, labels, probabilities, thresholds, boxes, per_kind=0).empty
    none = evaluation.gallery_examples(predictions, labels, probabilities, np.full(len(FINDINGS), np.nan), boxes, 2)
    assert none.empty and list(none.columns) == ["kind", "image", "finding", "probability", "threshold", "x", "y",
                                                 "w", "h"]


def test_the_published_results_are_comparable_only_on_real_official_test_films(evaluated):
    from types import SimpleNamespace

    def run(kind, synthetic):
        return SimpleNamespace(name="r", dataset=SimpleNamespace(split_kind=kind, synthetic=synthetic),
                               config=SimpleNamespace(weights="imagenet", input_size=224, arch="densenet121"))

    auroc = evaluated.auroc
    real = evaluation.context_table(run("official", False), "test", auroc)
    this = real.iloc[0]
    assert bool(this["comparable_to_official_split"]) and this["comparable with this run"] == "-"
    published = real.iloc[1:]
    assert (published["comparable with this run"] == np.where(published["split"] == "official", "yes, roughly",
                                                             "no")).all()
    random_split = evaluation.context_table(run("random", False), "test", auroc)
    assert not random_split.iloc[0]["comparable_to_official_split"]
    assert (random_split.iloc[1:]["comparable with this run"] == np.where(
        random_split.iloc[1:]["split"] == "random patient split", "yes, roughly", "no")).all()
    for other in (evaluation.context_table(run("official", False), "val", auroc),
                  evaluation.context_table(run("official", True), "test", auroc)):
        assert not other.iloc[0]["comparable_to_official_split"]
        assert (other.iloc[1:]["comparable with this run"] == "no").all()
    assert "SYNTHETIC" in evaluation.context_table(run("official", True), "test", auroc).iloc[0]["split"]


def test_metrics_file_names_never_overwrite_each_other():
    names = {(split, tta): run_folder.metrics_name(split, tta) for split in ("train", "val", "test")
             for tta in (False, True)}
    assert names[("test", False)] == "metrics.json" and names[("val", True)] == "metrics_val_hflip_tta.json"
    assert names[("test", True)] == "metrics_test_hflip_tta.json" and len(set(names.values())) == 6
