"""The OpenAPI document at /api/v1/openapi.json: valid OpenAPI 3.1, every route of the app
in it with its declared role, and every example in it sent to the live API (a real socket,
a MemoryStore holding the example fleet of api/operations.py), each answer valid against the
document's schema for its status."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import quote

import attrs
import httpx
import jsonschema
import pytest
import trio
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from fleetwave.api.access import Access, DeclaredRoute, viewer
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.events import EventHub
from fleetwave.api.openapi import (
    EVENT_KEY,
    EXAMPLES_KEY,
    ROLE_KEY,
    STATUS_KEY,
    openapi_document,
    undocumented,
)
from fleetwave.api.operations import (
    FAILED,
    PAUSED,
    PENDING,
    SCOPE_DEFAULT,
    SUCCEEDED,
    WEBHOOK,
)
from fleetwave.api.schemas import parse_release_spec
from fleetwave.api.server import serve_api
from fleetwave.api.sse import messages
from fleetwave.api.token_use import TokenUse
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import (
    Actor,
    NodeChange,
    NodeStatus,
    Outcome,
    ReleaseSpec,
    ReleaseStatus,
    Role,
)
from fleetwave.store.selection import NodeSelection
from fleetwave.store.verbs import Verb
from fleetwave.store.webhooks import WebhookSpec

DOCUMENT_URI = "urn:fleetwave:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def served_operations(app: Starlette) -> set[tuple[str, str]]:
    """(method, path) of every route Starlette would dispatch, HEAD aside (it answers as GET
    does); a mount is a GET of anything below it."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
        elif isinstance(route, Mount):
            found.add(("GET", route.path + "/{path}"))
        else:
            raise AssertionError(f"a route of a kind the document does not know: {route!r}")
    return found


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


@pytest.fixture
def full_app() -> Starlette:
    """Every route the daemon's API may serve (metrics included)."""
    return create_app(MemoryStore(), serve_metrics=True)


