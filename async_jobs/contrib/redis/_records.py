"""The records kept in Redis streams, as msgspec Structs: one ``encode`` to the fields an
``XADD`` writes and one ``decode`` from the fields ``XRANGE``/``XREADGROUP`` return.

On the wire every field is text (``attempts`` a decimal integer, times epoch seconds with six
decimals, ``job`` and ``context`` JSON), the same fields and values as before these Structs.
Decoding accepts unknown fields and raises :class:`RecordError` (a ``ValueError`` naming the
record and the field) for a missing required field or a value of the wrong kind.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

import msgspec

from ...models._state import JobState
from ._replies import _fields

__all__ = [
    "MAX_CONTEXT_BYTES",
    "MAX_ERROR_CHARS",
    "DeadRecord",
    "HandledRecord",
    "RecordError",
    "WatchEntry",
    "encode_context",
    "job_json",
]

#: Largest context accepted by :meth:`DurableWatches.submit`, encoded as JSON.
MAX_CONTEXT_BYTES = 64 * 1024
#: Longest error message kept in a dead-letter record.
MAX_ERROR_CHARS = 4000

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
_R = TypeVar("_R", bound="_Record")


class RecordError(ValueError):
    """A stream entry that is not the record it should be."""


def _text(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


class _Record(msgspec.Struct, frozen=True):
    #: Fields sent as UTF-8 bytes rather than text (as they always were: the connection's
    #: own ``encoding`` never applies to them).
    _utf8: ClassVar[frozenset[str]] = frozenset()

    def encode(self) -> dict[str, str | bytes]:
        """The fields an ``XADD`` writes, in declaration order."""
        return {
            name: _text(value).encode() if name in self._utf8 else _text(value)
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        }

    @classmethod
    def decode(cls: type[_R], raw: Mapping[Any, Any]) -> _R:
        """The record in a stream entry's fields (bytes or text); :class:`RecordError` if
        a required field is missing or a value is not of its kind."""
        try:
            return msgspec.convert(_fields(raw), type=cls, strict=False)
        except msgspec.ValidationError as exc:
            raise RecordError(f"{cls.__name__}: {exc}") from None


class WatchEntry(_Record, frozen=True, kw_only=True):
    """One watch in the watches stream: written by ``submit``, read by the workers."""

    #: Format version.
    v: str = "1"
    #: The watch id (random; also the value of the job's ``<stream>:job:<key>`` string).
    watch: _NonEmpty
    #: The ref's :attr:`~async_jobs.JobRef.key`.
    key: _NonEmpty
    #: The ref's resume token (kind and ids, never a credential).
    token: _NonEmpty
    #: The caller's context as JSON, copied verbatim into the result or dead-letter record.
    context: str = "{}"
    #: When it was submitted (epoch seconds, six decimals), as written: no worker reads it,
    #: so an odd value here never makes an entry unreadable.
    submitted: str = ""

    @classmethod
    def salvage(cls, raw: Mapping[Any, Any]) -> WatchEntry:
        """What can be read of an entry that does not decode, unchecked (a missing field is
        empty): what its dead-letter record says about it."""
        fields = _fields(raw)
        return cls(
            **{
                f.name: fields.get(f.name, "" if f.required else f.default)
                for f in msgspec.structs.fields(cls)
            }
        )

    def decode_context(self) -> dict[str, Any]:
        """The caller's context (``{}`` if its JSON is not an object); :class:`RecordError` if
        it is not JSON."""
        try:
            context = msgspec.json.decode(self.context)
        except msgspec.DecodeError:
            raise RecordError("WatchEntry: context is not JSON") from None
        return context if isinstance(context, dict) else {}


class HandledRecord(_Record, frozen=True, kw_only=True):
    """One handled job in the results stream."""

    _utf8: ClassVar[frozenset[str]] = frozenset({"job"})

    key: str
    id: str
    state: JobState
    #: The terminal job as JSON.
    job: str
    context: str
    watch: str
    #: The entry id in its partition's stream.
    entry: str
    #: The partition the watch was in.
    partition: int = 0
    #: The worker (consumer) that handled it.
    consumer: str
    handled_at: float


class DeadRecord(_Record, frozen=True, kw_only=True):
    """One watch given up on, in the dead-letter stream."""

    _utf8: ClassVar[frozenset[str]] = frozenset({"job"})

    key: str
    token: str
    context: str
    #: Why (at most :data:`MAX_ERROR_CHARS` characters).
    error: str
    #: Failed attempts (of the watch or the handler).
    attempts: int
    watch: str
    #: The entry id in its partition's stream.
    entry: str
    #: The partition the watch was in.
    partition: int = 0
    consumer: str
    failed_at: float
    #: The terminal job as JSON, or empty when the watch itself failed.
    job: str = ""


def encode_context(context: Mapping[str, Any] | None) -> str:
    """A caller's context as the JSON text of :attr:`WatchEntry.context`."""
    if context is None:
        return "{}"
    if not isinstance(context, Mapping):
        raise TypeError(f"context must be a dict or None, got {type(context).__name__}")
    try:
        raw = msgspec.json.encode(dict(context))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"context must be JSON-serialisable: {exc}") from None
    if len(raw) > MAX_CONTEXT_BYTES:
        raise ValueError(f"context is {len(raw)} bytes as JSON; at most {MAX_CONTEXT_BYTES}")
    return raw.decode()


def job_json(job: Any) -> str:
    """A job model as the JSON text of a record's ``job`` field."""
    return msgspec.json.encode(job).decode()
