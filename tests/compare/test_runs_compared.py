"""Runs against runs (cxrutils.compare.runs): checked against computations from the definitions, on run folders
written here without training (tests/helpers/run_folders.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from run_folders import clustered_predictions, perturbed, write_run
from sklearn.metrics import roc_auc_score

from cxrutils import cli
from cxrutils.compare.runs import (
    COMPARISON_JSON,
    SPREAD_FACTOR,
    FilmsDifferError,
    PredictionsMissingError,
    RunsNotComparableError,
    compare_runs,
    comparison_dir,
    comparison_name,
    write_runs_comparison,
)
from cxrutils.labels import FINDINGS
from cxrutils.predictions import probability_column
from cxrutils.publish import runner
from cxrutils.settings import load_profile
from cxrutils.show import runs_view
from cxrutils.stats.delong import delong_paired_test
from cxrutils.stats.metrics import MEAN_ROW

N_BOOTSTRAP = 400


@pytest.fixture(scope="module")
def films() -> pd.DataFrame:
    return clustered_predictions(n_patients=120, seed=0)


@pytest.fixture
def two_runs(films: pd.DataFrame, tmp_path: Path) -> list[Path]:
    """A reference and a run trained with another seed that scores a little better."""
    return [write_run(tmp_path / "runs" / "baseline", films),
            write_run(tmp_path / "runs" / "baseline_seed1", perturbed(films, 0.6, seed=1, shift=0.2), seed=1)]


# --------------------------------------------------------------------------- independent computations


def _auroc_by_definition(labels: np.ndarray, scores: np.ndarray) -> float:
    positive, negative = scores[labels == 1], scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    return float(wins.mean())


def _holm_by_hand(p_values: list[float]) -> list[float]:
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p_values) - rank) * p_values[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def _bh_by_hand(p_values: list[float]) -> list[float]:
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted, running = [0.0] * m, 1.0
    for position, i in enumerate(order):
        rank = m - position  # 1-based rank of p among all, ascending
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = running
    return adjusted


def _delong_by_definition(labels: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong et al. (1988) from the pair table: the difference of two AUROCs on the same films, and its p-value."""
    def components(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positive, negative = scores[labels == 1], scores[labels == 0]
        psi = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10_a, v01_a), (v10_b, v01_b) = components(a), components(b)
    m, n = v10_a.size, v01_a.size
    variance = np.var(v10_a - v10_b, ddof=1) / m + np.var(v01_a - v01_b, ddof=1) / n
    difference = v10_a.mean() - v10_b.mean()
    z = difference / math.sqrt(variance)
    return float(difference), math.erfc(abs(z) / math.sqrt(2))


def _patient_bootstrap_by_definition(frame: pd.DataFrame, other: pd.DataFrame, finding: str, n: int,
                                     seed: int) -> tuple[float, float]:
    """The 95% percentile interval of AUROC(other) - AUROC(frame), patients drawn with replacement."""
    rng = np.random.default_rng(seed)
    patients = frame["patient_id"].unique()
    rows_of = {p: np.flatnonzero(frame["patient_id"].to_numpy() == p) for p in patients}
    labels = frame[finding].to_numpy()
    a, b = frame[probability_column(finding)].to_numpy(), other[probability_column(finding)].to_numpy()
    differences = []
    for _ in range(n):
        rows = np.concatenate([rows_of[p] for p in rng.choice(patients, patients.size, replace=True)])
        if 0 < labels[rows].sum() < rows.size:
            differences.append(roc_auc_score(labels[rows], b[rows]) - roc_auc_score(labels[rows], a[rows]))
    return float(np.percentile(differences, 2.5)), float(np.percentile(differences, 97.5))


# --------------------------------------------------------------------------- the statistics


