"""The store contract of strategies: the strategy, step, bake end and promote columns of a
release, on PostgresStore and MemoryStore alike (the ``store`` fixture runs both)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleetwave.store.base import Store
from fleetwave.store.errors import Conflict, InvalidInput
from fleetwave.store.models import Actor, ReleaseSpec, ReleaseStatus, Role
from fleetwave.store.strategy import current_step, validate_strategy
from tests.integration.test_store_contract import TTL, add_nodes, claim_one

ALICE = Actor("alice", Role.OPERATOR)
GATED = validate_strategy([1, {"pause": 120}, 1, {"pause": None}, "100%"], None, 20, "pause")


def gated_spec() -> ReleaseSpec:
    return ReleaseSpec(plan=GATED.plan, strategy=GATED.to_json())


async def test_a_release_keeps_its_strategy_and_starts_at_step_0(store: Store) -> None:
    await add_nodes(store, 4)
    created = await store.create_release(gated_spec())

    release = await store.get_release(created.release.id)

    assert release is not None
    assert release.strategy == GATED.to_json()
    assert release.plan == (1, 1, "100%")
    assert (release.step, release.step_ends_at, release.promoted_to) == (0, None, 0)
    step = current_step(release)
    assert step is not None and step.kind == "batch"


async def test_a_strategy_whose_plan_differs_from_the_sizes_is_refused(store: Store) -> None:
    await add_nodes(store, 2)
    with pytest.raises(InvalidInput, match="plan: differs from the strategy"):
        await store.create_release(ReleaseSpec(plan=(1,), strategy=GATED.to_json()))
    with pytest.raises(InvalidInput, match=r"plan\[1\]: unknown step kind"):
        await store.create_release(
            ReleaseSpec(plan=(1,), strategy={"plan": [1, {"hold": 1}], "maxFailures": 0})
        )
    assert (await store.list_releases())[1] == 0


async def test_record_step_is_fenced_and_stamps_the_bake_end_by_the_store_clock(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await store.create_release(gated_spec())
    lease = await claim_one(store)

    assert await store.record_step(lease, 1, "step 1: bake 120s", bake=120, daemon_id="daemon-a")

    release = await store.get_release(lease.release_id)
    assert release is not None and release.step == 1
    assert release.step_ends_at is not None
    ends_in = release.step_ends_at - release.updated_at
    assert timedelta(seconds=119) <= ends_in <= timedelta(seconds=121)
    step = current_step(release)
    assert step is not None and step.kind == "bake" and step.batch == 1
    events = await store.release_events(lease.release_id)
    assert events[-1].message == "step 1: bake 120s" and events[-1].daemon_id == "daemon-a"
    # A step without a message clears the bake end and writes no event.
    assert await store.record_step(lease, 2, None)
    release = await store.get_release(lease.release_id)
    assert release is not None and (release.step, release.step_ends_at) == (2, None)
    assert len(await store.release_events(lease.release_id)) == len(events)
    stale = type(lease)(lease.release_id, lease.epoch + 1)
    assert not await store.record_step(stale, 3, "stale")


async def test_promote_passes_the_pause_the_release_is_at_and_the_owner_reads_it(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    await store.create_release(gated_spec())
    lease = await claim_one(store)
    with pytest.raises(Conflict, match="is not at a pause"):
        await store.promote(lease.release_id, by=ALICE)
    assert await store.record_step(lease, 3, "step 3: gate: waits for promote")

    promoted = await store.promote(lease.release_id, by=ALICE, reason="looks good")

    assert promoted.changed and promoted.wait
    assert promoted.release.promoted_to == 4 and promoted.release.verb == "promote"
    held = await store.heartbeat("daemon-a", [lease], TTL)
    assert held[lease.release_id].promoted_to == 4
    assert held[lease.release_id].verb_seq == promoted.release.verb_seq
    again = await store.promote(lease.release_id, by=ALICE)
    assert not again.changed  # already past this gate
    events = await store.release_events(lease.release_id)
    assert events[-1].message == "promote by alice (gate after batch 2 passed): looks good"
    assert events[-1].actor == ALICE


async def test_promote_full_applies_to_a_pending_release_and_not_to_an_ended_one(
    store: Store,
) -> None:
    await add_nodes(store, 4)
    created = await store.create_release(gated_spec())
    release_id = created.release.id
    with pytest.raises(Conflict, match="is not at a pause"):
        await store.promote(release_id, by=ALICE)

    full = await store.promote(release_id, by=ALICE, full=True)

    assert full.changed and not full.wait
    assert full.release.status is ReleaseStatus.PENDING
    assert full.release.promoted_to == 5  # batches 1, 2, 3 and the two pauses
    [claim] = await store.claim("daemon-a", 5, TTL)
    assert claim.release.promoted_to == 5
