"""The API's webhook shapes: what registering a hook takes, and how hooks and deliveries
are shown. The secret is generated here when not given and shown only in the answer that
registers the hook; it is never listed."""

from __future__ import annotations

import secrets
from typing import Annotated, Final

from pydantic import BeforeValidator, Field

from fleetwave.api import shapes
from fleetwave.api.schemas import timestamp
from fleetwave.api.validation import Body, Text, got, refusal, validated
from fleetwave.store.webhooks import (
    WEBHOOK_KINDS,
    Delivery,
    Webhook,
    WebhookSpec,
)

WEBHOOK_FIELDS: Final = ("url", "events", "secret", "description")
SECRET_BYTES: Final = 32
DELIVERIES_SHOWN: Final = 20


def _kinds(value: object) -> object:
    if not isinstance(value, list) or not all(isinstance(kind, str) for kind in value):
        raise refusal(f"must be a list of event kinds ({', '.join(WEBHOOK_KINDS)}), {got(value)}")
    return value


class WebhookBody(Body):
    """``POST /api/v1/webhooks``: where to send which events. Kinds are checked by the store
    (store/webhooks.py): known, at least one, none twice."""

    url: Annotated[str, Text(2048), Field(description="http or https URL of the receiver")]
    events: Annotated[
        list[str],
        BeforeValidator(_kinds),
        Field(json_schema_extra={"items": {"type": "string", "enum": list(WEBHOOK_KINDS)}}),
    ]
    secret: (
        Annotated[str, Text(256), Field(description="the HMAC-SHA256 key; generated when absent")]
        | None
    ) = None
    description: Annotated[str, Text(1000, blank=True)] | None = None


def parse_webhook_spec(document: object) -> WebhookSpec:
    body = validated(WebhookBody, document)
    return WebhookSpec(
        url=body.url.strip(),
        events=tuple(body.events),
        secret=body.secret
        if body.secret is not None
        else "whsec_" + secrets.token_urlsafe(SECRET_BYTES),
        description=body.description or "",
    )


def webhook_item(hook: Webhook) -> shapes.WebhookItem:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "description": hook.description,
        "createdAt": timestamp(hook.created_at),
    }


def delivery_item(delivery: Delivery) -> shapes.DeliveryItem:
    return {
        "id": delivery.id,
        "eventId": delivery.event_id,
        "kind": delivery.kind,
        "idempotencyKey": delivery.idempotency_key,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "lastStatus": delivery.last_status,
        "lastError": delivery.last_error,
        "nextAttemptAt": timestamp(delivery.next_attempt_at),
        "deliveredAt": timestamp(delivery.delivered_at),
        "createdAt": timestamp(delivery.created_at),
        "payload": dict(delivery.payload),
    }