def test_aurocs_differences_p_values_and_intervals_match_independent_computations(two_runs, films):
    result = compare_runs(two_runs, n_bootstrap=N_BOOTSTRAP, bootstrap_seed=3)
    other = pd.read_csv(two_runs[1] / "predictions_test.csv")
    table = result.pair_table("baseline_seed1")
    per_run = result.per_run.set_index(["run", "finding"])
    for finding in FINDINGS:
        labels = films[finding].to_numpy()
        ours = roc_auc_score(labels, films[probability_column(finding)])
        theirs = roc_auc_score(labels, other[probability_column(finding)])
        assert per_run.loc[("baseline", finding), "auroc"] == pytest.approx(ours, abs=1e-12)
        assert per_run.loc[("baseline_seed1", finding), "auroc"] == pytest.approx(theirs, abs=1e-12)
        assert table.loc[finding, "auroc_reference"] == pytest.approx(ours, abs=1e-12)
        assert table.loc[finding, "difference"] == pytest.approx(theirs - ours, abs=1e-12)
        # The paired test uses the patient-clustered DeLong variance, the one stats.delong computes.
        clustered = delong_paired_test(labels, other[probability_column(finding)], films[probability_column(finding)],
                                       clusters=films["patient_id"])
        assert table.loc[finding, "p_value"] == pytest.approx(clustered.p_value, rel=1e-9)
    mean_difference = np.mean([table.loc[f, "difference"] for f in FINDINGS])
    assert table.loc[MEAN_ROW, "difference"] == pytest.approx(mean_difference, abs=1e-12)
    assert result.mean_difference("baseline_seed1")["difference"] == pytest.approx(mean_difference, abs=1e-12)
    # Holm and BH over the 14 findings, by hand.
    p_values = [table.loc[f, "p_value"] for f in FINDINGS]
    assert [table.loc[f, "p_holm"] for f in FINDINGS] == pytest.approx(_holm_by_hand(p_values), rel=1e-12)
    assert [table.loc[f, "p_bh"] for f in FINDINGS] == pytest.approx(_bh_by_hand(p_values), rel=1e-12)
    # The interval of a difference: a patient bootstrap written from its definition (other draws, so close, not equal).
    for finding in ("Atelectasis", "Effusion"):
        low, high = _patient_bootstrap_by_definition(films, other, finding, N_BOOTSTRAP, seed=11)
        assert table.loc[finding, "diff_ci_low"] == pytest.approx(low, abs=0.025)
        assert table.loc[finding, "diff_ci_high"] == pytest.approx(high, abs=0.025)
        assert table.loc[finding, "diff_ci_low"] < table.loc[finding, "difference"] < table.loc[finding, "diff_ci_high"]
    # The saved document holds the same numbers.
    saved = json.loads(write_runs_comparison(result, two_runs[0].parent / "comparisons" / "x").read_text())
    rows = {row["finding"]: row for row in saved["differences"]["baseline_seed1"]["per_finding"]}
    assert rows["Effusion"]["difference"] == pytest.approx(table.loc["Effusion", "difference"])
    assert saved["differences"]["baseline_seed1"]["p_values"]["Effusion"]["holm"] == pytest.approx(
        table.loc["Effusion", "p_holm"])
    assert saved["reference"] == "baseline" and saved["images"] == len(films) and saved["synthetic"] is True


def test_with_one_film_per_patient_the_p_values_are_delongs_from_the_pair_table(tmp_path):
    films = clustered_predictions(n_patients=150, seed=4)
    films = films.drop_duplicates("patient_id").reset_index(drop=True)  # one film each: clusters of one
    runs = [write_run(tmp_path / "runs" / "a", films),
            write_run(tmp_path / "runs" / "b", perturbed(films, 0.8, seed=2, shift=0.1), seed=1)]
    other = pd.read_csv(runs[1] / "predictions_test.csv")
    table = compare_runs(runs, n_bootstrap=50).pair_table("b")
    for finding in table.index.drop(MEAN_ROW):
        if pd.isna(table.loc[finding, "p_value"]):
            continue
        labels = films[finding].to_numpy()
        difference, p_value = _delong_by_definition(labels, other[probability_column(finding)].to_numpy(),
                                                    films[probability_column(finding)].to_numpy())
        assert table.loc[finding, "difference"] == pytest.approx(difference, abs=1e-12)
        assert table.loc[finding, "p_value"] == pytest.approx(p_value, rel=1e-9)
        assert table.loc[finding, "auroc_run"] == pytest.approx(
            _auroc_by_definition(labels, other[probability_column(finding)].to_numpy()), abs=1e-12)


