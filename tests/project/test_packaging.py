"""The install and the project's conventions: checks that could fail on a real mistake."""

import ast
import json
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _normalized(requirements):
    return {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in requirements}


def test_environment_yml_carries_the_same_pins_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject = _normalized(project["dependencies"] + project["optional-dependencies"]["dev"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    conda = _normalized([r for r in pip_section if not r.startswith("-e")])
    assert conda == pyproject
    assert pyproject["torch"].startswith("==") and pyproject["torchvision"].startswith("==")


def test_pinned_torch_and_torchvision_work_together():
    import torch
    import torchvision
    from torchvision.ops import nms  # fails when torchvision was built for another torch

    assert torch.__version__.split("+")[0] == _normalized(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    )["torch"].lstrip("=")
    kept = nms(torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert kept.tolist() == [0, 2]
    if torch.version.cuda is not None:  # torchvision encodes CUDA 13.0 as 13000
        tv_cuda = int(torchvision.version.cuda)
        assert f"{tv_cuda // 1000}.{tv_cuda % 1000 // 10}" == torch.version.cuda, "CUDA builds differ"


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1]
    first_block = quick_start.split("```bash", 1)[1].split("```", 1)[0]
    commands = re.findall(r"^(make [\w-]+)", first_block, flags=re.M)
    assert commands == ["make demo", "make test"]
    ci_commands = [
        line.strip()
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "set ", "cd "))
    ]
    # The README's test command, last and once. Before it only the browser check's setup: Chromium installed
    # where missing, and the check made mandatory (tests/publish/test_browser.py then fails instead of skipping).
    assert ci_commands[-1] == commands[-1] == "make test" and ci_commands.count("make test") == 1
    assert ci_commands[-2] == "export CXRUTILS_REQUIRE_BROWSER=1"
    install = ci_commands[:-2]
    assert install[0] == "if ! command -v chromium >/dev/null; then" and install[-1] == "fi"
    assert any(re.search(r"apt-get install -y( -qq)? chromium$", line) for line in install)
    assert not any(re.search(r"\b(make|pytest|python)\b", line) for line in install), install


def test_notebooks_are_committed_without_outputs_and_with_literal_parameters():
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no numbered notebooks found"
    for path in notebooks:
        notebook = json.loads(path.read_text())
        code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code_cells), path.name
        parameter_cells = [c for c in code_cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(parameter_cells) == 1, f"{path.name}: expected one cell tagged 'parameters'"
        tree = ast.parse("".join(parameter_cells[0]["source"]))
        for statement in tree.body:
            assert isinstance(statement, ast.Assign), f"{path.name}: parameters cell holds only assignments"
            ast.literal_eval(statement.value)  # raises on anything but a literal
        assert notebook["metadata"]["kernelspec"]["name"] == "cxrutils"


def test_the_code_has_no_undefined_or_unused_names_and_sorted_imports():
    import subprocess
    import sys

    checked = subprocess.run([sys.executable, "-m", "ruff", "check", "cxrutils", "tests", "benchmarks"], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-2000:]


def test_no_source_file_is_ignored_by_git():
    """A pattern meant for generated data (``data/``) once ignored ``cxrutils/data/``: new modules there never landed."""
    import subprocess

    sources = [str(p.relative_to(ROOT)) for folder in ("cxrutils", "tests", "benchmarks", "notebooks", "configs")
               for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    checked = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(sources),
                             capture_output=True, text=True)
    if checked.returncode == 128:
        import pytest

        pytest.skip(f"not a git checkout: {checked.stderr.strip()}")
    assert checked.stdout.split() == [], "ignored by .gitignore: " + checked.stdout
