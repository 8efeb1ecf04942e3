"""Every command the README shows is one the command line takes, and each runs as written on phantom data here
unless ``NOT_RUN`` says why not.

The commands are the lines of the README's ``bash`` blocks (continuation lines joined,
comments dropped). Every one is parsed: a ``cxrutils`` line (or ``torchrun ... -m cxrutils``)
by the real parser, its settings resolved as the verb resolves them (a training profile with
its ``--set``s, a report profile with its notebooks' parameters), so a setting the README
misspells or a value of the wrong type fails here; a ``make`` line's target must be in the
Makefile, the ``sbatch`` line's arguments must be ``cxrutils train``'s, and a shell line must be
valid bash. Every ``--set KEY=VALUE`` the README's prose shows is checked the same way.

Then the commands run, in the README's order, with the README's paths pointed at phantom data
and folders of this test: ``/data/nih`` -> a tiny phantom NIH root, ``/data/chexpert`` -> a
small phantom CheXpert root, ``runs/nih`` -> a run folder here, ``/pacs/export`` -> a folder of
DICOMs. ``cxrutils download nih`` fetches a small copy of
the box release (twelve archives of tiny PNGs, tests/helpers/box_release.py) from a local HTTP
server that its archive links point at, into a root of its own, where the four metadata files
are already (the README has the user fetch them by hand); the ``tar`` line runs in bash on a
folder holding those archives. What a command gets beyond the README's words (``_tiny``): this
test's run and cache folders, ``epochs=1`` and 32-px films for training and the cache (the
``nih`` profile's 20 epochs at 224 px take minutes even on 65 films on a CPU), 50 bootstrap
resamples instead of 1,000, and an empty TorchXRayVision weights folder (each model skipped
and named, as on a machine without the files, instead of whatever this machine's home holds).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess

import pytest

from cxrutils import cli
from cxrutils.paths import PROJ_ROOT
from cxrutils.settings import TrainConfig, load_train_config, parse_override

README = PROJ_ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE_SET = re.compile(r"`[^`\n]*?--set ([a-z_.]+=[^`\s]+)[^`\n]*`")
# Lines in shlex's normal form (their arguments matter, their spacing does not); any other line is kept as written.
NORMALISED = ("cxrutils", "make", "torchrun")
# The first word of a shell line (not a cxrutils one) that runs here, in bash.
SHELL_RUN_HERE = {"for"}
SBATCH_ARGUMENTS_GO_TO = ["train", "--config", "nih", "--resume", "auto"]  # configs/slurm/train.sbatch's srun line

MAKE = "make: CI runs the targets; each target is checked to be in the Makefile"
# Each README command that is parsed but not run here, with why. A command neither run here nor listed here fails
# test_every_readme_command_runs_here_or_is_listed_with_its_reason, so none is skipped silently.
NOT_RUN = {
    "make demo": MAKE,
    "make test": MAKE + " (and runs this test)",
    "make metadata-report": MAKE,
    "make reports PROFILE=nih 'ARGS=--set data_root=/data/nih'": MAKE,
    "make rehearsal": MAKE + " (about 10 minutes)",
    "make external-demo": MAKE,
    "cxrutils reports --profile nih --set data_root=/data/nih":
        "trains the nih profile inside notebook 02's kernel, then runs every notebook (minutes); the same runner over "
        "every notebook, training included, is the rendered_reports fixture (tests/conftest.py, the demo profile at "
        "the tiny size), and the nih profile's training runs here as `cxrutils train --config nih`",
    "torchrun --standalone --nproc_per_node=N -m cxrutils train --config nih --set data_root=/data/nih":
        "several processes: tests/engine/test_train.py launches torchrun with two CPU processes",
    "cxrutils reports --profile external --set run_dir=runs/nih --set collection=padchest "
    "--set external_root=/data/padchest":
        "notebook 07 in a kernel took 30 s in a run of this test (2 cores shared with other jobs, 2026-12-06), not "
        "a few seconds; tests/notebooks/test_notebook_external.py runs it through the runner's run_notebook on phantom "
        "PadChest and CheXpert roots, its profile's settings resolve above, and its computation runs here as "
        "`cxrutils external --run runs/nih --collection chexpert`",
    "torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 --rdzv_id=nih1 -m cxrutils "
    "train --config nih --set data_root=/shared/nih --set cache_dir=/shared/cache/nih_256":
        "several machines: tests/engine/test_cluster.py runs the same c10d rendezvous launch on this one",
    "sbatch --nodes=2 --gpus-per-node=4 configs/slurm/train.sbatch --set data_root=/data/nih --set batch_size=12":
        "needs SLURM: tests/engine/test_cluster.py runs configs/slurm/train.sbatch with stand-ins for srun and scontrol",
}


def _without_comment(line: str) -> str:
    """The line as written, less a trailing shell comment (a ``#`` that starts a word outside quotes)."""
    words = shlex.split(line, comments=True)
    for end in re.finditer(r"\s#|$", line):
        try:
            if shlex.split(line[:end.start()]) == words:
                return line[:end.start()].strip()
        except ValueError:  # the # is inside quotes
            continue
    return line.strip()


def readme_commands(text: str) -> list[str]:
    """Every command line of the README's bash blocks, continuations joined and comments dropped."""
    commands = []
    for language, body in FENCE.findall(text):
        if language not in ("bash", "sh", "shell"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words) if words[0] in NORMALISED else _without_comment(line))
    return commands


