"""The store contract of the fleet's record: the config each node is expected to run (the
newest successful release that included it) and each scope's newest success, on
PostgresStore and MemoryStore alike."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fleetwave.store.base import Store
from fleetwave.store.errors import InvalidInput
from fleetwave.store.fleet import Expectation, FleetState, ScopeFleet
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Node, NodeStatus, Outcome, ReleaseSpec, ReleaseStatus
from fleetwave.store.verbs import Verb
from tests.integration.conftest import run_sql
from tests.integration.test_store_contract import add_nodes, claim_one, on
from tests.integration.test_store_contract_verbs import ALICE, run_to

pytestmark = pytest.mark.postgres


async def released(
    store: Store,
    nodes: list[Node],
    statuses: list[NodeStatus],
    outcome: ReleaseStatus,
    *,
    scope: str | None = None,
    max_failures: int = 0,
) -> int:
    """A release over ``nodes`` run through the executor's writes to ``outcome``."""
    await store.create_release(
        ReleaseSpec(scope=scope, selection=on(*nodes), max_failures=max_failures)
    )
    lease = await claim_one(store)
    await run_to(store, lease, statuses)
    assert await store.record(lease, [], Outcome(outcome))
    return lease.release_id


def drifting(state: FleetState) -> dict[str, Expectation | None]:
    return {entry.node.name: entry.expected for entry in state.nodes if entry.drifting}


async def each_alike(store: Store, state: FleetState) -> None:
    """One node's expectation read alone is the one the whole fleet's read gives it."""
    for entry in state.nodes:
        assert await store.node_expectation(entry.node.id) == entry.expected


def scope(state: FleetState, name: str | None) -> ScopeFleet:
    [found] = [group for group in state.scopes if group.scope == name]
    return found


async def test_a_node_is_expected_to_run_the_newest_success_that_included_it(
    store: Store,
) -> None:
    n = await add_nodes(store, 6)
    ok = NodeStatus.SUCCESS
    eu = await released(store, n[0:3], [ok, ok, ok], ReleaseStatus.SUCCESS, scope="eu")
    us = await released(store, n[3:5], [ok, ok], ReleaseStatus.SUCCESS, scope="us")

    state = await store.fleet_state()
    await each_alike(store, state)

    # Each scope's nodes run its newest success: nothing drifts, though the newest success
    # overall (us) never touched eu's nodes. edge-6 was never in a release: no expectation.
    assert drifting(state) == {}
    expected = {entry.node.name: entry.expected for entry in state.nodes}
    assert expected["edge-1"] == Expectation(eu, 1, 1, "eu")
    assert expected["edge-4"] == Expectation(us, 2, 2, "us")
    assert expected["edge-6"] is None
    assert state.newest == Expectation(us, 2, 2, "us")

    # eu's canary succeeds, the next node fails: edge-1 runs a config no success set. A
    # release without a scope succeeds within its tolerance with edge-5 failed: edge-5 is
    # expected to run it and does not.
    failed = await released(
        store, n[0:3], [ok, NodeStatus.FAILED], ReleaseStatus.FAILED, scope="eu"
    )
    tolerated = await released(
        store, n[3:5], [ok, NodeStatus.FAILED], ReleaseStatus.SUCCESS, max_failures=1
    )

    state = await store.fleet_state()
    await each_alike(store, state)

    assert [entry.node.applied_version for entry in state.nodes] == [3, 1, 1, 4, 2, None]
    assert drifting(state) == {
        "edge-1": Expectation(eu, 1, 1, "eu"),
        "edge-5": Expectation(tolerated, 4, 4, None),
    }
    assert state.newest == Expectation(tolerated, 4, 4, None)
    assert [group.scope for group in state.scopes] == ["eu", "us", None]
    assert scope(state, "eu") == ScopeFleet(
        "eu", 2, Expectation(eu, 1, 1, "eu"), scope(state, "eu").newest_ended_at, 3, 2
    )
    # us's newest success still has two nodes, one of which a later release moved on.
    assert (scope(state, "us").releases, scope(state, "us").running_config) == (1, 1)
    unscoped = scope(state, None)
    assert (unscoped.newest, unscoped.release_nodes, unscoped.running_config) == (
        Expectation(tolerated, 4, 4, None),
        2,
        1,
    )

    # The rollback of the failed release restores config 1 on the nodes it touched; once it
    # succeeds it is what they are expected to run, with the config it restored.
    result = await store.steer(failed, Verb.ROLLBACK, by=ALICE, reason="bad canary")
    assert result.rollback is not None
    lease = await claim_one(store)
    assert lease.release_id == result.rollback.id
    await run_to(store, lease, [ok] * result.rollback.total_nodes)
    assert await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS))

    state = await store.fleet_state()
    await each_alike(store, state)

    assert set(drifting(state)) == {"edge-5"}
    rollback = Expectation(result.rollback.id, result.rollback.version, 1, "eu")
    assert {entry.node.name: entry.expected for entry in state.nodes}["edge-1"] == rollback
    assert scope(state, "eu").newest == rollback and scope(state, "eu").releases == 3
    assert scope(state, "eu").running_config == scope(state, "eu").release_nodes


