"""A model card written from the run folder: what a reviewer reads a run by (CLAIM 2024, TRIPOD+AI items).

    cxrutils card --run runs/demo      # reports/model_card.html and .json

Everything the project knows is filled in from the run's own record: ``config.json``
(settings, data, fingerprints, initial weights and their hash, software, hardware,
commit), ``split.csv``, the history, ``metrics.json`` (written by the evaluation),
``comparison.json`` and ``bad_files.csv``. What only a person can write (intended
use, clinical role, ethics) is left as clearly marked blanks. The JSON the page is
built from is saved beside it and in the run folder.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cxrutils import files
from cxrutils.data.preparation import GRAY_MEAN, GRAY_STD
from cxrutils.engine import run_folder
from cxrutils.labels import FINDINGS
from cxrutils.paths import REPORTS_DIR, resolve
from cxrutils.text import html_text

CARD_NAME = "model_card"
TO_BE_WRITTEN = "TO BE WRITTEN BY A PERSON"
PERSON_ITEMS = {
    "intended_use": "Who may use this model, on which patients and films, for what decision. (CLAIM 2024 item 1-3; "
                    "TRIPOD+AI item 3)",
    "clinical_role": "Where in the workflow its output is used (triage, second reader, research only), and who "
                     "acts on it.",
    "out_of_scope": "Uses it must not be put to (e.g. lateral films, children, other hospitals without validation).",
    "ethics": "Consent and data governance, fairness concerns, harms of false positives and false negatives, and who "
              "is accountable. (TRIPOD+AI items 14, 22)",
}
_SPLITS = ("train", "val", "test")
LABEL_DEFINITIONS = (
    "14 findings text-mined from radiology reports by NIH (ChestX-ray14; Wang et al. 2017); 'No Finding' means all "
    "14 absent. NIH estimates its text mining above 90% accurate for most findings: that is the labeller's accuracy "
    "against what the reports say, not agreement with the films."
)


def _radiologist_agreement(metrics: dict[str, Any] | None) -> str:
    """What the run's own evaluation measured of the labels against radiologists who read the films, in words."""
    section = (metrics or {}).get("radiologist_labels") or {}
    kappas = {row["finding"]: row.get("kappa") for row in section.get("per_finding", [])
              if row.get("kappa") is not None}
    if not section.get("available") or not kappas:
        why = "this run has not been evaluated" if metrics is None else "none of the films evaluated here has them"
        return ("Agreement of these labels with radiologists who read the films is measured in the evaluation "
                "report (notebook 03, section 8, against radiologists' labels) on the scored films that have "
                f"radiologist labels; {why}.")
    findings = ", ".join(f"{name} {value:.2f}" for name, value in kappas.items())
    return (f"On the {section['films']:,} films of this evaluation that radiologists also labelled (Majkowska et al., "
            f"Radiology 2019), NIH's labels agree with theirs with Cohen's kappa {min(kappas.values()):.2f} to "
            f"{max(kappas.values()):.2f} ({findings}): every metric here is against noisy labels.")


def _children_limitation(metrics: dict[str, Any] | None) -> str:
    """Children in the evaluated films, counted from the run's metrics (or said to be uncounted)."""
    children = (metrics or {}).get("paediatric")
    if not children:
        return ("Frontal films only (PA and AP); not validated on lateral films, and not validated on children "
                "separately (how many children the evaluated films hold was not recorded: evaluate the run again).")
    return (f"Frontal films only (PA and AP); not validated on lateral films. Children: {children['films']:,} of the "
            f"{metrics['n_images']:,} evaluated {metrics['split']} films ({children['share_of_films']:.1%}), from "
            f"{children['patients']:,} patients, were under {children['under_years']:g}; they are scored with the "
            f"adults and also shown as their own age band (<{children['under_years']:g}) in the subgroups. That is "
            "too few patients to validate the model for children, and it is not validated for them.")


def _with_interval(value: Any, low: Any, high: Any) -> str | None:
    """``0.812 [0.790, 0.833]``; the value alone without an interval; None without a value."""
    if value is None:
        return None
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _average_precision_rows(metrics: dict[str, Any]) -> list[dict[str, Any]] | str:
    """AP per finding with its interval, beside its chance level (the prevalence)."""
    per_class = metrics["per_class"]
    if "average_precision_ci_low" not in next(iter(per_class.values()), {}):
        return "not recorded: evaluate the run again for AP intervals"
    prevalence = (metrics.get("prevalence") or {}).get(metrics["split"], {})
    return [{"finding": finding, "AP [95% CI]": _with_interval(row["average_precision"],
                                                               row["average_precision_ci_low"],
                                                               row["average_precision_ci_high"]),
             "prevalence (chance level)": prevalence.get(finding)} for finding, row in per_class.items()]


