"""HealthWatcher: one health check of a release, probed every interval while the
ReleaseActor watches (during a bake, after a batch), reporting over a memory channel. The
HTTP probe is here; a Prometheus check's probe is actors/health_prometheus.py, driven by the
same watcher.

An HTTP check is healthy on a 2xx answer whose JSON object says ``"healthy": true``. Any
other answer, a timeout or a connection error is a failure; its reason (the answer's
``reason`` when it gives one) is kept. ``failure_limit`` consecutive failures make the
check unhealthy: the watcher reports it and ends. A first success is reported too, so a
watch after a batch can end on it.
"""

from __future__ import annotations

import json
import math

import attrs
import httpx
import structlog
import trio

from fleetwave.actors import health_prometheus
from fleetwave.config.quoting import clipped
from fleetwave.store.strategy import HealthCheck

log = structlog.get_logger("fleetwave.health")

REASON_MAX = health_prometheus.REASON_MAX  # one limit for the reasons of every kind of check
ANSWER_MAX = 64 << 10
"""Bytes of an HTTP check's answer read at most (a health page is a small JSON object; more
is read no further, and a failure)."""


@attrs.frozen
class Healthy:
    name: str


@attrs.frozen
class Unhealthy:
    name: str
    reason: str


HealthReport = Healthy | Unhealthy


@attrs.define
class HealthWatcher:
    check: HealthCheck
    url: str
    """The check's URL filled in for this release and batch."""
    http: httpx.AsyncClient
    outbox: trio.MemorySendChannel[HealthReport]
    query: str = ""
    """A Prometheus check's query filled in for this release and batch."""

    async def run(self) -> None:
        with self.outbox:
            failures = 0
            reported = False
            while True:
                reason = await self.probe()
                if reason is None:
                    failures = 0
                    if not reported:
                        reported = True
                        await self.outbox.send(Healthy(self.check.name))
                else:
                    failures += 1
                    log.warning(
                        "health.failed",
                        check=self.check.name,
                        reason=reason,
                        failures=failures,
                        limit=self.check.failure_limit,
                    )
                    if failures >= self.check.failure_limit:
                        await self.outbox.send(Unhealthy(self.check.name, reason))
                        return
                await trio.sleep(self.check.interval)

    async def probe(self) -> str | None:
        """None when healthy, else why not."""
        if self.check.prometheus is not None:
            return await health_prometheus.probe(self.check, self.http, self.url, self.query)
        timeout = self.check.timeout
        answer: tuple[int, bytes | None] | None = None
        with trio.move_on_after(timeout):
            try:
                answer = await _get(self.http, self.url, timeout)
            except httpx.HTTPError as error:
                return clipped(f"request failed: {type(error).__name__}: {error}", REASON_MAX)
        if answer is None:
            return f"no answer within {timeout:g}s"
        status, body = answer
        if body is None:
            return f"HTTP {status}: the answer is larger than {ANSWER_MAX} bytes"
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            document = None
        said = document.get("reason") if isinstance(document, dict) else None
        shown = f": {clipped(said, REASON_MAX)}" if isinstance(said, str) and said.strip() else ""
        if not 200 <= status < 300:
            return f"HTTP {status}{shown}"
        if not isinstance(document, dict):
            return "the answer is not a JSON object"
        if document.get("healthy") is not True:
            if isinstance(said, str) and said.strip():
                return clipped(said, REASON_MAX)
            return 'the answer does not say "healthy": true'
        return None


async def watch(
    checks: tuple[HealthCheck, ...],
    http: httpx.AsyncClient,
    values: dict[str, object],
    *,
    until_healthy: bool,
    deadline: float = math.inf,
) -> Unhealthy | None:
    """Run one HealthWatcher per check until ``deadline`` (a bake's end), or, with
    ``until_healthy``, until each check has passed once; the first unhealthy report ends it."""
    if not checks:
        return None
    send, receive = trio.open_memory_channel[HealthReport](0)
    healthy: set[str] = set()
    result: Unhealthy | None = None
    async with send, receive, trio.open_nursery() as nursery:
        for check in checks:
            watcher = HealthWatcher(
                check, check.url_for(values), http, send.clone(), query=_query(check, values)
            )
            nursery.start_soon(watcher.run)
        with trio.move_on_at(deadline):
            async for report in receive:
                if isinstance(report, Unhealthy):
                    result = report
                    break
                healthy.add(report.name)
                if until_healthy and len(healthy) == len(checks):
                    break
        nursery.cancel_scope.cancel()
    return result


async def _get(http: httpx.AsyncClient, url: str, wait: float) -> tuple[int, bytes | None]:
    """(status, body) of ``GET url``; the body None when it is larger than ANSWER_MAX."""
    async with http.stream("GET", url, timeout=wait) as response:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > ANSWER_MAX:
                return response.status_code, None
        return response.status_code, bytes(body)


def _query(check: HealthCheck, values: dict[str, object]) -> str:
    return "" if check.prometheus is None else check.prometheus.query_for(values)


async def preflight(
    checks: tuple[HealthCheck, ...], http: httpx.AsyncClient, values: dict[str, object]
) -> Unhealthy | None:
    """Ask each Prometheus check's query once, all at once, before a release dispatches
    anything: the first (in the checks' order) that its server rejects, or None. Any other
    problem is left to the watch and its failure limit."""
    rejected: dict[int, str] = {}

    async def ask(index: int, check: HealthCheck) -> None:
        why, other = await health_prometheus.rejection(
            check, http, check.url_for(values), _query(check, values)
        )
        if why is not None:
            rejected[index] = why
        elif other is not None:
            log.warning("health.preflight_inconclusive", check=check.name, reason=other)

    async with trio.open_nursery() as nursery:
        for index, check in enumerate(checks):
            if check.prometheus is not None:
                nursery.start_soon(ask, index, check)
    if not rejected:
        return None
    first = min(rejected)
    return Unhealthy(checks[first].name, rejected[first])
