"""Database loss: PostgreSQL restarts while releases run, and NOTIFY goes missing.

The restart tests run their own embedded server on a fixed port (the session's server is
shared, so it is never restarted): ``fleetwave serve`` daemons keep running through the
outage, log it, retry, and finish every release; the LISTEN connection comes back; pooled
connections broken by the restart are replaced. Without NOTIFY, the poll interval still starts
every release. Sizes come from the environment (see SIZES).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.store.embedded import EmbeddedPostgres, free_port
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, Release, ReleaseSpec, ReleaseStatus, task_id_for
from fleetwave.store.postgres import PostgresStore, open_loop_and_store
from tests.faults.daemons import daemon_env, start_daemon
from tests.integration.conftest import TEST_SERVER_SETTINGS, server_directory
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim
from tests.world import lanes, open_world

pytestmark = pytest.mark.postgres

T = TypeVar("T")

DB_RELEASES = int(os.environ.get("FLEETWAVE_FAULTS_DB_RELEASES", "4"))
"""Releases running or queued when the database restarts."""
DB_DAEMONS = int(os.environ.get("FLEETWAVE_FAULTS_DB_DAEMONS", "2"))
"""``fleetwave serve`` processes sharing the database."""
DB_NODES = int(os.environ.get("FLEETWAVE_FAULTS_DB_NODES", "6"))
"""Simulated agents (each release covers all of them)."""
OUTAGE_SEC = float(os.environ.get("FLEETWAVE_FAULTS_DB_OUTAGE_SEC", "3"))
"""How long the database stays down."""
LONG_INTERVAL = 30.0
"""A poll interval far longer than a NOTIFY pick-up may take."""
NOTIFY_PICKUP_LIMIT = 2.0
SHORT_INTERVAL = 1.0
POLL_SLACK = 0.5
"""A claim takes a little longer than the interval: the claim query, then the start."""

DAEMON_SETTINGS: dict[str, object] = {
    "RELEASE_EXECUTOR_INTERVAL_SEC": LONG_INTERVAL,
    "FLEETWAVE_LEASE_TTL_SEC": 15,
    "FLEETWAVE_FLUSH_INTERVAL_SEC": 0.05,
    "FLEETWAVE_POLL_INITIAL_SEC": 0.05,
    "FLEETWAVE_POLL_MAX_SEC": 0.2,
    "FLEETWAVE_RETRY_INITIAL_SEC": 0.05,
    "FLEETWAVE_RETRY_MAX_SEC": 0.2,
    "FLEETWAVE_AGENT_REQUEST_TIMEOUT_SEC": 2,
    "FLEETWAVE_AGENT_CONNECT_TIMEOUT_SEC": 2,
    "FLEETWAVE_NODE_DEADLINE_SEC": 60,
}


# --- a server of our own, restarted on the same port -----------------------------------------


@pytest.fixture(scope="module")
def restartable_server() -> Iterator[EmbeddedPostgres]:
    directory = server_directory()
    server = EmbeddedPostgres(directory / "data", port=free_port(), settings=TEST_SERVER_SETTINGS)
    try:
        with server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def restartable_url(restartable_server: EmbeddedPostgres) -> Iterator[str]:
    restartable_server.start()  # idempotent: a failed test may have left it stopped
    name = f"faults_{uuid.uuid4().hex[:12]}"
    url = restartable_server.create_database(name)
    yield url
    restartable_server.start()
    restartable_server.drop_database(name)


@attrs.define
class Outage:
    server: EmbeddedPostgres
    seconds: float
    started: float = 0.0
    ended: float = 0.0

    async def run(self) -> None:
        """Stop the server, keep it down ``seconds``, start it again on the same port."""
        port = self.server.actual_port
        self.started = trio.current_time()
        await self.server.stop_async()
        await trio.sleep(self.seconds)
        await self.server.start_async()
        self.ended = trio.current_time()
        assert self.server.actual_port == port


async def patiently(call: Callable[[], Awaitable[T]], limit: float = 30) -> T:
    """``call()``, retried while the database is still coming back."""
    with trio.fail_after(limit):
        while True:
            try:
                return await call()
            except StoreUnavailable:
                await trio.sleep(0.2)


async def poll_until(check: Callable[[], Awaitable[T | None]], limit: float) -> T:
    """The first result of ``check()`` that is not None, asked every 50 ms."""
    with trio.fail_after(limit):
        while (result := await check()) is None:  # noqa: ASYNC110 - the state is in the database
            await trio.sleep(0.05)
        return result


async def wait_terminal(store: PostgresStore, release_id: int, limit: float) -> Release:
    with trio.fail_after(limit):
        while True:
            release = await patiently(lambda: store.get_release(release_id))
            assert release is not None
            if release.status.terminal:
                return release
            await trio.sleep(0.2)


def pickup_delay(release: Release) -> float:
    """Seconds from creation to claim, both by the database's clock."""
    assert release.started_at is not None
    return (release.started_at - release.created_at).total_seconds()


