"""The store contract of the verbs and of the version each node runs, on PostgresStore and
MemoryStore alike (the ``store`` fixture runs every test on both)."""

from __future__ import annotations

import pytest
import trio

from fleetwave.store.base import Store
from fleetwave.store.errors import Conflict, NotFound
from fleetwave.store.models import (
    Actor,
    Lease,
    NodeChange,
    NodeStatus,
    Outcome,
    ReleaseSpec,
    ReleaseStatus,
    Role,
)
from fleetwave.store.verbs import Verb
from tests.integration.test_store_contract import TTL, add_nodes, claim_one

BOB = Actor("bob", Role.OPERATOR)

ALICE = Actor("alice", Role.OPERATOR)


async def run_to(store: Store, lease: Lease, statuses: list[NodeStatus]) -> None:
    """Record each node of the release in turn: dispatched, then ``statuses[i]``."""
    nodes = await store.release_nodes(lease.release_id)
    for node, status in zip(nodes, statuses, strict=False):
        assert await store.record(
            lease, [NodeChange(node.id, NodeStatus.RUNNING, task_id="t", started=True)]
        )
        if status is not NodeStatus.RUNNING:
            assert await store.record(lease, [NodeChange(node.id, status, finished=True)])


async def finished(store: Store, statuses: list[NodeStatus], outcome: ReleaseStatus) -> int:
    await store.create_release(ReleaseSpec(plan=(1, "100%")))
    lease = await claim_one(store)
    await run_to(store, lease, statuses)
    assert await store.record(lease, [], Outcome(outcome))
    return lease.release_id


async def test_pause_of_a_pending_release_holds_it_and_resume_puts_it_back(store: Store) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec())

    paused = await store.steer(created.release.id, Verb.PAUSE, by=ALICE, reason="wait")

    assert paused.changed and not paused.wait
    assert paused.release.status is ReleaseStatus.PAUSED
    assert paused.release.verb == "pause" and paused.release.verb_by == "alice"
    assert await store.claim("daemon-a", 5, TTL) == []
    effect = await store.verb_effect(created.release.id, paused.release.verb_seq)
    assert effect.in_effect and effect.owner is None
    repeat = await store.steer(created.release.id, Verb.PAUSE, by=ALICE)
    assert not repeat.changed and repeat.release.verb_seq == paused.release.verb_seq

    resumed = await store.steer(created.release.id, Verb.RESUME, by=BOB)

    assert resumed.release.status is ReleaseStatus.PENDING  # never started: back in line
    [claim] = await store.claim("daemon-a", 5, TTL)
    assert claim.release.id == created.release.id
    events = await store.release_events(created.release.id)
    messages = [event.message for event in events]
    assert "pause by alice: wait" in messages and "resume by bob" in messages


async def test_a_paused_release_keeps_later_releases_of_its_nodes_waiting(store: Store) -> None:
    await add_nodes(store, 1)
    first = await store.create_release(ReleaseSpec())
    await store.steer(first.release.id, Verb.PAUSE, by=ALICE)
    await store.create_release(ReleaseSpec())

    assert await store.claim("daemon-a", 5, TTL) == []


async def test_verbs_refused_in_a_state_name_it_and_the_allowed_ones(store: Store) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())

    with pytest.raises(Conflict, match="is pending: retry is not allowed; allowed in pending: "
                       "pause, cancel"):  # fmt: skip
        await store.steer(created.release.id, Verb.RETRY, by=ALICE)
    with pytest.raises(Conflict, match="is pending: rollback is not allowed"):
        await store.steer(created.release.id, Verb.ROLLBACK, by=ALICE)
    with pytest.raises(NotFound):
        await store.steer(created.release.id + 1000, Verb.PAUSE, by=ALICE)
    after = await store.get_release(created.release.id)
    assert after is not None and after.verb is None and after.verb_seq == 0


async def test_pause_of_a_running_release_waits_for_its_owner(store: Store) -> None:
    await add_nodes(store, 3)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store)

    paused = await store.steer(lease.release_id, Verb.PAUSE, by=ALICE)

    assert paused.wait and paused.release.status is ReleaseStatus.PAUSED
    seq = paused.release.verb_seq
    effect = await store.verb_effect(lease.release_id, seq)
    assert not effect.in_effect and effect.owner == "daemon-a"
    assert effect.lease_left is not None and 0 < effect.lease_left <= TTL
    # The owner reads it at its lease renewal, writes on (in-flight nodes), acknowledges.
    held = await store.heartbeat("daemon-a", [lease], TTL)
    assert held[lease.release_id].status is ReleaseStatus.PAUSED
    assert held[lease.release_id].verb_seq == seq
    nodes = await store.release_nodes(lease.release_id)
    assert await store.record(lease, [NodeChange(nodes[0].id, NodeStatus.RUNNING, started=True)])
    assert await store.acknowledge(lease, seq)
    assert (await store.verb_effect(lease.release_id, seq)).acknowledged
    assert await store.record(lease, [NodeChange(nodes[0].id, NodeStatus.SUCCESS, finished=True)])

    state = await store.park(lease)

    assert state is not None and state.status is ReleaseStatus.PAUSED
    parked = await store.get_release(lease.release_id)
    assert parked is not None and parked.lease_owner is None
    assert await store.heartbeat("daemon-a", [lease], TTL) == {}
    assert not await store.record(lease, [])  # a parked lease writes nothing
    assert await store.park(lease) is None
    assert await store.claim("daemon-b", 5, TTL) == []

    await store.steer(lease.release_id, Verb.RESUME, by=ALICE)
    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.lease.epoch == lease.epoch + 1