# --------------------------------------------------------------------------- refusals


def test_runs_that_scored_other_films_are_refused_naming_the_difference(films, tmp_path):
    dropped = films.iloc[5:].reset_index(drop=True)
    runs = [write_run(tmp_path / "runs" / "full", films), write_run(tmp_path / "runs" / "short", dropped, seed=1)]
    with pytest.raises(FilmsDifferError) as refused:
        compare_runs(runs, n_bootstrap=10)
    message = str(refused.value)
    assert "5 film(s) only in run full" in message and films["image"].iloc[0] in message
    relabelled = films.copy()
    relabelled.loc[3, "Effusion"] = 1 - relabelled.loc[3, "Effusion"]
    write_run(tmp_path / "runs" / "relabelled", relabelled, seed=2)
    with pytest.raises(FilmsDifferError, match=r"1 film\(s\) labelled otherwise for Effusion \(e\.g\. "
                                               + films["image"].iloc[3]):
        compare_runs([runs[0], tmp_path / "runs" / "relabelled"], n_bootstrap=10)


def test_a_run_not_evaluated_or_evaluated_before_its_checkpoint_is_refused_with_the_command(two_runs):
    (two_runs[1] / "predictions_test.csv").unlink()
    with pytest.raises(PredictionsMissingError, match="cxrutils evaluate --run .*baseline_seed1"):
        compare_runs(two_runs, n_bootstrap=10)
    with pytest.raises(PredictionsMissingError, match="--split val"):
        compare_runs(two_runs, split="val", n_bootstrap=10)
    (two_runs[0] / "checkpoint_best.pt").touch()  # trained on after its evaluation
    shutil.copy(two_runs[0] / "predictions_test.csv", two_runs[1] / "predictions_test.csv")
    import os
    os.utime(two_runs[0] / "predictions_test.csv", (1_000_000, 1_000_000))
    with pytest.raises(PredictionsMissingError, match="older than checkpoint_best.pt"):
        compare_runs(two_runs, n_bootstrap=10)


def test_one_run_or_two_runs_of_one_name_are_refused(two_runs, films, tmp_path):
    with pytest.raises(RunsNotComparableError, match="at least two"):
        compare_runs(two_runs[:1])
    twin = write_run(tmp_path / "elsewhere" / "baseline", films)
    with pytest.raises(RunsNotComparableError, match="'baseline'"):
        compare_runs([two_runs[0], twin])


# --------------------------------------------------------------------------- settings and seeds


