"""Every command the README shows is one the command line takes, and the cheap ones run as written on a demo root.

The commands come from the README's ``bash`` blocks (continuation lines joined, comments
dropped): ``cxrutils ...``, ``torchrun ... -m cxrutils ...`` and ``make ...``. Every one
is parsed by the real parser, and its settings are resolved as the verb resolves them
(a training profile with its ``--set``s, a report profile with its notebooks'
parameters), so a setting the README misspells or a value of the wrong type fails here.
Every ``--set KEY=VALUE`` the README's prose shows is checked the same way.

Then the commands run, in the README's order, with the README's paths pointed at a tiny
phantom root and folders of this test (``/data/nih`` -> the root, ``runs/nih`` -> a run
folder here, ``/pacs/export`` -> a folder of DICOMs). Training and the cache also get the
run and cache folders of this test, ``epochs=1`` and 32-px films, the tests' tiny size (the
``nih`` profile's 20 epochs at 224 px take minutes even on 65 films on a CPU). Not run, only parsed: commands that need the
network (``download`` without ``--verify``), several processes (``torchrun``: covered by
tests/engine), or a whole training inside the notebooks (``reports --profile nih``), and
``make`` targets, which CI runs.
"""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from cxrutils import cli
from cxrutils.paths import PROJ_ROOT
from cxrutils.settings import TrainConfig, load_train_config, parse_override

README = PROJ_ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_SET = re.compile(r"`[^`\n]*?--set ([a-z_.]+=[^`\s]+)[^`\n]*`")
# The verbs that run here as the README writes them (report profiles: the ones that train nothing).
RUN_HERE = {"train", "cache", "evaluate", "card", "compare", "compare-runs", "infer", "export", "reports", "download"}
REPORT_PROFILES_RUN_HERE = {"inference", "metadata"}


