"""Mutation check of the statistics and the evaluation glue: do the tests notice when this code is wrong?

    nice -n 19 python benchmarks/mutation.py [--mutants N] [--seed 0] [--budget-minutes 60] [--only FILE ...] [--rerun REPORT]
    make mutation

A mutant changes one thing in one of ``TARGETS``: an arithmetic or comparison operator
(``<`` to ``<=``, ``+`` to ``-``, ...), ``and``/``or``, a ``not`` or a unary minus
dropped, a number (n to n + 1, x to x / 2) or a boolean flipped. Error messages (the
inside of ``raise``, f-strings), docstrings, annotations, ``assert`` statements and
argument defaults are not mutated. Mutants are drawn at random (``--seed``) from every
possible one, written into a scratch copy of the repository, and the test files that
exercise their module (``TESTS``) run against each, stopping at the first failure.

- **killed**: a test failed (or the module no longer imports, or the tests ran past the
  timeout). **survived**: every test passed. A survivor is a gap in the tests unless the
  mutant is equivalent (the same behaviour written differently); ``EQUIVALENT_FILE``
  holds the survivors judged so by a person, each with its reason (and the published
  figures shown for context, judged separately), and the kill rate over the others is
  the figure that matters.
- The test data the session fixtures build (phantom roots, trained runs) is built once by
  unmutated code and reused ($CXRUTILS_TEST_FIXTURES, see tests/conftest.py); each mutant
  runs in a process forked from one that imported numpy, pandas, scikit-learn, torch and
  pytest already, so a mutant costs its tests, not the imports.

Writes ``reports/mutation.json`` (every mutant and its outcome) and prints the survivors.
It is CPU-heavy (every one of the ~560 mutants in about 25 minutes on 2 busy cores, at nice 19)
and not part of ``make test``. ``--rerun REPORT`` runs only a report's survivors, after tests
were added for them.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (
    "cxrutils/stats/metrics.py",
    "cxrutils/stats/delong.py",
    "cxrutils/stats/paired.py",
    "cxrutils/stats/thresholds.py",
    "cxrutils/stats/intervals.py",
    "cxrutils/evaluate/evaluation.py",
    "cxrutils/predictions.py",
)
# The test files that exercise each module, the fastest first (a mutant stops at its first failing test).
TESTS = {
    "cxrutils/stats/metrics.py": ["tests/stats/test_metrics.py", "tests/evaluate/test_report_numbers.py"],
    "cxrutils/stats/delong.py": ["tests/stats/test_delong.py", "tests/compare/test_comparison.py"],
    "cxrutils/stats/paired.py": ["tests/compare/test_comparison.py", "tests/evaluate/test_report_numbers.py"],
    "cxrutils/stats/thresholds.py": ["tests/engine/test_augment_thresholds.py", "tests/stats/test_metrics.py",
                                     "tests/compare/test_comparison.py"],
    "cxrutils/stats/intervals.py": ["tests/stats/test_metrics.py", "tests/compare/test_comparison.py", "tests/evaluate/test_report_numbers.py"],
    "cxrutils/evaluate/evaluation.py": [
        "tests/evaluate/test_report_numbers.py",
        "tests/evaluate/test_evaluate.py::test_evaluate_run_computes_every_table_from_the_runs_own_predictions_and_thresholds"],
    "cxrutils/predictions.py": ["tests/compare/test_comparison.py", "tests/evaluate/test_report_numbers.py",
                                "tests/evaluate/test_evaluate.py::test_a_predictions_csv_missing_columns_is_refused_naming_them"],
}
EQUIVALENT_FILE = Path(__file__).with_name("mutation_equivalent.json")
COPIED = ("cxrutils", "tests", "configs", "notebooks", "pyproject.toml")

_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
           ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
_COMPARE = {ast.Lt: (ast.LtE, ast.GtE), ast.LtE: (ast.Lt, ast.Gt), ast.Gt: (ast.GtE, ast.LtE),
            ast.GtE: (ast.Gt, ast.Lt), ast.Eq: (ast.NotEq,), ast.NotEq: (ast.Eq,), ast.Is: (ast.IsNot,),
            ast.IsNot: (ast.Is,), ast.In: (ast.NotIn,), ast.NotIn: (ast.In,)}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Pow: "**", ast.Mod: "%",
           ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
           ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.And: "and", ast.Or: "or"}


@dataclass(frozen=True)
class Mutant:
    file: str
    number: int  # the n-th possible mutation of the file, in walk order
    line: int
    change: str
    source_line: str

    occurrence: int = 0  # how many earlier mutants of the file have the same change on the same text

    @property
    def key(self) -> str:
        """Stable while that line's text is unchanged, wherever it moves: how EQUIVALENT_FILE names it."""
        return f"{self.file}:{self.change}:{self.source_line.strip()}:{self.occurrence}"