def test_settings_that_differ_are_listed_and_seeds_group_runs_with_their_spread(films, tmp_path):
    runs_dir = tmp_path / "runs"
    # An older run whose config.json predates a setting holds the schema's default: not a difference.
    paths = [write_run(runs_dir / "a0", films, seed=0),
             write_run(runs_dir / "a1", perturbed(films, 0.5, 1), seed=1),
             write_run(runs_dir / "a2", perturbed(films, 0.5, 2), seed=2),
             write_run(runs_dir / "b0", perturbed(films, 0.5, 3, shift=0.4), seed=0, lr=0.01),
             write_run(runs_dir / "b1", perturbed(films, 0.5, 4, shift=0.4), seed=1, lr=0.01,
                       record={"device": "cuda"}),
             write_run(runs_dir / "c0", perturbed(films, 0.5, 5, shift=1.2), seed=0, lr=0.1)]
    record = json.loads((paths[1] / "config.json").read_text())
    record.pop("arch", None)
    (paths[1] / "config.json").write_text(json.dumps(record))
    result = compare_runs(paths, n_bootstrap=100)

    assert list(result.settings_table.index) == ["lr", "seed"]  # names and folders are not the recipe
    assert list(result.settings_table.loc["lr"]) == [0.001, 0.001, 0.001, 0.01, 0.01, 0.1]
    assert list(result.facts_table.index) == ["device"]
    assert [(g.label, g.runs, g.seeds, g.settings) for g in result.groups] == [
        ("A", ["a0", "a1", "a2"], [0, 1, 2], {"lr": 0.001}), ("B", ["b0", "b1"], [0, 1], {"lr": 0.01}),
        ("C", ["c0"], [0], {"lr": 0.1})]

    per_run = result.per_run.set_index(["run", "finding"])["auroc"]
    spread = result.spread.set_index(["group", "finding"])
    members = {"A": ["a0", "a1", "a2"], "B": ["b0", "b1"], "C": ["c0"]}
    values = {group: {f: np.array([per_run[(run, f)] for run in runs]) for f in [*FINDINGS, MEAN_ROW]}
              for group, runs in members.items()}
    for group in ("A", "B"):
        for figure in ("Effusion", MEAN_ROW):
            assert spread.loc[(group, figure), "mean"] == pytest.approx(values[group][figure].mean())
            assert spread.loc[(group, figure), "sd"] == pytest.approx(values[group][figure].std(ddof=1))
            assert spread.loc[(group, figure), "max"] == pytest.approx(values[group][figure].max())
    assert np.isnan(spread.loc[("C", MEAN_ROW), "sd"])  # one run: no spread of its own
    # Every pair of groups, not only each against the first: C - B too. The difference of the means against twice
    # the seed SD pooled over A and B (C has one run) x sqrt(1/n1 + 1/n2).
    assert list(dict.fromkeys(zip(result.between["group"], result.between["other_group"]))) == [
        ("B", "A"), ("C", "A"), ("C", "B")]
    between = result.between.set_index(["group", "other_group", "finding"])
    for group, other in (("B", "A"), ("C", "A"), ("C", "B")):
        n1, n2 = len(members[group]), len(members[other])
        for figure in [*FINDINGS, MEAN_ROW]:
            a, b = values["A"][figure], values["B"][figure]
            pooled = math.sqrt((2 * a.var(ddof=1) + 1 * b.var(ddof=1)) / 3)
            threshold = SPREAD_FACTOR * pooled * math.sqrt(1 / n1 + 1 / n2)
            difference = values[group][figure].mean() - values[other][figure].mean()
            row = between.loc[(group, other, figure)]
            assert row["difference"] == pytest.approx(difference)
            assert row["threshold"] == pytest.approx(threshold)
            assert row["exceeds_spread"] is (abs(difference) > threshold)
    sentence = result.spread_sentence
    # Group B was made better on every finding (shift 0.4), group C better still (shift 1.2).
    assert between.loc[("B", "A", MEAN_ROW), "exceeds_spread"] and between.loc[("C", "B", MEAN_ROW), "exceeds_spread"]
    assert "each of the 3 pairs of groups" in sentence
    for group, other in (("B", "A"), ("C", "A"), ("C", "B")):
        part = sentence.split(f"group {group} minus group {other}: ")[1].split(";")[0]
        assert part.startswith("the mean AUROC difference") and "exceeds the seed spread" in part
        exceeding = [f for f in FINDINGS if between.loc[(group, other, f), "exceeds_spread"]]
        named = sentence.split(f"group {group} minus group {other}: ")[1].split("; group ")[0]
        assert f"{len(exceeding)} of 14 findings' differences exceed it" in named
        assert all(f in named for f in exceeding)
    shown = runs_view.between_display(result).to_html()
    assert "C minus B" in shown and "C minus A" in shown and "B minus A" in shown
    saved = result.to_document()
    assert saved["seed_groups"][1]["settings"] == {"lr": 0.01}
    assert saved["settings_differences"]["lr"] == {"a0": 0.001, "a1": 0.001, "a2": 0.001, "b0": 0.01, "b1": 0.01,
                                                   "c0": 0.1}
    assert {(row["group"], row["other_group"]) for row in saved["between_groups"]} == {("B", "A"), ("C", "A"),
                                                                                       ("C", "B")}


