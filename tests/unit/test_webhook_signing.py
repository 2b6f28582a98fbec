"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", checked as a receiver would."""

from __future__ import annotations

import hashlib
import hmac
import random

from fleetwave.webhooks.delivery import retry_delay
from fleetwave.webhooks.signing import signature, verify

SECRET = "whsec_test-secret-value"
BODY = b'{"kind":"release.failed","releaseId":4}'


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1700000000, BODY) == f"v1={expected}"


def test_verify_accepts_the_signature_and_refuses_tampering_replay_and_missing_headers() -> None:
    sent = signature(SECRET, 1700000000, BODY)
    assert verify(SECRET, BODY, "1700000000", sent, now=1700000010)
    assert verify(SECRET, BODY, "1700000000", f"v1=00, {sent}", now=1700000010)  # key rotation
    assert not verify(SECRET, BODY + b" ", "1700000000", sent, now=1700000010)
    assert not verify("another-secret-entirely", BODY, "1700000000", sent, now=1700000010)
    assert not verify(SECRET, BODY, "1700000001", sent, now=1700000010)
    assert not verify(SECRET, BODY, "1700000000", sent, now=1700000000 + 301)  # too old
    assert not verify(SECRET, BODY, None, sent, now=1700000000)
    assert not verify(SECRET, BODY, "soon", sent, now=1700000000)
    assert not verify(SECRET, BODY, "1700000000", None, now=1700000000)


def test_retries_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = [retry_delay(attempt, 60.0, rng) for attempt in range(1, 10)]
    for attempt, delay in enumerate(delays, start=1):
        base = min(60.0, 2.0 ** (attempt - 1))
        assert 0.8 * base <= delay <= 1.2 * base
    assert retry_delay(10_000, 60.0, rng) <= 72.0
