"""Prometheus's instant-query endpoint as a test scripts it, for simulations in virtual time
and for answers no real Prometheus gives (the hostile ones): ``GET|POST /api/v1/query``
answers the status and body the test set, and every query asked is kept.

The shapes (``vector``, ``rejected``) are those Prometheus 2.42 answers; the integration test
(tests/integration/test_health_prometheus.py) runs the real server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs
import httpx

from fleetwave.api.schemas import parse_release_spec
from fleetwave.store.base import Store
from fleetwave.store.models import Release

URL = "http://prometheus.test:9090"
"""Where the in-process server answers (any host does: the transport routes every request)."""


async def create_checked(store: Store, check: Mapping[str, object], **fields: object) -> Release:
    """A release watched by ``check`` (5xx, at most 0.01, failure limit 2 unless it says
    otherwise), created from the API's body with ``fields``."""
    given = check.get("prometheus")
    prometheus = {"max": 0.01, **(given if isinstance(given, Mapping) else {})}
    watched = {"name": "5xx", "failureLimit": 2, **check, "prometheus": prometheus}
    spec = parse_release_spec({"target": "cdn", "healthChecks": [watched], **fields})
    return (await store.create_release(spec)).release


def vector(values: Mapping[str, float], metric: str = "edge_errors_ratio") -> dict[str, Any]:
    """A success answer: one series per node label."""
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"__name__": metric, "node": node}, "value": [1764750000.0, _text(v)]}
                for node, v in values.items()
            ],
        },
    }


def rejected(error: str) -> dict[str, Any]:
    """Prometheus's answer (with HTTP 400) to a query it cannot parse."""
    return {"status": "error", "errorType": "bad_data", "error": error}


def _text(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@attrs.define
class ScriptedPrometheus:
    status: int = 200
    body: bytes = json.dumps(vector({})).encode()
    queries: list[tuple[str, str]] = attrs.field(factory=list)
    """(method, query) of every request, in order."""

    def answer(self, document: object, status: int = 200) -> None:
        self.status, self.body = status, json.dumps(document).encode()

    def transport(self) -> httpx.AsyncBaseTransport:
        return httpx.ASGITransport(app=self.app)

    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] != "/api/v1/query":
            await _send(send, 404, b"404 page not found")
            return
        form = scope["query_string"] if scope["method"] == "GET" else body
        query = parse_qs(form.decode()).get("query", [""])[0]
        self.queries.append((scope["method"], query))
        await _send(send, self.status, self.body)


async def _send(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