def cxrutils_argv(command: str) -> list[str] | None:
    """The arguments after ``cxrutils`` (or ``torchrun ... -m cxrutils``); None for any other line."""
    words = shlex.split(command)
    if words[0] == "cxrutils":
        return words[1:]
    if words[0] == "torchrun" and "cxrutils" in words:
        return words[words.index("cxrutils") + 1:]
    return None


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_shows_the_commands_of_every_job():
    verbs = {argv[0] for argv in map(cxrutils_argv, COMMANDS) if argv}
    assert {"train", "cache", "evaluate", "compare", "compare-runs", "external", "infer", "export", "reports",
            "card", "download"} <= verbs
    assert any(command.startswith("torchrun") for command in COMMANDS)
    assert any(command.startswith("sbatch") for command in COMMANDS)
    assert any("tar -xzf" in command for command in COMMANDS)


def test_every_readme_command_runs_here_or_is_listed_with_its_reason():
    stale = sorted(set(NOT_RUN) - set(COMMANDS))
    assert not stale, f"NOT_RUN lists commands the README no longer shows: {stale}"
    for command in COMMANDS:
        if command in NOT_RUN:
            assert len(NOT_RUN[command]) > 20, command  # a reason, not a placeholder
            continue
        words = shlex.split(command)
        assert words[0] == "cxrutils" or words[0] in SHELL_RUN_HERE, (
            f"{command}: not run by test_the_readme_commands_run_as_written_on_phantom_data; run it there or list "
            "it in NOT_RUN with the reason")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses_and_its_settings_resolve(command):
    words = shlex.split(command)
    if words[0] == "make":  # make TARGET: the Makefile has it
        assert re.search(rf"^{re.escape(words[1])}:", (PROJ_ROOT / "Makefile").read_text(), re.MULTILINE), command
        return
    if words[0] == "sbatch":  # sbatch [OPTIONS] SCRIPT ARGS: the script passes ARGS to cxrutils train
        script = next(word for word in words[1:] if not word.startswith("-"))
        assert (PROJ_ROOT / script).is_file(), command
        assert "-m cxrutils train --config nih --resume auto \"$@\"" in (PROJ_ROOT / script).read_text()
        argv = [*SBATCH_ARGUMENTS_GO_TO, *words[words.index(script) + 1:]]
    else:
        argv = cxrutils_argv(command)
    if argv is None:  # a shell line (the tar loop): bash must read it
        checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert checked.returncode == 0, f"{command}\n{checked.stderr}"
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
def box_release(tmp_path, monkeypatch, fixtures_dir):
    """The box release's twelve archive links pointed at a local server of small archives; its films (name -> bytes).

    ``cxrutils download nih --root /data/nih`` then fetches into ``nih_box/``, which already holds the four
    metadata files (the README: NIH gives no link for them, the user fetches them from the box folder). A copy of
    the archives waits in ``nih_by_hand/`` for the README's tar line, as NIH's script or a browser leaves them.
    """
    from box_release import serving, write_box_release

    import cxrutils.data.download as download

    served = tmp_path / "box_server"
    films = write_box_release(served)
    shutil.copytree(served, tmp_path / "nih_by_hand")
    (tmp_path / "nih_box").mkdir()
    for name in download.METADATA_FILE_NAMES:
        shutil.copy(fixtures_dir / name, tmp_path / "nih_box" / name)
    with serving(served) as base_url:
        monkeypatch.setattr(download, "ARCHIVE_URLS", {name: f"{base_url}/{name}" for name in download.ARCHIVE_URLS})
        yield films


