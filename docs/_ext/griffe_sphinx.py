"""A griffe extension for the documentation site (mkdocs.yml loads it; not part of the package).

The docstrings of async_jobs are written for Sphinx-style readers; two things in them would
otherwise be lost on the site:

- ``:class:`~async_jobs.JobFailed```-style roles become cross-references (optional ones: a
  target the reference does not document renders as plain code, never as a broken link);
- reST literal blocks (``::``) become fenced Python code;
- ``#:`` comments above an attribute (its documentation, as Sphinx's autodoc reads it) become
  the docstring of an attribute that has none.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

import async_jobs

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|data|mod|exc|obj|const):`(~?)\.?([^`<>]+)`")


def _identifier(obj: griffe.Object, target: str) -> str:
    if target.startswith("async_jobs"):
        return target
    scope = obj if obj.is_class else obj.parent
    head = target.split(".", 1)[0]
    if "." in target and head in async_jobs.__all__:
        return f"async_jobs.{target}"
    if head in obj.module.members:
        return f"{obj.module.path}.{target}"
    if "." not in target and scope is not None and scope.is_class and not target.isupper():
        # Members are not loaded yet when this runs: a bare name in a class is taken as one
        # of its members (a wrong guess renders as plain code, the reference being optional).
        return f"{scope.path}.{target}"
    return f"{obj.module.path}.{target}"


def convert_roles(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match[str]) -> str:
        _, short, target = match.groups()
        title = target.rsplit(".", 1)[-1] if short else target
        suffix = "()" if match.group(1) in ("func", "meth") else ""
        return (
            f'<autoref identifier="{_identifier(obj, target)}" optional>'
            f"<code>{title}{suffix}</code></autoref>"
        )

    return _ROLE.sub(link, text)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def literal_blocks(text: str) -> str:
    """reST literal blocks (a paragraph ending in ``::``, then an indented block) as fenced
    Python code: Markdown would show the ``::`` and leave the code unhighlighted."""
    lines = text.split("\n")
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.rstrip().endswith("::"):
            out.append(line)
            continue
        base = _indent(line)
        end = index
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > base):
            end += 1
        block = lines[index:end]
        while block and not block[-1].strip():
            block.pop()
        if not any(part.strip() for part in block):
            out.append(line)
            continue
        depth = min(_indent(part) for part in block if part.strip())
        head = line.rstrip()[:-1]
        if head.strip() != ":":
            out.append(head)
        out += ["", " " * base + "```python"]
        out += [" " * base + part[depth:] if part.strip() else "" for part in block]
        out += [" " * base + "```", ""]
        index = end
    return "\n".join(out)


def comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above ``obj``'s first line, joined."""
    if obj.lineno is None:
        return None
    try:
        lines = obj.lines_collection[obj.filepath]  # type: ignore[index]
    except (KeyError, TypeError):
        return None
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return "\n".join(found) or None


class SphinxDocstrings(griffe.Extension):
    """Roles to cross-references, ``#:`` comments to attribute docstrings."""

    def on_instance(
        self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object, **kwargs: Any
    ) -> None:
        if obj.docstring is None and obj.is_attribute:
            text = comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = literal_blocks(convert_roles(obj, obj.docstring.value))
