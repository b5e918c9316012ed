"""Workflow definitions in the Metafold fake: the YAML a ``POST /projects/{p}/workflows`` sends,
read with msgspec's YAML decoder and checked as a workflow engine must before it dispatches.

The format (the official SDK's ``workflows/sample-mesh.yml``): a top-level ``jobs:`` mapping
of job name to ``type`` (required), ``needs`` (names of jobs of the same workflow),
``assets`` (input name -> the name of a needed job whose output it reads) and ``parameters``
(name -> value). The request's own ``assets`` and ``parameters`` address one job's input as
``"job.input"``.

Reading YAML needs PyYAML (the ``testing`` extra), imported only when a definition is read,
so the rest of the fake works without it.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

__all__ = ["DefinitionError", "DefinitionJob", "MissingPyYAML", "parse_definition"]

#: What a scalar parameter value may be in YAML (sent on as a string).
_Scalar = str | int | float | bool


class DefinitionError(ValueError):
    """A definition (or its request's assets and parameters) the server refuses: a 400."""


class MissingPyYAML(RuntimeError):
    """PyYAML is not installed, so the fake cannot read a workflow definition."""


class _Job(msgspec.Struct, kw_only=True):
    type: str
    needs: list[str] = []
    assets: dict[str, str] = {}
    parameters: dict[str, _Scalar] = {}


class _Definition(msgspec.Struct):
    jobs: dict[str, _Job]


@dataclass(frozen=True)
class DefinitionJob:
    """One job of a parsed definition: its name, type, the names it needs, its input assets
    (input name -> a needed job's name, or a filename given with the request) and its
    parameters (the request's ``"job.param"`` values over the definition's)."""

    name: str
    type: str
    needs: tuple[str, ...] = ()
    assets: dict[str, str] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)


def _text(value: _Scalar) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _decode(definition: str) -> _Definition:
    try:
        importlib.import_module("yaml")
    except ImportError:
        raise MissingPyYAML(
            "the fake's workflow definitions are YAML, which needs PyYAML: "
            "pip install 'async-jobs[testing]'"
        ) from None
    import msgspec.yaml

    try:
        return msgspec.yaml.decode(definition, type=_Definition)
    except msgspec.DecodeError as exc:  # a ValidationError is one too
        reason = " ".join(str(exc).split())
        raise DefinitionError(f"Invalid workflow definition: {reason}") from None


def _addressed(name: str, mapping: Mapping[str, str], jobs: Mapping[str, object]) -> None:
    for key in mapping:
        job, dot, item = key.partition(".")
        if not dot or not item:
            raise DefinitionError(f'Invalid {name} key "{key}": expected "job.{name[:-1]}"')
        if job not in jobs:
            raise DefinitionError(f'Invalid {name} key "{key}": no job "{job}" in the workflow')


def parse_definition(
    definition: str,
    assets: Mapping[str, str] | None = None,
    parameters: Mapping[str, str] | None = None,
) -> list[DefinitionJob]:
    """The jobs of ``definition``, in the order it lists them, with the request's ``assets``
    and ``parameters`` (``"job.input"`` keys) applied. Raises :class:`DefinitionError` for
    YAML that does not parse, no ``jobs`` mapping, no job, a job without ``type``, an asset
    read from a job it does not need, or a request key naming no job; and
    :class:`MissingPyYAML` without PyYAML. Unknown ``needs`` and cycles are left to the
    lifecycle, which refuses them too."""
    parsed = _decode(definition)
    if not parsed.jobs:
        raise DefinitionError("Invalid workflow definition: it has no jobs")
    assets = dict(assets or {})
    parameters = dict(parameters or {})
    _addressed("assets", assets, parsed.jobs)
    _addressed("parameters", parameters, parsed.jobs)
    jobs: list[DefinitionJob] = []
    for name, job in parsed.jobs.items():
        for input_name, source in job.assets.items():
            if source not in job.needs:
                raise DefinitionError(
                    f'Invalid workflow definition: job "{name}" reads asset "{input_name}" '
                    f'from "{source}", which it does not need'
                )
        given = {
            key.partition(".")[2]: value
            for key, value in assets.items()
            if key.partition(".")[0] == name
        }
        params = {key: _text(value) for key, value in job.parameters.items()}
        params.update(
            (key.partition(".")[2], value)
            for key, value in parameters.items()
            if key.partition(".")[0] == name
        )
        jobs.append(
            DefinitionJob(name, job.type, tuple(job.needs), {**job.assets, **given}, params)
        )
    return jobs
