"""Realistic API bodies for the benchmarks, built deterministically from a seed: KCL sources of
a few KB, base64 snapshot images, Zoo-style timestamps and UUIDs. Every body is one that both
async_jobs and kittycad's models accept (the decode benchmark checks that before timing)."""

from __future__ import annotations

import base64
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

EPOCH = datetime(2025, 3, 1, 9, 0, 0, tzinfo=timezone.utc)
_PNG_HEADER = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00\x01\x00\x08\x06"
_SHAPES = ("circle", "line", "arc", "tangentialArc", "xLine", "yLine", "angledLine")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def kcl_source(rng: random.Random, size: int) -> str:
    """A KCL program of about ``size`` characters (sketches, extrusions, fillets)."""
    lines = [f"// part {rng.randrange(10**6):06d}, generated", "@settings(defaultLengthUnit = mm)"]
    n = 0
    while sum(len(line) + 1 for line in lines) < size:
        n += 1
        shape = rng.choice(_SHAPES)
        lines += [
            f"sketch{n:03d} = startSketchOn(XY)",
            f"  |> startProfile(at = [{rng.uniform(-50, 50):.3f}, {rng.uniform(-50, 50):.3f}])",
            f"  |> {shape}(length = {rng.uniform(1, 80):.3f}, tag = $edge{n:03d})",
            f"  |> line(end = [{rng.uniform(-20, 20):.3f}, {rng.uniform(-20, 20):.3f}])",
            "  |> close()",
            f"solid{n:03d} = extrude(sketch{n:03d}, length = {rng.uniform(2, 40):.2f})",
            f"  |> fillet(radius = {rng.uniform(0.2, 3):.2f}, "
            f"tags = [getNextAdjacentEdge(edge{n:03d})])",
        ]
    return "\n".join(lines) + "\n"


def snapshot_images(rng: random.Random, count: int, size: int) -> list[dict[str, str]]:
    """``count`` PNG-looking snapshot images of ``size`` bytes, base64 (standard alphabet)."""
    return [
        {
            "data_base64": base64.b64encode(_PNG_HEADER + rng.randbytes(size)).decode(),
            "mime_type": "image/png",
        }
        for _ in range(count)
    ]


def _times(rng: random.Random, index: int) -> dict[str, str]:
    created = EPOCH - timedelta(seconds=index * 37 + rng.uniform(0, 5))
    started = created + timedelta(seconds=rng.uniform(0.5, 20))
    completed = started + timedelta(seconds=rng.uniform(5, 600))
    return {
        "created_at": _time(created),
        "started_at": _time(started),
        "completed_at": _time(completed),
        "updated_at": _time(completed),
    }


def operation(rng: random.Random, index: int, kcl_size: int = 3000) -> dict[str, Any]:
    """One completed Zoo async operation as ``GET /async/operations/{id}`` returns it: mostly
    text-to-CAD (KCL code plus its outputs), with file conversions and file volumes."""
    kind = ("text_to_cad", "text_to_cad", "text_to_cad", "file_conversion", "file_volume")[
        index % 5
    ]
    body: dict[str, Any] = {
        "id": _uuid(rng),
        "type": kind,
        "status": "completed",
        "error": None,
        "user_id": _uuid(rng),
        **_times(rng, index),
    }
    if kind == "text_to_cad":
        code = kcl_source(rng, kcl_size)
        body.update(
            code=code,
            conversation_id=_uuid(rng),
            feedback=None,
            kcl_version="0.2.81",
            model="kcl",
            model_version="v1.6.2",
            output_format="step",
            outputs={"main.kcl": base64.urlsafe_b64encode(code.encode()).decode()},
            prompt=f"a {rng.randint(8, 40)}-tooth spur gear with a {rng.randint(3, 12)} mm bore",
        )
    elif kind == "file_conversion":
        mesh = rng.randbytes(kcl_size // 2)
        body.update(
            src_format="obj",
            output_format="stl",
            outputs={"output.stl": base64.urlsafe_b64encode(mesh).decode()},
        )
    else:
        body.update(src_format="step", output_unit="cm3", volume=rng.uniform(1, 5000))
    return body


def conversion_summary(rng: random.Random, index: int, dataset_id: str) -> dict[str, Any]:
    """One successful conversion as ``GET /org/datasets/{id}/conversions`` lists it."""
    name = f"parts/assembly-{index // 40:03d}/part-{index:05d}.step"
    return {
        "id": _uuid(rng),
        "dataset_id": dataset_id,
        "status": "success",
        "phase": "completed",
        "status_message": None,
        "file_path": name,
        "file_etag": f'"{rng.getrandbits(128):032x}"',
        "file_size": rng.randint(20_000, 4_000_000),
        "importer_version": "kcl-importer 0.9.3",
        "manual_kcl_override_active": False,
        "manual_kcl_override_updated_at": None,
        "metadata": {"source": "s3", "part_number": f"PN-{index:06d}", "material": "6061-T6"},
        "raw_kcl_similarity_score": round(rng.uniform(0.8, 1.0), 4),
        "salon_kcl_similarity_score": round(rng.uniform(0.85, 1.0), 4),
        **_times(rng, index),
    }


def conversion_detail(
    rng: random.Random, index: int, dataset_id: str, kcl_size: int = 3000, image_size: int = 1500
) -> dict[str, Any]:
    """One successful conversion as ``GET /org/datasets/{id}/conversions/{cid}`` returns it:
    raw and salon KCL of a few KB and two snapshot images per stage."""
    body = conversion_summary(rng, index, dataset_id)
    salon = kcl_source(rng, kcl_size)
    body.update(
        raw_kcl_output=kcl_source(rng, kcl_size),
        salon_kcl_output=salon,
        output=salon,
        manual_kcl_override=None,
        original_snapshot_images=snapshot_images(rng, 2, image_size),
        raw_kcl_snapshot_images=snapshot_images(rng, 2, image_size),
        salon_kcl_snapshot_images=snapshot_images(rng, 2, image_size),
    )
    return body


def page(items: list[dict[str, Any]], next_page: str | None = "p2") -> bytes:
    """A ``{items, next_page}`` page body."""
    return json.dumps({"items": items, "next_page": next_page}).encode()


def decode_bodies(items: int = 100, seed: int = 7) -> dict[str, bytes]:
    """The decode benchmark's three pages, by name."""
    rng = random.Random(seed)
    dataset = _uuid(rng)
    return {
        "operations": page([operation(rng, i) for i in range(items)]),
        "conversions": page([conversion_detail(rng, i, dataset) for i in range(items)]),
        "conversion summaries": page([conversion_summary(rng, i, dataset) for i in range(items)]),
    }
