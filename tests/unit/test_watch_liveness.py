"""What ``release watch`` says of a release's owner: alive, holding at a step, stalled at its
agents, lost (its lease ran out unrenewed), and when it reads the detail again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleetwave.api.watch_liveness import Liveness

T0 = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def _read(expires_in: float | None, progress_ago: float | None = 1) -> Liveness:
    item = {
        "owner": "d1",
        "leaseExpiresAt": None
        if expires_in is None
        else (T0 + timedelta(seconds=expires_in)).isoformat().replace("+00:00", "Z"),
        "lastProgressAt": None
        if progress_ago is None
        else (T0 - timedelta(seconds=progress_ago)).isoformat().replace("+00:00", "Z"),
    }
    return Liveness.read(item, T0)


def test_slow_holding_stalled_and_lost_read_differently() -> None:
    lease = _read(30)
    assert lease.verdict("running", None, T0) == (
        "alive",
        "owner d1 is alive (lease expires in 30s)",
    )
    assert lease.verdict("running", "gate", T0) == (
        "holding",
        "owner d1 is alive (lease expires in 30s) and waits at the gate for a promote",
    )
    assert lease.verdict("running", "bake", T0)[1].endswith("and bakes")
    stalled = _read(30, progress_ago=45)
    assert stalled.verdict("running", None, T0) == (
        "stalled",
        "owner d1 is alive (lease expires in 30s), but no node moved for 45s: slow or stuck agents",
    )
    # A bake or gate moves no node, by plan: that is no stall.
    assert stalled.verdict("running", "gate", T0)[0] == "holding"
    later = T0 + timedelta(seconds=42)
    assert lease.verdict("running", None, later) == (
        "owner-lost",
        "owner d1 stopped renewing its lease 12s ago: another daemon takes the release over",
    )
    assert _read(None).verdict("running", None, T0)[0] == "unowned"
    assert lease.verdict("pending", None, T0) == ("pending", "")
    assert lease.verdict("success", None, later) == ("ended", "")


def test_node_events_are_progress() -> None:
    stalled = _read(30, progress_ago=45)
    stalled.progressed(T0 - timedelta(seconds=50))  # older: changes nothing
    assert stalled.verdict("running", None, T0)[0] == "stalled"
    stalled.progressed(T0)
    assert stalled.verdict("running", None, T0)[0] == "alive"


def test_the_detail_is_read_again_before_the_lease_known_runs_out_then_after() -> None:
    # A live owner renews every third of its lease: five sixths in, it has.
    lease = _read(30)
    assert lease.check_at == T0 + timedelta(seconds=25)
    assert not lease.due(T0 + timedelta(seconds=24.9)) and lease.due(T0 + timedelta(seconds=25))
    # Too close to the end to look earlier: once it has run out.
    assert _read(1).check_at == T0 + timedelta(seconds=2)
    # Already expired when read: not before an event (a takeover's claim).
    assert _read(-3).check_at is None and not _read(-3).due(T0 + timedelta(days=1))
    assert _read(None).check_at is None
