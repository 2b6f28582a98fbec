"""The delivery service: sends the webhook outbox, signed, retried with backoff.

Every daemon runs one (the Supervisor starts it). Each round it takes the deliveries that
are due with SKIP LOCKED and a lock longer than one attempt can take, so no two daemons send
the same delivery at once, POSTs each to its hook (signed, see webhooks/signing.py), and
records the result: delivered on a 2xx answer; otherwise pending again after an exponential,
jittered backoff, or failed for good after the last attempt. A daemon killed mid-attempt
leaves the lock to expire, and any daemon sends the delivery again: at least once, with the
same idempotency key for the receiver to tell.
"""

from __future__ import annotations

import json
import random
import time
from typing import Final

import attrs
import httpx
import structlog
import trio

from fleetwave.config import Settings, metrics
from fleetwave.store.base import Store
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.webhooks import DueDelivery
from fleetwave.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)

log = structlog.get_logger("fleetwave.webhooks")

BATCH: Final = 64
PARALLEL: Final = 16
RETRY_INITIAL_SEC: Final = 1.0
STORE_RETRY_MAX_SEC: Final = 30.0
USER_AGENT: Final = "fleetwave-webhooks"
_ANSWER_QUOTED: Final = 120


def retry_delay(attempt: int, maximum: float, rng: random.Random) -> float:
    """Wait after failed attempt number ``attempt`` (1-based): doubling from 1 s, capped, with
    ±20 % jitter so that a receiver coming back is not hit by every retry at once."""
    base = min(maximum, RETRY_INITIAL_SEC * 2.0 ** min(attempt - 1, 60))
    return base * (1 + rng.uniform(-0.2, 0.2))


@attrs.define
class DeliveryService:
    store: Store
    http: httpx.AsyncClient
    """Its own client: hooks are ordinary HTTPS endpoints, not agents (no client
    certificate, the system's CAs)."""
    owner: str
    poll_interval: float = 1.0
    timeout: float = 10.0
    attempts: int = 12
    retry_max: float = 3600.0
    rng: random.Random = attrs.field(factory=random.Random)
    delivered: int = 0

    @classmethod
    def from_settings(
        cls, store: Store, http: httpx.AsyncClient, settings: Settings
    ) -> DeliveryService:
        return cls(
            store,
            http,
            settings.daemon_id,
            poll_interval=settings.webhook_poll_sec,
            timeout=settings.webhook_timeout_sec,
            attempts=settings.webhook_attempts,
            retry_max=settings.webhook_retry_max_sec,
        )

    @property
    def lock(self) -> float:
        """How long a taken delivery is this daemon's: one attempt and a margin."""
        return self.timeout * 2 + 5

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        delay = self.poll_interval
        while True:
            try:
                due = await self.store.claim_deliveries(self.owner, BATCH, self.lock)
            except StoreUnavailable as error:
                delay = min(STORE_RETRY_MAX_SEC, max(delay * 2, self.poll_interval))
                log.warning("webhook.claim_failed", error=str(error), retry_in=delay)
                await trio.sleep(delay)
                continue
            delay = self.poll_interval
            if due:
                limiter = trio.CapacityLimiter(PARALLEL)
                async with trio.open_nursery() as nursery:
                    for delivery in due:
                        nursery.start_soon(self._send, delivery, limiter)
            if len(due) < BATCH:
                await trio.sleep(self.poll_interval)

    async def _send(self, due: DueDelivery, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            delivery = due.delivery
            body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
            sent_at = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                EVENT_HEADER: delivery.kind,
                DELIVERY_HEADER: delivery.idempotency_key,
                IDEMPOTENCY_HEADER: delivery.idempotency_key,
                TIMESTAMP_HEADER: str(sent_at),
                SIGNATURE_HEADER: signature(due.secret, sent_at, body),
            }
            status: int | None = None
            error: str | None = None
            started = trio.current_time()
            try:
                with trio.fail_after(self.timeout):
                    response = await self.http.post(due.url, content=body, headers=headers)
                status = response.status_code
                if not response.is_success:
                    answer = " ".join(response.text.split())[:_ANSWER_QUOTED]
                    error = f"HTTP {status}" + (f": {answer}" if answer else "")
            except trio.TooSlowError:
                error = f"no answer within {self.timeout:g}s"
            except httpx.HTTPError as failure:
                error = (
                    f"{type(failure).__name__}: {failure}"
                    if str(failure)
                    else type(failure).__name__
                )
            metrics.WEBHOOK_LATENCY.observe(trio.current_time() - started)
            await self._record(due, status, error)

    async def _record(self, due: DueDelivery, status: int | None, error: str | None) -> None:
        delivery = due.delivery
        retry_in = None
        if error is None:
            result = "delivered"
            self.delivered += 1
        elif delivery.attempts < self.attempts:
            result = "retry"
            retry_in = retry_delay(delivery.attempts, self.retry_max, self.rng)
        else:
            result = "failed"
        metrics.WEBHOOK_DELIVERIES.labels(result).inc()
        level = log.info if error is None else log.warning
        level(
            f"webhook.{result}",
            webhook_id=delivery.webhook_id,
            delivery_id=delivery.id,
            kind=delivery.kind,
            attempt=delivery.attempts,
            status=status,
            error=error,
            retry_in=retry_in,
        )
        try:
            recorded = await self.store.finish_delivery(
                delivery.id,
                self.owner,
                delivered=error is None,
                status=status,
                error=error,
                retry_in=retry_in,
            )
        except StoreUnavailable as failure:
            # The lock expires and the delivery is sent again: at least once.
            log.warning("webhook.record_failed", delivery_id=delivery.id, error=str(failure))
            return
        if not recorded:
            log.warning("webhook.lock_lost", delivery_id=delivery.id)