# --- the restart, with daemons as processes --------------------------------------------------


async def test_database_restart_while_releases_run_every_release_completes(
    restartable_server: EmbeddedPostgres,
    restartable_url: str,
    certs: CertPaths,
    tmp_path: Path,
) -> None:
    async with (
        open_loop_and_store(restartable_url, max_size=4) as store,
        open_world(store, certs) as world,
    ):
        fleet = await world.serve_fleet(DB_NODES, behaviour=Behaviour(apply_time=(0.5, 1.5)))
        env = daemon_env(certs, restartable_url, **DAEMON_SETTINGS)
        daemons = [
            await start_daemon(world.nursery, f"faults-db-{k}", env, tmp_path)
            for k in range(1, DB_DAEMONS + 1)
        ]
        release_ids = []
        # Two lanes of releases, and nodes of its own for the release created after the outage.
        *lane_selections, after = lanes(await store.list_nodes(), 3)
        for k in range(DB_RELEASES):
            spec = ReleaseSpec(
                reason=f"restart {k}", plan=(1, "50%"), selection=lane_selections[k % 2]
            )
            release_ids.append((await store.create_release(spec)).release.id)

        # Restart once releases are under way: claimed, with nodes applying and recorded.
        async def progress() -> bool | None:
            nodes = await store.release_nodes(release_ids[0])
            return any(node.status is NodeStatus.SUCCESS for node in nodes) or None

        await poll_until(progress, limit=30)
        outage = Outage(restartable_server, OUTAGE_SEC)
        await outage.run()

        for daemon in daemons:
            await daemon.wait_event("release notifications restored", limit=60)
        # The LISTEN connection is back: a new release starts long before the poll interval.
        created = await patiently(
            lambda: store.create_release(ReleaseSpec(reason="after", selection=after))
        )
        release_ids.append(created.release.id)

        async def started() -> Release | None:
            release = await store.get_release(created.release.id)
            return release if release is not None and release.started_at is not None else None

        assert pickup_delay(await poll_until(started, NOTIFY_PICKUP_LIMIT + 1)) < (
            NOTIFY_PICKUP_LIMIT
        )

        for release_id in release_ids:
            release = await wait_terminal(store, release_id, limit=90)
            assert release.status is ReleaseStatus.SUCCESS, release.error
            await assert_release_invariants(store, release_id, fleet)
            # Not one node was dispatched twice: nothing was lost and done again.
            for node in await store.release_nodes(release_id):
                task_id = task_id_for(node.main_ip, release.version)
                assert fleet.dispatch_count(node.main_ip, task_id) == 1, (release_id, node)

        for daemon in daemons:
            assert daemon.alive, daemon.stderr()
            assert daemon.events("release notifications dropped"), daemon.daemon_id
            assert not daemon.events("release.abandoned"), daemon.daemon_id
        retries = [e for d in daemons for e in d.events("release.write_retry")]
        retries += [e for d in daemons for e in d.events("supervisor.claim_failed")]
        retries += [e for d in daemons for e in d.events("supervisor.heartbeat_failed")]
        assert retries, "no daemon logged a retried database operation"
        assert all("database unavailable" in entry["error"] for entry in retries), retries
        delays = [e["retry_in"] for d in daemons for e in d.events("release.write_retry")]
        assert delays == [] or max(delays) > min(delays), "write retries do not back off"

        for daemon in daemons:
            assert await daemon.stop() == 0, daemon.stderr()
            assert "Traceback" not in daemon.stderr(), daemon.stderr()
            assert not daemon.events("<not json>"), daemon.events("<not json>")
            levels = {entry.get("level") for entry in daemon.logs}
            assert not levels & {"error", "critical"}, [
                e for e in daemon.logs if e.get("level") in ("error", "critical")
            ]


