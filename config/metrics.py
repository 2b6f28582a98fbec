"""Prometheus metrics: one registry every room records into, exposed at ``/metrics``.

The metrics live at the bottom floor beside logging, so the actors, the agent client, the
store and the API can each record what they see without importing one another. Recording is
a counter increment or a histogram observation (a lock and an add); nothing here does I/O.
Gauges that describe the database (releases by status) are refreshed by the ``/metrics``
handler just before it renders, with one store call per scrape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY: Final = CollectorRegistry(auto_describe=True)
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Agent calls take milliseconds on a LAN and up to the request timeout (60 s) when an agent
# is in trouble; applies take seconds to the node deadline (600 s).
_CALL_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_APPLY_BUCKETS: Final = (0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600)
_STORE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30)
_API_BUCKETS: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)

RELEASES: Final = Gauge(
    "fleetwave_releases",
    "Releases in the database by status, read when the metrics are scraped.",
    ["status"],
    registry=REGISTRY,
)
RELEASES_FINISHED: Final = Counter(
    "fleetwave_releases_finished",
    "Releases this daemon ended, by final status.",
    ["status"],
    registry=REGISTRY,
)
NODES_FINISHED: Final = Counter(
    "fleetwave_nodes_finished",
    "Node runs this daemon ended, by outcome and, for failures, the kind of error.",
    ["outcome", "kind"],
    registry=REGISTRY,
)
AGENT_ERRORS: Final = Counter(
    "fleetwave_agent_errors",
    "Agent requests that failed, by operation and kind of error.",
    ["operation", "kind"],
    registry=REGISTRY,
)
AGENT_LATENCY: Final = Histogram(
    "fleetwave_agent_request_seconds",
    "Time of one agent request (dispatch or status query), answered or not; its _count is the"
    " number of requests.",
    ["operation"],
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
APPLY_TIME: Final = Histogram(
    "fleetwave_node_apply_seconds",
    "From a node's dispatch to its agent reporting success or failure, as this daemon saw it.",
    buckets=_APPLY_BUCKETS,
    registry=REGISTRY,
)
CLAIMS: Final = Counter("fleetwave_claims", "Releases this daemon claimed.", registry=REGISTRY)
TAKEOVERS: Final = Counter(
    "fleetwave_takeovers",
    "Claims of a release some daemon had run before (its lease expired or was handed back).",
    registry=REGISTRY,
)
LEASE_LOSSES: Final = Counter(
    "fleetwave_lease_losses",
    "Releases this daemon stopped driving because another one holds their lease now.",
    registry=REGISTRY,
)
CRASHES: Final = Counter(
    "fleetwave_release_crashes",
    "ReleaseActors that ended with an unexpected error.",
    registry=REGISTRY,
)
STORE_OPERATIONS: Final = Counter(
    "fleetwave_store_operations",
    "Store operations, by name and result (ok, error, unavailable).",
    ["operation", "result"],
    registry=REGISTRY,
)
STORE_LATENCY: Final = Histogram(
    "fleetwave_store_operation_seconds",
    "Time of one store operation (one transaction), by name.",
    ["operation"],
    buckets=_STORE_BUCKETS,
    registry=REGISTRY,
)
POLL_WATCHING: Final = Gauge(
    "fleetwave_poll_budget_watching",
    "Nodes sharing this daemon's status-query budget now.",
    registry=REGISTRY,
)
POLL_RATE: Final = Gauge(
    "fleetwave_poll_budget_rate",
    "This daemon's status-query budget, in queries a second.",
    registry=REGISTRY,
)
API_REQUESTS: Final = Counter(
    "fleetwave_api_requests",
    "API requests, by route template and HTTP status.",
    ["route", "status"],
    registry=REGISTRY,
)
API_LATENCY: Final = Histogram(
    "fleetwave_api_request_seconds",
    "Time to answer one API request (to the end of a stream for event streams), by route.",
    ["route"],
    buckets=_API_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES: Final = Counter(
    "fleetwave_webhook_deliveries",
    "Webhook delivery attempts of this daemon, by result (delivered, retry, failed).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_LATENCY: Final = Histogram(
    "fleetwave_webhook_delivery_seconds",
    "Time of one webhook delivery attempt, answered or not.",
    buckets=_CALL_BUCKETS,
    registry=REGISTRY,
)
EVENT_FOLLOWERS: Final = Gauge(
    "fleetwave_event_followers",
    "Clients following an event stream of this daemon's API now.",
    registry=REGISTRY,
)


def watch_poll_budget(watching: Callable[[], float], rate: float) -> None:
    """Report the poll budget of the daemon's pacer (read at each scrape)."""
    POLL_WATCHING.set_function(watching)
    POLL_RATE.set(rate)


def exposition() -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(REGISTRY)
