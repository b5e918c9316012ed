"""The fake speaks the real wire format: the official kittycad SDK parses what it serves."""

from __future__ import annotations

import kittycad
import pytest

from async_jobs.models.zoo import OPERATION_TYPES
from async_jobs.testing import FakeApiServer

from .conftest import TOKEN

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("op_type", OPERATION_TYPES)
@pytest.mark.parametrize("status", ["queued", "in_progress", "completed", "failed"])
async def test_kittycad_sdk_gets_operations_from_the_fake(
    server: FakeApiServer, op_type: str, status: str
) -> None:
    fake = server.zoo.add_operation(op_type, [(status, None)], error="bad input")
    client = kittycad.AsyncKittyCAD(token=TOKEN, base_url=server.url)
    try:
        output = await client.api_calls.get_async_operation(id=fake.id)
    finally:
        http = client.get_http_client()
        await http.aclose()
    variant = output.root
    assert variant.type == op_type
    assert str(variant.id) == fake.id
    assert variant.status == status  # a str enum
    assert variant.created_at.tzinfo is not None
    if status == "failed":
        assert variant.error == "bad input"
