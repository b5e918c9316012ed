"""Test helpers: :class:`FakeApiServer`, a real HTTP server on loopback that speaks the
supported APIs with scripted job lifecycles and injectable faults; :class:`FakeServer` and
:class:`FakeApi` to host fakes of your own APIs, built from :class:`Timeline`,
:func:`cursor_page`, :class:`CreationTimes` and :func:`json_response`; :class:`RedisServer` and
:class:`RedisCluster`, real ``redis-server`` processes for the Redis tests."""

from ._apis import FakeApiServer
from ._clock import FakeClock
from ._conversions import FakeConversion, FakeConversions
from ._faults import Fault, FaultKind
from ._helpers import (
    CreationTimes,
    CursorPage,
    InvalidCursor,
    Moment,
    Timeline,
    cursor_page,
    json_response,
)
from ._metafold import FakeMetafold, FakeMetafoldJob, FakeMetafoldWorkflow
from ._oauth import FakeTokenEndpoint
from ._plugin import FakeApi
from ._redis_cluster import RedisCluster
from ._redis_server import RedisServer, RedisServerNotFound
from ._server import FakeServer, RecordedRequest
from ._zoo import FakeOperation, FakeZoo, ZooOptions

__all__ = [
    "CreationTimes",
    "CursorPage",
    "FakeApi",
    "FakeApiServer",
    "FakeClock",
    "FakeConversion",
    "FakeConversions",
    "FakeMetafold",
    "FakeMetafoldJob",
    "FakeMetafoldWorkflow",
    "FakeOperation",
    "FakeServer",
    "FakeTokenEndpoint",
    "FakeZoo",
    "Fault",
    "FaultKind",
    "InvalidCursor",
    "Moment",
    "RecordedRequest",
    "RedisCluster",
    "RedisServer",
    "RedisServerNotFound",
    "Timeline",
    "ZooOptions",
    "cursor_page",
    "json_response",
]
