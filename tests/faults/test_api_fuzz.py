"""Property-based fuzzing of every API endpoint.

Hypothesis generates requests: methods right and wrong, paths with odd ids, query strings,
JSON bodies of random shapes, bodies shaped like the real ones with wrong values, bytes that
are not JSON, and Authorization headers valid, missing or wrong. Each example sends a few
requests to ``create_app(store)`` through httpx's ASGI transport, on a store holding nodes and
a release. Every answer: no 5xx; an envelope ``{"code": int, "message": str, "data"}``; a 4xx
carries a documented code for its status (the OpenAPI document is served as it is). On
PostgreSQL, a rejected request leaves every table as it was.

Sizes: FLEETWAVE_FUZZ_REQUESTS (default 2400) requests in all, POSTGRES_SHARE of them on
PostgreSQL; the count sent is asserted.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import pytest
import structlog
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.base import Store
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeHealth, ReleaseSpec, ReleaseStatus
from fleetwave.store.postgres import open_loop_and_store
from tests.integration.conftest import run_sql

FUZZ_REQUESTS = int(os.environ.get("FLEETWAVE_FUZZ_REQUESTS", "2400"))
POSTGRES_SHARE = 0.2
PER_EXAMPLE = 6
MEMORY_REQUESTS = math.ceil(FUZZ_REQUESTS * (1 - POSTGRES_SHARE))
POSTGRES_REQUESTS = FUZZ_REQUESTS - MEMORY_REQUESTS
VALID = "<valid token>"

# The documented codes (docs/api.md) and the HTTP statuses they come with.
DOCUMENTED: dict[int, set[int]] = {
    400: {2001, 2002, 2003},
    401: {1001, 1002},
    403: {1004},
    404: {3001},
    405: {2003},
    409: {3002, 3003},
    413: {2002},
}
TABLES = (
    "nodes",
    "release_tasks",
    "release_task_nodes",
    "release_events",
    "api_tokens",
    "scope_strategies",
)


@attrs.frozen
class FuzzRequest:
    method: str
    path: str
    params: tuple[tuple[str, str], ...]
    authorization: str | None
    content_type: str | None
    body: bytes | None


# --- strategies -----------------------------------------------------------------------------

ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24)
# Every code point, lone surrogates and control characters included, and those drawn often.
HOSTILE_CHARACTERS = ["\x00", "\ud800", "\udfff", "\x1b", "\x7f", "\x85", "\n", "\t", "\u202e"]
any_text = st.text(
    st.characters(exclude_categories=()) | st.sampled_from(HOSTILE_CHARACTERS), max_size=24
)
# Integers spelled with more digits than any bound, up to past int()'s 4,300-digit limit.
huge_digits = st.builds(
    lambda zeros, digits, sign: sign + "0" * zeros + "9" * digits,
    st.sampled_from([0, 0, 4400]),
    st.sampled_from([19, 20, 40, 4300, 5000]),
    st.sampled_from(["", "", "-"]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)

ids = st.one_of(
    st.integers(min_value=1, max_value=4).map(str),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    huge_digits,
    st.sampled_from(
        [
            "0",
            "-1",
            "1.5",
            "1e3",
            " 1",
            "+1",
            "0x10",
            "١٢",
            "null",
            "9223372036854775807",
            "9223372036854775808",
            "%00",
            "..",
            "1;DROP TABLE nodes",
            "%E2%80%AE",
            "",
        ]
    ),
    any_text.map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")),
)

PATHS = [
    "/healthz",
    "/readyz",
    "/api/v1/openapi.json",
    "/api/v1/releases",
    "/api/v1/releases/{id}",
    "/api/v1/releases/{id}/events",
    "/api/v1/nodes",
    "/api/v1/nodes/{id}",
    "/api/v1/scopes",
    "/api/v1/scopes/{scope}/strategy",
]
ALLOWED = {
    "/healthz": ["GET"],
    "/readyz": ["GET"],
    "/api/v1/openapi.json": ["GET"],
    "/api/v1/releases": ["GET", "POST"],
    "/api/v1/releases/{id}": ["GET"],
    "/api/v1/releases/{id}/events": ["GET"],
    "/api/v1/nodes": ["GET", "POST"],
    "/api/v1/nodes/{id}": ["PATCH"],
    "/api/v1/scopes": ["GET"],
    "/api/v1/scopes/{scope}/strategy": ["GET", "PUT", "DELETE"],
}
METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]
ODD_PATHS = st.one_of(
    st.sampled_from(
        [
            "/",
            "/api",
            "/api/v1",
            "/api/v2/releases",
            "/api/v1/releases/1/nodes",
            "//api/v1/releases",
            "/api/v1/releases/",
            "/api/v1//nodes",
            "/API/V1/RELEASES",
        ]
    ),
    any_text.map(lambda text: "/api/v1/" + quote(text.encode("utf-8", "surrogatepass"), safe="/")),
)

query_names = st.one_of(
    st.sampled_from(["status", "page", "pageSize", "afterId", "limit"]), ascii_text
)
query_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    huge_digits,
    st.sampled_from([*(s.value for s in ReleaseStatus), "", "RUNNING", " 1", "1.0", "-0"]),
    any_text,
)
queries = st.lists(st.tuples(query_names, query_values), max_size=4).map(tuple)

plan_steps = st.one_of(
    st.integers(min_value=-3, max_value=300),
    st.from_regex(r"-?[0-9]{1,4}(\.[0-9])?%", fullmatch=True),
    json_scalars,
)
release_bodies = st.fixed_dictionaries(
    {},
    optional={
        "target": st.one_of(st.sampled_from(["cdn", "edge-eu", " "]), json_scalars),
        "reason": st.one_of(st.just("fuzz"), st.text(max_size=1100), json_scalars),
        "plan": st.one_of(st.lists(plan_steps, max_size=5), json_values),
        "maxParallel": st.one_of(st.integers(min_value=-2, max_value=2**40), json_scalars),
        "maxFailures": st.one_of(st.integers(min_value=-2, max_value=2**40), json_scalars),
        "scope": st.one_of(st.sampled_from(["a", "b", ""]), json_scalars),
        "batchSize": json_scalars,
    },
)
node_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.text(min_size=1, max_size=300), json_scalars),
        "mainIp": st.one_of(st.ip_addresses().map(str), any_text, json_scalars),
        "agentPort": st.one_of(st.integers(min_value=-1, max_value=70000), json_scalars),
        "enabled": st.one_of(st.booleans(), json_scalars),
        "status": st.one_of(st.sampled_from(["online", "offline", "ONLINE"]), json_scalars),
        "id": json_scalars,
    },
)
scopes = st.one_of(
    st.sampled_from(["cdn", "a", "b", "eu%2Fwest", "", "%20", "%00", "%0A", "e" * 300]),
    any_text.map(lambda text: quote(text.encode("utf-8", "surrogatepass"), safe="")),
)
strategy_bodies = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.one_of(
            st.lists(
                st.one_of(plan_steps, st.fixed_dictionaries({"pause": json_scalars})), max_size=5
            ),
            json_values,
        ),
        "maxFailures": st.one_of(st.integers(min_value=-2, max_value=2**40), json_scalars),
        "maxFailurePercent": st.one_of(st.floats(min_value=-1, max_value=101), json_scalars),
        "onFailure": st.one_of(st.sampled_from(["stop", "pause", "rollback", "x"]), json_scalars),
        "healthChecks": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.just("edge"), any_text)},
                    optional={
                        "http": st.fixed_dictionaries({"url": any_text}),
                        "interval": json_scalars,
                    },
                ),
                max_size=2,
            ),
            json_values,
        ),
        "target": json_scalars,
    },
)
patch_bodies = st.fixed_dictionaries(
    {},
    optional={
        "status": st.one_of(st.sampled_from(["online", "offline", "maintenance"]), json_scalars),
        "enabled": st.one_of(st.booleans(), json_scalars),
        "name": json_scalars,
    },
)
RAW_BODIES = [
    b"{",
    b"[1,",
    b'{"target": NaN, "reason": "x"}',
    b'{"target": Infinity, "reason": "x"}',
    b"\xff\xfe\x00",
    b'{"target": "cdn", "reason": "x"} trailing',
    b'{"target": "cdn", "target": 5, "reason": "x"}',
    b"   ",
    b"null",
    b'"text"',
    b"[" * 10_000 + b"]" * 10_000,  # nesting deeper than any parser stack
    b'{"reason": "' + b"x" * (1024 * 1024) + b'"}',  # over the 1 MiB limit
    b'{"target": "cdn", "reason": "x", "maxParallel": ' + b"9" * 5000 + b"}",
    b'{"target": "cdn", "reason": "x", "plan": [' + b"9" * 4000 + b"]}",
    b'{"name": "edge-x", "mainIp": "127.0.0.5", "agentPort": -' + b"9" * 4000 + b"}",
    b'{"target": "cdn", "reason": "a\\u0000b"}',
    b'{"target": "\\udc00", "reason": "x"}',
    b'{"name": "\\ud800", "mainIp": "127.0.0.5"}',
    b'{"\\ud800": 1}',
]
bodies = st.one_of(
    st.none(),
    json_values.map(lambda value: json.dumps(value).encode()),
    release_bodies.map(lambda value: json.dumps(value).encode()),
    node_bodies.map(lambda value: json.dumps(value).encode()),
    patch_bodies.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.sampled_from(RAW_BODIES),
)
authorizations = st.one_of(
    st.just(f"Bearer {VALID}"),
    st.none(),
    st.sampled_from(
        [
            "Bearer",
            "Bearer ",
            "Bearer fw_wrong",
            "Basic dXNlcjpwYXNz",
            f"bearer {VALID}",
            f"Bearer {VALID}x",
            VALID,
            f"Bearer  {VALID} extra",
        ]
    ),
    ascii_text,
)
content_types = st.one_of(
    st.none(),
    st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    ascii_text,
)


SHAPED = {
    "/api/v1/releases": release_bodies,
    "/api/v1/nodes": node_bodies,
    "/api/v1/nodes/{id}": patch_bodies,
    "/api/v1/scopes/{scope}/strategy": strategy_bodies,
}


def chance(draw: st.DrawFn, percent: int) -> bool:
    return draw(st.integers(min_value=1, max_value=100)) <= percent


@st.composite
def requests(draw: st.DrawFn) -> FuzzRequest:
    """Mostly well-aimed (allowed method, valid token, a body of the endpoint's shape), so
    that requests get past authentication and routing into validation and the store."""
    body: bytes | None = None
    if chance(draw, 10):
        path, method = draw(ODD_PATHS), draw(st.sampled_from(METHODS))
    else:
        template = draw(st.sampled_from(PATHS))
        allowed = ALLOWED[template]
        method = draw(st.sampled_from(allowed if chance(draw, 80) else METHODS))
        small_id = st.integers(min_value=1, max_value=4).map(str)
        path = template.replace("{id}", draw(small_id if chance(draw, 50) else ids))
        path = path.replace("{scope}", draw(scopes))
        if template in SHAPED and chance(draw, 70):
            body = json.dumps(draw(SHAPED[template])).encode()
    if body is None and (method in ("POST", "PATCH", "PUT") or chance(draw, 20)):
        body = draw(bodies)
    return FuzzRequest(
        method=method,
        path=path,
        params=draw(queries) if chance(draw, 50) else (),
        authorization=f"Bearer {VALID}" if chance(draw, 80) else draw(authorizations),
        content_type=draw(content_types),
        body=body,
    )


batches = st.lists(requests(), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE)


# --- sending and checking -----------------------------------------------------------------


@attrs.define
class Tally:
    sent: int = 0
    statuses: Counter[int] = attrs.field(factory=Counter)
    codes: Counter[int] = attrs.field(factory=Counter)
    compared: int = 0
    """Rejected requests whose database was compared before and after (PostgreSQL)."""
    token: str = ""


async def send(client: httpx.AsyncClient, request: FuzzRequest, token: str) -> httpx.Response:
    headers = {}
    if request.authorization is not None:
        headers["authorization"] = request.authorization.replace(VALID, token)
    if request.content_type is not None:
        headers["content-type"] = request.content_type
    # Percent-encoded by hand: a client cannot UTF-8 encode a lone surrogate, but a broken
    # one sends its bytes anyway.
    query = "&".join(f"{_escaped(name)}={_escaped(value)}" for name, value in request.params)
    return await client.request(
        request.method,
        f"{request.path}?{query}" if query else request.path,
        headers=headers,
        content=request.body,
    )


def _escaped(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _dashboard_file(path: str) -> bool:
    """The dashboard's own page (``/``) and its files (``/static/...``), served to browsers."""
    return path == "/" or path.startswith("/static/")


def check(request: FuzzRequest, response: httpx.Response, tally: Tally) -> None:
    tally.sent += 1
    tally.statuses[response.status_code] += 1
    status = response.status_code
    assert status < 500, (request, status, response.text[:500])
    assert not 300 <= status < 400, (request, status)  # no bare redirects, e.g. a trailing "/"
    if request.method == "HEAD":
        assert response.content == b""
        return
    if _dashboard_file(request.path) and response.headers.get("content-type", "").startswith(
        ("text/", "application/javascript", "image/")
    ):
        return  # the dashboard's page and static files are documents, not API answers
    try:
        answer: Any = response.json()
    except ValueError:
        raise AssertionError((request, status, response.text[:500])) from None
    if request.path == "/api/v1/openapi.json" and status == 200:
        assert answer["openapi"].startswith("3.1"), answer  # the document, for tools as it is
        return
    assert isinstance(answer, dict) and set(answer) == {"code", "message", "data"}, answer
    code, message = answer["code"], answer["message"]
    assert isinstance(code, int) and not isinstance(code, bool), answer
    assert isinstance(message, str) and message, answer
    tally.codes[code] += 1
    if status < 300:
        assert status == 200 and code == 0, answer
    else:
        assert code in DOCUMENTED.get(status, set()), (request, status, answer)
        assert answer["data"] is None, answer


def client_for(store: Store) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(store))
    return httpx.AsyncClient(transport=transport, base_url="http://api.test")


