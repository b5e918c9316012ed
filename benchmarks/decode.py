"""Benchmark 1, decode: one 100-item page body into typed objects, no network.

Three bodies (benchmarks/_bodies.py): Zoo async operations as ``GET /async/operations/{id}``
returns them (mostly text-to-CAD with a few KB of KCL and its base64 outputs), dataset
conversions as ``GET .../conversions/{id}`` returns them (raw and salon KCL, two snapshot
images per stage) and conversion summaries as the list endpoint sends them. Decoders:

- async_jobs: ``msgspec.json.Decoder(aj.Page[aj.AsyncOperation])`` (built once, as the
  library does) on the raw bytes;
- kittycad, as the SDK does it: ``json.loads`` then ``Model.model_validate(data,
  extra="ignore")`` (the summary page with the SDK's own page model; kittycad has no page
  model for the other two, so each item is validated as its single-GET response would be);
- kittycad ``model_validate_json`` (pydantic's own JSON parser: not what the SDK does, shown
  as pydantic's best case);
- stdlib ``json.loads`` to dicts (no types at all).

Ops/s = pages decoded per second, median (min-max) over interleaved repeats after warm-up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

import async_jobs as aj

from ._bodies import decode_bodies
from ._common import cell, stats

NAME = "decode"
ROWS = ("async_jobs", "kittycad (SDK way)", "kittycad model_validate_json", "json.loads")
TARGET = 4.0


def _decoders() -> dict[str, dict[str, Callable[[bytes], int]]]:
    """body name -> row -> a function decoding that body and returning its item count."""
    from kittycad.models.async_api_call_output import AsyncApiCallOutput
    from kittycad.models.org_dataset_file_conversion_details import (
        OrgDatasetFileConversionDetails,
    )
    from kittycad.models.org_dataset_file_conversion_summary_results_page import (
        OrgDatasetFileConversionSummaryResultsPage,
    )
    from pydantic import BaseModel, ConfigDict

    class _Page(BaseModel):
        model_config = ConfigDict(extra="ignore")
        next_page: str | None = None

    class OperationsPage(_Page):
        items: list[AsyncApiCallOutput]

    class DetailsPage(_Page):
        items: list[OrgDatasetFileConversionDetails]

    ops = msgspec.json.Decoder(aj.Page[aj.AsyncOperation])
    convs = msgspec.json.Decoder(aj.Page[aj.DatasetConversion])

    def sdk_items(model: Any) -> Callable[[bytes], int]:
        def decode(body: bytes) -> int:
            data = json.loads(body)
            return len([model.model_validate(item, extra="ignore") for item in data["items"]])

        return decode

    def sdk_page(body: bytes) -> int:
        page = OrgDatasetFileConversionSummaryResultsPage.model_validate(
            json.loads(body), extra="ignore"
        )
        return len(page.items)

    def stdlib(body: bytes) -> int:
        return len(json.loads(body)["items"])

    return {
        "operations": {
            "async_jobs": lambda body: len(ops.decode(body).items),
            "kittycad (SDK way)": sdk_items(AsyncApiCallOutput),
            "kittycad model_validate_json": lambda b: len(
                OperationsPage.model_validate_json(b).items
            ),
            "json.loads": stdlib,
        },
        "conversions": {
            "async_jobs": lambda body: len(convs.decode(body).items),
            "kittycad (SDK way)": sdk_items(OrgDatasetFileConversionDetails),
            "kittycad model_validate_json": lambda b: len(DetailsPage.model_validate_json(b).items),
            "json.loads": stdlib,
        },
        "conversion summaries": {
            "async_jobs": lambda body: len(convs.decode(body).items),
            "kittycad (SDK way)": sdk_page,
            "kittycad model_validate_json": lambda b: len(
                OrgDatasetFileConversionSummaryResultsPage.model_validate_json(b).items
            ),
            "json.loads": stdlib,
        },
    }


def _time(decode: Callable[[bytes], int], body: bytes, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        decode(body)
    return time.perf_counter() - start


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    items = int(cfg["items"])
    bodies = decode_bodies(items)
    decoders = _decoders()
    results: dict[str, Any] = {"items": items, "repeats": cfg["repeats"], "bodies": {}}
    for name, body in bodies.items():
        rows = decoders[name]
        for row, decode in rows.items():  # every decoder reads the whole body, typed
            got = decode(body)
            if got != items:
                raise AssertionError(f"{row} decoded {got} items of {name}, not {items}")
        # Warm-up, and loops sized so one timed batch takes about cfg["batch_s"].
        loops = {}
        for row, decode in rows.items():
            once = max(_time(decode, body, 3) / 3, 1e-6)
            loops[row] = max(int(cfg["batch_s"] / once), 1)
        samples: dict[str, list[float]] = {row: [] for row in rows}
        order = list(rows)
        for repeat in range(int(cfg["repeats"])):
            shift = repeat % len(order)
            for row in order[shift:] + order[:shift]:
                elapsed = _time(rows[row], body, loops[row])
                samples[row].append(loops[row] / elapsed)
        results["bodies"][name] = {"bytes": len(body), "loops": loops, "ops_per_s": samples}
    return results


def _median(values: list[float]) -> float:
    return stats(values)["median"]


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, body in results["bodies"].items():
        ops = body["ops_per_s"]
        ratio = _median(ops["async_jobs"]) / _median(ops["kittycad (SDK way)"])
        out.append(
            {
                "benchmark": NAME,
                "what": f"decode {name}: async_jobs vs kittycad models",
                "target": f">= {TARGET:g}x",
                "value": f"{ratio:.1f}x",
                "met": ratio >= TARGET,
            }
        )
    return out


def render(results: dict[str, Any]) -> str:
    lines = [
        "## decode: a 100-item page into typed objects",
        "",
        f"One page of {results['items']} items, decoded in a loop in one process (no network); "
        f"pages per second, median (min\u2013max) of {results['repeats']} interleaved repeats "
        "after a warm-up. The kittycad row is what the SDK does (`json.loads`, then "
        '`model_validate(..., extra="ignore")`: the page model for the summary page, each '
        "item's single-GET model for the other two, as kittycad has no page model for them); "
        "`model_validate_json` (pydantic's own parser, not what the SDK calls) is shown as "
        "pydantic's best case. kittycad's models also base64-decode the outputs and snapshot "
        "images on validation; async_jobs keeps them as text until `.data` is read.",
        "",
        "| body | size | async_jobs | kittycad (SDK way) | kittycad model_validate_json "
        "| json.loads | vs kittycad | vs json.loads |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, body in results["bodies"].items():
        ops = body["ops_per_s"]
        aj_ops = _median(ops["async_jobs"])
        lines.append(
            f"| {name} | {body['bytes'] / 1024:,.0f} KiB | {cell(ops['async_jobs'])} | "
            f"{cell(ops['kittycad (SDK way)'])} | {cell(ops['kittycad model_validate_json'])} | "
            f"{cell(ops['json.loads'])} | "
            f"**{aj_ops / _median(ops['kittycad (SDK way)']):.1f}x** | "
            f"{aj_ops / _median(ops['json.loads']):.1f}x |"
        )
    return "\n".join(lines)