async def test_releases_that_never_succeeded_leave_their_scope_without_expectation(
    store: Store,
) -> None:
    n = await add_nodes(store, 2)
    await released(store, n, [NodeStatus.FAILED], ReleaseStatus.FAILED, scope="apac")
    await store.create_release(ReleaseSpec(scope="apac", selection=on(*n)))

    state = await store.fleet_state()
    await each_alike(store, state)

    assert state.newest is None and drifting(state) == {}
    assert all(entry.expected is None for entry in state.nodes)
    assert state.scopes == (ScopeFleet("apac", 2, None, None, 0, 0),)


async def test_an_empty_store_has_no_nodes_and_no_scopes(store: Store) -> None:
    assert await store.fleet_state() == FleetState(nodes=(), scopes=())
    assert await store.node_expectation(424242) is None
    with pytest.raises(InvalidInput, match="node_id"):
        await store.node_expectation(0)


async def seed_success(store: Store, url: str | None, version: int, node: Node, ended: str) -> int:
    """A successful release of ``node`` as another program writes it: the original's columns,
    no finished_at, no config_version, last updated at ``ended`` ("now" or an ISO time)."""
    if isinstance(store, MemoryStore):
        release_id = store.insert_seed_release(version, [[node.id]], status="success")
        if ended != "now":
            store._releases[release_id].updated_at = datetime.fromisoformat(ended)
        return release_id
    assert url is not None
    updated = "now()" if ended == "now" else f"'{ended}'"
    output = await run_sql(
        url,
        "WITH r AS (INSERT INTO release_tasks (type, target, version, status, total_nodes,"
        f" success_nodes, failed_nodes, updated_at) VALUES ('apply_config', 'cdn', {version},"
        f" 'success', 1, 1, 0, {updated}) RETURNING id),"
        " n AS (INSERT INTO release_task_nodes (release_task_id, node_id, batch, status)"
        f" VALUES ((SELECT id FROM r), {node.id}, 1, 'success'))"
        " SELECT id FROM r",
    )
    return int(output.strip())


async def test_a_success_another_program_wrote_without_an_end_counts_from_its_last_update(
    store: Store, store_database_url: str | None
) -> None:
    n = await add_nodes(store, 2)
    ok = NodeStatus.SUCCESS
    first = await released(store, n, [ok, ok], ReleaseStatus.SUCCESS)
    # Updated after the first ended: it is newer, with its own version as its config. One
    # updated long before counts as older than the first.
    recent = await seed_success(store, store_database_url, 7, n[0], "now")
    await seed_success(store, store_database_url, 9, n[1], "2001-01-01T00:00:00+00:00")

    state = await store.fleet_state()
    await each_alike(store, state)

    assert drifting(state) == {"edge-1": Expectation(recent, 7, 7, None)}
    assert {e.node.name: e.expected for e in state.nodes}["edge-2"] == Expectation(
        first, 1, 1, None
    )
    assert scope(state, None).releases == 3
    assert scope(state, None).newest == Expectation(recent, 7, 7, None)
    assert state.newest == Expectation(recent, 7, 7, None)
    assert scope(state, None).newest_ended_at is not None
    assert scope(state, None).newest_ended_at > datetime(2002, 1, 1, tzinfo=UTC)