# --- the pool after a restart -----------------------------------------------------------------


async def test_pooled_connections_broken_by_a_restart_are_replaced(
    restartable_server: EmbeddedPostgres, restartable_url: str
) -> None:
    pool_size = 4
    async with open_loop_and_store(restartable_url, min_size=pool_size, max_size=pool_size) as (
        store
    ):
        await store.upsert_node("edge-001", "127.0.0.2", 8443)

        async def use_every_connection() -> list[Any]:
            results: list[Any] = []

            async def one() -> None:
                results.append(await store.list_nodes())

            async with trio.open_nursery() as nursery:
                for _ in range(pool_size * 2):
                    nursery.start_soon(one)
            return results

        await use_every_connection()  # every pooled connection is open and has been used
        await Outage(restartable_server, 0.5).run()

        failures = 0
        with trio.fail_after(30):
            while True:
                try:
                    await store.list_nodes()
                    break
                except StoreUnavailable:
                    failures += 1
                    await trio.sleep(0.1)
        # A broken connection may fail the call that finds it broken; it is then replaced.
        assert failures <= pool_size
        for _ in range(10):
            assert len(await use_every_connection()) == pool_size * 2
        assert await store.ping()


# --- NOTIFY unavailable ---------------------------------------------------------------------


@attrs.define
class DeafStore:
    """The real PostgresStore, but its notifications never reach the daemon: as when
    NOTIFY is lost or the LISTEN connection is blocked. Counts what it swallowed."""

    store: PostgresStore
    swallowed: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def listen_releases(
        self, wake: Callable[[], None], *, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        def swallow() -> None:
            self.swallowed += 1

        await self.store.listen_releases(swallow, task_status=task_status)


async def test_without_notify_releases_start_within_the_poll_interval(
    pg_store: PostgresStore, certs: CertPaths
) -> None:
    deaf = DeafStore(pg_store)
    async with open_world(deaf, certs) as world:
        await world.serve_fleet(2)
        await world.start_daemon("faults-deaf", interval_sec=SHORT_INTERVAL)
        delays = []
        for k, pause in enumerate((0.1, 0.45, 0.8)):
            await trio.sleep(pause)
            created = await pg_store.create_release(ReleaseSpec(reason="deaf", scope=f"deaf-{k}"))
            release = await world.wait_terminal(created.release.id)
            assert release.status is ReleaseStatus.SUCCESS
            delays.append(pickup_delay(release))

    assert deaf.swallowed >= 3, "the notifications were sent, and none was delivered"
    assert max(delays) < SHORT_INTERVAL + POLL_SLACK, delays


# --- a write retried while transitions keep arriving (virtual time) --------------------------


@pytest.fixture
def sim(make_sim: Callable[..., Sim]) -> Sim:
    return make_sim(
        1,
        behaviour=Behaviour(apply_time=(0.2, 0.2), fail="nginx -t: bad config"),
        flush_interval_sec=1.0,
        poll_initial_sec=0.1,
        poll_max_sec=0.2,
    )


async def test_transitions_arriving_while_a_write_is_retried_are_all_recorded(sim: Sim) -> None:
    """The node turns running, then failed, within one flush interval; the write of the
    first must flush before the second, and the database is away at that moment."""
    store: MemoryStore = sim.store
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()
    host = sim.fleet.hosts[0]
    await sim.wait_for(lambda: sim.fleet.dispatch_count(host, task_id_for(host, 1)))
    store.unavailable = True
    await trio.sleep(3)
    store.unavailable = False

    release = await sim.wait_terminal(release_id)

    (node,) = await store.release_nodes(release_id)
    assert node.status is NodeStatus.FAILED
    assert node.error_msg is not None and "nginx -t: bad config" in node.error_msg
    assert release.status is ReleaseStatus.FAILED
    events = [(e.from_status, e.to_status) for e in await store.release_events(release_id)]
    assert ("pending", "running") in events and ("running", "failed") in events
    await assert_release_invariants(store, release_id, sim.fleet)