@pytest.fixture
def readme_world(tiny_phantom_root, tmp_path):
    """The README's paths, here: the data roots, run folders, a PACS export of two DICOMs and a PNG, output folders."""
    from cxrutils.data.dicom import write_dicom
    from cxrutils.data.images import read_image
    from cxrutils.demo.external_roots import ExternalRootSpec, build_external_root

    films = sorted((tiny_phantom_root / "images").glob("*.png"))
    pacs = tmp_path / "pacs_export"
    for k, film in enumerate(films[:2]):
        write_dicom(pacs / f"IM{k:04d}", read_image(film), extra={"StudyInstanceUID": f"1.2.3.{k}"})
    shutil.copy(films[2], tmp_path / "film1.png")
    chexpert = build_external_root(tmp_path / "chexpert", ExternalRootSpec("chexpert", n_patients=6, seed=4,
                                                                           positives_per_finding=1))
    paths = {
        "/shared/cache/nih_256": str(tmp_path / "cache" / "shared_nih_256"),
        "/data/nih": str(tiny_phantom_root), "/shared/nih": str(tiny_phantom_root),
        "/data/chexpert": str(chexpert),
        "data/demo/images": str(tiny_phantom_root / "images"),
        "runs/demo": str(tmp_path / "runs" / "demo"), "runs/nih": str(tmp_path / "runs" / "nih"),
        "/pacs/export/": str(pacs), "/pacs/export": str(pacs), "film1.png": str(tmp_path / "film1.png"),
        "results/": str(tmp_path / "results"),
    }
    return tmp_path, paths


def _here(text: str, paths: dict[str, str]) -> str:
    pattern = re.compile("|".join(re.escape(path) for path in sorted(paths, key=len, reverse=True)))
    return pattern.sub(lambda match: paths[match.group(0)], text)


def _paths_for(words: list[str], folder, paths: dict[str, str]) -> dict[str, str]:
    """The download and the tar line work on roots of their own (the phantom NIH root is no box download)."""
    if words[0] == "for":
        return {**paths, "/data/nih": str(folder / "nih_by_hand")}
    if words[:2] == ["cxrutils", "download"]:
        return {**paths, "/data/nih": str(folder / "nih_box")}
    return paths


