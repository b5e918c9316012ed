"""A griffe extension for the documentation site (mkdocs.yml loads it; not part of the package).

The docstrings of async_jobs are written for Sphinx-style readers; two things in them would
otherwise be lost on the site:

- ``:class:`~async_jobs.JobFailed```-style roles become cross-references (optional ones: a
  target the reference does not document renders as plain code, never as a broken link);
- ``#:`` comments above an attribute (its documentation, as Sphinx's autodoc reads it) become
  the docstring of an attribute that has none.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|attr|data|mod|exc|obj|const):`(~?)\.?([^`<>]+)`")


def _identifier(obj: griffe.Object, target: str) -> str:
    if target.startswith("async_jobs"):
        return target
    scope = obj if obj.is_class else obj.parent
    if target.split(".", 1)[0] in obj.module.members:
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

    def on_instance(self, *, node: ast.AST | griffe.ObjectNode, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute:
            text = comment_docstring(obj)
            if text:
                obj.docstring = griffe.Docstring(text, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = convert_roles(obj, obj.docstring.value)
