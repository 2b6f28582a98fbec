"""Strategies in simulated time: pauses between batches (bakes and gates), promote, and
failure budgets, with real supervisors and actors, MemoryStore and in-process agents."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.api.schemas import parse_release_spec, step_item
from fleetwave.api.verbs import promote
from fleetwave.store.errors import Conflict
from fleetwave.store.models import Actor, NodeStatus, Release, ReleaseNode, ReleaseStatus, Role
from fleetwave.store.verbs import Verb
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim

OPS = Actor("ops", Role.OPERATOR)
FAIL = Behaviour(apply_time=(5, 5), fail="config test failed")


async def create(sim: Sim, **fields: object) -> int:
    """A release created from the API's body (its validation included)."""
    created = await sim.store.create_release(parse_release_spec({"target": "cdn", **fields}))
    return created.release.id


async def release_of(sim: Sim, release_id: int) -> Release:
    release = await sim.store.get_release(release_id)
    assert release is not None
    return release


async def wait_step(sim: Sim, release_id: int, kind: str) -> Release:
    """The release once it is at a pause of ``kind`` (bake or gate)."""
    with trio.fail_after(3600):
        while True:
            release = await release_of(sim, release_id)
            step = step_item(release)
            if step is not None and step["kind"] == kind:
                return release
            await trio.sleep(0.5)


def batch_of(nodes: Sequence[ReleaseNode], batch: int) -> list[ReleaseNode]:
    return [node for node in nodes if node.batch == batch]


async def messages(sim: Sim, release_id: int) -> list[str]:
    return [event.message or "" for event in await sim.store.release_events(release_id)]


