"""PostgresStore when the server ends its sessions: every failure is StoreUnavailable, and the
pool never hands out a connection the driver has lost track of.

asyncpg can return to its pool a connection whose session the server ended mid-operation;
each later user of it then fails with InternalClientError ("cannot switch to state ...;
another operation is in progress"), which no caller retries. These tests end sessions at
random moments (pg_terminate_backend, as a database restart or an administrator would) and
at a chosen one, and check that the store reports the loss and recovers.
"""

from __future__ import annotations

import asyncio
import functools
import random

import asyncpg
import pytest
import trio
import trio_asyncio

from fleetwave.config import load_settings
from fleetwave.store import postgres
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.factory import open_store
from fleetwave.store.models import NodeChange, NodeStatus, ReleaseSpec
from fleetwave.store.postgres import PostgresStore, open_loop_and_store
from tests.integration.conftest import run_sql

pytestmark = pytest.mark.postgres

# Bounded: this many rounds of operations, with sessions ended between and during them.
ROUNDS = 150
POOL_SIZE = 2
TTL = 30.0

TERMINATE_OTHERS = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
"""


async def test_an_operation_that_breaks_its_connection_discards_it(
    pg_store: PostgresStore,
) -> None:
    """The driver's own protocol-state error, on a pooled connection, is reported as
    unavailable and that connection is not handed out again."""
    pool = pg_store._pool
    seen: list[int] = []

    async def broken() -> None:
        async with postgres._acquired(pool) as connection:
            seen.append(await connection.fetchval("SELECT pg_backend_pid()"))
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

    async def backend() -> int:
        async with postgres._acquired(pool) as connection:
            pid: int = await connection.fetchval("SELECT pg_backend_pid()")
            return pid

    with pytest.raises(StoreUnavailable, match="another operation"):
        await pg_store._call(broken)
    # Every connection the pool hands out now is another session than the broken one.
    pids = {await pg_store._call(backend) for _ in range(pool.get_max_size() + 1)}
    assert seen[0] not in pids
    assert await pg_store.ping() is True


async def test_sessions_ended_at_random_moments_surface_only_as_unavailable(
    database_url: str,
) -> None:
    rng = random.Random(20261128)
    failures = 0
    # A small pool, so a connection returned in a bad state would be handed out again soon.
    async with open_loop_and_store(database_url, max_size=POOL_SIZE) as store:
        for k in range(4):
            await store.upsert_node(f"edge-{k}", f"127.0.0.{k + 2}", 8443)
        created = await store.create_release(ReleaseSpec(reason="sessions", plan=(4,)))
        [claim] = await store.claim("daemon-a", 1, TTL)
        lease = claim.lease
        rows = await store.release_nodes(created.release.id)

        async def operations() -> None:
            nonlocal failures
            for round_ in range(ROUNDS):
                row = rows[round_ % len(rows)]
                changes = [NodeChange(row_id=row.id, status=NodeStatus.RUNNING, attempts=1)]
                for operation in (
                    functools.partial(store.record, lease, changes),
                    functools.partial(store.heartbeat, "daemon-a", [lease], TTL),
                    functools.partial(store.get_release, created.release.id),
                    store.list_nodes,
                ):
                    try:
                        await operation()
                    except StoreUnavailable:
                        failures += 1

        async def terminations(done: trio.Event) -> None:
            while not done.is_set():
                await trio.sleep(rng.uniform(0.0, 0.02))
                await run_sql(database_url, TERMINATE_OTHERS)

        done = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(terminations, done)
            await operations()
            done.set()

        # The sessions were ended while operations ran, and the store recovered from all of
        # it. Each idle connection the last termination ended fails its next operation once;
        # after that every pooled connection works again.
        assert failures > 0, "no session was ended during an operation"
        dead_idle = 0
        while not await store.ping():
            dead_idle += 1
            assert dead_idle <= POOL_SIZE, "the pool keeps handing out ended sessions"
        for _ in range(10):
            assert await store.ping() is True
            assert len(await store.list_nodes()) == len(rows)
        assert await store.record(lease, []) is True


async def test_ended_idle_sessions_fail_one_operation_each_then_the_pool_recovers(
    database_url: str,
) -> None:
    async with open_loop_and_store(database_url, max_size=POOL_SIZE) as store:
        assert await store.ping() is True
        await run_sql(database_url, TERMINATE_OTHERS)
        failed = 0
        with trio.fail_after(10):
            while True:
                try:
                    await store.list_nodes()
                    break
                except StoreUnavailable:
                    failed += 1
        assert failed <= POOL_SIZE
        for _ in range(10):
            assert await store.ping() is True


async def test_an_unawaited_driver_error_is_logged_and_the_daemon_goes_on(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncpg leaves "Future exception was never retrieved" behind when a connection is lost;
    trio-asyncio's default handler would raise it into the loop and end the program."""
    async with open_loop_and_store(database_url, max_size=POOL_SIZE) as store:
        loop = trio_asyncio.current_loop.get()
        loop.call_exception_handler(
            {
                "message": "Future exception was never retrieved",
                "exception": ConnectionError("unexpected connection_lost() call"),
            }
        )
        await trio.sleep(0.1)
        assert await store.ping() is True
        assert await store.list_nodes() == []


