"""The one command line: every verb answers --help, reads its defaults from the settings schema, and says what is wrong."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from cxrutils import cli
from cxrutils.paths import PROJ_ROOT
from cxrutils.settings import ComparisonSettings, EvaluationSettings, InferenceSettings


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_every_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: {cli.PROG} {verb}" in capsys.readouterr().out


def test_train_help_lists_every_training_setting_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "lr = 0.0001" in out and "epochs = 20" in out
    assert "augment.hflip_probability = 0.5" in out
    assert "split_seed = 0" in out and "draws the validation" in out


def test_python_dash_m_cxrutils_is_the_same_command_line():
    finished = subprocess.run([sys.executable, "-m", "cxrutils", "--help"], cwd=PROJ_ROOT, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert all(verb in finished.stdout for verb in cli.VERBS)


@pytest.mark.parametrize(("overrides", "named"), [(["learning_rate=0.1"], "learning_rate"),
                                                  (["augment.spin=1"], "augment.spin"),
                                                  (["epochs"], "KEY=VALUE")])
def test_a_bad_set_on_train_is_a_clean_error(overrides, named, capsys):
    argv = ["train", "--config", "demo"] + [part for text in overrides for part in ("--set", text)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_an_unknown_training_profile_is_a_clean_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", "no_such_profile"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no_such_profile" in err and "known profiles" in err


def test_a_folder_that_is_not_a_run_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--run", str(tmp_path / "nothing_here")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("cxrutils evaluate: error:") and "nothing_here" in err and "Traceback" not in err


def test_a_run_folder_another_process_writes_is_one_line_naming_the_holder(tiny_phantom_root, tmp_path, capsys):
    from lock_holders import held_elsewhere

    runs = tmp_path / "runs"
    argv = ["train", "--config", "tiny", "--set", f"data_root={tiny_phantom_root}", "--set", f"runs_dir={runs}",
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "name=held"]
    with held_elsewhere(runs / "held") as holder:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"process {holder.pid}" in err and "Traceback" not in err
    assert not (runs / "held" / "checkpoint_last.pt").exists()  # nothing was trained into the held folder


def _parse(argv: list[str]):
    parser, _ = cli.build_parser()
    return parser.parse_args(argv)


def test_the_parsed_defaults_are_the_schema_defaults():
    assert EvaluationSettings.from_arguments(_parse(["evaluate", "--run", "x"])) == EvaluationSettings()
    assert ComparisonSettings.from_arguments(_parse(["compare", "--run", "x"])) == ComparisonSettings()
    assert InferenceSettings.from_arguments(_parse(["infer", "--run", "x", "a.png"])) == InferenceSettings()


# Every option the per-command modules had before they became verbs of cxrutils.cli.
OPTIONS_BEFORE = {
    "evaluate": ["--run", "--split", "--threshold-method", "--n-bootstrap", "--bootstrap-seed", "--tta-hflip",
                 "--gradcam-layer", "--gallery-per-kind", "--data-root"],
    "compare": ["--run", "--model", "--weights-dir", "--split", "--n-bootstrap", "--bootstrap-seed",
                "--threshold-method", "--max-images", "--random-weights-for-testing", "--data-root"],
    "infer": ["--run", "--out", "--threshold-method", "--batch-size", "--workers", "--device", "--no-overlays",
              "--compare-training", "--max-pixels"],
    "export": ["--run", "--format", "--out", "--films", "--max-films", "--data-root"],
}


@pytest.mark.parametrize("verb", sorted(OPTIONS_BEFORE))
def test_every_option_of_the_old_commands_is_kept(verb, capsys):
    with pytest.raises(SystemExit):
        cli.main([verb, "--help"])
    out = capsys.readouterr().out
    missing = [option for option in OPTIONS_BEFORE[verb] if option not in out]
    assert not missing, missing


def test_options_reach_the_settings():
    args = _parse(["compare", "--run", "x", "--model", "densenet121-res224-all", "--max-images", "50"])
    assert ComparisonSettings.from_arguments(args).txv_models == ("densenet121-res224-all",)
    assert ComparisonSettings.from_arguments(args).max_images == 50
    args = _parse(["infer", "--run", "x", "a.png", "--no-overlays", "--batch-size", "8", "--max-pixels", "1000"])
    inference = InferenceSettings.from_arguments(args)
    assert (inference.overlays, inference.batch_size, inference.max_pixels) == (False, 8, 1000)


def test_the_settings_bind_to_the_functions_the_verbs_call():
    """evaluate and compare splat settings.to_dict() into these calls: every key must be one of their keywords."""
    from cxrutils.compare.run import compare_run
    from cxrutils.evaluate.evaluation import evaluate_run

    inspect.signature(evaluate_run).bind("runs/x", data_root=None, **EvaluationSettings().to_dict())
    inspect.signature(compare_run).bind("runs/x", random_init=False, data_root=None, **ComparisonSettings().to_dict())


def test_resume_auto_starts_a_missing_run_then_continues_it_as_a_requeued_job_would(tiny_phantom_root, tmp_path,
                                                                                   capsys):
    """A scheduler relaunches the same command line: ``--resume auto`` must work the first time and every time after."""
    from cxrutils.engine import run_folder

    argv = ["train", "--config", "tiny", "--set", f"data_root={tiny_phantom_root}", "--set", f"runs_dir={tmp_path}",
            "--set", f"cache_dir={tmp_path / 'cache'}", "--set", "name=requeued", "--set", "epochs=1",
            "--resume", "auto"]
    assert cli.main(argv) == 0  # no folder yet: it starts
    first = run_folder.read_history(tmp_path / "requeued")
    assert cli.main(argv) == 0  # the folder holds the run: it continues (here, already finished) instead of failing
    assert run_folder.read_history(tmp_path / "requeued")["epoch"].tolist() == first["epoch"].tolist() == [1]
    with pytest.raises(SystemExit):
        cli.main(argv[:-2])  # without --resume a second start is refused, as before: a run is never overwritten
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "resume"), [([], False), (["--resume"], True), (["--resume", "yes"], True),
                                               (["--resume", "auto"], "auto"), (["--resume", "no"], False)])
def test_resume_on_the_command_line_reaches_train(argv, resume, monkeypatch):
    from cxrutils.engine import train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda config, resume: seen.append(resume) or _Finished())
    assert cli.main(["train", "--config", "tiny", *argv]) == 0
    assert seen == [resume]


class _Finished:
    best_epoch, best_val_auroc_mean, run_dir = 1, 0.5, "runs/x"


def test_missing_imagenet_weights_are_one_line_naming_the_file_and_the_folder(tiny_phantom_root, tmp_path, monkeypatch,
                                                                              capsys):
    """The nih profile starts from ImageNet's file; offline, its absence is what to do, not a traceback."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", "nih", "--set", f"data_root={tiny_phantom_root}", "--set",
                  f"runs_dir={tmp_path / 'runs'}", "--set", f"cache_dir={tmp_path / 'cache'}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(
        f"cxrutils train: error: ImageNet weights densenet121-a639ec97.pth not found in "
        f"{tmp_path / 'torch' / 'hub' / 'checkpoints'}")
    assert "Traceback" not in err
