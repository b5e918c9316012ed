"""Layers: the shared modules name no API in code (DESIGN "Layers and seams"). What one API
needs lives with that API; comments and docstrings may still mention one as an example."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "async_jobs"
SHARED = (
    "_api.py",
    "_client.py",
    "_errors.py",
    "_http.py",
    "_paging.py",
    "_poll.py",
    "_policy.py",
    "_watcher.py",
    "events.py",
    "models/_state.py",
    "_cli_output.py",  # the CLI output: labels, statuses and details from the descriptors
    # the fake server's host and the building blocks every fake API plugin shares
    "testing/_server.py",
    "testing/_plugin.py",
    "testing/_helpers.py",
    "testing/_faults.py",
    "testing/_clock.py",
)
API_WORDS = ("zoo", "metafold", "conversion", "x-api-call-id", "kittycad")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
        if isinstance(node, (ast.Module, ast.ClassDef)):
            # attribute docstrings: a bare string right after an assignment
            for before, after in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(before, (ast.Assign, ast.AnnAssign))
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                ):
                    found.add(id(after.value))
    return found


def api_names_in_code(source: str) -> list[str]:
    """Every identifier, attribute, import and string literal (not a docstring) of
    ``source`` that names an API."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    words: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, ast.arg):
            words.append((node.lineno, node.arg))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.append((node.lineno, node.name))
        elif isinstance(node, ast.ImportFrom):
            words.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.alias):
            words += [(node.lineno, node.name), (node.lineno, node.asname or "")]
        elif isinstance(node, ast.keyword):
            words.append((node.lineno, node.arg or ""))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            words.append((node.lineno, node.value))
    return [
        f"line {line}: {text!r}"
        for line, text in words
        if any(word in text.lower() for word in API_WORDS)
    ]


@pytest.mark.parametrize("module", SHARED)
def test_shared_module_names_no_api(module: str) -> None:
    assert api_names_in_code((PACKAGE / module).read_text()) == []


def test_the_check_sees_code_but_not_prose() -> None:
    source = '''
"""A module about Zoo."""
# a comment about Metafold
from .zoo import thing
X = "X-Api-Call-Id"
#: Conversions of a dataset.
Y = 1
"""Attribute docstring naming a conversion."""

def f(metafold_client):
    """Docstring: zoo."""
    return metafold_client.conversions(zoo_id=1)
'''
    assert sorted(api_names_in_code(source)) == [
        "line 10: 'metafold_client'",
        "line 12: 'conversions'",
        "line 12: 'metafold_client'",
        "line 12: 'zoo_id'",
        "line 4: 'zoo'",
        "line 5: 'X-Api-Call-Id'",
    ]
