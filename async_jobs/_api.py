"""Descriptors of a job API: :class:`JobKind` (one kind of job: its model, path and listing)
and :class:`JobApi` (an API's kinds, error bodies and request-id header). Each API module
declares its own; clients, the CLI, resume tokens and durable watches are driven by them, so
no shared module needs to know which APIs exist."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from ._http import ErrorDecoder, api_path, encode_segment, no_error_details
from ._poll import Job
from .models._state import StateTable

__all__ = ["JobApi", "JobKind"]

J = TypeVar("J", bound=Job)


def _path_fields(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"/org/datasets/{dataset_id}/conversions/{id}"`` -> its literal segments (with ``""``
    for each field) and its field names, in order."""
    segments: list[str] = []
    names: list[str] = []
    if not template.startswith("/"):
        raise ValueError(f"a path template starts with '/', got {template!r}")
    for segment in template[1:].split("/"):
        parsed = list(string.Formatter().parse(segment))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1]:
            names.append(parsed[0][1])
            segments.append("")
        elif segment and all(name is None for _, name, _, _ in parsed):
            segments.append(segment)
        else:
            raise ValueError(f"a path segment is literal or one whole {{field}}: {segment!r}")
    if not names:
        raise ValueError(f"a job path names at least one id field: {template!r}")
    return tuple(segments), tuple(names)


@dataclass(frozen=True, eq=False)
class JobKind(Generic[J]):
    """One kind of job of one API: enough for a client to fetch, wait on, list and resume it.

    - ``name``: the stable kind in ref keys, resume tokens and logs (``"zoo.async_operation"``).
    - ``model``: the :class:`~async_jobs.JobModel` subclass a fetch decodes (its
      ``state_table`` says which statuses are terminal and which are active).
    - ``path``: the job's URL path, one ``{field}`` per id: ``"/v1/predictions/{id}"``; a
      ref's ids fill the fields in order, each percent-encoded whole.
    - ``group`` and ``list_active``: how a :class:`~async_jobs.Watcher` lists the active jobs
      of one group with a single paged sweep instead of polling each. The group is named by
      every id but the last (a Zoo dataset, a Metafold project; no id at all for an API-wide
      listing); ``list_active(client, *group_ids)`` yields the group's jobs still under way.
      Without them, each job is polled on its own.
    - ``label``: the short name the CLI shows (``"conversion"``).
    - ``cancel``: for a job the API can cancel, ``cancel(client, *ids)`` asks it to; a ref
      of this kind then can (:meth:`~async_jobs.JobRef.cancel`, and
      ``wait_until_terminal(..., cancel_on_timeout=True)``).
    """

    name: str
    model: type[J]
    path: str
    group: str | None = None
    list_active: Callable[..., AsyncIterator[J]] | None = None
    label: str = ""
    cancel: Callable[..., Awaitable[Any]] | None = None
    #: The field names of ``path``, in order (the ids a ref of this kind carries).
    id_names: tuple[str, ...] = field(init=False)
    #: A msgspec decoder of ``model``, built once.
    decoder: msgspec.json.Decoder[J] = field(init=False, repr=False)
    # The encoded path around its fields: ``/async/operations/{id}`` -> ("/async/operations/", "")
    _chunks: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a JobKind needs a name")
        segments, names = _path_fields(self.path)
        chunks = [""]
        for segment in segments:
            if segment:
                chunks[-1] += api_path(segment)
            else:
                chunks[-1] += "/"
                chunks.append("")
        object.__setattr__(self, "_chunks", tuple(chunks))
        object.__setattr__(self, "id_names", names)
        if not isinstance(getattr(self.model, "state_table", None), StateTable):
            raise TypeError(f"{self.model!r} has no state_table (subclass aj.JobModel)")
        object.__setattr__(self, "decoder", msgspec.json.Decoder(self.model))
        if (self.group is None) != (self.list_active is None):
            raise ValueError("give a JobKind both group and list_active, or neither")
        if not self.label:
            object.__setattr__(self, "label", self.name.rpartition(".")[2].replace("_", " "))

    @property
    def states(self) -> StateTable:
        """The model's state table."""
        table: StateTable = getattr(self.model, "state_table")  # noqa: B009 - checked above
        return table

    def url_path(self, *ids: str) -> str:
        """The encoded path of the job with ``ids`` (ValueError for a wrong count or an empty
        id: checked when a ref is made, not at its first poll)."""
        if len(ids) != len(self.id_names):
            raise ValueError(
                f"{self.name} takes {len(self.id_names)} ids "
                f"({', '.join(self.id_names)}), got {len(ids)}"
            )
        chunks = self._chunks
        path = chunks[0]
        for index, value in enumerate(ids, 1):
            path += encode_segment(value) + chunks[index]
        return path

    def __repr__(self) -> str:
        return f"JobKind({self.name!r})"


@dataclass(frozen=True, eq=False)
class JobApi:
    """One API as a client sends to it: its job kinds, how its error bodies read
    (``decode_error``, see :data:`~async_jobs.ErrorDecoder`) and the response header that
    carries its request ids, if it has one."""

    name: str
    kinds: Sequence[JobKind[Any]] = ()
    decode_error: ErrorDecoder = no_error_details
    request_id_header: str | None = None

    def kind(self, name: str) -> JobKind[Any] | None:
        """The kind called ``name``, or None if this API has none."""
        for kind in self.kinds:
            if kind.name == name:
                return kind
        return None
