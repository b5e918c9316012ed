"""The API specs vendored under ``tests/specs/`` (see its README for their sources)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SPECS = Path(__file__).resolve().parent / "specs"


@cache
def zoo_spec() -> dict[str, Any]:
    """The real Zoo OpenAPI subset."""
    spec: dict[str, Any] = json.loads((SPECS / "zoo-async-subset.json").read_text())
    return spec


@cache
def metafold_facts() -> dict[str, Any]:
    """What is confirmed about Metafold's REST API."""
    facts: dict[str, Any] = json.loads((SPECS / "metafold-jobs-subset.json").read_text())
    return facts


def zoo_schema(name: str) -> dict[str, Any]:
    """One schema of ``components.schemas`` in the Zoo spec."""
    schema: dict[str, Any] = zoo_spec()["components"]["schemas"][name]
    return schema
