"""Hostile input through the API, on PostgresStore and MemoryStore alike: huge digit strings,
NUL, lone surrogates and control characters in every body field, query and path parameter
get a 400 in the envelope naming the field, and leave the store as it was: later listings
still answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.base import Store

pytestmark = pytest.mark.postgres

DIGITS = "9" * 5000
BAD_TEXT = {
    "nul": "a\x00b",
    "surrogate": "\ud800",
    "escape": "x\x1by",
    "delete": "x\x7f",
}
RELEASE = {"target": "cdn", "reason": "r"}
NODE = {"name": "edge-new", "mainIp": "127.0.0.9"}


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(store, "inputs")
    for k in range(1, 3):
        await store.upsert_node(f"edge-{k}", f"127.0.0.{k + 1}", 8443)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


def body(document: dict[str, object], raw: dict[str, str] | None = None) -> bytes:
    """``document`` as JSON, with ``raw`` members spliced in as already-encoded JSON."""
    text = json.dumps(document)
    for name, encoded in (raw or {}).items():
        text = text[:-1] + f', "{name}": {encoded}' + "}"
    return text.encode()


async def assert_refused(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text[:300]
    answer = response.json()
    assert answer["code"] in (2001, 2002, 2003) and answer["data"] is None
    assert answer["message"].startswith(f"{field}: "), answer["message"]
    assert len(answer["message"]) < 300


async def assert_listings_answer(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/releases", "/api/v1/nodes", "/api/v1/releases/1/events"):
        response = await client.get(path)
        assert response.status_code in (200, 404), (path, response.text[:300])
    nodes = (await client.get("/api/v1/nodes")).json()["data"]["items"]
    assert [node["name"] for node in nodes] == ["edge-1", "edge-2"]
    assert (await client.get("/api/v1/releases")).json()["data"]["total"] == 0


@pytest.mark.parametrize(
    ("path", "document", "field"),
    [
        ("/api/v1/releases", RELEASE, "target"),
        ("/api/v1/releases", RELEASE, "reason"),
        ("/api/v1/releases", RELEASE, "scope"),
        ("/api/v1/nodes", NODE, "name"),
        ("/api/v1/nodes", NODE, "mainIp"),
    ],
)
async def test_unstorable_text_in_a_body_field_is_a_400_naming_it(
    client: httpx.AsyncClient, path: str, document: dict[str, object], field: str
) -> None:
    for value in BAD_TEXT.values():
        # json.dumps writes a lone surrogate as the escape \ud800, as any client would.
        response = await client.post(path, content=body({**document, field: value}))

        await assert_refused(response, field)
        await assert_listings_answer(client)


@pytest.mark.parametrize(
    ("path", "document", "field"),
    [
        ("/api/v1/releases", RELEASE, "maxParallel"),
        ("/api/v1/releases", RELEASE, "maxFailures"),
        ("/api/v1/nodes", NODE, "agentPort"),
    ],
)
async def test_huge_integers_in_a_body_field_are_a_400_naming_it(
    client: httpx.AsyncClient, path: str, document: dict[str, object], field: str
) -> None:
    for digits in ["9" * 40, "9" * 4000, "-" + "9" * 4000]:
        response = await client.post(path, content=body(document, {field: digits}))

        await assert_refused(response, field)
        await assert_listings_answer(client)


async def test_a_number_beyond_the_json_parser_is_a_400_about_the_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/v1/releases", content=body(RELEASE, {"plan": DIGITS}))

    await assert_refused(response, "body")


async def test_hostile_plan_steps_are_a_400_naming_the_plan(client: httpx.AsyncClient) -> None:
    for step in ["9" * 4000, f'"{"9" * 4000}%"', '"5\\u0000%"', '"\\udc00"']:
        plan = f"[{step}]"
        response = await client.post("/api/v1/releases", content=body(RELEASE, {"plan": plan}))

        await assert_refused(response, "plan[0]")  # the step at fault
        await assert_listings_answer(client)


@pytest.mark.parametrize(
    ("field", "encoded"),
    [
        ("nodeIds", "[" + "9" * 30 + "]"),
        ("nodeNames", '["edge-1\\u0000"]'),
        ("nodeNames", '["\\ud800"]'),
    ],
)
async def test_hostile_node_selections_are_a_400_naming_them(
    client: httpx.AsyncClient, field: str, encoded: str
) -> None:
    response = await client.post("/api/v1/releases", content=body(RELEASE, {field: encoded}))

    await assert_refused(response, field)
    await assert_listings_answer(client)


async def test_an_unknown_field_named_with_a_surrogate_is_named_printably(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/api/v1/nodes", content=body(NODE, {"\\ud800\\u0000": "1"}))

    await assert_refused(response, '"\\ud800\\u0000"')


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (f"/api/v1/releases/{DIGITS}", "id"),
        (f"/api/v1/releases/{DIGITS}/events", "id"),
        (f"/api/v1/releases/{'0' * 4999}1", None),
        ("/api/v1/releases/%00", "id"),
        ("/api/v1/releases/%ED%A0%80", "id"),
        ("/api/v1/releases/1%1B", "id"),
    ],
)
async def test_hostile_path_ids_are_a_400_naming_the_id(
    client: httpx.AsyncClient, path: str, field: str | None
) -> None:
    response = await client.get(path)

    if field is None:  # 5,000 digits that spell 1: a real id, of a release not there
        assert (response.status_code, response.json()["code"]) == (404, 3001)
    else:
        await assert_refused(response, field)
        node_path = path.replace("releases", "nodes").removesuffix("/events")
        patched = await client.patch(node_path, json={"enabled": False})
        await assert_refused(patched, field)
    await assert_listings_answer(client)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/v1/releases", "page"),
        ("/api/v1/releases", "pageSize"),
        ("/api/v1/releases/1/events", "afterId"),
        ("/api/v1/releases/1/events", "limit"),
        ("/api/v1/releases", "status"),
    ],
)
async def test_hostile_query_parameters_are_a_400_naming_them(
    client: httpx.AsyncClient, path: str, name: str
) -> None:
    for value in [DIGITS, "-" + DIGITS, "1\x00", "\udfff", "\x1b[2J", "1\x7f"]:
        # A surrogate cannot be UTF-8 encoded by a client; its bytes are sent as a broken one
        # would send them, and the server decodes them to replacement characters.
        raw = quote(value.encode("utf-8", "surrogatepass"), safe="")
        response = await client.get(f"{path}?{name}={raw}")

        if name in ("page", "pageSize") and value.lstrip("-").isdigit():
            # Numbers out of range are clamped, as the original did, rather than refused.
            assert response.status_code == 200, response.text[:300]
            assert 1 <= response.json()["data"]["pageSize"] <= 100
        else:
            await assert_refused(response, name)
        await assert_listings_answer(client)


async def assert_no_scope_defaults(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/scopes")).json()["data"] == {"items": [], "total": 0}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("eu%00", "scope: contains NUL"),
        ("x%1By", "scope: contains a control character"),
        ("x%7F", "scope: contains a control character"),
        ("%C2%85", "scope: contains a control character"),
        ("%20%20", "scope: must not be empty"),
        ("e" * 300, "scope: must be at most 255 characters"),
    ],
)
async def test_hostile_scope_names_in_the_path_are_a_400_naming_the_scope(
    client: httpx.AsyncClient, raw: str, message: str
) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = await client.request(
            method,
            f"/api/v1/scopes/{raw}/strategy",
            json={"plan": [1]} if method == "PUT" else None,
        )
        await assert_refused(response, "scope")
        assert response.json()["message"].startswith(message)
    await assert_no_scope_defaults(client)
    await assert_listings_answer(client)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"plan": [' + DIGITS + "]}", "body"),
        ('{"plan": [1, {"pause": 1e999}, 2]}', "plan[1].pause"),
        ('{"plan": [1, {"pause": 1' + "0" * 400 + "}, 2]}", "plan[1].pause"),
        ('{"maxFailurePercent": 1' + "0" * 400 + "}", "maxFailurePercent"),
        (
            '{"healthChecks": [{"name": "a", "http": {"url": "http://h"}, "interval": 1'
            + "0" * 400
            + "}]}",
            "healthChecks[0].interval",
        ),
        ('{"onFailure": "stop\\u0000"}', "onFailure"),
        (
            '{"healthChecks": [{"name": "\\ud800", "http": {"url": "http://h"}}]}',
            "healthChecks[0].name",
        ),
        (
            '{"healthChecks": [{"name": "a", "http": {"url": "http://h/\\u0000"}}]}',
            "healthChecks[0].http.url",
        ),
        (
            '{"healthChecks": [{"name": "a", "http": {"url": "http://h/\\ud800"}}]}',
            "healthChecks[0].http.url",
        ),
        ('{"\\ud800": 1}', '"\\ud800"'),
    ],
)
async def test_hostile_strategy_fields_of_a_default_are_a_400_naming_them(
    client: httpx.AsyncClient, raw: str, field: str
) -> None:
    response = await client.put("/api/v1/scopes/cdn/strategy", content=raw.encode())

    await assert_refused(response, field)
    await assert_no_scope_defaults(client)
    # The same fields in a release are refused the same way, naming the same field.
    release = raw[:-1] + ', "target": "cdn"}'
    await assert_refused(await client.post("/api/v1/releases", content=release.encode()), field)
    await assert_listings_answer(client)