def _operating_point_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    """Sensitivity, specificity and PPV with intervals at the run's thresholds and the fixed ones, and prevalences."""
    section = metrics.get("operating_points_with_intervals")
    if not section or not section.get("available"):
        return {"available": False, "note": (section or {}).get("note") or "not recorded: evaluate the run again"}
    method = metrics["thresholds"]["method"]
    rules = [method] + [rule for rule in section["rules"] if rule.startswith(("sensitivity ", "specificity "))]
    rows = []
    for finding in section["rules"][method]:
        first = section["rules"][method][finding]
        row: dict[str, Any] = {"finding": finding, "prevalence (val)": first["val_prevalence"],
                               f"prevalence ({metrics['split']})": first["test_prevalence"]}
        for rule in rules:
            values = section["rules"][rule][finding]
            for metric, label in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ppv", "PPV")):
                row[f"{rule}: {label}"] = _with_interval(values[metric], values[f"{metric}_ci_low"],
                                                         values[f"{metric}_ci_high"])
        rows.append(row)
    return {"available": True, "rules": rules, "thresholds_chosen_on": "validation predictions only",
            "intervals": "95% bootstrap resampling validation patients (threshold re-chosen) and test patients",
            "what_transfers": section.get("transfer"), "per_finding": rows}


def _calibration_figures(metrics: dict[str, Any]) -> dict[str, Any]:
    """O/E, slope and scaled Brier with intervals per finding, the recalibration, and why the raw model is off."""
    calibration = metrics["calibration"]
    equal_mass = calibration.get("equal_mass")
    if not equal_mass:
        return {"figures": "not recorded: evaluate the run again for O/E, slope and scaled Brier"}
    rows = [{"finding": finding, **{label: _with_interval(row[figure], row[f"{figure}_ci_low"],
                                                          row[f"{figure}_ci_high"])
                                    for figure, label in (("observed_expected", "O/E"), ("slope", "slope"),
                                                          ("scaled_brier", "scaled Brier"))}}
            for finding, row in equal_mass["per_class"].items()]
    recalibration = calibration.get("recalibration") or {}
    return {"per_finding": rows, "definitions": equal_mass.get("definitions"),
            "recalibration": ({"method": recalibration.get("method"), "fitted_on": recalibration.get("fitted_on"),
                               "note": recalibration.get("note")} if recalibration.get("available")
                              else recalibration.get("note")),
            "notes": calibration.get("notes")}


def _onnx_export(run_dir: Path) -> dict[str, Any]:
    """The ONNX file's hash as it is now, and its verification when the record beside it is of this very file."""
    digest = files.sha256_of(run_folder.onnx_path(run_dir))
    record = run_folder.read_onnx_record(run_dir) or {}
    verification = record.get("verification") if record.get("sha256") == digest else None
    return {"file": run_folder.ONNX_NAME, "sha256": digest,
            "verified_against_torch": verification or "no verification record for this file (python -m "
                                                      "cxrutils.export writes one)"}


