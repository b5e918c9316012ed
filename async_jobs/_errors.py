"""The exception tree of async_jobs.

Every exception the library raises on purpose derives from :class:`AsyncJobsError`::

    AsyncJobsError
    ├── ApiError                  the server answered with a non-2xx status
    │   ├── BadRequestError       400
    │   ├── AuthenticationError   401, 403
    │   ├── NotFoundError         404
    │   ├── RateLimitedError      429 (after retries), carries .retry_after
    │   └── ServerError           5xx (after retries)
    ├── TransportError            connection failure or timeout (after retries)
    ├── DecodeError               a body that is not what the API promises
    ├── WaitTimeout               a wait ran past its deadline (also a TimeoutError)
    ├── PollStalled               no poll of a job succeeded for its stall_timeout
    ├── JobFailed                 the job ended FAILED or CANCELED and the caller asked to raise
    └── ConditionNotMet           the job turned terminal without meeting wait_until's condition

No message, ``repr()`` or attribute of these exceptions contains a bearer token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    #: The job type an error carries; Any where the checker cannot tell (``except`` clauses).
    T = TypeVar("T", default=Any)
else:
    from typing import TypeVar

    T = TypeVar("T")

__all__ = [
    "ApiError",
    "AsyncJobsError",
    "AuthenticationError",
    "BadRequestError",
    "ConditionNotMet",
    "DecodeError",
    "JobFailed",
    "NotFoundError",
    "PollStalled",
    "RateLimitedError",
    "ServerError",
    "TransportError",
    "WaitTimeout",
]


class AsyncJobsError(Exception):
    """Base class of every error raised by async_jobs."""


class ApiError(AsyncJobsError):
    """The API answered with an error status.

    ``status`` is the HTTP status, ``code`` the API's own error code or name (if any),
    ``message`` the human-readable message and ``request_id`` the id to quote to the vendor.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.request_id = request_id
        self.method = method
        self.url = url
        super().__init__(self._describe())

    def _describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code:
            parts.append(f"[{self.code}]")
        parts.append(self.message or "(no message)")
        text = " ".join(parts)
        if self.method and self.url:
            text += f" ({self.method} {self.url})"
        if self.request_id:
            text += f" request_id={self.request_id}"
        return text


class BadRequestError(ApiError):
    """HTTP 400: the request was malformed or a parameter was invalid."""


class AuthenticationError(ApiError):
    """HTTP 401 or 403: the token is missing, expired, or lacks permission."""


class NotFoundError(ApiError):
    """HTTP 404: the job (or the endpoint) does not exist for this account."""


class RateLimitedError(ApiError):
    """HTTP 429 that persisted through every retry; ``retry_after`` is the server's hint."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None, **kw: Any):
        self.retry_after = retry_after
        super().__init__(status, message, **kw)


class ServerError(ApiError):
    """HTTP 5xx that persisted through every retry (or was not retryable)."""


class TransportError(AsyncJobsError):
    """The request could not be completed: connection refused or dropped, or a timeout."""


class DecodeError(AsyncJobsError):
    """A response body could not be decoded into the promised shape.

    ``status`` is the HTTP status of the response and ``excerpt`` a short, token-free excerpt
    of the body.
    """

    def __init__(self, message: str, *, status: int | None = None, excerpt: str = "") -> None:
        self.status = status
        self.excerpt = excerpt
        text = message if status is None else f"{message} (HTTP {status})"
        if excerpt:
            text += f": {excerpt!r}"
        super().__init__(text)


class WaitTimeout(AsyncJobsError, TimeoutError, Generic[T]):
    """A wait ran past its deadline; ``last`` is the last job observed (None if never seen;
    for :meth:`Watcher.wait_all`, the list of the jobs still pending)."""

    def __init__(self, message: str, *, last: T | None = None) -> None:
        self.last: T | None = last
        super().__init__(message)


class PollStalled(AsyncJobsError, Generic[T]):
    """No poll of a job (or of its group's listing) succeeded for ``stall_timeout`` seconds.

    ``last`` is the last job observed (None if never seen); ``__cause__`` is the error of the
    last failed attempt."""

    def __init__(self, message: str, *, last: T | None = None) -> None:
        self.last: T | None = last
        super().__init__(message)


class JobFailed(AsyncJobsError, Generic[T]):
    """The job ended FAILED or CANCELED and ``raise_on_failure=True`` was asked; ``job`` is it."""

    def __init__(self, job: T) -> None:
        self.job: T = job
        state = getattr(job, "job_state", None)
        error = getattr(job, "error", None)
        text = f"job {getattr(job, 'id', '?')} ended {getattr(state, 'value', state)}"
        if error:
            text += f": {error}"
        super().__init__(text)


class ConditionNotMet(AsyncJobsError, Generic[T]):
    """The job turned terminal without ever meeting the condition of
    :func:`~async_jobs.wait_until`; ``job`` is the terminal job."""

    def __init__(self, job: T) -> None:
        self.job: T = job
        state = getattr(job, "job_state", None)
        text = (
            f"job {getattr(job, 'id', '?')} ended {getattr(state, 'value', state)} "
            "without meeting the condition"
        )
        error = getattr(job, "error", None)
        if error:
            text += f": {error}"
        super().__init__(text)
