"""A small mutation tester: does the suite notice when the code it guards changes?

Usage (from the repository root, in the test virtual environment)::

    python -m tests.mutate async_jobs/_policy.py tests/test_policy.py tests/test_poll.py
    python -m tests.mutate async_jobs/_http.py tests/test_http_*.py --only 120-180 --json out.json

Each mutant is one small change to one AST node of the module (a comparison flipped, a boolean
operator swapped, a ``not`` dropped, a constant nudged, a call statement removed, ``break`` and
``continue`` swapped). The repository is copied to a temporary folder once; every mutant is
written there and the given tests run against it (``pytest -x``, with a timeout of a few times
the clean run), so the checkout itself is never touched. A mutant is *killed* when the tests fail
or time out, *survived* when they pass. Lines with ``# pragma: no mutate`` are skipped, and so are
docstrings, annotations, logging calls and ``__all__``.

Surviving mutants are either killed by a new test or explained as equivalent in
``tests/MUTATION.md``.
"""

from __future__ import annotations

import argparse
import ast
import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


@dataclass
class Mutant:
    index: int
    line: int
    description: str
    source_line: str
    outcome: str = "pending"
    seconds: float = 0.0


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, logging calls, ``__all__``."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                skip(body[0])
        if isinstance(node, ast.arg | ast.AnnAssign):
            skip(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.returns)
        is_method_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_method_call and node.func.attr in LOG_METHODS:  # type: ignore[attr-defined]
            skip(node)
        # A statement that only logs (``logger.info(...)``): removing it is a logging change
        # too. The receiver must look like a logger: ``future.exception()`` is not logging.
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            func = node.value.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in LOG_METHODS
                and "log" in ast.unparse(func.value).lower()
            ):
                skip(node)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            skip(node)
    return skipped