def test_without_two_seeds_of_a_recipe_the_sentence_says_the_spread_is_unknown(films, tmp_path):
    runs = [write_run(tmp_path / "runs" / "full", films),
            write_run(tmp_path / "runs" / "partial", perturbed(films, 0.5, 1), strategy="freeze_through_denseblock3")]
    result = compare_runs(runs, n_bootstrap=50)
    assert [g.settings for g in result.groups] == [{"strategy": "full"}, {"strategy": "freeze_through_denseblock3"}]
    assert "seed spread is unknown" in result.spread_sentence and "--seeds 0 1 2" in result.spread_sentence
    assert result.between["exceeds_spread"].isna().all()
    assert any("seed-to-seed variation" in caveat for caveat in result.caveats)


# --------------------------------------------------------------------------- hostile names, display, folders


HOSTILE = ["<img src=x onerror=alert(1)>", "=HYPERLINK(\"evil\")+cmd|'calc'!A0", "cost $x^2$ & co"]


def test_hostile_run_names_are_text_in_tables_figures_and_folder_names(films, tmp_path):
    runs = [write_run(tmp_path / "runs" / HOSTILE[0], films),
            write_run(tmp_path / "runs" / HOSTILE[1], perturbed(films, 0.5, 1), seed=1),
            write_run(tmp_path / "runs" / HOSTILE[2], perturbed(films, 0.5, 2), seed=2)]
    result = compare_runs(runs, n_bootstrap=50)
    pages = [runs_view.runs_display(result).to_html(), runs_view.per_run_display(result).to_html(),
             runs_view.difference_display(result, HOSTILE[1]).to_html(),
             runs_view.settings_display(result).to_html(), runs_view.seed_groups_display(result).to_html(),
             runs_view.mean_difference_box(result, HOSTILE[2]).data, runs_view.saved_box(result, "x").data]
    for page in pages:
        assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[1]
    figure = runs_view.difference_forest(result, HOSTILE[2])
    assert r"cost \$x^2\$ & co" in figure.axes[0].get_xlabel() and "SYNTHETIC" in figure.axes[0].get_title()
    figure.canvas.draw()  # a $ drawn as mathtext would raise or draw something else
    plt.close(figure)
    curves = runs_view.training_curves(result)
    assert [t.get_text() for t in curves.axes[2].get_legend().get_texts()] == [
        HOSTILE[0], HOSTILE[1], r"cost \$x^2\$ & co"]
    assert all("SYNTHETIC" in ax.get_title() for ax in curves.axes)
    curves.canvas.draw()
    plt.close(curves)
    name = comparison_name(runs)
    assert name == "img_src_x_onerror_alert_1__-vs-HYPERLINK__evil___cmd__calc__A0-vs-cost__x_2____co"
    assert comparison_dir(runs) == tmp_path / "runs" / "comparisons" / name
    saved = json.loads(write_runs_comparison(result, comparison_dir(runs)).read_text())
    assert [run["name"] for run in saved["runs"]] == HOSTILE  # data kept as it is, in JSON
    for bad in ("../up", "a/b", "a b", ".hidden", ""):
        with pytest.raises(ValueError, match="letters, digits"):
            comparison_name(runs, bad)
    long = comparison_name([tmp_path / ("x" * 90), tmp_path / ("y" * 90)])
    assert len(long) <= 100 and long.startswith("x" * 10)