async def seed(store: Store) -> None:
    """Nodes (one offline) and a release with its events, for requests to find."""
    for k in range(1, 4):
        await store.upsert_node(f"edge-{k:03d}", f"127.0.0.{k + 1}", 8443)
    await store.upsert_node("edge-off", "127.0.0.9", 8443, status=NodeHealth.OFFLINE)
    await store.create_release(ReleaseSpec(reason="seeded"))
    # Releases of scope "a" take this default (store/scopes.py).
    await store.set_scope_strategy("a", {"plan": [1, {"pause": 60}, "100%"]})


def run_examples(examples: int, body: Any) -> None:
    settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
        ],
    )(given(batch=batches)(body))()


# --- MemoryStore: most of the requests ------------------------------------------------------


async def exercise_memory(batch: Sequence[FuzzRequest], tally: Tally) -> None:
    store = MemoryStore()
    token = await create_token(store, "fuzz")
    await seed(store)
    with structlog.testing.capture_logs() as logs:
        async with client_for(store) as client:
            for request in batch:
                check(request, await send(client, request, token), tally)
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")], logs


def test_api_fuzz_on_memory_store_answers_every_request_in_the_envelope() -> None:
    tally = Tally()

    def example(batch: list[FuzzRequest]) -> None:
        trio.run(exercise_memory, batch, tally)

    run_examples(math.ceil(MEMORY_REQUESTS / PER_EXAMPLE), example)

    print(f"memory: {tally.sent} requests, statuses {sorted(tally.statuses.items())}")
    assert tally.sent >= MEMORY_REQUESTS
    assert tally.statuses[200] > 0 and tally.statuses[400] > 0 and tally.statuses[401] > 0


