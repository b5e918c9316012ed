"""async_jobs: an async-first client for watching remote long-running jobs.

Zoo async operations, Zoo org dataset conversions and Metafold project jobs/workflows, with
one poller (:func:`wait_until_terminal`, :func:`watch`) for all of them.
"""

from . import events
from ._api import JobApi, JobKind
from ._client import ApiClient, ClientOptions, ClientSettings
from ._errors import (
    ApiError,
    AsyncJobsError,
    AuthenticationError,
    BadRequestError,
    ConditionNotMet,
    DecodeError,
    JobFailed,
    NotFoundError,
    PollStalled,
    RateLimitedError,
    ServerError,
    TransportError,
    WaitTimeout,
)
from ._http import ErrorDecoder, ErrorDetails, StaticTokenAuth, api_path
from ._paging import Page, iter_items
from ._policy import DEFAULT_POLL, PollPolicy, RetryPolicy, next_delay
from ._poll import ActiveListing, Job, JobRef, wait_all, wait_until, wait_until_terminal, watch
from ._version import __version__
from ._watcher import Watcher
from .events import add_listener
from .metafold import MetafoldClient, MetafoldQuery, wait_for_workflow_jobs
from .metafold import Not as MetafoldNot
from .metafold import q as metafold_q
from .models._builtins import to_builtins
from .models._state import TERMINAL_STATES, JobModel, JobState, StateTable
from .models.metafold import MetafoldAsset, MetafoldIO, MetafoldJob, MetafoldWorkflow
from .models.zoo import AsyncOperation, DatasetConversion, DatasetSnapshotImage, DatasetStats
from .zoo import ZooClient

__all__ = [
    "ActiveListing",
    "ApiClient",
    "ApiError",
    "AsyncJobsError",
    "AsyncOperation",
    "AuthenticationError",
    "BadRequestError",
    "ClientOptions",
    "ClientSettings",
    "ConditionNotMet",
    "DEFAULT_POLL",
    "DatasetConversion",
    "DatasetSnapshotImage",
    "DatasetStats",
    "DecodeError",
    "ErrorDecoder",
    "ErrorDetails",
    "Job",
    "JobApi",
    "JobFailed",
    "JobKind",
    "JobModel",
    "JobRef",
    "JobState",
    "MetafoldAsset",
    "MetafoldClient",
    "MetafoldIO",
    "MetafoldJob",
    "MetafoldNot",
    "MetafoldQuery",
    "MetafoldWorkflow",
    "NotFoundError",
    "Page",
    "PollPolicy",
    "PollStalled",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "StateTable",
    "StaticTokenAuth",
    "TERMINAL_STATES",
    "TransportError",
    "WaitTimeout",
    "Watcher",
    "ZooClient",
    "__version__",
    "add_listener",
    "api_path",
    "events",
    "iter_items",
    "metafold_q",
    "next_delay",
    "to_builtins",
    "wait_all",
    "wait_for_workflow_jobs",
    "wait_until",
    "wait_until_terminal",
    "watch",
]