async def test_a_resume_before_the_park_keeps_the_lease(store: Store) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    await store.steer(lease.release_id, Verb.PAUSE, by=ALICE)
    await store.steer(lease.release_id, Verb.RESUME, by=ALICE)

    state = await store.park(lease)

    assert state is not None and state.status is ReleaseStatus.RUNNING
    assert await store.record(lease, [])


async def test_cancel_of_a_pending_release_skips_its_nodes_with_the_reason(store: Store) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec())

    result = await store.steer(created.release.id, Verb.CANCEL, by=ALICE, reason="bad config")

    assert not result.wait
    assert result.release.status is ReleaseStatus.CANCELLED
    assert result.release.error == "release cancelled: bad config"
    assert result.release.skipped_nodes == 3
    nodes = await store.release_nodes(created.release.id)
    assert {node.error_msg for node in nodes} == {"release cancelled: bad config"}
    assert all(node.status is NodeStatus.SKIPPED for node in nodes)
    # Its nodes are free: the next release runs.
    await store.create_release(ReleaseSpec())
    assert len(await store.claim("daemon-a", 5, TTL)) == 1


async def test_cancel_of_a_running_release_is_completed_by_its_owner(store: Store) -> None:
    await add_nodes(store, 3)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    await run_to(store, lease, [NodeStatus.RUNNING])

    result = await store.steer(lease.release_id, Verb.CANCEL, by=ALICE, reason="stop")

    assert result.wait and result.release.cancelling
    assert result.release.status is ReleaseStatus.RUNNING
    held = await store.heartbeat("daemon-a", [lease], TTL)
    assert held[lease.release_id].cancel_requested
    repeat = await store.steer(lease.release_id, Verb.CANCEL, by=BOB)
    assert not repeat.changed
    nodes = await store.release_nodes(lease.release_id)
    assert await store.record(
        lease,
        [NodeChange(nodes[0].id, NodeStatus.CANCELLED, finished=True)],
        Outcome(ReleaseStatus.CANCELLED, "release cancelled: stop"),
    )
    ended = await store.get_release(lease.release_id)
    assert ended is not None and ended.status is ReleaseStatus.CANCELLED
    later = [node for node in await store.release_nodes(lease.release_id)][1:]
    assert {node.error_msg for node in later} == {"release cancelled: stop"}


async def test_cancel_of_a_paused_release_with_open_nodes_goes_back_to_a_daemon(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store, ttl=0.2)
    await run_to(store, lease, [NodeStatus.RUNNING])
    await trio.sleep(0.4)  # its owner died: the lease expired
    paused = await store.steer(lease.release_id, Verb.PAUSE, by=ALICE)
    assert not paused.wait and paused.release.status is ReleaseStatus.PAUSED

    result = await store.steer(lease.release_id, Verb.CANCEL, by=ALICE)

    # A dispatched node must be asked: a daemon claims the release to reconcile it.
    assert result.release.cancelling and not result.wait
    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.release.cancelling and claim.release.verb_seq > claim.release.verb_acked


async def test_success_records_the_applied_version_and_the_next_release_the_previous(
    store: Store,
) -> None:
    [node] = await add_nodes(store, 1)
    assert node.applied_version is None
    await store.create_release(ReleaseSpec())
    lease = await claim_one(store)
    await run_to(store, lease, [NodeStatus.SUCCESS])
    [after] = await store.list_nodes()
    assert (after.applied_version, after.applied_release_version) == (1, 1)
    assert after.applied_at is not None
    assert await store.record(lease, [], Outcome(ReleaseStatus.SUCCESS))

    await store.create_release(ReleaseSpec())
    second = await claim_one(store)
    await run_to(store, second, [NodeStatus.FAILED])

    [row] = await store.release_nodes(second.release_id)
    assert row.previous_version == 1
    [still] = await store.list_nodes()
    assert still.applied_version == 1  # a failure changes nothing of what it runs