# --------------------------------------------------------------------------- mutations


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: messages, docstrings, annotations, asserts, argument defaults."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.Raise, ast.Assert, ast.JoinedStr)):
            skip(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                skip(default)
            skip(node.returns)
            for argument in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                skip(argument.annotation)
        elif isinstance(node, ast.AnnAssign):
            skip(node.annotation)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip(node)  # docstrings
    return skipped


def _candidates(node: ast.AST) -> list[tuple[str, object]]:
    """The mutations of one node: (description, what to apply) pairs."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        new = _BINARY[type(node.op)]
        return [(f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}", ("op", new))]
    if isinstance(node, ast.AugAssign) and type(node.op) in _BINARY:
        new = _BINARY[type(node.op)]
        return [(f"{_SYMBOL[type(node.op)]}= -> {_SYMBOL[new]}=", ("op", new))]
    if isinstance(node, ast.Compare):
        return [(f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}", ("compare", k, new))
                for k, op in enumerate(node.ops) for new in _COMPARE.get(type(op), ())]
    if isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        return [(f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}", ("op", new))]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return [("not x -> x", ("unwrap",))]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
        return [("-x -> x", ("unwrap",))]
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return [(f"{node.value} -> {not node.value}", ("value", not node.value))]
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return [(f"{node.value} -> {node.value + 1}", ("value", node.value + 1))]
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        new = 1.0 if node.value == 0 else node.value / 2
        return [(f"{node.value!r} -> {new!r}", ("value", new))]
    return []


def _original(file: str) -> str:
    """The file as it was when the pass started (later edits to the checkout do not reach a running pass)."""
    if file not in _ORIGINALS:
        _ORIGINALS[file] = (ROOT / file).read_text()
    return _ORIGINALS[file]


_ORIGINALS: dict[str, str] = {}


def possible_mutants(file: str) -> list[Mutant]:
    source = _original(file)
    lines = source.splitlines()
    tree = ast.parse(source)
    skipped = _skipped_nodes(tree)
    mutants: list[Mutant] = []
    seen: dict[tuple[str, str], int] = {}
    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        for change, _ in _candidates(node):
            text = lines[node.lineno - 1].strip()
            occurrence = seen.get((change, text), 0)
            seen[(change, text)] = occurrence + 1
            mutants.append(Mutant(file, len(mutants), node.lineno, change, lines[node.lineno - 1], occurrence))
    return mutants


class _Apply(ast.NodeTransformer):
    """Apply the ``target``-th mutation of the walk (the same order ``possible_mutants`` numbers them)."""

    def __init__(self, tree: ast.AST, target: int) -> None:
        skipped = _skipped_nodes(tree)
        count, self.node, self.action = 0, None, None
        for node in ast.walk(tree):
            if id(node) in skipped or not hasattr(node, "lineno"):
                continue
            for _, action in _candidates(node):
                if count == target:
                    self.node, self.action = node, action
                count += 1

    def visit(self, node: ast.AST) -> ast.AST:
        if node is not self.node:
            return self.generic_visit(node)
        kind, *rest = self.action  # type: ignore[misc]
        if kind == "op":
            node.op = rest[0]()  # type: ignore[attr-defined]
        elif kind == "compare":
            node.ops[rest[0]] = rest[1]()  # type: ignore[attr-defined]
        elif kind == "value":
            node.value = rest[0]  # type: ignore[attr-defined]
        elif kind == "unwrap":
            return node.operand  # type: ignore[attr-defined]
        return node


def mutated_source(file: str, number: int | None) -> str:
    """The file as ``ast.unparse`` writes it, with mutation ``number`` applied (None: unmutated)."""
    tree = ast.parse(_original(file))
    if number is not None:
        tree = _apply(tree, number)
    return ast.unparse(ast.fix_missing_locations(tree))


def _apply(tree: ast.AST, number: int) -> ast.AST:
    transformer = _Apply(tree, number)
    if transformer.node is None:
        raise IndexError(f"no mutation number {number}")
    return transformer.visit(tree)


# --------------------------------------------------------------------------- running the tests


def _run_tests(repo: Path, tests: list[str], timeout: float, log: Path) -> tuple[str, float]:
    """Run ``tests`` in a forked child; ('passed' | 'failed' | 'timeout', seconds)."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: fresh cxrutils imports from the scratch copy, pytest in-process
        try:
            os.setpgid(0, 0)
            descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(descriptor, 1)
            os.dup2(descriptor, 2)
            import pytest

            code = pytest.main([*tests, "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-W", "ignore"])
            os._exit(int(code))
        except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
            os._exit(3)
    deadline = started + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            return ("passed" if code == 0 else "failed"), time.monotonic() - started
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - started
        time.sleep(0.05)


def _prepare_scratch(scratch: Path) -> Path:
    repo = scratch / "repo"
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            repo.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    return repo


def _preimport() -> None:
    """Third-party imports the tests need, done once in the parent (never cxrutils: each mutant imports it)."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import pytest  # noqa: F401
    import scipy.stats  # noqa: F401
    import sklearn.calibration  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    with __import__("warnings").catch_warnings():
        import torchxrayvision  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutants", type=int, default=0, help="how many mutants to draw (default 0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="stop starting mutants after this")
    parser.add_argument("--only", nargs="*", default=[], help="target files (default: all of TARGETS)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "mutation.json"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs of every mutant)")
    parser.add_argument("--rerun", help="a previous report: run again only the mutants that survived in it")
    args = parser.parse_args(argv)
    targets = [t for t in TARGETS if not args.only or t in args.only]
    everything = [m for target in targets for m in possible_mutants(target)]
    drawn = everything if args.mutants <= 0 else random.Random(args.seed).sample(everything,
                                                                                   min(args.mutants, len(everything)))
    random.Random(args.seed).shuffle(drawn)  # run in random order, so a spent budget leaves a random subset
    if args.rerun:  # after tests were added for the survivors: do they die now?
        survivors = {m["key"] for m in json.loads(Path(args.rerun).read_text())["mutants"] if m["status"] == "survived"}
        drawn = [m for m in everything if m.key in survivors]
    equivalent = json.loads(EQUIVALENT_FILE.read_text()) if EQUIVALENT_FILE.is_file() else {}
    print(f"{len(drawn)} of {len(everything)} possible mutants in {len(targets)} files", flush=True)

    scratch = Path(tempfile.mkdtemp(prefix="cxrutils-mutation-"))
    repo = _prepare_scratch(scratch)
    sys.dont_write_bytecode = True  # a mutant of the same size in the same second must not reuse a stale .pyc
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ["CXRUTILS_TEST_FIXTURES"] = str(scratch / "fixtures")
    os.environ["MPLBACKEND"] = "Agg"
    os.chdir(repo)
    sys.path.insert(0, str(repo))
    _preimport()

    # Unmutated (as ast.unparse writes each file) every selection must pass; this run also builds the fixtures.
    baseline: dict[str, float] = {}
    for target in targets:
        (repo / target).write_text(mutated_source(target, None))
        outcome, seconds = _run_tests(repo, TESTS[target], 1800, scratch / f"baseline_{Path(target).stem}.log")
        (repo / target).write_text(_original(target))
        if outcome != "passed":
            print(f"the tests of {target} fail without any mutation: see {scratch}", file=sys.stderr)
            return 2
        baseline[target] = seconds
        print(f"baseline {target}: {seconds:.0f} s", flush=True)
    # The first selection also built the fixtures: time the others' reruns, not the build.
    (repo / targets[0]).write_text(mutated_source(targets[0], None))
    baseline[targets[0]] = _run_tests(repo, TESTS[targets[0]], 1800, scratch / "baseline_again.log")[1]
    (repo / targets[0]).write_text(_original(targets[0]))

    results = []
    stop_at = time.monotonic() + 60 * args.budget_minutes
    for index, mutant in enumerate(drawn):
        if time.monotonic() > stop_at:
            print(f"budget spent: {index} of {len(drawn)} mutants run", flush=True)
            break
        try:
            source = mutated_source(mutant.file, mutant.number)
            compile(source, mutant.file, "exec")
        except (SyntaxError, ValueError, IndexError) as err:
            results.append({**asdict(mutant), "status": "not a program", "seconds": 0.0, "note": str(err)})
            continue
        (repo / mutant.file).write_text(source)
        try:
            outcome, seconds = _run_tests(repo, TESTS[mutant.file], 3 * baseline[mutant.file] + 60,
                                          scratch / f"mutant_{index:04d}.log")
        finally:
            (repo / mutant.file).write_text(_original(mutant.file))
        status = {"passed": "survived", "failed": "killed", "timeout": "killed (timeout)"}[outcome]
        record = {**asdict(mutant), "key": mutant.key, "status": status, "seconds": round(seconds, 1)}
        if status == "survived":
            record["judged"] = equivalent.get(mutant.key)
        results.append(record)
        print(f"[{index + 1}/{len(drawn)}] {status:16s} {mutant.file}:{mutant.line} {mutant.change}", flush=True)

    results.sort(key=lambda r: (r["file"], r["line"], r["number"]))
    report = summarise(results, len(everything), args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": report, "baseline_seconds": baseline, "mutants": results},
                                         indent=1))
    print(json.dumps(report, indent=1))
    for record in results:
        if record["status"] == "survived":
            judged = record.get("judged")
            verdict = f"{judged['kind']}: {judged['why']}" if judged else "NOT JUDGED"
            print(f"survived {record['file']}:{record['line']} {record['change']}: {record['source_line'].strip()}"
                  f"\n    {verdict}")
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"logs in {scratch}")
    return 0


def summarise(results: list[dict], possible: int, seed: int) -> dict:
    """Counts, and the kill rate over every mutant, over the non-equivalent ones, and without published constants.

    EQUIVALENT_FILE judges a survivor ``equivalent`` (the same behaviour, written differently) or a ``published
    constant`` (a figure transcribed from a paper: a test would compare a copy with a copy).
    """
    run = [r for r in results if r["status"] != "not a program"]
    killed = [r for r in run if r["status"].startswith("killed")]
    survived = [r for r in run if r["status"] == "survived"]
    kinds = [(r.get("judged") or {}).get("kind") for r in survived]
    equivalent, constants = kinds.count("equivalent"), kinds.count("published constant")
    by_file: dict[str, dict[str, int]] = {}
    for r in run:
        counts = by_file.setdefault(r["file"], {"run": 0, "killed": 0, "survived": 0, "equivalent": 0})
        counts["run"] += 1
        counts["killed"] += r["status"].startswith("killed")
        counts["survived"] += r["status"] == "survived"
        counts["equivalent"] += (r.get("judged") or {}).get("kind") == "equivalent"

    def rate(denominator: int) -> float | None:
        return round(len(killed) / denominator, 4) if denominator else None

    return {
        "possible_mutants": possible, "seed": seed, "run": len(run), "killed": len(killed),
        "timeouts": sum(r["status"] == "killed (timeout)" for r in run), "survived": len(survived),
        "survived_equivalent": equivalent, "survived_published_constants": constants,
        "survived_not_judged": len(survived) - equivalent - constants,
        "kill_rate": rate(len(run)),
        "kill_rate_of_non_equivalent": rate(len(run) - equivalent),
        "kill_rate_of_non_equivalent_without_published_constants": rate(len(run) - equivalent - constants),
        "by_file": by_file,
    }


if __name__ == "__main__":
    sys.exit(main())
