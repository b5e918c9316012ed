"""Your own job API in async_jobs: a Replicate-style predictions API, end to end.

Part 1 is what a client needs: the model with its state table, the job kind (path and
active listing), the error body, and a small client. Part 2 is its fake, a FakeApiServer
plugin, so the same code runs in tests with no network. ``main()`` waits on one prediction,
watches 200 through a Watcher that lists them in a few requests instead of polling each, and
resumes one from a token, all against the fake. Run it with ``python examples/custom_api.py``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import anyio
import msgspec
from aiohttp import web

import async_jobs as aj
from async_jobs.testing import (
    CreationTimes,
    FakeApi,
    FakeClock,
    FakeServer,
    InvalidCursor,
    Timeline,
    cursor_page,
    json_response,
)

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


# -- part 2: its fake, a FakeServer plugin ------------------------------------------------------

_DONE = ("succeeded", "failed", "canceled")


class FakePredictions(FakeApi):
    """The predictions API as a fake: each prediction walks a scripted timeline on the
    server's clock; the listing is newest first, in cursor pages; errors are Replicate's."""

    name = "predictions"
    prefixes = ("/v1/predictions",)
    page_size = 100

    def __init__(self) -> None:
        super().__init__()
        self.timelines: dict[str, Timeline[str]] = {}
        self.created: dict[str, datetime] = {}
        self._times = CreationTimes()
        self.errors: dict[str, str] = {}

    def add(self, script: list[tuple[str, float | None]], *, error: str | None = None) -> str:
        """A new prediction walking ``script`` ((status, seconds) pairs, None: for good)."""
        prediction_id = uuid.uuid4().hex
        self.timelines[prediction_id] = Timeline.script(self.clock.now(), script)
        self.created[prediction_id] = self._times.next(self.clock)[1]
        if error is not None:
            self.errors[prediction_id] = error
        return prediction_id

    def body(self, prediction_id: str) -> dict[str, Any]:
        moment = self.timelines[prediction_id].at(
            self.clock.now(), started=lambda s: s != "starting", finished=lambda s: s in _DONE
        )
        failed = moment.state == "failed"
        return {
            "id": prediction_id,
            "model": "acme/upscaler",
            "status": moment.state,
            "error": self.errors.get(prediction_id) if failed else None,
            "created_at": self.created[prediction_id],
            "completed_at": None if moment.finished is None else self.clock.wall(moment.finished),
        }

    def error(self, path: str, status: int, message: str, code: str | None = None) -> web.Response:
        return json_response(
            {"title": code or "error", "detail": message, "status": status}, status=status
        )

    async def get(self, request: web.Request) -> web.Response:
        prediction_id = request.match_info["id"]
        if prediction_id not in self.timelines:
            return self.error(
                request.path, 404, "The requested resource could not be found.", "Not found"
            )
        return json_response(self.body(prediction_id))

    async def listing(self, request: web.Request) -> web.Response:
        newest = sorted(self.timelines, key=self.created.__getitem__, reverse=True)
        try:
            page = cursor_page(newest, self.page_size, request.query.get("cursor"))
        except InvalidCursor:
            return self.error(request.path, 400, "Invalid cursor.", "Bad request")
        following = None
        if page.next_cursor is not None:
            following = str(request.url.with_query({"cursor": page.next_cursor}))
        results = [self.body(prediction_id) for prediction_id in page.items]
        return json_response({"results": results, "next": following})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/predictions", self.listing)
        app.router.add_get("/v1/predictions/{id}", self.get)


# -- the tour ---------------------------------------------------------------------------------

FAST = aj.PollPolicy(initial=0.05, maximum=0.2, jitter=0.0)


async def main() -> None:
    """Wait on one prediction, watch 200 through one Watcher, resume one from a token."""
    fake = FakePredictions()
    async with FakeServer(apis=[fake], clock=FakeClock(speed=20)) as server:
        async with PredictionsClient(server.token, server.url, poll=FAST) as client:
            # 1. One prediction, start to finish.
            one = fake.add([("starting", 1), ("processing", 4), ("succeeded", None)])
            done = await aj.wait_until_terminal(client.prediction(one), timeout=60)
            print(f"one prediction: {done.status}, progress {done.progress}")

            # 2. 200 predictions through a Watcher that lists them instead of polling each.
            ids = [
                fake.add(
                    [("starting", 1 + i % 3), ("processing", 2 + i % 5), (final, None)],
                    error="out of memory",
                )
                for i, final in enumerate(["succeeded"] * 180 + ["failed"] * 20)
            ]
            before = len(server.requests)
            async with aj.Watcher(client, poll=FAST) as watcher:
                for prediction_id in ids:
                    watcher.add(client.prediction(prediction_id))
                results = await watcher.wait_all(timeout=60)
            sent = server.requests[before:]
            sweeps = sum(1 for request in sent if request.path == "/v1/predictions")
            by_status = dict(Counter(result.status for result in results))
            # A sweep lists every active prediction in a few pages; a prediction that left the
            # listing is fetched once, to read how it ended.
            print(
                f"200 predictions: {by_status}, {sweeps} listing pages + {len(sent) - sweeps} GETs"
            )

            # 3. A token survives a restart: the ids and the kind, never a credential.
            token = client.prediction(ids[0]).to_token()
        async with PredictionsClient(server.token, server.url, poll=FAST) as restarted:
            ref = aj.JobRef.from_token(token, restarted)
            resumed = await aj.wait_until_terminal(ref, timeout=60)
            print(f"resumed {ref.kind}: {resumed.status}")


if __name__ == "__main__":
    anyio.run(main)