def test_the_index_of_runs_lists_comparisons_escaped_and_quoted(tmp_path):
    folder = tmp_path / "reports" / "comparisons" / "a#b"
    folder.mkdir(parents=True)
    (folder / runner.INDEX_JSON_NAME).write_text(json.dumps({"06_runs_compared": {
        "status": "ok", "headline": "mean AUROC <b> - a +0.010", "synthetic": True,
        "data_source": "SYNTHETIC phantom dataset", "finished_at": "2026-12-05T20:00:00",
        "result_json": f"06_runs_compared/{COMPARISON_JSON}"}}))
    page = runner.write_runs_index(tmp_path / "reports").read_text()
    assert "<h2>Runs compared</h2>" in page and "href='comparisons/a%23b/index.html'" in page
    assert "mean AUROC &lt;b&gt; - a +0.010" in page and "class='synthetic'" in page
    assert COMPARISON_JSON not in page  # the JSON the entry names is not there: no link to nothing
    (folder / "06_runs_compared").mkdir()
    (folder / "06_runs_compared" / COMPARISON_JSON).write_text("{}")
    page = runner.write_runs_index(tmp_path / "reports").read_text()
    assert f"href='comparisons/a%23b/06_runs_compared/{COMPARISON_JSON}'>{COMPARISON_JSON}</a>" in page


def test_the_runs_compared_notebook_runs_only_when_a_profile_names_it():
    available = runner.notebook_paths()
    default = runner.select_notebooks(load_profile("demo"), [], available)
    assert "06_runs_compared" in {p.stem for p in available}
    assert "06_runs_compared" not in {p.stem for p in default}
    profile = load_profile("runs_compared")
    assert [p.stem for p in runner.select_notebooks(profile, [], available)] == ["06_runs_compared"]
    assert runner.report_folder_name(profile) == "comparisons/demo-vs-demo_seed1"


# --------------------------------------------------------------------------- the command line


def test_compare_runs_writes_comparison_json_and_says_what_differs(two_runs, films, tmp_path, capsys):
    assert cli.main(["compare-runs", *map(str, two_runs), "--n-bootstrap", "50", "--name", "seeds"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((two_runs[0].parent / "comparisons" / "seeds" / COMPARISON_JSON).read_text())
    assert saved["headline"] in out and "SYNTHETIC" in out and "differ only by seed" in out
    assert saved["settings"]["n_bootstrap"] == 50 and [r["name"] for r in saved["runs"]] == ["baseline",
                                                                                              "baseline_seed1"]
    write_run(tmp_path / "runs" / "other_films", films.iloc[1:], seed=3)
    with pytest.raises(SystemExit) as refused:
        cli.main(["compare-runs", str(two_runs[0]), str(tmp_path / "runs" / "other_films")])
    assert refused.value.code == 1 and "1 film(s) only in run baseline" in capsys.readouterr().err


def test_train_with_seeds_trains_one_named_run_per_seed_one_after_another(monkeypatch, capsys):
    from cxrutils.engine import train as train_module

    trained = []

    class Finished:
        def __init__(self, config):
            self.best_epoch, self.best_val_auroc_mean, self.run_dir = 1, 0.5, config.run_dir

    def fake_train(config, resume=False):
        trained.append((config.name, config.seed, resume))
        return Finished(config)

    monkeypatch.setattr(train_module, "train", fake_train)
    assert cli.main(["train", "--config", "demo", "--seeds", "0", "2", "--set", "lr=0.01", "--resume", "auto"]) == 0
    assert trained == [("demo_seed0", 0, "auto"), ("demo_seed2", 2, "auto")]
    assert capsys.readouterr().out.count("best epoch 1") == 2
    with pytest.raises(SystemExit):
        cli.main(["train", "--config", "demo", "--seeds", "1", "1"])


def test_the_notebook_the_command_and_the_function_share_their_defaults():
    """No settings family holds these (yet): the three places are held to the same values here."""
    import ast
    import inspect

    import nbformat

    from cxrutils.paths import NOTEBOOKS_DIR

    notebook = nbformat.read(NOTEBOOKS_DIR / "06_runs_compared.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body}
    function = {name: p.default for name, p in inspect.signature(compare_runs).parameters.items()
                if p.default is not inspect.Parameter.empty}
    parser, _ = cli.build_parser()
    command = vars(parser.parse_args(["compare-runs", "a", "b"]))
    for name in ("split", "n_bootstrap", "bootstrap_seed"):
        assert parameters[name] == function[name] == command[name], name
    assert parameters["comparison_name"] is None and command["name"] is None
    assert parameters["run_dirs"] == load_profile("runs_compared")["parameters"]["run_dirs"]
