"""What the simulated edge nodes serve besides the agent protocol: a per-node error rate, for
a Prometheus to scrape and a Prometheus health check to watch.

One plain-HTTP endpoint for all the nodes of a fleet, on a loopback address only:

- ``GET /metrics``: the Prometheus text format 0.0.4 (prometheus-client's exposition; the
  version every Prometheus 2 reads), one gauge
  ``fleetwave_sim_edge_errors_ratio{node="NAME"}`` per node, the share of its requests
  answered with a 5xx; 0 until told otherwise.
- ``PUT /errors`` with ``{"node": "NAME", "ratio": 0.3}``: that node's ratio from now on (how
  a test or a demo makes one node go bad mid-release); ``GET /errors``: every node's ratio.

The ratio is set from outside rather than drawn from the config a node applied: a test
flips it at the moment it means to, whatever version the node runs, and what is being
tested (the release reacting to a metric) stays separate from what the agents do.
Unauthenticated, hence loopback only: ``check_loopback`` refuses any other address.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from fleetwave.agent.sim import _lifespan, _read_body
from fleetwave.config.api_tls import is_loopback

METRIC = "fleetwave_sim_edge_errors_ratio"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def check_loopback(bind: str) -> str:
    """``bind`` (HOST:PORT) when its host is a loopback address; ValueError naming it."""
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {bind!r}")
    if not is_loopback(bind):
        raise ValueError(
            f"{bind} is not a loopback address: the metrics endpoint has no authentication "
            "and takes commands (127.0.0.0/8 or [::1] only)"
        )
    return bind


class SimMetrics:
    """The error ratio of each of ``names`` and the endpoint that serves them."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("a metrics endpoint needs at least one node")
        self.registry = CollectorRegistry(auto_describe=True)
        self._gauge = Gauge(
            METRIC,
            "Share of the simulated edge node's requests answered with a 5xx (0 to 1).",
            ["node"],
            registry=self.registry,
        )
        self._ratios: dict[str, float] = {}
        for name in names:
            self.set_errors(name, 0.0, new=True)

    def errors(self) -> dict[str, float]:
        return dict(self._ratios)

    def set_errors(self, node: str, ratio: float, *, new: bool = False) -> None:
        """Node ``node`` answers ``ratio`` of its requests with a 5xx from now on."""
        if not new and node not in self._ratios:
            raise KeyError(node)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float):
            raise ValueError(f"ratio must be a number from 0 to 1, got {ratio!r}")
        if not (math.isfinite(ratio) and 0 <= ratio <= 1):
            raise ValueError(f"ratio must be from 0 to 1, got {ratio!r}")
        self._ratios[node] = float(ratio)
        self._gauge.labels(node).set(float(ratio))

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: the metrics and the control endpoint."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await _lifespan(receive, send)
            return
        body = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        if path == "/metrics" and method == "GET":
            await _answer(send, 200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4)
        elif path == "/errors" and method == "GET":
            await _json(send, 200, self.errors())
        elif path == "/errors" and method == "PUT":
            await self._put(send, body)
        elif path in ("/metrics", "/errors"):
            await _json(send, 405, {"error": f"{method} is not allowed on {path}"})
        else:
            await _json(send, 404, {"error": "no such endpoint: GET /metrics, GET|PUT /errors"})

    async def _put(self, send: Send, body: bytes | None) -> None:
        try:
            document = json.loads(body) if body is not None else None
        except (ValueError, RecursionError):
            document = None
        if not isinstance(document, dict) or set(document) != {"node", "ratio"}:
            await _json(send, 400, {"error": 'expected {"node": NAME, "ratio": 0..1}'})
            return
        node, ratio = document["node"], document["ratio"]
        try:
            self.set_errors(str(node), ratio)
        except KeyError:
            await _json(send, 404, {"error": f"no node {str(node)[:100]!r} in this fleet"})
            return
        except ValueError as error:
            await _json(send, 400, {"error": str(error)})
            return
        await _json(send, 200, {"node": node, "ratio": float(ratio)})

    async def serve(
        self, bind: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve on ``bind`` (loopback HOST:PORT, port 0 picks one) until cancelled; reports
        the address bound ("HOST:PORT")."""
        config = HypercornConfig()
        config.bind = [check_loopback(bind)]
        config.accesslog = None
        config.loglevel = "WARNING"
        config.graceful_timeout = 1.0
        app: Any = self.app  # hypercorn types scopes as TypedDicts; the app reads mappings
        async with trio.open_nursery() as nursery:
            [bound] = await nursery.start(partial(hypercorn_serve, app, config, mode="asgi"))
            task_status.started(bound.removeprefix("http://"))


async def _json(send: Send, status: int, document: object) -> None:
    await _answer(send, status, json.dumps(document).encode(), "application/json")


async def _answer(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
