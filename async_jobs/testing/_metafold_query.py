"""Metafold listing queries in the fake: the ``q`` parser (``[!]field:value`` terms joined by
``AND``, ``*`` wildcards) and the ``sort`` string (``field:1`` / ``field:-1``)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["QueryError", "Row", "parse_query", "select"]

_SORT = re.compile(r"^([A-Za-z_]+):(-1|1)\Z")
_FIELD = re.compile(r"[A-Za-z_]+")
#: A listed object: its id (the default order), its body (what ``q`` matches) and its sort keys.
Row = tuple[str, dict[str, Any], dict[str, float | str | None]]


class QueryError(ValueError):
    """A ``q`` or ``sort`` the server refuses: the reason, and the parameter at fault."""

    def __init__(self, message: str, parameter: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def parse_query(text: str, fields: Sequence[str]) -> list[tuple[bool, str, str]]:
    """Parse a Metafold ``q``: ``[!]field:value`` terms joined by ``AND``; a value may be
    quoted (``\\"`` and ``\\\\`` escape inside quotes). Returns (negated, field, pattern)
    triples; raises ValueError with the reason a server would give."""
    terms: list[tuple[bool, str, str]] = []
    pos, n = 0, len(text)
    expect_term = True
    while True:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        if not expect_term:
            end = pos
            while end < n and not text[end].isspace():
                end += 1
            word = text[pos:end]
            if word == "OR":
                raise ValueError("OR is not supported")
            if word != "AND":
                raise ValueError(f"expected AND at offset {pos}, got {word[:40]!r}")
            pos, expect_term = end, True
            continue
        negated = text[pos] == "!"
        if negated:
            pos += 1
        match = _FIELD.match(text, pos)
        if match is None or match.end() >= n or text[match.end()] != ":":
            raise ValueError(f"expected field:value at offset {pos}")
        name = match.group()
        if name not in fields:
            raise ValueError(f"unsupported search field {name!r}")
        pos = match.end() + 1
        if pos < n and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos >= n:
                    raise ValueError("unterminated quote")
                char = text[pos]
                if char == "\\" and pos + 1 < n:
                    chars.append(text[pos + 1])
                    pos += 2
                    continue
                pos += 1
                if char == '"':
                    break
                chars.append(char)
            value = "".join(chars)
            if pos < n and not text[pos].isspace():
                raise ValueError(f"unexpected character after a quoted value at offset {pos}")
        else:
            end = pos
            while end < n and not text[end].isspace():
                end += 1
            value = text[pos:end]
            if '"' in value:
                raise ValueError(f"stray quote in {value[:40]!r}")
            pos = end
        if not value:
            raise ValueError(f"empty value for {name!r}")
        terms.append((negated, name, value))
        expect_term = False
    if not terms:
        raise ValueError("empty query")
    if expect_term:
        raise ValueError("query ends with AND")
    return terms


def select(
    rows: Sequence[Row],
    query: Mapping[str, str],
    sort_fields: Sequence[str],
    query_fields: Sequence[str],
) -> list[Row]:
    """The rows a listing request with ``q`` and ``sort`` answers, in order (by default: id
    descending); raises :class:`QueryError` for a query or sort the server refuses."""
    chosen = sorted(rows, key=lambda row: row[0], reverse=True)
    if "q" in query:
        try:
            terms = parse_query(query["q"], query_fields)
        except ValueError as exc:
            raise QueryError(f"Invalid query: {exc}", "q") from None
        chosen = [
            row
            for row in chosen
            if all(
                _matches(pattern, _text(row[1].get(name))) != negated
                for negated, name, pattern in terms
            )
        ]
    if "sort" in query:
        match = _SORT.match(query["sort"])
        if match is None or match.group(1) not in sort_fields:
            raise QueryError(
                f"Invalid sort string {query['sort']!r}: expected field:order with field "
                f"one of {', '.join(sort_fields)} and order 1 or -1",
                "sort",
            )
        name, descending = match.group(1), match.group(2) == "-1"
        chosen.sort(key=lambda row: _sort_key(row[2][name]), reverse=descending)
    return chosen


def _matches(pattern: str, value: str | None) -> bool:
    if value is None:
        return False
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


def _sort_key(value: float | str | None) -> tuple[bool, float | str]:
    """None first (as the smallest value), then by value."""
    return (False, 0.0) if value is None else (True, value)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
