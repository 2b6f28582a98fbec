"""The API's list and detail endpoints cost a fixed number of queries, however large."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import attrs
import httpx
import pytest
import trio_asyncio

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.models import NodeChange, NodeStatus, Outcome, ReleaseSpec, ReleaseStatus
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.selection import NodeSelection

pytestmark = pytest.mark.postgres


# The pool's connection reset and transaction brackets are not questions about data.
_HOUSEKEEPING = ("SELECT pg_advisory_unlock_all()", "BEGIN", "COMMIT", "ROLLBACK")


@attrs.define(eq=False)
class QueryCount:
    """Statements sent by the connections of one pool (eq=False: asyncpg keeps it in a set)."""

    statements: list[str] = attrs.field(factory=list)

    def __call__(self, record: object) -> None:
        query = str(getattr(record, "query", "")).strip()
        if not query.startswith(_HOUSEKEEPING):
            self.statements.append(query)


@pytest.fixture
async def counted(
    pg_store: PostgresStore, database_url: str
) -> AsyncIterator[tuple[PostgresStore, QueryCount]]:
    """A second PostgresStore on the migrated test database whose connections log queries."""
    count = QueryCount()

    async def log_queries(connection: asyncpg.Connection) -> None:
        connection.add_query_logger(count)

    pool = await trio_asyncio.aio_as_trio(asyncpg.create_pool)(
        database_url, min_size=1, max_size=2, init=log_queries
    )
    try:
        loop = trio_asyncio.current_loop.get()
        yield PostgresStore(pool, loop, database_url, connect_timeout=10), count
    finally:
        await trio_asyncio.aio_as_trio(pool.close)()


async def _queries(store: PostgresStore, count: QueryCount, token: str, path: str) -> int:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        # The driver looks up parameter types (bigint[]) once per connection and caches
        # them: the count is that of a warm connection, as in a running daemon.
        await client.get(path)
        count.statements.clear()
        response = await client.get(path)
    assert response.status_code == 200, response.text
    return len(count.statements)


async def test_release_list_and_detail_use_a_fixed_number_of_queries(
    pg_store: PostgresStore, counted: tuple[PostgresStore, QueryCount]
) -> None:
    store, count = counted
    token = await create_token(pg_store, "queries")
    for k in range(1, 4):
        await pg_store.upsert_node(f"edge-{k}", f"127.0.0.{k + 1}", 8443)
    small = await pg_store.create_release(ReleaseSpec())
    list_small = await _queries(store, count, token, "/api/v1/releases")
    detail_small = await _queries(store, count, token, f"/api/v1/releases/{small.release.id}")

    for k in range(4, 61):
        await pg_store.upsert_node(f"edge-{k}", f"127.0.{k // 200}.{k % 200 + 1}", 8443)
    large = await pg_store.create_release(ReleaseSpec(plan=(1, "10%")))
    for _ in range(25):
        await pg_store.create_release(ReleaseSpec())
    list_large = await _queries(store, count, token, "/api/v1/releases")
    detail_large = await _queries(store, count, token, f"/api/v1/releases/{large.release.id}")

    # Token lookup, count, page, what the pending ones wait for, who created them; token
    # lookup, release, its nodes, what it waits for (pending), who created it.
    assert list_small == list_large == 5
    assert detail_small == detail_large == 5


async def _succeed(store: PostgresStore, spec: ReleaseSpec) -> None:
    """Create a release and record every node of it a success, as the executor does."""
    await store.create_release(spec)
    [claim] = await store.claim("queries", 1, 30)
    rows = await store.release_nodes(claim.release.id)
    changes = [NodeChange(row.id, NodeStatus.SUCCESS, started=True, finished=True) for row in rows]
    assert await store.record(claim.lease, changes, Outcome(ReleaseStatus.SUCCESS))


async def test_the_fleet_uses_a_fixed_number_of_queries(
    pg_store: PostgresStore, counted: tuple[PostgresStore, QueryCount]
) -> None:
    store, count = counted
    token = await create_token(pg_store, "queries")
    nodes = [await pg_store.upsert_node(f"edge-{k}", f"127.0.0.{k + 1}", 8443) for k in (1, 2)]
    await _succeed(pg_store, ReleaseSpec(scope="eu", selection=NodeSelection.by_ids([nodes[0].id])))
    small = await _queries(store, count, token, "/api/v1/fleet")

    for k in range(3, 81):
        nodes.append(
            await pg_store.upsert_node(f"edge-{k}", f"127.0.{k // 200}.{k % 200 + 1}", 8443)
        )
    for scope in ("eu", "us", "apac", None):
        await _succeed(pg_store, ReleaseSpec(scope=scope, plan=("100%",)))
    await _succeed(
        pg_store,
        ReleaseSpec(scope="us", selection=NodeSelection.by_ids([n.id for n in nodes[:40]])),
    )
    large = await _queries(store, count, token, "/api/v1/fleet")

    # Token lookup, the nodes with their expectations, the scopes.
    assert small == large == 3