async def test_a_daemon_stalled_inside_a_transaction_does_not_block_takeover(
    database_url: str,
) -> None:
    """A stopped process keeps its session open, and with it every row lock of its open
    transaction: claims skip locked rows, so without a limit on idle transactions nobody
    could take over its releases until it woke up."""
    ttl, stall = 0.5, 8.0
    async with (
        open_loop_and_store(database_url, idle_in_transaction_timeout=1.0) as stalled,
        open_loop_and_store(database_url) as other,
    ):
        await stalled.upsert_node("edge-1", "127.0.0.2", 8443)
        created = await stalled.create_release(ReleaseSpec(reason="stall"))
        [claim] = await stalled.claim("daemon-a", 1, ttl)

        async def lock_then_stall() -> None:
            # What a write looks like to the server when its process stops mid-transaction:
            # the session sits idle inside it (until the server ends it, or the stall is over),
            # then the process wakes up and goes on.
            loop = asyncio.get_running_loop()
            async with postgres._acquired(stalled._pool) as connection, connection.transaction():
                await connection.execute(
                    "SELECT 1 FROM release_tasks WHERE id = $1 FOR UPDATE", created.release.id
                )
                woken_at = loop.time() + stall
                while not connection.is_closed() and loop.time() < woken_at:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)  # the driver notes the close; no event tells us
                await connection.execute("SELECT 1")

        failures: list[tuple[BaseException, float]] = []

        async def stall_then_report(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()
            started = trio.current_time()
            try:
                await stalled._call(lock_then_stall)
            except StoreUnavailable as error:
                failures.append((error, trio.current_time() - started))

        async with trio.open_nursery() as nursery:
            await nursery.start(stall_then_report)
            with trio.fail_after(stall / 2):
                while not (claims := await other.claim("daemon-b", 1, 30.0)):  # noqa: ASYNC110
                    await trio.sleep(0.1)  # the state is in the database
            # The nursery waits for the stalled call to end: it is not cancelled.

        assert [c.release.id for c in claims] == [created.release.id]
        assert claims[0].lease.epoch == claim.lease.epoch + 1
        # The server ended the stalled session (after its 1 s idle limit, long before the
        # stall was over), and the stalled process learnt it as StoreUnavailable.
        [(error, elapsed)] = failures
        assert "database unavailable" in str(error)
        assert elapsed < stall / 2, elapsed


async def test_a_daemons_sessions_end_idle_transactions_after_one_lease_ttl(
    database_url: str,
) -> None:
    """What the daemon opens (store.factory) carries the limit the test above relies on."""
    settings = load_settings(environ={}, database_url=database_url, lease_ttl_sec=7)
    async with open_store(settings) as store:
        record = await store._call(store._fetchrow, "SHOW idle_in_transaction_session_timeout")

    assert record is not None and record[0] == "7s"