def build_card(run_dir: str | Path) -> dict[str, Any]:
    """The model card's content, as plain JSON, from the run folder alone."""
    run_dir = resolve(run_dir)
    if not (run_dir / run_folder.CONFIG_NAME).is_file():
        raise run_folder.NotATrainedRunError(
            f"{run_dir} has no {run_folder.CONFIG_NAME}: it is not a training run, so there is nothing to describe. "
            "Train it first (notebook 02, or cxrutils train --config ...)."
        )
    config = run_folder.read_config(run_dir)
    metrics = run_folder.read_metrics(run_dir)
    comparison = run_folder.read_comparison(run_dir)
    history = run_folder.read_history(run_dir) if (run_dir / run_folder.HISTORY_JSON).is_file() else None
    bad_files = run_folder.read_bad_files(run_dir)
    split = run_folder.read_split(run_dir) if run_folder.has_split(run_dir) else None
    synthetic = bool(config.get("synthetic"))

    data: dict[str, Any] = {
        "source": config.get("data_description"),
        "data_root": config.get("data_root"),
        "synthetic": synthetic,
        "metadata_fingerprint": config.get("data_fingerprint"),
        "image_cache_fingerprint": config.get("cache_fingerprint"),
        "films_unreadable_and_excluded": len(bad_files),
        "label_definitions": f"{LABEL_DEFINITIONS} {_radiologist_agreement(metrics)}",
    }
    if split is not None:
        sides = {side: split[split["split"] == side] for side in _SPLITS}
        shared = len(set(sides["train"]["patient_id"]) & set(sides["test"]["patient_id"])) + len(
            set(sides["val"]["patient_id"]) & (set(sides["train"]["patient_id"]) | set(sides["test"]["patient_id"])))
        data["split"] = {
            "kind": config.get("split_kind"),
            "films": {side: len(rows) for side, rows in sides.items()},
            "patients": {side: int(rows["patient_id"].nunique()) for side, rows in sides.items()},
            "patients_in_two_splits": shared,
            "films_in_no_split": int((~split["split"].isin(_SPLITS)).sum()),
            "validation": f"{config.get('val_fraction')} of the train_val patients, drawn with split_seed "
                          f"{config.get('split_seed')}",
        }
    best = None
    if history is not None and len(history):
        best_row = history.loc[history["val_auroc_mean"].idxmax()]
        best = {"epoch": int(best_row["epoch"]), "val_auroc_mean": float(best_row["val_auroc_mean"])}
    model = {
        "architecture": f"{config.get('arch', 'densenet121')} (torchvision), 1-channel stem, {config.get('head')} head, "
                        "14 sigmoid outputs",
        "fine_tuning": config.get("strategy"),
        "initial_weights": config.get("initial_weights") or {"kind": config.get("weights")},
        "label_order": ", ".join(config.get("label_order", FINDINGS)),
    }
    if run_folder.onnx_path(run_dir).is_file():
        model["onnx_export"] = _onnx_export(run_dir)
    preprocessing = {
        "decode": "PNG/JPEG to 8-bit grey (RGBA: first channel; 16-bit: scaled from its bit depth)",
        "geometry": f"padded to a centred square (nothing cropped), resized to {config.get('cache_size')} px "
                    f"(cache), then {config.get('input_size')} px (input)",
        "intensity": f"[0, 1], then (x - {GRAY_MEAN}) / {GRAY_STD} (ImageNet statistics averaged over RGB)",
        "augmentation (training only)": config.get("augment"),
    }
    training = {key: config.get(key) for key in (
        "lr", "weight_decay", "scheduler", "plateau_factor", "plateau_patience", "epochs", "early_stopping_patience",
        "batch_size", "class_weighting", "amp", "channels_last", "compile", "seed", "split_seed")}
    training.update({"loss": "binary cross-entropy with logits", "optimiser": "AdamW", "world_size":
                     config.get("world_size"), "epochs_run": None if history is None else len(history),
                     "best_epoch": best, "train_films": config.get("train_images"),
                     "val_films": config.get("val_images")})
    evaluation: dict[str, Any] = {"available": metrics is not None}
    if metrics is not None:
        evaluation.update({
            "split": metrics["split"], "films": metrics["n_images"], "patients": metrics["n_patients"],
            "mean_auroc": {k: v for k, v in metrics["mean_auroc"].items() if k != "over"}
                          | {"findings_averaged": len(metrics["mean_auroc"].get("over", []))},
            "per_finding_auroc": [{"finding": f, **{k: v[k] for k in ("auroc", "ci_low", "ci_high", "positives")}}
                                  for f, v in metrics["per_class"].items()],
            "intervals": f"{metrics['bootstrap']['confidence']:.0%} patient bootstrap, "
                         f"{metrics['bootstrap']['n_resamples']} resamples",
            "thresholds": {"method": metrics["thresholds"]["method"], "chosen_on": metrics["thresholds"]["source"]},
            "calibration": {"mean_ece": metrics["calibration"]["mean_ece"],
                            "mean_brier": metrics["calibration"]["mean_brier"]} | _calibration_figures(metrics),
            "average_precision": _average_precision_rows(metrics),
            "operating_points": _operating_point_rows(metrics),
            "films_per_patient": None if "clusters" not in metrics else {
                "patients": metrics["clusters"]["patients"], **metrics["clusters"]["films_per_patient"],
                "top_decile_share_of_films": metrics["clusters"]["top_decile"]["share_of_films"]},
            "patient_level_mean_auroc": None if "patient_level_auroc" not in metrics else {
                key: metrics["patient_level_auroc"]["per_class"]["mean"][key]
                for key in ("auroc_films", "auroc_first_film", "auroc_weighted")}
                | {"findings_averaged": len(metrics["patient_level_auroc"]["mean_over"] or [])},
            "subgroup_means": [row for row in metrics["subgroups"]["table"] if row["finding"] == "mean"],
            "localization": {k: metrics["localization"].get(k) for k in ("available", "boxes", "gradcam_layer")} | (
                {"pointing_game": metrics["localization"]["scores"]["all"]["pointing_game"],
                 "random_baseline_pointing_game": metrics["localization"]["random_baseline"]["all"]["pointing_game"]}
                if metrics["localization"].get("available") else {}),
            "radiologist_labels": metrics.get("radiologist_labels"),
        })
    compared: dict[str, Any] = {"available": comparison is not None}
    if comparison is not None:
        compared.update({"status": comparison["status"], "headline": comparison["headline"],
                         "lead_model": comparison.get("lead_model"),
                         "models": {name: {"provenance": record.get("provenance"),
                                           "mean_difference": record["mean_difference"],
                                           "random_init": record["random_init"]}
                                    for name, record in comparison.get("models", {}).items()}})
    limitations = [
        "NIH ChestX-ray14 comes from one hospital (NIH Clinical Center); performance elsewhere is unknown until "
        "measured there.",
        "The labels were text-mined from reports, not read from the films: every metric here is against noisy labels.",
        _children_limitation(metrics),
    ]
    if synthetic:
        limitations.insert(0, "SYNTHETIC: this run was trained and evaluated on rendered phantoms. Nothing on this "
                              "card says anything about real chest X-rays or real patients.")
    return files.plain({
        "title": f"Model card: run {run_dir.name}",
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "run_dir": run_dir,
        "synthetic": synthetic,
        "to_be_written_by_a_person": {key: {"text": TO_BE_WRITTEN, "guidance": guidance}
                                      for key, guidance in PERSON_ITEMS.items()},
        "model": model,
        "data": data,
        "preprocessing": preprocessing,
        "training": training,
        "evaluation": evaluation,
        "comparison": compared,
        "software": config.get("environment"),
        "code": config.get("code"),
        "limitations": limitations,
    })