def readme_commands(text: str) -> list[str]:
    """The shell commands of the README's bash blocks, one per line, continuations joined and comments dropped."""
    commands = []
    for language, body in FENCE.findall(text):
        if language not in ("bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and (words[0] in ("cxrutils", "make") or (words[0] == "torchrun" and "cxrutils" in words)):
                commands.append(shlex.join(words))
    return commands


def cxrutils_argv(command: str) -> list[str] | None:
    """The arguments after ``cxrutils`` (or ``torchrun ... -m cxrutils``); None for a make line."""
    words = shlex.split(command)
    if words[0] == "cxrutils":
        return words[1:]
    if words[0] == "torchrun":
        return words[words.index("cxrutils") + 1:]
    return None


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_the_commands_of_every_job():
    verbs = {argv[0] for argv in map(cxrutils_argv, COMMANDS) if argv}
    assert {"train", "cache", "evaluate", "compare", "infer", "export", "reports", "card", "download"} <= verbs
    assert any(command.startswith("torchrun") for command in COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses_and_its_settings_resolve(command):
    argv = cxrutils_argv(command)
    if argv is None:  # make TARGET: the Makefile has it
        target = shlex.split(command)[1]
        assert re.search(rf"^{re.escape(target)}:", (PROJ_ROOT / "Makefile").read_text(), re.MULTILINE), command
        return
    parser, _ = cli.build_parser()
    args = parser.parse_args(argv)  # an unknown verb or option exits here, naming it
    if args.verb in ("train", "cache"):
        load_train_config(args.config, args.overrides)
    elif args.verb == "reports":
        from cxrutils.publish.runner import resolve_profile

        resolve_profile(args.profile, args.overrides, args.only)


def test_every_set_the_readme_prose_shows_is_a_setting_of_the_right_type():
    """``--set lr=4e-4``, ``--set batch_size=24``, ``--set augment.hflip_probability=0``...: training settings
    (checked against their types) or notebook parameters some notebook declares."""
    import papermill as pm

    from cxrutils.publish.runner import notebook_paths

    parameters = set().union(*(pm.inspect_notebook(str(path)) for path in notebook_paths()))
    shown = [text for text in INLINE_SET.findall(README.read_text(encoding="utf-8")) if "..." not in text]
    assert "lr=4e-4" in shown and len(shown) >= 8
    training = {field.name for field in TrainConfig.__dataclass_fields__.values()}
    for text in shown:
        key, _ = parse_override(text)
        if key.split(".")[0] in training:
            load_train_config("nih", [text, "data_root=/data/nih"] if key != "data_root" else [text])
        else:
            assert key in parameters, f"--set {text}: neither a training setting nor a notebook parameter"


@pytest.fixture
def readme_world(tiny_phantom_root, tmp_path):
    """The README's paths, here: the data root, run folders, a PACS export of two DICOMs and a PNG, output folders."""
    from cxrutils.data.dicom import write_dicom
    from cxrutils.data.images import read_image

    films = sorted((tiny_phantom_root / "images").glob("*.png"))
    pacs = tmp_path / "pacs_export"
    for k, film in enumerate(films[:2]):
        write_dicom(pacs / f"IM{k:04d}", read_image(film), extra={"StudyInstanceUID": f"1.2.3.{k}"})
    shutil.copy(films[2], tmp_path / "film1.png")
    paths = {
        "/shared/cache/nih_256": str(tmp_path / "cache" / "shared_nih_256"),
        "/data/nih": str(tiny_phantom_root), "/shared/nih": str(tiny_phantom_root),
        "data/demo/images": str(tiny_phantom_root / "images"),
        "runs/demo": str(tmp_path / "runs" / "demo"), "runs/nih": str(tmp_path / "runs" / "nih"),
        "/pacs/export/": str(pacs), "/pacs/export": str(pacs), "film1.png": str(tmp_path / "film1.png"),
        "results/": str(tmp_path / "results"),
    }
    return tmp_path, paths


def _here(argv: list[str], paths: dict[str, str]) -> list[str]:
    pattern = re.compile("|".join(re.escape(path) for path in sorted(paths, key=len, reverse=True)))
    return [pattern.sub(lambda match: paths[match.group(0)], word) for word in argv]


def _runs_here(argv: list[str]) -> bool:
    verb = argv[0]
    if verb == "reports":
        return argv[argv.index("--profile") + 1] in REPORT_PROFILES_RUN_HERE
    if verb == "download":
        return "--verify" in argv
    return verb in RUN_HERE


@pytest.mark.notebook
def test_the_readme_commands_run_as_written_on_a_phantom_root(readme_world, monkeypatch, capsys):
    from weights_files import write_imagenet_densenet121

    from cxrutils.engine.model import imagenet_weights_path

    folder, paths = readme_world
    monkeypatch.setattr(cli, "REPORTS_DIR", folder / "reports")  # the default of every --reports-dir and --out
    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))  # the nih profile starts from ImageNet's file
    write_imagenet_densenet121(imagenet_weights_path())
    ran = []
    for command in COMMANDS:
        argv = cxrutils_argv(command)
        if argv is None or command.startswith("torchrun") or not _runs_here(argv):
            continue
        argv = _here(argv, paths)
        if argv[0] in ("train", "cache"):  # this test's folders, and one epoch (module docstring)
            settings = dict(parse_override(text) for text in argv[argv.index("--config"):] if "=" in text)
            argv += ["--set", f"runs_dir={folder / 'runs'}", "--set", "epochs=1", "--set", "cache_size=32",
                     "--set", "input_size=32"]
            argv += [] if "cache_dir" in settings else ["--set", f"cache_dir={folder / 'cache'}"]
            argv += [] if "data_root" in settings else ["--set", f"data_root={paths['/data/nih']}"]
        expected = 1 if argv[0] == "download" else 0  # --verify of a root never downloaded: it says what to run
        try:
            code = cli.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        output = capsys.readouterr()
        assert code == expected, f"{command}\n-> {shlex.join(argv)}\n{output.out[-3000:]}\n{output.err[-3000:]}"
        ran.append(argv[0])
    assert {"train", "cache", "evaluate", "card", "compare", "compare-runs", "infer", "export", "reports",
            "download"} <= set(ran)
    # cxrutils compare-runs ... --name demo_pos_weight: beside the runs, in runs/comparisons/
    assert (folder / "runs" / "comparisons" / "demo_pos_weight" / "runs_compared.json").is_file()
    assert (folder / "runs" / "demo" / "model.onnx").is_file()  # cxrutils export --run runs/demo
    assert (folder / "results" / "inference.csv").is_file()  # cxrutils infer ... --out results/
    assert (folder / "reports" / "demo" / "model_card.html").is_file()  # cxrutils card --run runs/demo
    assert (folder / "reports" / "nih" / "05_inference.html").is_file()  # --profile inference --set run_dir=runs/nih
