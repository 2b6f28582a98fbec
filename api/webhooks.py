"""The API's webhook shapes: what registering a hook takes, and how hooks and deliveries
are shown. The secret is generated here when not given and shown only in the answer that
registers the hook; it is never listed."""

from __future__ import annotations

import secrets
from typing import Final

from fleetwave.api.schemas import _Fields, _kind, _shown, invalid, timestamp
from fleetwave.store.webhooks import WEBHOOK_KINDS, Delivery, Webhook, WebhookSpec

WEBHOOK_FIELDS: Final = ("url", "events", "secret", "description")
SECRET_BYTES: Final = 32
DELIVERIES_SHOWN: Final = 20


def parse_webhook_spec(document: object) -> WebhookSpec:
    fields = _Fields.of(document, WEBHOOK_FIELDS)
    url = fields.text("url", required=True, empty=False, max_length=2048)
    events = fields.required("events")
    if not isinstance(events, list) or not all(isinstance(kind, str) for kind in events):
        raise invalid(
            "events",
            f"must be a list of event kinds ({', '.join(WEBHOOK_KINDS)}), got "
            f"{_kind(events)} {_shown(events)}",
        )
    secret = fields.text("secret", empty=False, max_length=256)
    description = fields.text("description") or ""
    assert url is not None
    return WebhookSpec(
        url=url.strip(),
        events=tuple(events),
        secret=secret if secret is not None else "whsec_" + secrets.token_urlsafe(SECRET_BYTES),
        description=description,
    )


def webhook_item(hook: Webhook) -> dict[str, object]:
    return {
        "id": hook.id,
        "url": hook.url,
        "events": list(hook.events),
        "description": hook.description,
        "createdAt": timestamp(hook.created_at),
    }


def delivery_item(delivery: Delivery) -> dict[str, object]:
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
