"""The webhook kinds of release events (the rule MemoryStore follows; migration 0009's trigger
is the same in PostgreSQL, tested in tests/integration/test_webhooks_postgres.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from fleetwave.store.models import Event
from fleetwave.store.webhooks import event_kinds


def release_event(from_status: str, to_status: str, message: str | None) -> Event:
    return Event(1, 1, None, None, from_status, to_status, message, "d", datetime.now(UTC))


def test_a_gate_step_is_release_gate_and_a_bake_or_a_passed_gate_is_not() -> None:
    gate = release_event("running", "running", "step 3: gate: waits for promote")
    assert event_kinds(gate, batch_done=False) == ["release.gate"]
    for message in ("step 1: bake 60s", "step 3: promoted", "step 3: gate: waits for promote!"):
        assert event_kinds(release_event("running", "running", message), batch_done=False) == []


def test_a_pause_is_release_paused_once_and_the_lease_release_after_it_is_not() -> None:
    paused = release_event("running", "paused", "pause by ops: look")
    assert event_kinds(paused, batch_done=False) == ["release.paused"]
    released = release_event("paused", "paused", "lease released by d: paused")
    assert event_kinds(released, batch_done=False) == []