def _render_value(value: Any) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{html_text(str(k))}</th><td>{_render_value(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            keys = list(dict.fromkeys(k for item in value for k in item))
            head = "".join(f"<th>{html_text(str(k))}</th>" for k in keys)
            body = "".join("<tr>" + "".join(f"<td>{_render_value(item.get(k))}</td>" for k in keys) + "</tr>"
                           for item in value)
            return f"<table><tr>{head}</tr>{body}</table>"
        return "<ul>" + "".join(f"<li>{_render_value(item)}</li>" for item in value) + "</ul>"
    if isinstance(value, float):  # 3 decimals for AUROCs and fractions; small settings (weight decay) keep theirs
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3f}" if abs(value) >= 0.01 or not value else f"{value:.2g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if value is None:
        return "<span class='missing'>not recorded</span>"
    text = html_text(str(value))
    return f"<span class='blank'>{text}</span>" if text == TO_BE_WRITTEN else text


def render_card(card: dict[str, Any]) -> str:
    """The card as one self-contained HTML page."""
    sections = [("To be written by a person", card["to_be_written_by_a_person"]),
                ("Model", card["model"]), ("Data", card["data"]), ("Preprocessing", card["preprocessing"]),
                ("Training", card["training"]), ("Evaluation", card["evaluation"]),
                ("Comparison with TorchXRayVision", card["comparison"]), ("Software and hardware", card["software"]),
                ("Code", card["code"]), ("Limitations", card["limitations"])]
    body = "".join(f"<h2>{html_text(title)}</h2>{_render_value(content)}" for title, content in sections)
    banner = ("<p class='synthetic'><b>SYNTHETIC DATA.</b> This run was trained and evaluated on rendered phantoms: "
              "nothing here says anything about real chest X-rays.</p>" if card["synthetic"] else "")
    return _PAGE.format(title=html_text(card["title"]), created=html_text(card["created"]), banner=banner,
                        body=body)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 72rem; }}
table {{ border-collapse: collapse; margin: .3rem 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f7f7f7; font-weight: 600; }}
.blank {{ background: #fff4e5; color: #8a4b00; font-weight: 700; padding: 0 .3em; }}
.missing {{ color: #888; }}
.synthetic {{ background: #b00020; color: white; padding: .6em 1em; border-radius: 6px; }}
</style></head><body>
<h1>{title}</h1>
<p>Written {created} by <code>cxrutils.publish.model_card</code> from the run folder.
<a href="index.html">Back to the reports index</a>.</p>
{banner}
{body}
</body></html>
"""


def write_model_card(run_dir: str | Path, reports_dir: str | Path = REPORTS_DIR) -> Path:
    """``model_card.html`` and ``model_card.json`` in ``reports_dir`` (and the JSON in the run folder); the page."""
    card = build_card(run_dir)
    reports_dir = resolve(reports_dir)
    files.write_json(reports_dir / f"{CARD_NAME}.json", card)
    run_folder.write_model_card(resolve(run_dir), card)
    page = reports_dir / f"{CARD_NAME}.html"
    files.atomic_write_text(page, render_card(card))
    return page

