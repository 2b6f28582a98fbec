"""Signing webhook deliveries: HMAC-SHA256 over the timestamp and the body.

A delivery carries ``X-Fleetwave-Timestamp`` (Unix seconds) and ``X-Fleetwave-Signature:
v1=<hex>``, the HMAC-SHA256 with the hook's secret of ``"<timestamp>.<body>"``. A receiver
recomputes it over the raw body, compares in constant time, and refuses a timestamp too far
from its clock (a replayed request), as ``verify`` does.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

SIGNATURE_HEADER: Final = "X-Fleetwave-Signature"
TIMESTAMP_HEADER: Final = "X-Fleetwave-Timestamp"
EVENT_HEADER: Final = "X-Fleetwave-Event"
DELIVERY_HEADER: Final = "X-Fleetwave-Delivery"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SCHEME: Final = "v1"
TOLERANCE_SEC: Final = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SCHEME}={mac.hexdigest()}"


def verify(
    secret: str,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    now: float,
    tolerance: float = TOLERANCE_SEC,
) -> bool:
    """True when the headers sign ``body`` with ``secret`` and the timestamp is within
    ``tolerance`` seconds of ``now``."""
    if not timestamp_header or not signature_header or not timestamp_header.isdigit():
        return False
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    offered = [part.strip() for part in signature_header.split(",")]
    return any(hmac.compare_digest(expected.encode(), part.encode()) for part in offered)