# --- PostgreSQL: a rejected request changes nothing -----------------------------------------

SNAPSHOT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), ''))"
    f" FROM {table} t"
    for table in TABLES
)


async def snapshot(url: str) -> str:
    """Every row of every table, as one digest per table."""
    return await run_sql(url, SNAPSHOT)


async def exercise_postgres(url: str, batch: Sequence[FuzzRequest], tally: Tally) -> None:
    async with open_loop_and_store(url, max_size=4) as store:
        if not tally.token:
            tally.token = await create_token(store, "fuzz")
            await seed(store)
        with structlog.testing.capture_logs() as logs:
            async with client_for(store) as client:
                before = await snapshot(url)
                for request in batch:
                    response = await send(client, request, tally.token)
                    check(request, response, tally)
                    after = await snapshot(url)
                    if 400 <= response.status_code < 500:
                        assert after == before, (request, response.text[:300])
                        tally.compared += 1
                    before = after
    assert not [entry for entry in logs if entry["log_level"] in ("error", "critical")], logs


@pytest.mark.postgres
def test_api_fuzz_on_postgres_rejects_bad_input_without_touching_the_database(
    database_url: str,
) -> None:
    tally = Tally()

    def example(batch: list[FuzzRequest]) -> None:
        trio.run(exercise_postgres, database_url, batch, tally)

    run_examples(math.ceil(POSTGRES_REQUESTS / PER_EXAMPLE), example)

    print(
        f"postgres: {tally.sent} requests, {tally.compared} rejected and compared, "
        f"statuses {sorted(tally.statuses.items())}"
    )
    assert tally.sent >= POSTGRES_REQUESTS
    assert tally.compared > 0
