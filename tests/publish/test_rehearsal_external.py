"""The rehearsal's external step on a tiny phantom CheXpert root: root built and counted, notebook 07 run and measured.

``rehearse_external`` is what ``cxrutils rehearsal`` runs after the NIH notebooks at each
size; here on the tiny run and a CheXpert root of a few dozen patients, with every figure
checked against the root's own CSV read with plain pandas.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxrutils import profiling
from cxrutils.demo.external_roots import ExternalRootSpec, external_root_is_built
from cxrutils.engine import run_folder
from cxrutils.evaluate.external import PREDICTIONS_NAME, external_dir
from cxrutils.publish import rehearsal
from cxrutils.publish.runner import EXTERNAL_NOTEBOOK

pytestmark = pytest.mark.notebook
NAME = "full"
NOTEBOOK = EXTERNAL_NOTEBOOK + " (SYNTHETIC CheXpert)"


@pytest.fixture(scope="module")
def rehearsed(tiny_run: Path, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("rehearsal_external")
    run_dir = Path(shutil.copytree(tiny_run, base / "runs" / tiny_run.name,
                                   ignore=shutil.ignore_patterns(run_folder.LAST_CHECKPOINT)))
    root, spec = base / "data" / "rehearsal_full_chexpert", ExternalRootSpec("chexpert", n_patients=40, seed=1)
    log = base / "rehearsal_stages.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(profiling.STAGE_LOG_VARIABLE, str(log))
        result = rehearsal.rehearse_external(run_dir, {"chexpert": (root, spec)}, base / "reports" / "rehearsal", NAME,
                                             overrides=["n_bootstrap=20"])
    return {"result": result, "root": root, "spec": spec, "run_dir": run_dir, "log": log, "base": base}


def _frontal_rows(root: Path) -> pd.DataFrame:
    raw = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv", dtype=str, keep_default_na=False)
    return raw[raw["Frontal/Lateral"] == "Frontal"]


def test_the_root_is_built_once_and_its_build_is_a_counted_stage_of_the_rehearsal(rehearsed):
    root = rehearsed["root"]
    raw = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv", dtype=str, keep_default_na=False)
    assert 100 <= len(raw) <= 1000  # a few hundred rows: whole patients, every view
    (build,) = [r for r in profiling.read_stage_log(rehearsed["log"]) if r.get("stage") == "build CheXpert root"]
    assert build["context"] == rehearsal.RUNNER_CONTEXT and build["built"] is True and build["films"] == len(raw)
    assert external_root_is_built(root, rehearsed["spec"])
    assert not external_root_is_built(root, ExternalRootSpec("chexpert", n_patients=41, seed=1))
    manifest = json.loads((root / "PHANTOM_DATASET.json").read_text())
    assert manifest["synthetic"] is True and manifest["films_listed"] == len(raw)


def test_notebook_07_scores_every_frontal_film_and_its_stages_are_measured_under_the_collection(rehearsed):
    result, frontal = rehearsed["result"], _frontal_rows(rehearsed["root"])
    assert result["ok"]
    entry = result["notebooks"][NOTEBOOK]
    assert entry["status"] == "ok" and entry["peak_rss_bytes"] > 0 and entry["seconds"] > 0
    scored = pd.read_csv(external_dir(rehearsed["run_dir"], "chexpert") / PREDICTIONS_NAME)
    assert sorted(scored["film"]) == sorted(frontal["Path"])  # every frontal film, no lateral, none twice
    assert (entry["item"], entry["items"]) == ("films", len(frontal))
    (collection,) = result["collections"]
    assert collection["synthetic"] is True and collection["films_scored"] == len(frontal)
    raw = pd.read_csv(rehearsed["root"] / "CheXpert-v1.0-small" / "train.csv", dtype=str, keep_default_na=False)
    assert collection["patients"] == raw["Path"].str.extract(r"(patient\d+)")[0].nunique()
    assert collection["films_listed"] == len(raw) > len(frontal)
    stages = {(r["context"], r["stage"]): r for r in result["records"] if "stage" in r}
    scoring = stages[(NOTEBOOK, "external scoring")]
    assert scoring["films"] == len(frontal) and scoring["cpu_seconds"] > 0
    assert {context for context, _ in stages} == {NOTEBOOK}  # every stage of the notebook under its collection
    report = rehearsed["base"] / "reports" / "rehearsal" / f"{NAME}_chexpert" / f"{EXTERNAL_NOTEBOOK}.html"
    assert report.is_file() and "SYNTHETIC" in report.read_text()
    assert entry["report"] == f"rehearsal/{NAME}_chexpert/{EXTERNAL_NOTEBOOK}.html"


def test_the_page_and_the_growth_list_the_external_stages_marked_synthetic(rehearsed, tmp_path):
    result = rehearsed["result"]
    build = [r for r in profiling.read_stage_log(rehearsed["log"]) if "stage" in r]
    records = build + result["records"]

    def size(films: int, scale: float) -> dict:
        stages = rehearsal.aggregate_stages([{**r, "seconds": r["seconds"] * scale,
                                              "cpu_seconds": r["cpu_seconds"] * scale} for r in records])
        notebooks = [{**n, "seconds": n["seconds"] * scale} for n in result["notebooks"].values()]
        return {"images": films, "patients": films // 4, "image_size": 64, "ok": True, "total_seconds": 60.0,
                "notebooks": notebooks, "stages": stages, "events": [], "external": result["collections"]}

    # Four times the films in four times the time: linear, as the real sizes' figures should be.
    json_path, page_path = rehearsal.write_results({"quarter": size(1000, 1.0), "full": size(4000, 4.0)}, tmp_path)
    document = json.loads(json_path.read_text())
    assert document["synthetic"] is True
    assert document["sizes"]["full"]["external"][0]["synthetic"] is True
    rows = {(r["scope"], r["context"], r["stage"]): r for r in document["growth"]}
    assert ("stage", rehearsal.ALL_NOTEBOOKS, "external scoring") in rows
    whole = rows[("stage", NOTEBOOK, rehearsal.WHOLE_NOTEBOOK)]
    assert whole["item"] == "films" and whole["quarter_items"] == whole["full_items"] == len(
        _frontal_rows(rehearsed["root"]))
    page = page_path.read_text()
    assert NOTEBOOK in page and "SYNTHETIC</span> <b>CheXpert</b>" in page
    table = rehearsal.stage_table(document)
    assert {"build CheXpert root", "external scoring"} <= {s.strip() for s in table["stage"]}
