"""Errors nobody planned for still answer in the envelope; every request is logged once."""

from __future__ import annotations

import attrs
import httpx
import structlog

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Node


async def test_unknown_route_is_404_in_the_envelope(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api/v2/everything")

    assert response.status_code == 404
    assert response.json() == {
        "code": 3001,
        "message": "no such endpoint: GET /api/v2/everything",
        "data": None,
    }


async def test_wrong_method_is_405_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/v1/releases")

    assert response.status_code == 405
    assert response.json()["code"] == 2003
    assert response.headers["allow"] == "GET, HEAD, POST"


@attrs.define
class _BrokenStore(MemoryStore):
    async def list_nodes(self) -> list[Node]:
        raise RuntimeError("password=hunter2 in a traceback")

    async def list_releases(self, **kwargs: object) -> tuple[list[object], int]:  # type: ignore[override]
        raise StoreUnavailable("connection reset by peer")


async def _client_of(store: MemoryStore) -> httpx.AsyncClient:
    token = await create_token(store, "t")
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    )


async def test_unexpected_exception_is_500_5001_without_internals_and_logged() -> None:
    async with await _client_of(_BrokenStore()) as client:
        with structlog.testing.capture_logs() as logs:
            response = await client.get("/api/v1/nodes")

    assert response.status_code == 500
    assert response.json() == {"code": 5001, "message": "internal error", "data": None}
    assert "hunter2" not in response.text
    errors = [entry for entry in logs if entry["event"] == "api.unhandled_error"]
    assert len(errors) == 1 and errors[0]["log_level"] == "error"
    [line] = [entry for entry in logs if entry["event"] == "api.request"]
    assert line["status"] == 500


async def test_database_unavailable_is_503_5002() -> None:
    async with await _client_of(_BrokenStore()) as client:
        response = await client.get("/api/v1/releases")

    assert response.status_code == 503
    assert response.json()["code"] == 5002


async def test_each_request_is_logged_once_without_the_token(
    client: httpx.AsyncClient, token: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.get("/api/v1/nodes", params={"x": "1"})

    [line] = [entry for entry in logs if entry["event"] == "api.request"]
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/nodes", 200)
    assert isinstance(line["duration_ms"], float)
    assert line["token_name"] == "tests"
    assert token not in repr(logs)


async def test_a_trailing_slash_is_a_404_in_the_envelope_not_a_redirect(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/releases/")
    assert response.status_code == 404
    assert response.json()["code"] == 3001


async def test_a_hostile_request_path_is_clipped_and_quoted_in_the_log(
    client: httpx.AsyncClient,
) -> None:
    path = "/api/v1/nodes/%0A%7B%22event%22%3A%22forged%22%7D%00" + "x" * 5000
    with structlog.testing.capture_logs() as logs:
        response = await client.get(path)

    assert response.status_code in (400, 404)
    [line] = [entry for entry in logs if entry["event"] == "api.request"]
    assert line["path"].startswith('\'/api/v1/nodes/ {"event":"forged"}\\x00xxx')
    assert line["path"].endswith("…'")
    assert len(line["path"]) < 250
    assert line["path"].isprintable()


async def test_a_body_the_json_parser_refuses_is_a_400_saying_why_in_the_apis_words(
    client: httpx.AsyncClient,
) -> None:
    for raw, problem in [
        ('{"plan": [1' + "0" * 5000 + "]}", "a number of more than 4300 digits"),
        ('{"plan": [NaN]}', "NaN is not a JSON number"),
        ('{"plan": [-Infinity]}', "-Infinity is not a JSON number"),
    ]:
        for method, path in [("POST", "/api/v1/releases"), ("PUT", "/api/v1/scopes/cdn/strategy")]:
            answer = await client.request(method, path, content=raw.encode())
            assert answer.status_code == 400, answer.text
            assert answer.json() == {"code": 2002, "message": f"body: {problem}", "data": None}
