"""Whole releases on PostgreSQL, against simulated agents over real mutual-TLS sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus
from fleetwave.store.postgres import PostgresStore
from tests.integration.conftest import run_sql
from tests.invariants import assert_release_invariants
from tests.world import World, open_world

pytestmark = pytest.mark.postgres


Start = Callable[..., Awaitable[World]]


@pytest.fixture
async def start(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[Start]:
    async with open_world(pg_store, certs) as world:

        async def start_world(count: int, overrides: dict[int, Behaviour] | None = None) -> World:
            await world.serve_fleet(count, overrides)
            await world.start_daemon("it-a")
            return world

        yield start_world


async def test_three_nodes_succeed_in_two_batches_over_mtls(start: Start) -> None:
    world = await start(3)
    created = await world.store.create_release(ReleaseSpec(reason="it"))
    assert [len(ids) for _, ids in created.batches] == [1, 2]

    release = await world.wait_terminal(created.release.id)

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.success_nodes, release.failed_nodes, release.total_nodes) == (3, 0, 3)
    await assert_release_invariants(world.store, release.id, world.fleet)


async def test_failed_canary_skips_batch_two_over_mtls(start: Start) -> None:
    world = await start(3, {1: Behaviour(apply_time=(0.2, 0.2), fail="nginx -t: bad config")})
    created = await world.store.create_release(ReleaseSpec())

    release = await world.wait_terminal(created.release.id)

    assert release.status is ReleaseStatus.FAILED
    assert release.error is not None and "nginx -t: bad config" in release.error
    statuses = [n.status for n in await world.store.release_nodes(release.id)]
    assert statuses == [NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.SKIPPED]
    assert (release.success_nodes, release.failed_nodes) == (0, 1)
    await assert_release_invariants(world.store, release.id, world.fleet)


async def test_batch_two_failure_follows_siblings_to_their_outcome_over_mtls(
    start: Start,
) -> None:
    slow = Behaviour(apply_time=(3, 3))
    world = await start(
        5,
        {
            1: Behaviour(apply_time=(0.1, 0.1)),
            2: slow,
            3: Behaviour(apply_time=(0.3, 0.3), fail="disk full"),
            4: slow,
            5: slow,
        },
    )
    created = await world.store.create_release(ReleaseSpec())

    release = await world.wait_terminal(created.release.id, limit=15)

    assert release.status is ReleaseStatus.FAILED
    nodes = {n.node_name: n for n in await world.store.release_nodes(release.id)}
    assert nodes["edge-003"].status is NodeStatus.FAILED
    for name in ("edge-002", "edge-004", "edge-005"):
        # Still applying when the batch stopped; followed until their agents finished.
        assert nodes[name].status is NodeStatus.SUCCESS
    await assert_release_invariants(world.store, release.id, world.fleet)


async def test_unreachable_agent_fails_its_node_with_a_readable_reason_over_mtls(
    start: Start,
) -> None:
    world = await start(1, {1: Behaviour(refuse=True)})
    created = await world.store.create_release(ReleaseSpec())

    release = await world.wait_terminal(created.release.id)

    (node,) = await world.store.release_nodes(release.id)
    assert node.status is NodeStatus.FAILED
    assert node.error_msg is not None
    assert "unreachable" in node.error_msg and "refused" in node.error_msg
    assert release.status is ReleaseStatus.FAILED
    await assert_release_invariants(world.store, release.id, world.fleet)


async def test_release_inserted_with_seed_columns_only_is_executed(
    start: Start, database_url: str, tmp_path: Path
) -> None:
    world = await start(3)
    output = await run_sql(
        database_url,
        "WITH r AS (INSERT INTO release_tasks (type, target, version, status, total_nodes,"
        " success_nodes, failed_nodes) VALUES ('apply_config', 'cdn', 77, 'pending', 3, 0, 0)"
        " RETURNING id)"
        " INSERT INTO release_task_nodes (release_task_id, node_id, batch, status)"
        " SELECT (SELECT id FROM r), n.id, CASE WHEN n.id = min(n.id) OVER () THEN 1 ELSE 2 END,"
        " 'pending' FROM nodes n RETURNING release_task_id",
    )
    release_id = int(output.split()[0])

    release = await world.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.success_nodes, release.failed_nodes) == (3, 0)
    counters = await run_sql(
        database_url,
        f"SELECT status, success_nodes, failed_nodes FROM release_tasks WHERE id = {release_id}",
    )
    assert counters.strip() == "success|3|0"
    await assert_release_invariants(world.store, release.id, world.fleet)