async def test_a_bake_holds_the_next_batch_for_its_seconds_then_the_release_goes_on(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, plan=[1, {"pause": 300}, "100%"])

    baking = await wait_step(sim, release_id, "bake")
    step = step_item(baking)
    assert step is not None and step["batch"] == 1 and step["position"] == 1
    assert baking.step_ends_at is not None
    assert step["until"] is not None and str(step["until"]).endswith("Z")
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in batch_of(nodes, 2)] == [NodeStatus.PENDING] * 3

    release = await sim.wait_terminal(release_id)
    assert release.status is ReleaseStatus.SUCCESS
    nodes = await sim.store.release_nodes(release_id)
    [canary] = batch_of(nodes, 1)
    assert canary.finished_at is not None
    for node in batch_of(nodes, 2):
        assert node.started_at is not None
        held = (node.started_at - canary.finished_at).total_seconds()
        assert 300 <= held < 302
    assert 300 <= (baking.step_ends_at - canary.finished_at).total_seconds() < 301
    events = await messages(sim, release_id)
    assert "step 1: bake 300s" in events and "step 1: bake ended" in events
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_gate_waits_until_promote_then_the_next_batch_runs(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(3, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, plan=[1, {"pause": None}, "100%"])

    await wait_step(sim, release_id, "gate")
    await trio.sleep(24 * 3600)  # a day later it still waits
    gated = await release_of(sim, release_id)
    assert gated.status is ReleaseStatus.RUNNING
    assert gated.step_ends_at is None
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in batch_of(nodes, 2)] == [NodeStatus.PENDING] * 2

    promoted_at = trio.current_time()
    answer = await promote(sim.store, release_id, by=OPS, reason="canary looks good")
    assert answer.result.changed and answer.effect.acknowledged
    assert "promote in effect" in answer.message

    release = await sim.wait_terminal(release_id)
    assert release.status is ReleaseStatus.SUCCESS
    assert release.verb == "promote" and release.verb_by == "ops"
    assert trio.current_time() - promoted_at < 60
    events = await messages(sim, release_id)
    assert "step 1: gate: waits for promote" in events
    assert "promote by ops (gate after batch 1 passed): canary looks good" in events
    assert "step 1: promoted" in events
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_promote_ends_a_bake_early(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(2, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, plan=[1, {"pause": 3600}, "100%"])

    await wait_step(sim, release_id, "bake")
    started = trio.current_time()
    await promote(sim.store, release_id, by=OPS)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert trio.current_time() - started < 60


async def test_promote_full_skips_every_remaining_step(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    release_id = await create(
        sim, plan=[1, {"pause": None}, 1, {"pause": 600}, 1, {"pause": None}, "100%"]
    )

    await wait_step(sim, release_id, "gate")
    started = trio.current_time()
    answer = await promote(sim.store, release_id, by=OPS, full=True)
    assert "promote by ops (full: 3 remaining pause(s) skipped)" in await messages(sim, release_id)
    assert answer.result.release.promoted_to == 7  # the schedule has 7 steps
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert trio.current_time() - started < 120
    events = await messages(sim, release_id)
    # The later pauses are recorded as passed, none of them held.
    assert "step 3: promoted" in events and "step 5: promoted" in events
    assert not [text for text in events if "bake 600s" in text]
    assert events.count("step 1: gate: waits for promote") == 1
    assert "step 5: gate: waits for promote" not in events


async def test_promote_is_refused_when_the_release_is_not_at_a_pause(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(2, behaviour=Behaviour(apply_time=(50, 60)))
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, plan=[1, {"pause": None}, "100%"])
    await sim.wait_for(lambda: sim.store._releases[release_id].status is ReleaseStatus.RUNNING)

    with pytest.raises(Conflict, match="is not at a pause: nothing to promote"):
        await sim.store.promote(release_id, by=OPS)
    await wait_step(sim, release_id, "gate")
    await promote(sim.store, release_id, by=OPS)
    again = await sim.store.promote(release_id, by=OPS, full=True)
    assert again.changed  # nothing was left to skip but the schedule's end is recorded
    release = await sim.wait_terminal(release_id)
    with pytest.raises(Conflict, match="is success: promote applies to a running release"):
        await sim.store.promote(release.id, by=OPS, full=True)


async def test_a_new_owner_resumes_a_bake_where_the_row_says_it_ends(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(2, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await create(sim, plan=[1, {"pause": 1000}, "100%"])
    baking = await wait_step(sim, release_id, "bake")
    assert baking.step_ends_at is not None
    await trio.sleep(100)
    first.crash()  # gone without a word: the next owner claims it once the lease expires
    await sim.start_daemon("sim-b")

    release = await sim.wait_terminal(release_id)
    assert release.status is ReleaseStatus.SUCCESS
    nodes = await sim.store.release_nodes(release_id)
    [second] = batch_of(nodes, 2)
    assert second.started_at is not None
    # The bake ended when the row said, not 1000 s after the new owner claimed it.
    assert abs((second.started_at - baking.step_ends_at).total_seconds()) < 15
    events = await messages(sim, release_id)
    assert events.count("step 1: bake 1000s") == 1


async def test_a_failed_canary_stops_the_release_even_with_max_failures_1(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    release = await run_with_failures(make_sim, 20, (1,), maxFailures=1)

    assert release.status is ReleaseStatus.FAILED
    assert (release.failed_nodes, release.success_nodes, release.skipped_nodes) == (1, 0, 19)
    assert (
        release.error is not None
        and "1 of 1 node(s) of the canary failed, beyond its budget" in release.error
    )


async def test_a_canary_with_its_own_budget_may_fail_and_the_release_goes_on(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    release = await run_with_failures(
        make_sim, 20, (1,), plan=[{"batch": 1, "maxFailures": 1}, "100%"], maxFailures=1
    )

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.failed_nodes, release.success_nodes) == (1, 19)


async def run_with_failures(
    make_sim: Callable[..., Sim], nodes: int, failing: Sequence[int], **fields: object
) -> Release:
    """A release over ``nodes`` nodes of which those numbered in ``failing`` fail, to its end."""
    sim = make_sim(
        nodes, behaviour=Behaviour(apply_time=(5, 10)), overrides=[(k, FAIL) for k in failing]
    )
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, **fields)
    release = await sim.wait_terminal(release_id)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    return release


PER_BATCH_10 = {"plan": [{"batch": "50%", "maxFailurePercent": 10}], "maxFailures": 100}
RELEASE_10 = {"plan": [{"batch": "50%", "maxFailures": 5}], "maxFailurePercent": 10}


@pytest.mark.parametrize(
    ("nodes", "failing", "fields", "status", "error"),
    [
        # Each batch's own 10% allows 1 of its 10 nodes: one per batch goes through...
        (20, (1, 11), PER_BATCH_10, ReleaseStatus.SUCCESS, None),
        # ...two in the first batch do not, and the second batch never runs.
        (20, (1, 2), PER_BATCH_10, ReleaseStatus.FAILED, "2 of 10 node(s) of the canary failed"),
        # The release's 10% of 20 allows exactly 2, counted over both batches...
        (20, (2, 12), RELEASE_10, ReleaseStatus.SUCCESS, None),
        # ...and not 3.
        (20, (2, 12, 13), RELEASE_10, ReleaseStatus.FAILED, "3 of 20 node(s) failed, beyond"),
        # A count at its edge, and one above it.
        (10, (3, 4), {"plan": [2, "100%"], "maxFailures": 2}, ReleaseStatus.SUCCESS, None),
        (10, (3, 4, 5), {"plan": [2, "100%"], "maxFailures": 2}, ReleaseStatus.FAILED, "3 of 10"),
        # 1 failure among 20 is within 10%, but it is the whole of its batch of one.
        (20, (3,), {"plan": [2, 1, "100%"], "maxFailurePercent": 10}, ReleaseStatus.FAILED, ""),
    ],
)
async def test_failure_budgets_at_their_edges(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
    nodes: int,
    failing: tuple[int, ...],
    fields: dict[str, object],
    status: ReleaseStatus,
    error: str | None,
) -> None:
    release = await run_with_failures(make_sim, nodes, failing, **fields)

    assert release.status is status
    if error is None:
        assert release.failed_nodes == len(failing)
        assert release.success_nodes == nodes - len(failing)
    else:
        assert release.error is not None and error in release.error


async def test_on_failure_pause_pauses_the_release_and_resume_ends_it_failed(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6, behaviour=Behaviour(apply_time=(5, 10)), overrides=[(1, FAIL)])
    await sim.register()
    await sim.start_daemon()
    release_id = await create(sim, onFailure="pause")

    with trio.fail_after(3600):
        while True:
            paused = await release_of(sim, release_id)
            if paused.status is ReleaseStatus.PAUSED and paused.lease_owner is None:
                break
            await trio.sleep(0.5)
    assert paused.verb == "pause" and paused.verb_by == "onFailure of daemon sim-a"
    assert paused.verb_reason is not None
    assert paused.verb_reason.startswith("onFailure pause: node edge-001 (127.0.0.2) failed")
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in batch_of(nodes, 2)] == [NodeStatus.PENDING] * 5
    await trio.sleep(3600)  # it stays paused: the operator decides
    assert (await release_of(sim, release_id)).status is ReleaseStatus.PAUSED

    await sim.store.steer(release_id, Verb.RESUME, by=OPS)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    assert (release.failed_nodes, release.skipped_nodes) == (1, 5)
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_on_failure_rollback_restores_the_previous_config_at_once(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    good = await create(sim)
    assert (await sim.wait_terminal(good)).status is ReleaseStatus.SUCCESS
    sim.fleet.set_behaviour(3, FAIL)
    bad = await create(sim, plan=[2, "100%"], onFailure="rollback", maxFailures=0)

    failed = await sim.wait_terminal(bad)

    assert failed.status is ReleaseStatus.FAILED
    with trio.fail_after(3600):
        while True:
            releases, _ = await sim.store.list_releases()
            rollbacks = [r for r in releases if r.rollback_of == bad]
            if rollbacks and rollbacks[0].status.terminal:
                break
            await trio.sleep(1)
    [rollback] = rollbacks
    assert rollback.config_version == (await release_of(sim, good)).version
    assert rollback.reason.startswith("rollback of version 2 to config 1 by onFailure of")
    # Every node runs the good config again (the failing one never left it).
    assert {node.applied_version for node in await sim.store.list_nodes()} == {1}
    assert "rollback by onFailure of daemon sim-a" in " ".join(await messages(sim, bad))