async def test_the_document_is_valid_openapi_3_1_and_served_without_a_token(
    anonymous: httpx.AsyncClient,
) -> None:
    response = await anonymous.get("/api/v1/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any departure from the OpenAPI 3.1 schema


def test_every_route_is_documented_with_its_methods_and_declared_role(
    full_app: Starlette,
) -> None:
    document = openapi_document(full_app.routes, version="test")

    assert undocumented(full_app.routes) == []
    assert documented_operations(document) == served_operations(full_app)
    roles = {
        (method, route.path): ("public" if needs is None else needs.value)
        for route in full_app.routes
        if isinstance(route, DeclaredRoute)
        for method, needs in route.needs.items()
        if method != "HEAD"
    }
    for (method, path), role in roles.items():
        assert document["paths"][path][method.lower()][ROLE_KEY] == role, (method, path)
    assert document["paths"]["/static/{path}"]["get"][ROLE_KEY] == "public"
    assert document["paths"]["/api/v1/openapi.json"]["get"]["security"] == []
    assert document["paths"]["/api/v1/releases"]["post"]["security"] == [
        {"bearer": []},
        {"session": [], "csrf": []},
    ]


def test_a_route_added_without_documentation_is_found(full_app: Starlette) -> None:
    async def extra(request: Request) -> Response:
        return Response()

    store = MemoryStore()
    access = Access(store, TokenUse(store))
    routes = [*full_app.routes, access.route("/api/v1/extra", GET=viewer(extra))]

    assert undocumented(routes) == ["GET /api/v1/extra"]
    assert "/api/v1/extra" not in openapi_document(routes, version="test")["paths"]


# --- the examples, sent to the live API --------------------------------------------------------


GUARDED = {
    "target": "cdn",
    "reason": "config 4",
    "plan": [1, {"pause": 600}, {"batch": "50%", "maxFailures": 1}, {"pause": None}, "100%"],
    "maxFailurePercent": 10,
    "onFailure": "rollback",
    "healthChecks": [
        {"name": "edge-health", "http": {"url": "https://health.example.net/{release}"}},
        {
            "name": "5xx-ratio",
            "prometheus": {
                "url": "https://prometheus.example.net",
                "query": 'sum(rate(http_5xx{node=~"{nodes}"}[1m]))',
                "max": 0.01,
            },
            "interval": 30,
            "failureLimit": 2,
        },
    ],
    "batchBy": "pop",
    "maxInFlightPer": {"pop": 1, "region": 2},
}
"""The pending release's strategy: every kind of step and check, and the topology fields, as
stored and shown."""


async def example_fleet(store: MemoryStore) -> str:
    """The fleet api/operations.py's examples are written against; the admin token."""
    nodes = [await store.upsert_node(f"edge-{k:03d}", f"10.0.0.{k}", 8443) for k in range(1, 5)]
    for node, region in zip(nodes, ("eu", "eu", "us", "us"), strict=True):
        await store.update_node(node.id, labels={"pop": f"{region}1", "region": region})
    succeeded = await store.create_release(ReleaseSpec(reason="config 1"))
    [claim] = await store.claim("examples", 1, 30)
    rows = await store.release_nodes(claim.release.id)
    done = [NodeChange(row.id, NodeStatus.SUCCESS, started=True, finished=True) for row in rows]
    await store.record(claim.lease, done, Outcome(ReleaseStatus.SUCCESS))
    # Over nodes the paused release leaves alone, so that it can be retried.
    failed = await store.create_release(
        ReleaseSpec(reason="config 2", selection=NodeSelection.by_ids([1, 2]))
    )
    [claim] = await store.claim("examples", 1, 30)
    [canary, *_] = await store.release_nodes(claim.release.id)
    rejected = NodeChange(
        canary.id,
        NodeStatus.FAILED,
        error_msg="agent 10.0.0.1:8443 rejected the config: unknown directive",
        started=True,
        finished=True,
    )
    await store.record(claim.lease, [rejected], Outcome(ReleaseStatus.FAILED, "canary failed"))
    paused = await store.create_release(
        ReleaseSpec(reason="config 3", selection=NodeSelection.by_ids([3, 4]))
    )
    await store.steer(paused.release.id, Verb.PAUSE, by=Actor("ops", Role.OPERATOR), reason="hold")
    pending = await store.create_release(parse_release_spec(GUARDED))
    hook = await store.create_webhook(
        WebhookSpec("https://hooks.example.net/fleetwave", ("release.failed",), "whsec_" + "x" * 20)
    )
    await store.set_scope_strategy("eu", SCOPE_DEFAULT, by=Actor("ops", Role.OPERATOR))
    token = await create_token(store, "tests")
    await create_token(store, "dashboard", role=Role.VIEWER)
    assert [n.id for n in nodes] == [1, 2, 3, 4]
    assert [r.release.id for r in (succeeded, failed, paused, pending)] == [
        SUCCEEDED,
        FAILED,
        PAUSED,
        PENDING,
    ]
    assert hook.id == WEBHOOK
    assert [t.id for t in await store.list_tokens()] == [1, 2]
    return token


@attrs.frozen
class Sent:
    """One example of the document as a request."""

    method: str
    path: str
    name: str
    url: str
    body: object
    status: int
    operation: dict[str, Any] = attrs.field(repr=False)
    values: dict[str, tuple[dict[str, Any], object]] = attrs.field(repr=False)
    """Each parameter's (and the body's) schema and example value."""


def _text(value: object) -> str:
    return json.dumps(value) if isinstance(value, bool) else str(value)


def requests_of(document: dict[str, Any]) -> Iterator[Sent]:
    """Every example of every operation: those of the same name across its parameters and
    its body are one request."""
    for path, item in document["paths"].items():
        for method, operation in item.items():
            parameters = operation.get("parameters", [])
            content = operation.get("requestBody", {}).get("content", {})
            bodies = content.get("application/json", {}).get("examples", {})
            names = {e["name"]: e[STATUS_KEY] for e in operation[EXAMPLES_KEY]}
            assert names, f"{method} {path} has no example"
            for holder in [*(p.get("examples", {}) for p in parameters), bodies]:
                for name, example in holder.items():
                    assert names[name] == example[STATUS_KEY], (method, path, name)
            for name, status in names.items():
                url = path
                query = []
                for parameter in parameters:
                    example = parameter.get("examples", {}).get(name)
                    if parameter["in"] == "path":
                        assert example is not None, (path, name, parameter["name"])
                        url = url.replace(f"{{{parameter['name']}}}", str(example["value"]))
                    elif parameter["in"] == "query" and example is not None:
                        query.append(f"{parameter['name']}={quote(_text(example['value']))}")
                if query:
                    url += "?" + "&".join(query)
                body = bodies[name]["value"] if name in bodies else None
                values = {
                    parameter["name"]: (parameter["schema"], example["value"])
                    for parameter in parameters
                    if (example := parameter.get("examples", {}).get(name)) is not None
                }
                if name in bodies:
                    values["body"] = (content["application/json"]["schema"], body)
                yield Sent(method.upper(), path, name, url, body, status, operation, values)


def registry_of(document: dict[str, Any]) -> Registry[Any]:
    """The document as a JSON Schema resource, for its references."""
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(DOCUMENT_URI, resource)


def request_errors(document: dict[str, Any], sent: Sent) -> list[str]:
    """Where the example's values depart from their parameters' and body's schemas."""
    errors = []
    for name, (schema, value) in sent.values.items():
        resolved = {"$id": "urn:fleetwave:example", "$defs": {}, **schema}
        text = json.dumps(resolved).replace('"#/components/', f'"{DOCUMENT_URI}#/components/')
        validator = jsonschema.Draft202012Validator(
            json.loads(text), registry=registry_of(document)
        )
        errors += [f"{name}: {error.message}" for error in validator.iter_errors(value)]
    return errors


def response_validator(
    document: dict[str, Any], sent: Sent, status: int, media: str, kind: str = "message"
) -> Any:
    """A validator of the answer's body: the document's schema for its status and type (and
    for a stream, the kind of event)."""
    registry = registry_of(document)
    response = sent.operation["responses"][str(status)]
    if "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
        response = document["components"]["responses"][str(status)]
    else:
        escaped = sent.path.replace("~", "~0").replace("/", "~1")
        pointer = f"/paths/{escaped}/{sent.method.lower()}/responses/{status}"
    key = f"{EVENT_KEY}/{kind}" if media == "text/event-stream" else "schema"
    media_pointer = media.replace("~", "~0").replace("/", "~1")
    assert media in response["content"], (sent, media)
    schema = {"$ref": f"{DOCUMENT_URI}#{pointer}/content/{media_pointer}/{key}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


@asynccontextmanager
async def live_api() -> AsyncIterator[tuple[str, str]]:
    """The API on loopback over a fresh example fleet: (base URL, admin token)."""
    store = MemoryStore()
    token = await example_fleet(store)
    hub = EventHub(store, poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        app = create_app(store, events=hub, serve_metrics=True)
        address = await nursery.start(partial(serve_api, app, "127.0.0.1:0"))
        yield f"http://{address}", token
        nursery.cancel_scope.cancel()


STREAMED = 5
"""Events read from the stream of every release, which does not end; a release's is read
to its end."""


async def send(client: httpx.AsyncClient, sent: Sent) -> tuple[int, str, list[tuple[str, object]]]:
    """(status, media type, [(kind, body)]): the JSON answer, or a stream's events up to its
    end (or STREAMED of them)."""
    content = None if sent.body is None else json.dumps(sent.body).encode()
    headers = {} if content is None else {"content-type": "application/json"}
    async with client.stream(sent.method, sent.url, content=content, headers=headers) as answer:
        media = answer.headers.get("content-type", "").split(";")[0]
        if media == "text/event-stream":
            got: list[tuple[str, object]] = []
            async for message in messages(answer.aiter_lines()):
                got.append((message.kind, message.data))
                endless = "{id}" not in sent.path
                if message.kind == "end" or (endless and len(got) == STREAMED):
                    break
            return answer.status_code, media, got
        raw = await answer.aread()
    if media == "application/json":
        return answer.status_code, media, [("answer", json.loads(raw))]
    return answer.status_code, media, [("answer", raw.decode("utf-8", "replace"))]


async def test_every_example_in_the_document_answers_as_documented() -> None:
    async with live_api() as (base, _), httpx.AsyncClient(base_url=base) as client:
        document = (await client.get("/api/v1/openapi.json")).json()
    examples = list(requests_of(document))
    statuses = {sent.status for sent in examples}
    kinds: defaultdict[str, set[str]] = defaultdict(set)
    checked = 0
    for sent in examples:
        if sent.status == 200:  # what the API takes, its schemas take
            assert not request_errors(document, sent), (sent, request_errors(document, sent))
        # Each on a fleet of its own: examples that change it do not meet.
        async with live_api() as (base, token):
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
                with trio.fail_after(30):
                    status, media, bodies = await send(client, sent)
        assert status == sent.status, (sent, status, bodies)
        for kind, body in bodies:
            validator = response_validator(document, sent, status, media, kind)
            errors = [error.message for error in validator.iter_errors(body)]
            assert not errors, (sent, errors[:3], str(body)[:500])
        kinds[media] |= {kind for kind, _ in bodies}
        checked += 1
    print(f"{checked} examples sent, statuses {sorted(statuses)}")
    assert checked == len(examples) >= 50
    assert {200, 400, 404, 409} <= statuses
    assert kinds["text/event-stream"] == {"message", "end"}  # a stream read to its end
