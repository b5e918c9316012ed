"""Test helpers: :class:`FakeApiServer`, a real HTTP server on loopback that speaks the
supported APIs with scripted job lifecycles and injectable faults."""

from ._clock import FakeClock
from ._conversions import FakeConversion, FakeConversions
from ._faults import Fault, FaultKind
from ._metafold import FakeMetafold, FakeMetafoldJob, FakeMetafoldWorkflow
from ._redis_server import RedisServer, RedisServerNotFound
from ._server import FakeApiServer, RecordedRequest
from ._zoo import FakeOperation, FakeZoo, ZooOptions

__all__ = [
    "FakeApiServer",
    "FakeClock",
    "FakeConversion",
    "FakeConversions",
    "FakeMetafold",
    "FakeMetafoldJob",
    "FakeMetafoldWorkflow",
    "FakeOperation",
    "FakeZoo",
    "Fault",
    "FaultKind",
    "RecordedRequest",
    "RedisServer",
    "RedisServerNotFound",
    "ZooOptions",
]