def _candidates(tree: ast.AST, source_lines: list[str]) -> Iterator[tuple[ast.AST, str, object]]:
    """(node, description, change) for every mutation of the module, in source order."""
    skipped = _skipped_nodes(tree)
    parents = _parents(tree)
    found: list[tuple[int, int, ast.AST, str, object]] = []
    for node in ast.walk(tree):
        if id(node) in skipped or not hasattr(node, "lineno"):
            continue
        line = source_lines[node.lineno - 1] if node.lineno <= len(source_lines) else ""
        if "pragma: no mutate" in line:
            continue
        key = (node.lineno, node.col_offset)
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                new = COMPARE_SWAPS.get(type(op))
                if new is not None:
                    desc = f"{type(op).__name__} -> {new.__name__}"
                    found.append((*key, node, desc, ("compare", i, new)))
        elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
            new_op = BINOP_SWAPS[type(node.op)]
            desc = f"{type(node.op).__name__} -> {new_op.__name__}"
            found.append((*key, node, desc, ("binop", new_op)))
        elif isinstance(node, ast.BoolOp):
            new_bool = ast.Or if isinstance(node.op, ast.And) else ast.And
            found.append((*key, node, f"BoolOp -> {new_bool.__name__}", ("boolop", new_bool)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append((*key, node, "drop `not`", ("drop_not",)))
        elif isinstance(node, ast.Constant) and not isinstance(parents.get(node), ast.JoinedStr):
            value = node.value
            if isinstance(value, bool):
                found.append((*key, node, f"{value} -> {not value}", ("const", not value)))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                new_value = value + 1 if value == 0 or isinstance(value, int) else value * 2
                found.append((*key, node, f"{value!r} -> {new_value!r}", ("const", new_value)))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
            found.append((*key, node, "remove call statement", ("remove",)))
        elif isinstance(node, ast.Break):
            found.append((*key, node, "break -> continue", ("swap_loop", ast.Continue)))
        elif isinstance(node, ast.Continue):
            found.append((*key, node, "continue -> break", ("swap_loop", ast.Break)))
    found.sort(key=lambda item: (item[0], item[1]))
    for _, _, node, desc, change in found:
        yield node, desc, change


def _apply(node: ast.AST, change: object) -> None:
    kind, *args = change  # type: ignore[misc]
    if kind == "compare":
        index, new = args
        node.ops[index] = new()  # type: ignore[attr-defined]
    elif kind in ("binop", "boolop"):
        node.op = args[0]()  # type: ignore[attr-defined]
    elif kind == "const":
        node.value = args[0]  # type: ignore[attr-defined]
    else:
        raise AssertionError(kind)


def mutants_of(path: Path) -> list[tuple[Mutant, str]]:
    """Every mutant of the module at ``path`` with the mutated module's source."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    result: list[tuple[Mutant, str]] = []
    for index, (node, desc, change) in enumerate(_candidates(tree, lines)):
        mutated = copy.deepcopy(tree)
        target = next(
            n
            for n in ast.walk(mutated)
            if type(n) is type(node)
            and getattr(n, "lineno", None) == node.lineno  # type: ignore[attr-defined]
            and getattr(n, "col_offset", None) == node.col_offset  # type: ignore[attr-defined]
            and getattr(n, "end_col_offset", None) == node.end_col_offset  # type: ignore[attr-defined]
        )
        kind = change[0]  # type: ignore[index]
        if kind in ("remove", "swap_loop", "drop_not"):
            parent = _parents(mutated)[target]
            if kind == "drop_not":
                replacement: ast.AST = target.operand  # type: ignore[attr-defined]
            elif kind == "remove":
                replacement = ast.Pass()
            else:
                replacement = change[1]()  # type: ignore[index]
            for field, value in ast.iter_fields(parent):
                if isinstance(value, list) and target in value:
                    value[value.index(target)] = replacement
                elif value is target:
                    setattr(parent, field, replacement)
        else:
            _apply(target, change)
        ast.fix_missing_locations(mutated)
        line = node.lineno  # type: ignore[attr-defined]
        text = lines[line - 1].strip() if line <= len(lines) else ""
        result.append((Mutant(index, line, desc, text), ast.unparse(mutated)))
    return result


def _run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    start = time.monotonic()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(
            command,
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.monotonic() - start
    outcome = "survived" if proc.returncode == 0 else "killed"
    return outcome, time.monotonic() - start


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns(
        ".git", ".venv", ".ci-venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache"
    )
    for name in ("async_jobs", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the module to mutate, e.g. async_jobs/_policy.py")
    parser.add_argument("tests", nargs="+", help="test files or node ids to run per mutant")
    parser.add_argument("--only", help="line range to mutate, e.g. 120-180")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument("--json", help="write every mutant's outcome to this file")
    parser.add_argument("--timeout-factor", type=float, default=4.0)
    args = parser.parse_args(argv)

    module = Path(args.module)
    tests = [t for pattern in args.tests for t in (sorted(glob.glob(pattern)) or [pattern])]
    mutants = mutants_of(ROOT / module)
    if args.only:
        low, _, high = args.only.partition("-")
        mutants = [(m, s) for m, s in mutants if int(low) <= m.line <= int(high or low)]
    if args.list:
        for mutant, _ in mutants:
            print(f"#{mutant.index} line {mutant.line}: {mutant.description}: {mutant.source_line}")
        print(f"{len(mutants)} mutants")
        return 0

    with tempfile.TemporaryDirectory(prefix="async-jobs-mutate-") as tmp:
        workdir = Path(tmp)
        _copy_tree(workdir)
        outcome, clean_seconds = _run_tests(workdir, tests, timeout=900)
        if outcome != "survived":
            print("the tests fail without any mutant: fix them first", file=sys.stderr)
            return 2
        timeout = max(10.0, clean_seconds * args.timeout_factor)
        print(f"{len(mutants)} mutants of {module}; clean run {clean_seconds:.1f} s", flush=True)
        target = workdir / module
        original = target.read_text()
        try:
            for mutant, source in mutants:
                target.write_text(source)
                mutant.outcome, mutant.seconds = _run_tests(workdir, tests, timeout)
                mark = "  " if mutant.outcome.startswith("killed") else "S "
                print(
                    f"{mark}#{mutant.index} line {mutant.line}: {mutant.description}: "
                    f"{mutant.source_line[:70]} -> {mutant.outcome}",
                    flush=True,
                )
        finally:
            target.write_text(original)

    killed = sum(m.outcome.startswith("killed") for m, _ in mutants)
    total = len(mutants)
    score = 100.0 * killed / total if total else 100.0
    print(f"{module}: {killed}/{total} killed ({score:.1f}%), {total - killed} survived")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "module": str(module),
                    "tests": tests,
                    "killed": killed,
                    "total": total,
                    "mutants": [asdict(m) for m, _ in mutants],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
