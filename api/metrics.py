"""``GET /metrics``: the Prometheus exposition of config/metrics.py's registry.

On the API port it needs a token like every other route. With ``FLEETWAVE_METRICS_BIND`` set
it is served on that address instead, by an app of its own without tokens (Prometheus
scrapes it from a private network), and the API port no longer has it.
"""

from __future__ import annotations

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetwave.config import metrics
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import ReleaseStatus

log = structlog.get_logger("fleetwave.api")


async def refresh_release_gauge(store: Store) -> None:
    """Set ``fleetwave_releases{status}`` from the database: one count query per status.

    With the database away the gauge is left empty rather than stale, and everything else is
    still served: that is when the daemon's own figures matter most."""
    try:
        totals = {}
        for status in ReleaseStatus:
            _, totals[status.value] = await store.list_releases(status=status, limit=1)
    except StoreUnavailable as error:
        log.warning("api.metrics_store_unavailable", error=str(error))
        metrics.RELEASES.clear()
        return
    for status_value, total in totals.items():
        metrics.RELEASES.labels(status_value).set(total)


async def metrics_response(store: Store) -> Response:
    await refresh_release_gauge(store)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


def create_metrics_app(store: Store) -> Starlette:
    """The app of the metrics bind: ``/metrics`` only, no token (keep the bind private)."""

    async def scrape(request: Request) -> Response:
        return await metrics_response(store)

    return Starlette(routes=[Route("/metrics", scrape, methods=["GET"])])
