"""The one command line: ``cxrutils <verb>`` (installed by ``pip install``), the same as ``python -m cxrutils <verb>``.

    cxrutils train --config demo [--set KEY=VALUE ...] [--resume [auto]]
    torchrun --nproc-per-node=N -m cxrutils train --config nih --set data_root=/data/nih
    cxrutils cache build --config nih --set data_root=/data/nih
    cxrutils evaluate --run runs/demo
    cxrutils train --config demo --seeds 1 2   # runs/demo_seed1, runs/demo_seed2, one after another
    cxrutils compare --run runs/demo [--model densenet121-res224-nih]
    cxrutils compare-runs runs/demo runs/demo_seed1 [--name NAME]
    cxrutils external --run runs/demo --collection chexpert --root /data/chexpert
    cxrutils infer --run runs/demo PATH [PATH ...]
    cxrutils export --run runs/demo --format onnx
    cxrutils reports --profile demo [--set KEY=VALUE ...] [--only 01]
    cxrutils rehearsal [--size quarter]
    cxrutils card --run runs/demo
    cxrutils check-reports [reports/demo]
    cxrutils download nih --root /data/nih [--extract-only | --verify]

This module is the only place that parses arguments. Each verb reads its defaults from the
settings schema of its family (``cxrutils.settings``), so ``cxrutils <verb> --help`` shows
the same defaults the notebooks' parameters cells use. Everything a verb does is a library
call a notebook can make too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from cxrutils.paths import REPORTS_DIR
from cxrutils.settings import (
    ComparisonSettings,
    EvaluationSettings,
    InferenceSettings,
    SettingsError,
    available_profiles,
    describe_settings,
    load_train_config,
)
from cxrutils.text import printable

PROG = "cxrutils"
# --resume on the command line -> train()'s resume argument.
RESUME_CHOICES: dict[str, bool | str] = {"no": False, "yes": True, "auto": "auto"}


def _absolute(path: str) -> Path:
    """A path from the command line, taken from the current directory (not the project root, as notebooks do)."""
    return Path(path).expanduser().absolute()


def _overrides(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"change a setting (repeatable), e.g. {example}")


def _run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="a run folder written by training, e.g. runs/demo")


def _data_root_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", default=None, help="where the run's data is, if it moved since training")


# --------------------------------------------------------------------------- training and its cache


def _add_train(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "train", help="train a classifier (one GPU, or many under torchrun)",
        description="Train DenseNet121 (or --set arch=resnet50, efficientnet_v2_s or convnext_tiny) on NIH "
                    "ChestX-ray14 or the phantoms into runs/<name>/.",
        epilog="training settings and their defaults:\n" + describe_settings("train"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a training profile in configs/train/ or a YAML path")
    _overrides(parser, "--set epochs=5 --set augment.hflip_probability=0")
    parser.add_argument("--resume", nargs="?", const="yes", default="no", choices=sorted(RESUME_CHOICES),
                        help="yes (or --resume alone): continue the run from its last checkpoint; auto: continue it "
                             "if its folder has a checkpoint, else start it (what a scheduler that requeues needs); "
                             "no: start a new run (default)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED",
                        help="train one run per seed, one after another, each named <name>_seed<SEED> with "
                             "seed=SEED (e.g. --seeds 0 1 2); --resume applies to each")

    def run(args: argparse.Namespace) -> int:
        # The settings first: a misspelt profile or --set is named before torch loads.
        try:
            configs = [load_train_config(args.config, args.overrides)]
            if args.seeds is not None:
                repeated = sorted({seed for seed in args.seeds if args.seeds.count(seed) > 1})
                if repeated:
                    parser.error(f"--seeds names {repeated} more than once: each seed is one run")
                configs = [load_train_config(args.config, [*args.overrides, f"seed={seed}",
                                                           f"name={configs[0].name}_seed{seed}"])
                           for seed in args.seeds]
        except FileNotFoundError as err:
            parser.error(str(err))
        from cxrutils.engine.train import train

        for config in configs:  # one after another, each on the whole machine (or the whole torchrun job)
            result = train(config, resume=RESUME_CHOICES[args.resume])
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"best epoch {result.best_epoch}: mean val AUROC {result.best_val_auroc_mean:.4f} "
                      f"-> {result.run_dir}", flush=True)
        return 0

    return run


def _add_cache(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "cache", help="build a run's image cache up front (before a multi-GPU or multi-node job)",
        description="Training builds the cache itself when it is missing, but torchrun starts every process at once, "
                    "and on several machines sharing a file system their builds would collide. Build it once here "
                    "(any machine that sees the data), then start the job with the same settings; it reuses the cache.")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="decode every listed film once into the run's cache")
    build.add_argument("--config", required=True, help="a training profile in configs/train/ or a YAML path")
    _overrides(build, "--set data_root=/data/nih --set cache_size=256")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.engine.data_adapters import open_training_cache, training_cache_dir

        config = load_train_config(args.config, args.overrides)
        print(f"image cache for {config.data_root} at {config.cache_size} px -> {training_cache_dir(config)}",
              flush=True)
        cache = open_training_cache(config)
        unusable = int((~cache.usable).sum())
        print(f"{len(cache):,} films cached in {cache.folder}"
              + (f"; {unusable:,} unreadable (bad_files.csv)" if unusable else ""))
        return 0

    return run


# --------------------------------------------------------------------------- evaluation, comparison, inference


def _add_evaluate(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser("evaluate", help="score a run's test split and write its metrics.json",
                              description="The computation notebook 03 shows, with the same defaults, so both write "
                                          "the same metrics.json.")
    _run_argument(parser)
    EvaluationSettings.add_arguments(parser)
    _data_root_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from cxrutils.evaluate.evaluation import evaluate_run, write_metrics

        settings = EvaluationSettings.from_arguments(args)
        result = evaluate_run(args.run, data_root=args.data_root, **settings.to_dict())
        path = write_metrics(result)
        synthetic = " (SYNTHETIC phantoms: says nothing about real films)" if result.synthetic else ""
        print(f"{result.headline}{synthetic} -> {path}")
        return 0

    return run


def _add_compare(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser("compare", help="compare a run with TorchXRayVision models, write comparison.json",
                              description="The computation notebook 04 shows. Models whose weights file is missing "
                                          "are skipped, and the file says where to put it.")
    _run_argument(parser)
    ComparisonSettings.add_arguments(parser)
    parser.add_argument("--random-weights-for-testing", action="store_true",
                        help="TEST ONLY: random TorchXRayVision weights, labelled as such")
    _data_root_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from cxrutils.compare.run import compare_run, write_comparison

        settings = ComparisonSettings.from_arguments(args)
        result = compare_run(args.run, random_init=args.random_weights_for_testing, data_root=args.data_root,
                             **settings.to_dict())
        path = write_comparison(result)
        print(f"{result.headline} -> {path}")
        return 0

    return run


def _add_compare_runs(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "compare-runs", help="finished runs against each other on the same films, write runs_compared.json",
        description="The computation notebook 06 shows. Each run must have been evaluated on the split (cxrutils "
                    "evaluate) and have scored the same films; the first run is the reference. Writes "
                    "runs_compared.json into runs/comparisons/<name>/ (beside the first run), or --out.")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders, e.g. runs/demo runs/demo_seed1")
    parser.add_argument("--split", default="test", help="the split every run was evaluated on (default: test)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default: 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the bootstrap resamples (default: 0)")
    parser.add_argument("--name", default=None,
                        help="the comparison's folder name: letters, digits, '.', '-', '_' (default: the runs' "
                             "folder names joined by -vs-)")
    parser.add_argument("--out", default=None, help="the folder to write runs_compared.json into (default: "
                                                    "runs/comparisons/<name>/, beside the first run)")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.compare.runs import compare_runs, comparison_dir, write_runs_comparison

        if len(args.runs) < 2:
            parser.error(f"compare at least two runs; got {args.runs}")
        runs = [_absolute(path) for path in args.runs]
        try:
            folder = comparison_dir(runs, args.name, _absolute(args.out) if args.out else None)
        except ValueError as err:
            parser.error(str(err))
        result = compare_runs(runs, split=args.split, n_bootstrap=args.n_bootstrap,
                              bootstrap_seed=args.bootstrap_seed)
        path = write_runs_comparison(result, folder)
        synthetic = " (SYNTHETIC phantoms: says nothing about real films)" if result.synthetic else ""
        print(printable(f"{result.headline}{synthetic}"))
        print(printable(result.spread_sentence))
        print(f"-> {printable(path)}")
        return 0

    return run


def _add_infer(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "infer", help="a trained run on new films (PNG, JPEG, DICOM): CSV, JSON, overlays, HTML",
        description="Writes into --out (default reports/inference/<run name>/): inference.csv and inference.json "
                    "(per file: the 14 probabilities, the calls at the run's validation thresholds, size, format and "
                    "header facts, or why it was refused), a picture of each scored film with a Grad-CAM overlay per "
                    "finding called positive, and inference.html. One run at a time writes into an output folder; "
                    "every finished film is on disk as its batch ends, and a stopped run continues when started again.")
    _run_argument(parser)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="films or folders of films (walked)")
    parser.add_argument("--out", default=None, help="output folder (default: reports/inference/<run name>/)")
    InferenceSettings.add_arguments(parser)
    parser.add_argument("--compare-training", action="store_true",
                        help="set each film beside the run's training films (needs the run's data)")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.inference.reference import compare_with_training, training_reference
        from cxrutils.inference.scoring import infer_films, load_inference_model
        from cxrutils.publish.inference_page import InferenceOutput

        settings = InferenceSettings.from_arguments(args)
        model = load_inference_model(_absolute(args.run), settings.threshold_method, settings.device)
        out = _absolute(args.out) if args.out else REPORTS_DIR / "inference" / model.run_dir.name
        output = InferenceOutput(out, with_overlays=settings.overlays)
        try:
            result = infer_films(model, [_absolute(path) for path in args.paths], batch_size=settings.batch_size,
                                 num_workers=settings.workers, with_gradcam=settings.overlays, keep_films=False,
                                 on_film=output.on_film, max_pixels=settings.max_pixels, journal=output.journal)
            differences = None
            if args.compare_training:
                differences = compare_with_training(result.table, training_reference(model.run_dir))
        except BaseException:
            output.close()  # the journal keeps every finished film: the same command continues from there
            raise
        csv_path, _, page = output.finish(result, differences)
        if args.out is None:  # reports/inference/<run name>: the index of every run's reports links it
            from cxrutils.publish.runner import write_runs_index

            write_runs_index(REPORTS_DIR)
        synthetic = " (the model was trained on SYNTHETIC phantoms)" if result.synthetic else ""
        print(f"{result.headline}{synthetic}")
        for reason, count in result.summary()["refused_by_reason"].items():
            print(f"  refused {count}: {printable(reason)}")
        print(f"-> {printable(csv_path)}\n-> {printable(page)}")
        return 0 if result.n_scored else 1

    return run


def _add_export(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "export", help="the best checkpoint as verified ONNX (<run>/model.onnx)",
        description="Writes <run>/model.onnx (or --out) and model_onnx.json beside it, after onnxruntime matched "
                    "torch on real films.",
        epilog="The file is kept only when onnxruntime's probabilities match torch's within the tolerance that "
               "model_onnx.json records.")
    _run_argument(parser)
    parser.add_argument("--format", required=True, choices=["onnx"], help="the export format (onnx)")
    parser.add_argument("--out", default=None, help="the file to write (default: <run>/model.onnx)")
    parser.add_argument("--films", nargs="+", default=None, metavar="PATH",
                        help="films or folders to verify on (default: films of the run's test split)")
    parser.add_argument("--max-films", type=int, default=8, help="at most this many verification films (default: 8)")
    _data_root_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from cxrutils.inference.export import export_onnx

        result = export_onnx(_absolute(args.run), out=_absolute(args.out) if args.out else None,
                             films=[_absolute(p) for p in args.films] if args.films else None,
                             max_films=args.max_films, data_root=args.data_root)
        print(f"exported {result.headline}")
        print(f"sha256 {result.sha256}; record {result.record_path}")
        return 0

    return run


# --------------------------------------------------------------------------- reports


def _add_reports(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser(
        "reports", help="run the numbered notebooks with papermill and publish HTML reports",
        description="Every notebook receives the same training profile and settings, so they all describe one split "
                    "of one dataset. --set KEY=VALUE changes a training setting or a notebook parameter, whichever "
                    "KEY names. Each run's reports go to their own folder, reports/<run name>/ (its index.html lists "
                    "them), and reports/index.html lists every run's; the first failing notebook stops the run.")
    parser.add_argument("--profile", required=True, help=f"one of {available_profiles()}")
    _overrides(parser, "--set data_root=/data/nih --set n_bootstrap=200")
    parser.add_argument("--only", action="append", default=[], metavar="NOTEBOOK",
                        help="run only this notebook (e.g. 01_eda or 01); repeatable")
    parser.add_argument("--show-code", action="store_true", help="include code cells in the HTML")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR),
                        help="where the folders of every run's reports go (default: reports/)")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.publish.runner import run_reports

        try:
            return run_reports(args.profile, args.overrides, only=args.only, show_code=args.show_code,
                               reports_dir=args.reports_dir)
        except (SettingsError, FileNotFoundError) as err:
            parser.error(str(err))

    return run


def _add_rehearsal(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    from cxrutils.publish.rehearsal import SIZES

    parser = verbs.add_parser("rehearsal", help="every notebook at the real dataset's size (112,120 NIH phantom films; notebook 07 on full-size phantom CheXpert and PadChest roots)",
                              description="A quarter of the rows, then all of them, each stage timed and measured "
                                          "against its budget: reports/rehearsal.html.")
    parser.add_argument("--size", action="append", choices=list(SIZES), default=[],
                        help="run only this size (repeatable); default: quarter, then full")
    parser.add_argument("--reports-dir", default=str(REPORTS_DIR), help="where reports go (default: reports/)")

    def run(args: argparse.Namespace) -> int:
        import pandas as pd

        from cxrutils.publish.rehearsal import growth_table, run_rehearsal, stage_table

        document = run_rehearsal(args.size, args.reports_dir)
        print(stage_table(document).to_string(index=False, na_rep="", float_format=lambda v: f"{v:,.2f}"))
        if document["growth"]:
            print(growth_table(document).to_string(index=False, na_rep="", float_format=lambda v: f"{v:,.2f}"))
        print(pd.DataFrame(document["checks"]).to_string(index=False))
        print(f"rehearsal: {document['page']}", flush=True)
        return 0 if all(check["ok"] for check in document["checks"]) else 1

    return run


def _add_card(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser("card", help="the model card of a trained run (reports/<run name>/model_card.html, .json)")
    _run_argument(parser)
    parser.add_argument("--reports-dir", default=None,
                        help="where the card goes (default: reports/<run name>/, beside the run's other reports)")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.publish.model_card import write_model_card

        reports_dir = args.reports_dir or REPORTS_DIR / _absolute(args.run).name
        page = write_model_card(args.run, reports_dir)  # a folder that is not a run: one line (main)
        print(f"model card: {page}")
        return 0

    return run


def _add_check_reports(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    parser = verbs.add_parser("check-reports", help="render every report in headless Chromium and list its problems",
                              description="Broken links, figures that do not load, errors in the console, progress-bar "
                                          "debris and unformatted numbers, page by page.")
    parser.add_argument("reports_dir", nargs="?", default=str(REPORTS_DIR / "demo"),
                        help="one run's reports folder (default: reports/demo/, what make demo writes)")
    parser.add_argument("--screenshots", metavar="DIR", help="save index.png and one report's PNG here")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.publish.browser import BrowserError, check_reports

        try:
            result = check_reports(args.reports_dir, screenshot_dir=args.screenshots)
        except BrowserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for check in result.pages:
            print(f"{check.page}: {'ok' if not check.problems else f'{len(check.problems)} problem(s)'}")
            for problem in check.problems:
                print(f"   {problem}")
        return 1 if result.problems else 0

    return run


# --------------------------------------------------------------------------- getting the data


def _add_download(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    sources = verbs.add_parser(
        "download", help="fetch and unpack NIH ChestX-ray14 (the box release, about 42 GB)",
        description="Fetch a dataset into a data root. One source today: nih.").add_subparsers(
        dest="source", required=True, metavar="SOURCE")
    parser = sources.add_parser(
        "nih", help="the 12 image archives of NIH's box into ROOT/images/",
        description="Downloads images_001.tar.gz ... images_012.tar.gz into ROOT (an interrupted download resumes), "
                    "checks each (gzip CRC, safe tar members; SHA-256 recorded in ROOT/download_manifest.json) and "
                    "unpacks it into ROOT/images/. NIH publishes no direct link to Data_Entry_2017_v2020.csv, "
                    "BBox_List_2017.csv, train_val_list.txt and test_list.txt: download them from "
                    "https://nihcc.app.box.com/v/ChestXray-NIHCC into ROOT; the command lists those still missing.")
    parser.add_argument("--root", required=True,
                        help="the data root: archives land here, images in ROOT/images/ (use it as data_root)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--extract-only", action="store_true",
                      help="fetch nothing: check and unpack the archives already in ROOT or ROOT/images/")
    mode.add_argument("--download-only", action="store_true", help="fetch and check the archives, do not unpack them")
    mode.add_argument("--verify", action="store_true",
                      help="fetch nothing: re-read every kept archive and check every unpacked image against the "
                           "manifest; exit 1 on a problem")
    parser.add_argument("--archives", nargs="+", metavar="NAME", default=None,
                        help="only these, e.g. images_001.tar.gz (default: all 12)")
    parser.add_argument("--keep-archives", action=argparse.BooleanOptionalAction, default=True,
                        help="keep each archive after unpacking (default); --no-keep-archives frees 42 GB, but "
                             "--verify then checks images only and a lost image means downloading its archive again")
    parser.add_argument("--checksums", metavar="FILE", default=None,
                        help="a sha256sum-format file; every file it names must match (NIH publishes none)")
    parser.add_argument("--retries", type=int, default=5,
                        help="failures in a row without new bytes before giving up; what arrived is kept for the "
                             "next run (default: 5)")

    def run(args: argparse.Namespace) -> int:
        from cxrutils.data.download import download_nih, verify_nih_download

        root = _absolute(args.root)
        checksums = _absolute(args.checksums) if args.checksums else None
        if args.verify:
            problems = verify_nih_download(root, checksums=checksums, show_progress=True)
            print("\n".join(printable(problem) for problem in problems) or "verified: nothing changed")
            return 1 if problems else 0
        report = download_nih(root, archives=args.archives, checksums=checksums, download=not args.extract_only,
                              extract=not args.download_only, keep_archives=args.keep_archives, retries=args.retries)
        print(f"{report.images:,} images in {printable(report.images_dir)}: {len(report.downloaded)} downloaded, "
              f"{len(report.extracted)} unpacked now, {len(report.already_extracted)} before")
        for step in report.next_steps():
            print(printable(step))
        return 0

    return run


def _add_external(verbs: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    from cxrutils.compare.provenance import DEFAULT_MODELS
    from cxrutils.compare.txv import TXV_MODEL_NAMES
    from cxrutils.data.external import COLLECTIONS, DEFAULT_MIN_READERS, DEFAULT_UNCERTAIN_POLICY, UNCERTAIN_POLICIES
    from cxrutils.evaluate.external_localization import DEFAULT_MAX_FILMS as LOCALIZATION_MAX_FILMS
    from cxrutils.stats.thresholds import METHODS

    parser = verbs.add_parser(
        "external", help="score a run (and TorchXRayVision's models) on an external collection",
        description="The computation notebook 07 shows: the run on a collection's frontal films (CheXpert, PadChest, "
                    "VinDr-CXR, RSNA Pneumonia, SIIM-ACR) in its published layout, home against away, with "
                    "TorchXRayVision's models on the same films. Writes RUN/external/<collection>/external.json.")
    parser.add_argument("--run", required=True, help="a finished run folder, e.g. runs/demo (evaluate it first for "
                                                     "the home figures)")
    parser.add_argument("--collection", required=True, choices=COLLECTIONS, help="which collection --root holds")
    parser.add_argument("--root", required=True, help="the collection's download, in its published layout")
    parser.add_argument("--uncertain", default=DEFAULT_UNCERTAIN_POLICY, choices=UNCERTAIN_POLICIES,
                        help=f"CheXpert's -1 labels (default: {DEFAULT_UNCERTAIN_POLICY})")
    parser.add_argument("--min-readers", type=int, default=DEFAULT_MIN_READERS,
                        help=f"VinDr-CXR: readers who must draw a finding (default: {DEFAULT_MIN_READERS} of 3)")
    parser.add_argument("--threshold-method", default="youden", choices=METHODS,
                        help="which of the run's validation thresholds (thresholds.json) to apply (default: youden)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default: 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seeds the resamples (default: 0)")
    parser.add_argument("--max-films", type=int, default=None,
                        help="score a seeded sample of whole patients up to this many films (default: all)")
    parser.add_argument("--localization-max-films", type=int, default=LOCALIZATION_MAX_FILMS,
                        help="Grad-CAM at most this many films against the collection's boxes or masks, a seeded "
                             f"sample of whole patients (default: {LOCALIZATION_MAX_FILMS})")
    parser.add_argument("--model", dest="models", action="append", choices=TXV_MODEL_NAMES, metavar="MODEL",
                        help=f"a TorchXRayVision model (repeatable; default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--no-txv", action="store_true", help="score the run only")
    parser.add_argument("--weights-dir", default=None, help="TorchXRayVision's release files "
                                                            "(default: ~/.torchxrayvision/models_data)")
    parser.add_argument("--no-txv-home", action="store_true",
                        help="do not score TorchXRayVision on the run's NIH test films (no home side for them)")
    parser.add_argument("--random-weights-for-testing", action="store_true",
                        help="TEST ONLY: random TorchXRayVision weights, labelled as such")
    _data_root_argument(parser)

    def run(args: argparse.Namespace) -> int:
        from cxrutils.compare.external_validation import validate_external, write_external_validation

        models = [] if args.no_txv else (args.models or list(DEFAULT_MODELS))
        result = validate_external(
            _absolute(args.run), args.collection, _absolute(args.root), uncertain=args.uncertain,
            min_readers=args.min_readers, threshold_method=args.threshold_method, n_bootstrap=args.n_bootstrap,
            bootstrap_seed=args.bootstrap_seed, max_films=args.max_films, txv_models=models,
            weights_dir=_absolute(args.weights_dir) if args.weights_dir else None,
            random_txv=args.random_weights_for_testing, txv_home=not args.no_txv_home, data_root=args.data_root,
            localization_max_films=args.localization_max_films)
        path = write_external_validation(result)
        synthetic = " (SYNTHETIC phantoms: says nothing about real films)" if result.synthetic else ""
        print(printable(f"{result.headline}{synthetic}"))
        for missing in result.missing_weights:
            print(printable(f"skipped {missing.model}: put {missing.weights_file} into {missing.folder} "
                            f"(from {missing.url})"))
        print(f"-> {printable(path)}")
        return 0

    return run


VERBS = {
    "train": _add_train,
    "cache": _add_cache,
    "evaluate": _add_evaluate,
    "compare": _add_compare,
    "compare-runs": _add_compare_runs,
    "external": _add_external,
    "infer": _add_infer,
    "export": _add_export,
    "reports": _add_reports,
    "rehearsal": _add_rehearsal,
    "card": _add_card,
    "check-reports": _add_check_reports,
    "download": _add_download,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    """The parser of every verb, and the function that runs each."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    return parser, {name: add(verbs) for name, add in VERBS.items()}


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input or the folder is not what the command needs: said in one line, not a traceback.

    Each message names the file or setting and what to do. Anything else is a defect and keeps its traceback.
    """
    from cxrutils.compare.runs import PredictionsMissingError, RunsNotComparableError
    from cxrutils.data.download import DownloadError
    from cxrutils.data.external import ExternalDataError
    from cxrutils.data.film_files import ImageReadError
    from cxrutils.data.metadata import MetadataError
    from cxrutils.data.splits import PatientOverlapError
    from cxrutils.engine.model import WeightsNotFoundError
    from cxrutils.engine.run_folder import (
        DataChangedError,
        NotATrainedRunError,
        NothingToResumeError,
        RunExistsError,
        SettingsChangedError,
    )
    from cxrutils.engine.runtime import UncoordinatedLaunchError
    from cxrutils.locks import FolderLocked

    return (SettingsError, FolderLocked, NotATrainedRunError, DataChangedError, RunExistsError, NothingToResumeError,
            SettingsChangedError, MetadataError, PatientOverlapError, ImageReadError, DownloadError,
            WeightsNotFoundError, UncoordinatedLaunchError, RunsNotComparableError, PredictionsMissingError,
            ExternalDataError)


def main(argv: list[str] | None = None) -> int:
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    try:
        return runners[args.verb](args)
    except _input_errors() as err:
        parser.exit(2 if isinstance(err, SettingsError) else 1, f"{PROG} {args.verb}: error: {printable(str(err))}\n")
