"""Your own job API in async_jobs: a Replicate-style predictions API, end to end.

Part 1 is what a client needs: the model with its state table, the job kind (path and
active listing), the error body, and a small client. Part 2 is its fake, a FakeApiServer
plugin, so the same code runs in tests with no network. ``main()`` waits on one prediction,
watches 200 through a Watcher that lists them in a few requests instead of polling each, and
resumes one from a token, all against the fake. Run it with ``python examples/custom_api.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec

import async_jobs as aj

# -- part 1: the model, the kind, the client --------------------------------------------------

#: Replicate's prediction statuses as data: the one place that says which are terminal.
PREDICTION_STATES = aj.StateTable(
    "replicate.prediction",
    {
        "starting": aj.JobState.PENDING,
        "processing": aj.JobState.RUNNING,
        "succeeded": aj.JobState.SUCCEEDED,
        "failed": aj.JobState.FAILED,
        "canceled": aj.JobState.CANCELED,
    },
)


class Prediction(aj.JobModel, kw_only=True, frozen=True):
    """``GET /v1/predictions/{id}``: ``job_state``, ``is_terminal`` and ``progress`` come
    from :class:`aj.JobModel` and the state table."""

    state_table: ClassVar[aj.StateTable] = PREDICTION_STATES
    id: str
    status: str
    model: str | None = None
    error: str | None = None
    output: Any = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


class PredictionPage(msgspec.Struct, kw_only=True):
    """``GET /v1/predictions``: newest first, ``next`` is the URL of the next page."""

    results: list[Prediction]
    next: str | None = None


_page_decoder = msgspec.json.Decoder(PredictionPage)


class _ReplicateError(msgspec.Struct):
    title: str | None = None
    detail: str | None = None


_error_decoder = msgspec.json.Decoder(_ReplicateError)


def replicate_error(body: bytes) -> aj.ErrorDetails:
    """A Replicate error body (``{"title", "detail", "status"}``) as ``aj.ErrorDetails``."""
    error = _error_decoder.decode(body)
    return aj.ErrorDetails(message=error.detail, code=error.title)


async def active_predictions(client: PredictionsClient) -> AsyncIterator[Prediction]:
    """Every prediction still under way: one sweep of the listing, page by page."""
    async for prediction in aj.iter_items(client.predictions_page):
        if not prediction.is_terminal:
            yield prediction


#: The kind: a Watcher lists every active prediction with one sweep (group "all").
PREDICTION: aj.JobKind[Prediction] = aj.JobKind(
    "replicate.prediction",
    Prediction,
    "/v1/predictions/{id}",
    group="replicate.predictions",
    list_active=active_predictions,
    label="prediction",
)
PREDICTIONS_API = aj.JobApi("replicate", [PREDICTION], decode_error=replicate_error)


class PredictionsClient(aj.ApiClient):
    """A client of the predictions API: retries, limits, typed errors and events come with
    :class:`aj.ApiClient`; the options are the same as every client's."""

    api = PREDICTIONS_API

    def __init__(self, token: str | None, base_url: str, **settings: Any) -> None:
        super().__init__(base_url=base_url, auth=aj.StaticTokenAuth(token), **settings)

    async def get_prediction(self, prediction_id: str) -> Prediction:
        """``GET /v1/predictions/{id}``."""
        return await self.fetch(PREDICTION, prediction_id)

    def prediction(self, prediction_id: str) -> aj.JobRef[Prediction]:
        """A ref for ``aj.wait_until_terminal``, ``aj.watch`` and a Watcher."""
        return self.ref(PREDICTION, prediction_id)

    async def predictions_page(self, cursor: str | None = None) -> aj.Page[Prediction]:
        """One page of ``GET /v1/predictions`` as an ``aj.Page`` (the cursor of the next
        page read from its ``next`` URL)."""
        page = await self.get_json(
            aj.api_path("v1", "predictions"), _page_decoder, {"cursor": cursor}
        )
        following = parse_qs(urlsplit(page.next).query).get("cursor") if page.next else None
        return aj.Page(items=page.results, next_page=following[0] if following else None)
