"""The transport's pure pieces: URL building, error mapping, excerpts, base URL checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

import async_jobs as aj
from async_jobs._http import (
    HttpTransport,
    Response,
    StaticTokenAuth,
    api_path,
    build_url,
    check_base_url,
    error_for_response,
    excerpt,
)
from async_jobs._oauth import oauth_error_details
from async_jobs.metafold import metafold_error_details
from async_jobs.zoo import zoo_error_details


def _response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(status, headers or {}, body, "GET", "https://api.example/x")


def test_query_values_are_encoded_byte_for_byte() -> None:
    url = build_url("https://api.zoo.dev/", "/async/operations", {"page_token": "a+b&c=d/=="})
    assert url.raw_query_string == "page_token=a%2Bb%26c%3Dd%2F%3D%3D"
    assert url.query["page_token"] == "a+b&c=d/=="


def test_a_url_without_a_query_is_parsed_once() -> None:
    url = build_url("https://api.zoo.dev/", "/async/operations/x%2Fy")
    assert str(url) == "https://api.zoo.dev/async/operations/x%2Fy"
    assert str(build_url("https://api.zoo.dev/", "/async/operations/x")).endswith("/x")
    for index in range(300):  # more URLs than yarl's own cache keeps (128)
        build_url("https://api.zoo.dev/", f"/async/operations/{index}")
    assert build_url("https://api.zoo.dev/", "/async/operations/x%2Fy") is url
    assert build_url("https://api.zoo.dev/", "/async/operations/x%2Fy", {"a": None}) == url


@given(st.text(min_size=1, max_size=40))
def test_any_query_value_round_trips(value: str) -> None:
    url = build_url("https://h", "/p", {"q": value, "skip": None})
    assert URL(str(url), encoded=True).query.getall("q") == [value]
    assert "skip" not in url.query


def test_path_segments_cannot_add_levels() -> None:
    assert api_path("async", "operations", "../admin") == "/async/operations/..%2Fadmin"
    assert api_path("a", "b/c") == "/a/b%2Fc"
    with pytest.raises(ValueError):
        api_path("async", "")


def test_zoo_error_body_maps_to_typed_error() -> None:
    body = b'{"error_code": "not_found", "message": "no such op", "request_id": "r-1"}'
    error = error_for_response(
        _response(404, body, {"X-Api-Call-Id": "h-1"}),
        decode_error=zoo_error_details,
        request_id_header="X-Api-Call-Id",
    )
    assert isinstance(error, aj.NotFoundError)
    assert (error.status, error.code, error.message, error.request_id) == (
        404,
        "not_found",
        "no such op",
        "r-1",
    )


def test_request_id_falls_back_to_header() -> None:
    response = _response(500, b"oops", {"X-Api-Call-Id": "h-2"})
    error = error_for_response(
        response, decode_error=zoo_error_details, request_id_header="X-Api-Call-Id"
    )
    assert isinstance(error, aj.ServerError)
    assert error.request_id == "h-2"
    assert error.message == "oops"
    assert error_for_response(response).request_id is None  # an API without that header


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            b'{"code": 401, "name": "Unauthorized", "description": "Token has expired"}',
            "Token has expired",
            "Unauthorized",
        ),
        (b'{"msg": "Field is required"}', "Field is required", None),
        (
            b'{"errors": [{"field": "type", "msg": "Field is required"}]}',
            "type: Field is required",
            None,
        ),
    ],
)
def test_metafold_error_bodies(body: bytes, message: str, code: str | None) -> None:
    error = error_for_response(_response(401, body), decode_error=metafold_error_details)
    assert isinstance(error, aj.AuthenticationError)
    assert error.message == message
    assert error.code == code


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, aj.BadRequestError),
        (401, aj.AuthenticationError),
        (403, aj.AuthenticationError),
        (404, aj.NotFoundError),
        (409, aj.ApiError),
        (429, aj.RateLimitedError),
        (500, aj.ServerError),
        (503, aj.ServerError),
    ],
)
def test_status_to_class(status: int, cls: type[aj.ApiError]) -> None:
    error = error_for_response(_response(status, b"<html>nope</html>"))
    assert type(error) is cls
    assert "nope" in error.message


def test_rate_limit_carries_retry_after() -> None:
    error = error_for_response(_response(429, b"{}", {"Retry-After": "7"}))
    assert isinstance(error, aj.RateLimitedError)
    assert error.retry_after == 7.0


def test_secrets_are_masked_everywhere() -> None:
    body = b'{"message": "bad token s3cr3t-token", "request_id": "r"}'
    error = error_for_response(
        _response(401, body), secrets=["s3cr3t-token"], decode_error=zoo_error_details
    )
    assert "s3cr3t-token" not in str(error)
    assert "s3cr3t-token" not in repr(error.message)
    assert excerpt(b"xx s3cr3t-token yy", ["s3cr3t-token"]) == "xx *** yy"


@given(st.binary(max_size=2000))
def test_error_mapping_never_raises(body: bytes) -> None:
    for decode in (zoo_error_details, metafold_error_details, oauth_error_details):
        error = error_for_response(_response(502, body), decode_error=decode)
        assert isinstance(error, aj.ServerError)
    assert len(excerpt(body)) <= 201


def test_base_url_checks() -> None:
    assert check_base_url("https://api.zoo.dev/") == "https://api.zoo.dev"
    assert check_base_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert check_base_url("http://localhost:1") == "http://localhost:1"
    assert check_base_url("http://[::1]:1") == "http://[::1]:1"
    with pytest.raises(ValueError, match="plain http"):
        check_base_url("http://api.example.com")
    assert check_base_url("http://api.example.com", allow_insecure_http=True)
    with pytest.raises(ValueError):
        check_base_url("ftp://api.example.com")


def test_excerpt_is_at_most_200_characters() -> None:
    assert excerpt(b"x" * 200) == "x" * 200
    assert excerpt(b"x" * 201) == "x" * 200 + "…"
    assert excerpt("é".encode() * 1000) == "é" * 200 + "…"


@pytest.mark.parametrize(
    ("decode", "body", "code", "message"),
    [
        (zoo_error_details, b'{"error_code": "bad", "message": "m", "error": "o"}', "bad", "m"),
        (zoo_error_details, b'{"message": ""}', None, '{"message": ""}'),  # the excerpt
        (zoo_error_details, b"", None, "(empty body)"),
        (
            oauth_error_details,
            b'{"error": "invalid_client", "error_description": "d"}',
            "invalid_client",
            "d",
        ),
        (oauth_error_details, b'{"error": {"type": "x"}}', None, '{"error": {"type": "x"}}'),
        (
            metafold_error_details,
            b'{"error": "", "name": "Bad Request", "description": "d"}',
            "Bad Request",
            "d",
        ),
        (
            metafold_error_details,
            b'{"code": 400, "name": "Bad Request", "description": "d"}',
            "Bad Request",
            "d",
        ),
        (metafold_error_details, b'{"code": "E42", "msg": "m"}', "E42", "m"),
        (metafold_error_details, b'{"code": 400, "msg": "m"}', None, "m"),
        (
            metafold_error_details,
            b'{"errors": [{"msg": "Field is required"}]}',
            None,
            "Field is required",
        ),
        (
            metafold_error_details,
            b'{"errors": [{"field": "a", "msg": "x"}, {"msg": "y"}]}',
            None,
            "a: x; y",
        ),
        (metafold_error_details, b'{"description": "d", "msg": "g"}', None, "d"),
        (metafold_error_details, b'{"msg": "g", "errors": [{"msg": "x"}]}', None, "g"),
        (metafold_error_details, b'{"message": "zoo-shaped"}', None, '{"message": "zoo-shaped"}'),
        (aj.JobApi("custom").decode_error, b'{"message": "m"}', None, '{"message": "m"}'),
    ],
)
def test_error_body_precedence(
    decode: aj.ErrorDecoder, body: bytes, code: str | None, message: str
) -> None:
    error = error_for_response(_response(400, body), decode_error=decode)
    assert (error.code, error.message) == (code, message)


def test_transport_refuses_plain_http_by_default() -> None:
    auth = StaticTokenAuth(None)  # no secret: nothing registered that would need unregistering
    with pytest.raises(ValueError, match="plain http"):
        HttpTransport("http://api.example.com", auth=auth)
    insecure = HttpTransport("http://api.example.com", auth=auth, allow_insecure_http=True)
    assert insecure.base_url == "http://api.example.com"
