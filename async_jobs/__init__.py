"""async_jobs: an async-first client for watching remote long-running jobs.

Zoo async operations, Zoo org dataset conversions and Metafold project jobs/workflows, with
one poller (:func:`wait_until_terminal`, :func:`watch`) for all of them.
"""

from ._errors import (
    ApiError,
    AsyncJobsError,
    AuthenticationError,
    BadRequestError,
    DecodeError,
    JobFailed,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    WaitTimeout,
)
from ._paging import Page
from ._policy import PollPolicy, RetryPolicy, next_delay
from ._poll import Job, JobRef, wait_until_terminal, watch
from ._version import __version__
from .models._state import TERMINAL_STATES, JobState
from .models.zoo import AsyncOperation
from .zoo import ZooClient

__all__ = [
    "ApiError",
    "AsyncJobsError",
    "AsyncOperation",
    "AuthenticationError",
    "BadRequestError",
    "DecodeError",
    "Job",
    "JobFailed",
    "JobRef",
    "JobState",
    "NotFoundError",
    "Page",
    "PollPolicy",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "TERMINAL_STATES",
    "TransportError",
    "WaitTimeout",
    "ZooClient",
    "__version__",
    "next_delay",
    "wait_until_terminal",
    "watch",
]
