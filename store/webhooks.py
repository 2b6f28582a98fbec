"""Webhook rows: the hooks operators register and the deliveries queued for them.

A delivery is queued in the transaction that appends the event it reports (the trigger of
migration 0007, replaced by 0009's, in PostgreSQL; MemoryStore does the same inside its one
atomic step), so an event is never committed without its deliveries. ``event_kinds`` is the
rule both follow.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import attrs

from fleetwave.store.errors import InvalidInput
from fleetwave.store.models import Event


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Given up after the last attempt."""


WEBHOOK_KINDS: Final = (
    "release.started",
    "release.finished",
    "release.failed",
    "release.paused",
    "release.gate",
    "batch.finished",
    "node.failed",
)
"""What a hook may ask for. release.finished is any end (success, failed, cancelled; the
payload's toStatus says which); release.failed only a failure; release.gate a release that
reached a gate of its strategy and waits for a promote."""

GATE_WAITING: Final = re.compile(r"step [0-9]+: gate: waits for promote")
"""The step event a release writes when it reaches a gate (actors/release.py); migration
0009's trigger matches the same pattern."""

_ENDED: Final = frozenset({"success", "failed", "cancelled"})


def event_kinds(event: Event, *, batch_done: bool) -> list[str]:
    """The webhook kinds ``event`` is, in WEBHOOK_KINDS order. ``batch_done``: no node of the
    event's batch is pending or running any more (this event ended the last one)."""
    kinds = []
    if event.node_id is None:
        if event.to_status == "running" and event.from_status == "pending":
            kinds.append("release.started")
        if event.to_status in _ENDED:
            kinds.append("release.finished")
        if event.to_status == "failed":
            kinds.append("release.failed")
        if event.to_status == "paused" and event.from_status != "paused":
            kinds.append("release.paused")  # not the owner's lease release while paused
        if event.message is not None and GATE_WAITING.fullmatch(event.message):
            kinds.append("release.gate")
        return kinds
    if event.from_status == "running" and event.to_status in _ENDED and batch_done:
        kinds.append("batch.finished")
    if event.to_status == "failed":
        kinds.append("node.failed")
    return kinds


def idempotency_key(webhook_id: int, event_id: int, kind: str) -> str:
    return f"fleetwave-{webhook_id}-{event_id}-{kind}"


@attrs.frozen
class WebhookSpec:
    url: str
    events: tuple[str, ...]
    secret: str
    description: str = ""


@attrs.frozen
class Webhook:
    id: int
    url: str
    events: tuple[str, ...]
    description: str
    created_at: datetime

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Webhook:
        return cls(
            id=record["id"],
            url=record["url"],
            events=tuple(record["events"]),
            description=record["description"],
            created_at=record["created_at"],
        )


@attrs.frozen
class Delivery:
    """One queued delivery and how it went so far."""

    id: int
    webhook_id: int
    event_id: int
    kind: str
    payload: Mapping[str, Any]
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.webhook_id, self.event_id, self.kind)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Delivery:
        return cls(
            id=record["id"],
            webhook_id=record["webhook_id"],
            event_id=record["event_id"],
            kind=record["kind"],
            # asyncpg hands jsonb over as text.
            payload=_payload(record["payload"]),
            status=DeliveryStatus(record["status"]),
            attempts=record["attempts"],
            next_attempt_at=record["next_attempt_at"],
            last_status=record["last_status"],
            last_error=record["last_error"],
            delivered_at=record["delivered_at"],
            created_at=record["created_at"],
        )


def _payload(value: object) -> Mapping[str, Any]:
    loaded = json.loads(value) if isinstance(value, str | bytes) else value
    if not isinstance(loaded, Mapping):
        raise ValueError(f"a delivery's payload must be a JSON object, got {type(loaded).__name__}")
    return loaded


@attrs.frozen
class DueDelivery:
    """A delivery taken by one daemon for one attempt, with where and how to send it."""

    delivery: Delivery
    url: str
    secret: str


URL_MAX: Final = 2048
SECRET_MIN: Final = 16


def check_webhook_spec(spec: WebhookSpec) -> None:
    """InvalidInput naming what is wrong with a hook to register (both stores call this)."""
    parsed = urlsplit(spec.url)
    if len(spec.url) > URL_MAX:
        raise InvalidInput(f"url must be at most {URL_MAX} characters")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidInput(f"url must be an http:// or https:// URL with a host, got {spec.url!r}")
    if parsed.username or parsed.password:
        raise InvalidInput("url must not carry credentials; deliveries are signed instead")
    if not spec.events:
        raise InvalidInput(f"events must name at least one of {', '.join(WEBHOOK_KINDS)}")
    unknown = [kind for kind in spec.events if kind not in WEBHOOK_KINDS]
    if unknown:
        raise InvalidInput(
            f"events: unknown kind {unknown[0]!r} (known: {', '.join(WEBHOOK_KINDS)})"
        )
    if len(set(spec.events)) != len(spec.events):
        raise InvalidInput("events must not repeat a kind")
    if len(spec.secret) < SECRET_MIN:
        raise InvalidInput(f"secret must be at least {SECRET_MIN} characters")