async def test_retry_reruns_what_did_not_succeed_under_the_next_attempt(store: Store) -> None:
    await add_nodes(store, 4)
    release_id = await finished(
        store, [NodeStatus.SUCCESS, NodeStatus.FAILED, NodeStatus.SUCCESS], ReleaseStatus.FAILED
    )

    result = await store.steer(release_id, Verb.RETRY, by=ALICE, reason="fixed")

    assert result.changed and result.release.status is ReleaseStatus.RUNNING
    assert (result.release.success_nodes, result.release.failed_nodes) == (2, 0)
    assert result.release.error is None and result.release.finished_at is None
    nodes = await store.release_nodes(release_id)
    assert [node.status for node in nodes] == [
        NodeStatus.SUCCESS,
        NodeStatus.PENDING,
        NodeStatus.SUCCESS,
        NodeStatus.PENDING,
    ]
    assert [node.attempt for node in nodes] == [1, 2, 1, 1]  # the skipped one never ran
    assert nodes[1].task_id is None and nodes[1].started_at is None
    [claim] = await store.claim("daemon-b", 5, TTL)
    assert claim.release.id == release_id
    repeat = await store.steer(release_id, Verb.RETRY, by=ALICE)
    assert not repeat.changed  # already running: a repeat changes nothing


async def test_retry_of_a_release_superseded_by_a_newer_success_is_refused(store: Store) -> None:
    await add_nodes(store, 2)
    old = await finished(store, [NodeStatus.FAILED], ReleaseStatus.FAILED)
    await finished(store, [NodeStatus.SUCCESS, NodeStatus.SUCCESS], ReleaseStatus.SUCCESS)

    with pytest.raises(Conflict, match="superseded by version 2"):
        await store.steer(old, Verb.RETRY, by=ALICE)


async def test_rollback_restores_the_previous_config_in_the_rolled_back_order(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await finished(store, [NodeStatus.SUCCESS] * 4, ReleaseStatus.SUCCESS)
    bad = await finished(
        store, [NodeStatus.SUCCESS, NodeStatus.SUCCESS, NodeStatus.FAILED], ReleaseStatus.FAILED
    )

    result = await store.steer(bad, Verb.ROLLBACK, by=ALICE, reason="errors")

    rollback = result.rollback
    assert rollback is not None and rollback.status is ReleaseStatus.PENDING
    assert rollback.config_version == 1 and rollback.version == 3
    assert rollback.rollback_of == bad and rollback.plan == (1, "100%")
    nodes = await store.release_nodes(rollback.id)
    original = [node.node_id for node in await store.release_nodes(bad)]
    assert [node.node_id for node in nodes] == original[:3]  # the skipped one runs config 1
    assert [node.batch for node in nodes] == [1, 2, 2]
    assert rollback.selection is not None  # its nodes, by id, as the rollback chose them
    assert rollback.selection.node_ids == tuple(original[:3])
    repeat = await store.steer(bad, Verb.ROLLBACK, by=BOB)
    assert not repeat.changed and repeat.rollback is not None
    assert repeat.rollback.id == rollback.id


async def test_rollback_needs_a_good_version(store: Store) -> None:
    await add_nodes(store, 2)
    first = await finished(store, [NodeStatus.SUCCESS] * 2, ReleaseStatus.SUCCESS)

    with pytest.raises(Conflict, match="no good version known"):
        await store.steer(first, Verb.ROLLBACK, by=ALICE)
    with pytest.raises(Conflict, match="config version 7 never succeeded"):
        await store.steer(first, Verb.ROLLBACK, by=ALICE, to_version=7)
    with pytest.raises(Conflict, match="is the one release"):
        await store.steer(first, Verb.ROLLBACK, by=ALICE, to_version=1)


async def test_rollback_over_nodes_that_ran_different_configs_asks_for_one(
    store: Store,
) -> None:
    await add_nodes(store, 2)
    await finished(store, [NodeStatus.SUCCESS, NodeStatus.SUCCESS], ReleaseStatus.SUCCESS)
    await finished(store, [NodeStatus.SUCCESS], ReleaseStatus.SUCCESS)  # node 1 only
    bad = await finished(store, [NodeStatus.SUCCESS, NodeStatus.SUCCESS], ReleaseStatus.SUCCESS)

    with pytest.raises(Conflict, match=r"ran different configs before it \(1, 2\).*toVersion"):
        await store.steer(bad, Verb.ROLLBACK, by=ALICE)
    result = await store.steer(bad, Verb.ROLLBACK, by=ALICE, to_version=1)
    assert result.rollback is not None and result.rollback.config_version == 1


async def test_rollback_pauses_pending_newer_releases_of_its_nodes(store: Store) -> None:
    await add_nodes(store, 2)
    await finished(store, [NodeStatus.SUCCESS] * 2, ReleaseStatus.SUCCESS)
    bad = await finished(store, [NodeStatus.SUCCESS] * 2, ReleaseStatus.SUCCESS)
    newer = await store.create_release(ReleaseSpec())

    result = await store.steer(bad, Verb.ROLLBACK, by=ALICE)

    assert [release.id for release in result.held] == [newer.release.id]
    held = await store.get_release(newer.release.id)
    assert held is not None and held.status is ReleaseStatus.PAUSED
    assert result.rollback is not None and held.held_for == result.rollback.id
    # The rollback runs first; the held release waits.
    [claim] = await store.claim("daemon-a", 5, TTL)
    assert claim.release.id == result.rollback.id
