"""A daemon whose write fails only after its lease went unproven (the process stalled mid
query, or the database answered an error late): its release is stopped as the watchdog stops
it, a warning, not an abandoned release logged as an error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import structlog
import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import ReleaseStatus
from tests.sim.conftest import Sim

LEASE_TTL = 3.0
STOPS = ("release.lease_unproven", "release.abandoned")


async def test_a_write_failing_after_the_lease_is_unproven_is_the_watchdog_s_stop(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 5)))
    await sim.register()
    record, heartbeat = MemoryStore.record, MemoryStore.heartbeat
    calls = 0
    stalled = False

    async def record_stalled_once(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        # The real store's write; its second call held past the lease (shielded, as a
        # stopped process ignores every deadline), then refused.
        nonlocal calls
        calls += 1
        nonlocal stalled
        if calls == 2:
            stalled = True
            with trio.CancelScope(shield=True):
                await trio.sleep(4 * LEASE_TTL)
            stalled = False
            raise StoreUnavailable("database unavailable: another operation is in progress")
        return await record(self, *args, **kwargs)

    async def heartbeat_stalled(self: MemoryStore, *args: Any, **kwargs: Any) -> Any:
        # The whole daemon is held up meanwhile: its renewals get no answer either.
        while stalled:  # noqa: ASYNC110 - the flag is the stalled write's
            await trio.sleep(1)
        return await heartbeat(self, *args, **kwargs)

    monkeypatch.setattr(MemoryStore, "record", record_stalled_once)
    monkeypatch.setattr(MemoryStore, "heartbeat", heartbeat_stalled)
    with structlog.testing.capture_logs() as logs:
        await sim.start_daemon(lease_ttl_sec=LEASE_TTL)
        release_id = await sim.create(plan=("100%",))
        await sim.wait_for(lambda: [e for e in logs if e["event"] in STOPS], limit=120)
    stops = [e for e in logs if e["event"] in STOPS]
    assert [(e["event"], e["log_level"]) for e in stops] == [("release.lease_unproven", "warning")]
    assert "another operation is in progress" in stops[0]["error"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    # The daemon lives on: the release, claimed again once its lease ran out, succeeds.
    release = await sim.wait_terminal(release_id, limit=600)
    assert release.status is ReleaseStatus.SUCCESS
