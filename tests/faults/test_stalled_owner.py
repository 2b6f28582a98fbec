"""A stalled owner: SIGSTOP a daemon that holds releases, past its leases' expiry.

Another daemon claims them (a higher lease epoch), resumes and finishes them; then the
stalled daemon gets SIGCONT. It wakes with changes it had not written yet and leases it
believes it held: its watchdog finds them unproven (no renewal for longer than a TTL) and
stops those releases at once; a write that got out first is fenced, a heartbeat finds the
leases gone. It lives on. Nothing it does changes a row: the releases, their nodes and
their events read the same before and after it wakes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import Event, NodeStatus, ReleaseNode, ReleaseSpec, ReleaseStatus
from fleetwave.store.postgres import PostgresStore, open_loop_and_store
from tests.e2e.harness import FAST
from tests.faults.daemons import Daemon, daemon_env, open_daemons
from tests.faults.soak import CLAIM_MESSAGE, database_clock, releases_held_by
from tests.invariants import assert_release_invariants
from tests.world import lanes, open_world

pytestmark = pytest.mark.postgres

STALL_RELEASES = int(os.environ.get("FLEETWAVE_FAULTS_STALL_RELEASES", "3"))
"""Releases the stalled daemon holds, each over nodes of its own."""
STALL_AGENTS = int(os.environ.get("FLEETWAVE_FAULTS_STALL_AGENTS", "8"))
LEASE_TTL = 3.0
INTERVAL = 0.5
STALLED_FLUSH = 1.0
"""The stalled daemon writes once a second, so it is stopped with transitions unwritten."""
SETTLE = 2 * STALLED_FLUSH + LEASE_TTL
"""After SIGCONT: longer than a flush tick and a heartbeat period, for any late write."""

Snapshot = tuple[Any, list[ReleaseNode], list[Event]]


async def snapshot(store: PostgresStore, release_id: int) -> Snapshot:
    release = await store.get_release(release_id)
    return (
        release,
        await store.release_nodes(release_id),
        await store.release_events(release_id, limit=1_000_000),
    )


async def wait_claimed_by(store: PostgresStore, release_id: int, owner: str, limit: float) -> Event:
    """The claim event of ``release_id`` by ``owner``, waited for up to ``limit`` s."""
    with trio.fail_after(limit):
        while True:
            for event in await store.release_events(release_id, limit=1_000_000):
                if event.daemon_id == owner and (event.message or "").startswith(CLAIM_MESSAGE):
                    return event
            await trio.sleep(0.1)


def releases_logged(daemon: Daemon, event: str, **fields: object) -> set[int]:
    """Releases for which ``daemon`` logged ``event`` with ``fields``."""
    return {
        entry["release_id"]
        for entry in daemon.events(event)
        if all(entry.get(name) == value for name, value in fields.items())
    }


async def test_a_stalled_owner_woken_after_takeover_changes_nothing(
    database_url: str, certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings: dict[str, object] = {
        **FAST,
        "FLEETWAVE_LEASE_TTL_SEC": LEASE_TTL,
        "RELEASE_EXECUTOR_INTERVAL_SEC": INTERVAL,
    }
    env = daemon_env(certs, database_url, **settings)
    async with (
        open_loop_and_store(database_url, max_size=4) as store,
        open_world(store, certs) as world,
        open_daemons(env, tmp_path) as daemons,
    ):
        fleet = await world.serve_fleet(STALL_AGENTS, behaviour=Behaviour(apply_time=(2.0, 4.0)))
        stalled = await daemons.start("stall-a", FLEETWAVE_FLUSH_INTERVAL_SEC=STALLED_FLUSH)
        release_ids = [
            (await store.create_release(ReleaseSpec(reason="stall", selection=lane))).release.id
            for lane in lanes(await store.list_nodes(), STALL_RELEASES)
        ]
        await stalled.wait_event("release.claimed", count=STALL_RELEASES)
        survivor = await daemons.start("stall-b")

        # Stop it in the middle of the second batch, with transitions not yet written.
        await stalled.wait_logged(
            lambda: (
                len(releases_logged(stalled, "node.transition", batch=2, status="running"))
                == STALL_RELEASES
            )
        )
        stalled.pause()
        stopped_at = await database_clock(database_url)
        held = await releases_held_by(database_url, stalled.daemon_id)
        assert sorted(held) == sorted(release_ids)
        epochs = {}
        for release_id in held:
            release = await store.get_release(release_id)
            assert release is not None
            epochs[release_id] = release.lease_epoch

        claims = {}
        for release_id in held:
            claims[release_id] = await wait_claimed_by(
                store, release_id, survivor.daemon_id, limit=LEASE_TTL + 10
            )
            await world.wait_terminal(release_id, limit=60)
        takeover = max(e.created_at.timestamp() for e in claims.values()) - stopped_at
        before = {release_id: await snapshot(store, release_id) for release_id in held}

        stalled.resume()
        await stalled.wait_logged(
            lambda: (
                (
                    releases_logged(stalled, "release.lease_lost")
                    | releases_logged(stalled, "release.lease_unproven")
                )
                >= set(held)
            ),
            limit=SETTLE + 10,
        )
        await trio.sleep(SETTLE)
        after = {release_id: await snapshot(store, release_id) for release_id in held}

        lost = stalled.events("release.lease_lost")
        fenced = [entry for entry in lost if "epoch" in entry]
        dropped = [entry for entry in lost if "reason" in entry]
        unproven = stalled.events("release.lease_unproven")
        with capsys.disabled():
            print(
                f"\nstalled owner: {len(held)} release(s) held, stopped {takeover:.2f} s until"
                f" the last takeover; after SIGCONT: {len(unproven)} release(s) stopped by the"
                f" watchdog, {len(fenced)} late write(s) fenced, {len(dropped)} lease(s) found"
                " lost by the heartbeat, 0 rows changed"
            )

        assert after == before
        for release_id in held:
            release, nodes, events = after[release_id]
            assert release.status is ReleaseStatus.SUCCESS, release
            assert release.lease_epoch > epochs[release_id]
            late = [
                e
                for e in events
                if e.daemon_id == stalled.daemon_id and e.id > claims[release_id].id
            ]
            assert late == [], late
            assert all(node.status is NodeStatus.SUCCESS for node in nodes)
            await assert_release_invariants(store, release_id, fleet)
        assert stalled.alive, stalled.stderr()
        assert not [e for e in stalled.logs if e.get("level") in ("error", "critical")]
        assert await stalled.stop() == 0, stalled.stderr()
