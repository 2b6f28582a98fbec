"""A simulated health endpoint of the fleet, for releases' HTTP health checks.

``HealthEndpoint`` answers ``GET /health`` as an edge fleet's health page would:
``{"healthy": true}`` with 200 while it is healthy; once ``turn_unhealthy(reason)`` is called,
``{"healthy": false, "reason": REASON}`` with 503, until ``turn_healthy()``. The query's
``release`` and ``batch`` (a check URL fills them in: ``/health?release={release}&batch={batch}``)
are kept with every probe it answered, with the time (trio's clock) and what it said: the
latest ``kept`` of them (10,000 unless told), so a demo left running holds no more.

One Starlette application, in two forms like the simulated agents: served on loopback by
hypercorn (``fleetwave demo``), or reached in process through ``httpx.ASGITransport``
(simulations in virtual time).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import attrs
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PATH = "/health"
PROBES_KEPT = 10_000


@attrs.frozen
class Probe:
    """One GET answered: when (trio's clock), for which release and batch, healthy or not."""

    at: float
    release: str | None
    batch: str | None
    healthy: bool


@attrs.define
class HealthEndpoint:
    reason: str | None = None
    """Why it is unhealthy; None while healthy."""
    kept: int = PROBES_KEPT
    probes: deque[Probe] = attrs.field(init=False)
    _answered: trio.Event = attrs.field(factory=trio.Event)

    def __attrs_post_init__(self) -> None:
        self.probes = deque(maxlen=self.kept)

    @property
    def healthy(self) -> bool:
        return self.reason is None

    def turn_unhealthy(self, reason: str) -> None:
        self.reason = reason

    def turn_healthy(self) -> None:
        self.reason = None

    def app(self) -> Starlette:
        return Starlette(routes=[Route(PATH, self._answer, methods=["GET"])])

    def of(self, release: int, batch: int | None = None) -> list[Probe]:
        """The probes answered for ``release`` (and ``batch``, when given)."""
        return [
            probe
            for probe in self.probes
            if probe.release == str(release) and (batch is None or probe.batch == str(batch))
        ]

    async def wait_for(self, condition: Callable[[Sequence[Probe]], bool]) -> None:
        """Return once the probes answered so far satisfy ``condition``. Unbounded: the
        caller sets the deadline."""
        while not condition(self.probes):
            await self._answered.wait()

    async def _answer(self, request: Request) -> JSONResponse:
        reason = self.reason
        self.probes.append(
            Probe(
                at=trio.current_time(),
                release=request.query_params.get("release"),
                batch=request.query_params.get("batch"),
                healthy=reason is None,
            )
        )
        self._answered.set()
        self._answered = trio.Event()
        if reason is None:
            return JSONResponse({"healthy": True})
        return JSONResponse({"healthy": False, "reason": reason}, status_code=503)