def _tiny(argv: list[str], folder, paths: dict[str, str]) -> list[str]:
    """What this test adds to a README command: its folders and the tiny size (module docstring)."""
    no_weights = str(folder / "no_txv_weights")
    if argv[0] in ("train", "cache"):
        settings = dict(parse_override(text) for text in argv[argv.index("--config"):] if "=" in text)
        added = [f"runs_dir={folder / 'runs'}", "epochs=1", "cache_size=32", "input_size=32"]
        added += [] if "cache_dir" in settings else [f"cache_dir={folder / 'cache'}"]
        added += [] if "data_root" in settings else [f"data_root={paths['/data/nih']}"]
        return [*argv, *(word for text in added for word in ("--set", text))]
    if argv[0] == "external":
        return [*argv, "--n-bootstrap", "50", "--weights-dir", no_weights]
    if argv[0] == "reports" and argv[argv.index("--profile") + 1] == "runs_compared":
        return [*argv, "--set", "n_bootstrap=50"]
    return argv


@pytest.mark.notebook
def test_the_readme_commands_run_as_written_on_phantom_data(readme_world, box_release, monkeypatch, capsys):
    from weights_files import write_imagenet_densenet121

    from cxrutils.engine.model import imagenet_weights_path

    folder, paths = readme_world
    monkeypatch.setattr(cli, "REPORTS_DIR", folder / "reports")  # the default of every --reports-dir and --out
    monkeypatch.setenv("TORCH_HOME", str(folder / "torch"))  # the nih profile starts from ImageNet's file
    write_imagenet_densenet121(imagenet_weights_path())
    (folder / "no_txv_weights").mkdir()
    ran = []
    for command in COMMANDS:
        if command in NOT_RUN:
            continue
        words = shlex.split(command)
        here = _paths_for(words, folder, paths)
        if words[0] in SHELL_RUN_HERE:
            line = _here(command, here)
            finished = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=120)
            assert finished.returncode == 0, f"{command}\n-> {line}\n{finished.stdout[-3000:]}\n{finished.stderr}"
            ran.append(command)
            continue
        argv = _tiny([_here(word, here) for word in cxrutils_argv(command)], folder, here)
        try:
            code = cli.main(argv)
        except SystemExit as exit_info:
            code = exit_info.code
        output = capsys.readouterr()
        assert code == 0, f"{command}\n-> {shlex.join(argv)}\n{output.out[-3000:]}\n{output.err[-3000:]}"
        ran.append(command)
    assert ran == [command for command in COMMANDS if command not in NOT_RUN]

    # cxrutils download nih --root /data/nih: every film of the twelve archives, byte for byte; --verify found
    # nothing wrong (exit 0 above). The tar line unpacks the same archives into the same images/.
    for root in ("nih_box", "nih_by_hand"):
        unpacked = {path.name: path.read_bytes() for path in (folder / root / "images").iterdir()}
        assert unpacked == box_release, root
    # cxrutils compare-runs ... --name demo_pos_weight: beside the runs, in runs/comparisons/
    assert (folder / "runs" / "comparisons" / "demo_pos_weight" / "runs_compared.json").is_file()
    # ... and notebook 06 on the same four runs (reports --profile runs_compared ... comparison_name=demo_pos_weight)
    compared = json.loads((folder / "reports" / "comparisons" / "demo_pos_weight" / "index.json").read_text())
    assert compared["06_runs_compared"]["status"] == "ok" and compared["06_runs_compared"]["synthetic"] is True
    # cxrutils external --run runs/nih --collection chexpert --root /data/chexpert
    saved = json.loads((folder / "runs" / "nih" / "external" / "chexpert" / "external.json").read_text())
    assert saved["synthetic"] is True and saved["summary"]["films_scored"] > 0
    assert {missing["model"] for missing in saved["missing_weights"]} == set(saved["requested_txv"])  # named
    assert (folder / "runs" / "demo" / "model.onnx").is_file()  # cxrutils export --run runs/demo
    assert (folder / "results" / "inference.csv").is_file()  # cxrutils infer ... --out results/
    assert (folder / "reports" / "demo" / "model_card.html").is_file()  # cxrutils card --run runs/demo
    assert (folder / "reports" / "nih" / "05_inference.html").is_file()  # --profile inference --set run_dir=runs/nih
