"""Operator verbs in simulated time: real supervisors and actors, MemoryStore, in-process
agents. Verbs are applied the way the API applies them (api.verbs.steer: the store's
compare-and-set, then a wait until the verb is in effect)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.api.verbs import VerbAnswer, steer
from fleetwave.store.errors import Conflict
from fleetwave.store.models import Actor, NodeStatus, ReleaseStatus, Role, task_id_for
from fleetwave.store.verbs import Verb
from tests.invariants import (
    assert_applied_versions,
    assert_no_dispatch_while_stopped,
    assert_node_exclusion,
    assert_release_invariants,
    assert_rollback_follows_plan,
)
from tests.sim.conftest import Sim

OPS = Actor("ops", Role.OPERATOR)

TEST = Actor("test", Role.OPERATOR)


async def verb(sim: Sim, release_id: int, name: Verb, **options: object) -> VerbAnswer:
    return await steer(sim.store, release_id, name, by=OPS, **options)  # type: ignore[arg-type]


def to_first(name: Verb) -> dict[str, object]:
    """A rollback names the first release's config, known good (nodes may have run several)."""
    return {"to_version": 1} if name is Verb.ROLLBACK else {}


async def count(sim: Sim, release_id: int, status: NodeStatus) -> int:
    return sum(node.status is status for node in await sim.store.release_nodes(release_id))


async def wait_count(sim: Sim, release_id: int, status: NodeStatus, at_least: int) -> None:
    with trio.fail_after(3600):
        while await count(sim, release_id, status) < at_least:  # noqa: ASYNC110 - store state
            await trio.sleep(0.1)


async def wait_status(sim: Sim, release_id: int, status: ReleaseStatus) -> None:
    with trio.fail_after(3600):
        while True:
            release = await sim.store.get_release(release_id)
            assert release is not None
            if release.status is status and release.lease_owner is None:
                return
            await trio.sleep(0.1)


async def test_pause_mid_batch_stops_dispatch_and_resume_goes_on_where_it_stopped(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(12)
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, "100%"), max_parallel=2)
    await wait_count(sim, release_id, NodeStatus.SUCCESS, 3)

    paused = await verb(sim, release_id, Verb.PAUSE, reason="looks slow")
    stopped_at = trio.current_time()

    assert paused.result.changed and paused.effect.in_effect
    assert paused.effect.acknowledged and paused.owner == "sim-a"
    assert paused.waited < 1.0  # the NOTIFY reaches the owner at once
    await wait_status(sim, release_id, ReleaseStatus.PAUSED)  # in-flight nodes finished
    await trio.sleep(120)
    nodes = await sim.store.release_nodes(release_id)
    assert not any(node.status is NodeStatus.RUNNING for node in nodes)
    held_back = sum(node.status is NodeStatus.PENDING for node in nodes)
    assert held_back >= 5
    again = await verb(sim, release_id, Verb.PAUSE)
    assert not again.result.changed and again.effect.in_effect  # a repeat is a no-op

    resumed_at = trio.current_time()  # dispatches may start before the answer returns
    resumed = await verb(sim, release_id, Verb.RESUME, reason="fine after all")
    assert resumed.result.changed and resumed.result.release.status is ReleaseStatus.RUNNING
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 12
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at, resumed_at)
    for node in nodes:  # a finished node is never sent again
        assert sim.fleet.dispatch_count(node.main_ip, task_id_for(node.main_ip, 1)) == 1
    events = await sim.store.release_events(release_id)
    texts = [event.message or "" for event in events if event.node_id is None]
    assert "pause by ops: looks slow" in texts and "resume by ops: fine after all" in texts
    assert any(text.startswith("lease released by sim-a") for text in texts)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


async def test_cancel_mid_batch_reconciles_dispatched_nodes_and_skips_the_rest(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(10)
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, "100%"), max_parallel=3)
    await wait_count(sim, release_id, NodeStatus.SUCCESS, 2)

    cancelled = await verb(sim, release_id, Verb.CANCEL, reason="bad config")
    stopped_at = trio.current_time()
    assert cancelled.effect.acknowledged and cancelled.owner == "sim-a"
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.CANCELLED
    assert release.error is not None and release.error.startswith("release cancelled: bad config")
    nodes = await sim.store.release_nodes(release_id)
    skipped = [node for node in nodes if node.status is NodeStatus.SKIPPED]
    assert skipped and all(node.error_msg == "release cancelled: bad config" for node in skipped)
    for node in skipped:
        assert sim.fleet.task_ids(node.main_ip) == set()
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    repeat = await verb(sim, release_id, Verb.CANCEL)
    assert not repeat.result.changed

    # Its nodes are free for the next release.
    following = await sim.create()
    assert (await sim.wait_terminal(following)).status is ReleaseStatus.SUCCESS
    await assert_applied_versions(sim.store, sim.fleet)


async def failing_batch(make_sim: Callable[..., Sim]) -> tuple[Sim, int]:
    """A release whose batch 2 is being cancelled for a failure: node 3 failed early, its
    siblings answer slowly, so reconciling them takes a while."""
    slow = Behaviour(apply_time=(20, 30), delay=2.0)
    sim = make_sim(
        8,
        behaviour=slow,
        overrides=[(1, Behaviour(apply_time=(1, 1))), (3, Behaviour(apply_time=(4, 4), fail="x"))],
    )
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, "100%"))
    await wait_count(sim, release_id, NodeStatus.FAILED, 1)
    return sim, release_id


async def test_cancel_while_the_batch_is_being_cancelled_for_a_failure(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim, release_id = await failing_batch(make_sim)

    answer = await verb(sim, release_id, Verb.CANCEL, reason="stop it")
    stopped_at = trio.current_time()
    release = await sim.wait_terminal(release_id)

    assert answer.effect.in_effect
    assert release.status is ReleaseStatus.CANCELLED
    assert release.error is not None and "stop it" in release.error
    nodes = await sim.store.release_nodes(release_id)
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at)
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_pause_during_a_takeover_waits_for_the_dead_owners_lease(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(8)
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create(plan=(1, "100%"), max_parallel=2)
    await wait_count(sim, release_id, NodeStatus.SUCCESS, 2)
    first.crash()

    paused = await verb(sim, release_id, Verb.PAUSE, reason="owner died")
    stopped_at = trio.current_time()

    assert paused.effect.in_effect and paused.lease_expired
    assert paused.owner == "sim-a" and 0 < paused.waited <= 31
    assert "did not acknowledge" in paused.message
    second = await sim.start_daemon("sim-b")
    await trio.sleep(90)
    assert second.claimed == 0  # a paused release is not claimed
    release = await sim.store.get_release(release_id)
    assert release is not None and release.status is ReleaseStatus.PAUSED
    assert release.lease_expires_at is not None  # the dead owner's, expired: nobody holds it
    assert release.lease_expires_at < sim.store.now()

    resumed_at = trio.current_time()
    await verb(sim, release_id, Verb.RESUME)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and second.claimed == 1
    nodes = await sim.store.release_nodes(release_id)
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at, resumed_at)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


async def test_cancel_during_a_takeover_is_completed_by_the_next_owner(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(8, behaviour=Behaviour(apply_time=(20, 40)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create(plan=(1, "100%"))
    await wait_count(sim, release_id, NodeStatus.RUNNING, 3)
    first.crash()

    answer = await verb(sim, release_id, Verb.CANCEL, reason="owner died")
    stopped_at = trio.current_time()
    assert answer.effect.in_effect and answer.lease_expired
    assert answer.result.release.cancelling
    await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.CANCELLED
    nodes = await sim.store.release_nodes(release_id)
    # The nodes the dead owner dispatched were asked, not guessed.
    assert all(node.status is not NodeStatus.RUNNING for node in nodes)
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


async def test_retry_runs_again_only_what_did_not_succeed_under_new_task_ids(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6, overrides=[(4, Behaviour(apply_time=(3, 3), fail="disk full"))])
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, 2, "100%"))
    failed = await sim.wait_terminal(release_id)
    assert failed.status is ReleaseStatus.FAILED
    before = {node.node_id: node for node in await sim.store.release_nodes(release_id)}
    succeeded = {node.main_ip for node in before.values() if node.status is NodeStatus.SUCCESS}
    assert succeeded

    sim.fleet.set_behaviour(4, Behaviour(apply_time=(3, 3)))  # the operator fixed the disk
    answer = await verb(sim, release_id, Verb.RETRY, reason="disk cleaned")
    assert answer.result.changed and answer.result.release.status is ReleaseStatus.RUNNING
    assert answer.result.release.failed_nodes == 0
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 6
    nodes = await sim.store.release_nodes(release_id)
    for node in nodes:
        first = task_id_for(node.main_ip, release.version)
        if node.main_ip in succeeded:
            assert node.attempt == 1 and sim.fleet.task_ids(node.main_ip) == {first}
        elif before[node.node_id].status is NodeStatus.SKIPPED:
            assert node.attempt == 1 and node.task_id == first  # its first dispatch
        else:
            assert node.attempt == 2 and node.task_id == f"{first}_a2"
            assert sim.fleet.task_ids(node.main_ip) == {first, f"{first}_a2"}
    events = await sim.store.release_events(release_id, limit=10_000)
    assert any(event.message == "retry: attempt 2" for event in events)  # history kept
    assert any((event.message or "").startswith("retry by ops") for event in events)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)
    await assert_node_exclusion(sim.store, sim.fleet)  # a retry follows its earlier attempt


async def test_retry_of_a_failed_canary_runs_the_canary_first_again(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, overrides=[(1, Behaviour(apply_time=(2, 2), fail="bad"))])
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()
    assert (await sim.wait_terminal(release_id)).status is ReleaseStatus.FAILED
    sim.fleet.set_behaviour(1, Behaviour(apply_time=(2, 2)))

    await verb(sim, release_id, Verb.RETRY)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    canary = task_id_for(sim.fleet.hosts[0], release.version, 2)
    log = [task_id for _, _, task_id in sim.fleet.dispatch_log()]
    assert log.index(canary) < min(
        log.index(task_id_for(host, release.version)) for host in sim.fleet.hosts[1:]
    )
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_rollback_restores_the_previous_config_in_plan_order_and_holds_newer_ones(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6)
    await sim.register()
    await sim.start_daemon()
    good = await sim.create(plan=(1, 2, "100%"))
    assert (await sim.wait_terminal(good)).status is ReleaseStatus.SUCCESS
    bad = await sim.create(plan=(1, 2, "100%"), max_parallel=1)
    await wait_count(sim, bad, NodeStatus.SUCCESS, 2)
    # A newer release waits behind the bad one's nodes: it must not deploy behind the
    # rollback's back.
    newer = await sim.create()

    answer = await verb(sim, bad, Verb.ROLLBACK, reason="bad cert")
    rollback = answer.result.rollback

    assert rollback is not None and rollback.config_version == 1
    assert [held.id for held in answer.result.held] == [newer]
    assert (await sim.wait_terminal(bad)).status is ReleaseStatus.CANCELLED
    done = await sim.wait_terminal(rollback.id)
    assert done.status is ReleaseStatus.SUCCESS
    await assert_rollback_follows_plan(sim.store, rollback.id)
    rolled = {node.node_id for node in await sim.store.release_nodes(rollback.id)}
    for node in await sim.store.list_nodes():
        assert node.applied_version == 1 or node.id not in rolled, node
    held = await sim.store.get_release(newer)
    assert held is not None and held.status is ReleaseStatus.PAUSED
    assert held.held_for == rollback.id
    log = [task_id for _, _, task_id in sim.fleet.dispatch_log()]
    assert not [t for t in log if t.endswith(f"_{held.version}")]  # nothing of it was sent
    again = await verb(sim, bad, Verb.ROLLBACK)
    assert again.result.changed  # the first rollback ended: a second one is a new release
    await assert_release_invariants(sim.store, rollback.id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)
    await assert_node_exclusion(sim.store, sim.fleet)


async def test_rollback_of_a_running_release_cancels_it_first(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6)
    await sim.register()
    await sim.start_daemon()
    good = await sim.create()
    assert (await sim.wait_terminal(good)).status is ReleaseStatus.SUCCESS
    bad = await sim.create(plan=(1, "100%"), max_parallel=1)
    await wait_count(sim, bad, NodeStatus.SUCCESS, 2)

    answer = await verb(sim, bad, Verb.ROLLBACK, reason="errors up")
    stopped_at = trio.current_time()

    assert answer.effect.acknowledged and answer.result.rollback is not None
    rolled = await sim.wait_terminal(bad)
    assert rolled.status is ReleaseStatus.CANCELLED
    rollback = await sim.wait_terminal(answer.result.rollback.id)
    assert rollback.status is ReleaseStatus.SUCCESS
    nodes = await sim.store.release_nodes(bad)
    assert_no_dispatch_while_stopped(sim.fleet, nodes, rolled.version, stopped_at)
    dispatched = {node.node_id for node in nodes if node.status is not NodeStatus.SKIPPED}
    assert {node.node_id for node in await sim.store.release_nodes(rollback.id)} == dispatched
    await assert_rollback_follows_plan(sim.store, rollback.id)
    await assert_applied_versions(sim.store, sim.fleet)
    # The cancelled release's in-flight node was followed to its end before the rollback
    # reached it: no node applied two configs at once.
    await assert_node_exclusion(sim.store, sim.fleet)


# A promote applies at a pause step, not by state: tests/sim/test_strategy.py covers it.
@pytest.mark.parametrize("name", [verb for verb in Verb if verb is not Verb.PROMOTE])
async def test_every_verb_in_every_state_of_a_live_release(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, name: Verb
) -> None:
    """Each verb from pending, running, paused, cancelling and the terminal states, on a
    release a live daemon drives: either it changes the state, is a no-op, or is refused."""
    sim = make_sim(4, behaviour=Behaviour(apply_time=(10, 20)))
    await sim.register()
    await sim.start_daemon()
    good = await sim.create()
    await sim.wait_terminal(good)
    outcomes: dict[str, str] = {}
    for state in ("pending", "running", "paused", "success", "failed", "cancelled"):
        release_id = await _release_in(sim, state)
        # Earlier rollbacks of this loop, cancelled, leave nodes on mixed configs: a rollback
        # names the first release's config, known good.
        options = {"to_version": 1} if name is Verb.ROLLBACK else {}
        try:
            answer = await verb(sim, release_id, name, **options)
        except Conflict as refused:
            assert f"is {state}: {name} is not allowed" in str(refused)
            outcomes[state] = "409"
        else:
            assert answer.effect.in_effect
            outcomes[state] = "changed" if answer.result.changed else "no-op"
        # Whatever happened, the release ends and its invariants hold.
        release = await sim.store.get_release(release_id)
        assert release is not None
        if release.status in (ReleaseStatus.PAUSED, ReleaseStatus.PENDING):
            await sim.store.steer(release_id, Verb.CANCEL, by=TEST)
        for other in await _all_active(sim):
            await sim.store.steer(other, Verb.CANCEL, by=TEST)
        await sim.wait_terminal(release_id)
        await assert_release_invariants(sim.store, release_id, sim.fleet)
    expected = {
        Verb.PAUSE: dict(
            pending="changed", running="changed", paused="no-op", success="409", failed="409",
            cancelled="409",
        ),
        Verb.RESUME: dict(
            pending="409", running="no-op", paused="changed", success="409", failed="409",
            cancelled="409",
        ),
        Verb.CANCEL: dict(
            pending="changed", running="changed", paused="changed", success="409",
            failed="409", cancelled="no-op",
        ),
        Verb.RETRY: dict(
            pending="409", running="no-op", paused="409", success="409", failed="changed",
            cancelled="changed",
        ),
        Verb.ROLLBACK: dict(
            pending="409", running="changed", paused="changed", success="changed",
            failed="changed", cancelled="changed",
        ),
    }  # fmt: skip
    assert outcomes == expected[name]
    await assert_applied_versions(sim.store, sim.fleet)


async def _all_active(sim: Sim) -> list[int]:
    releases, _ = await sim.store.list_releases(limit=1000)
    return [release.id for release in releases if not release.status.terminal]


async def _release_in(sim: Sim, state: str) -> int:
    """A release of the sim's nodes in ``state``, driven by the sim's daemon."""
    if state == "pending":
        blocker = await sim.create(scope="held")
        await sim.store.steer(blocker, Verb.PAUSE, by=TEST)
        return await sim.create(scope="held")
    release_id = await sim.create()
    if state in ("running", "paused"):
        await wait_count(sim, release_id, NodeStatus.RUNNING, 1)
        if state == "paused":
            await verb(sim, release_id, Verb.PAUSE)
        return release_id
    if state == "cancelled":
        await wait_count(sim, release_id, NodeStatus.RUNNING, 1)
        await verb(sim, release_id, Verb.CANCEL)
    if state == "failed":
        sim.fleet.set_behaviour(1, Behaviour(apply_time=(1, 1), fail="broken"))
    release = await sim.wait_terminal(release_id)
    sim.fleet.set_behaviour(1, Behaviour(apply_time=(10, 20)))
    assert release.status.value == state, release
    return release_id


TAKEOVER_OUTCOMES = {
    Verb.PAUSE: ("changed", ReleaseStatus.SUCCESS),  # resumed afterwards by the test
    Verb.RESUME: ("no-op", ReleaseStatus.SUCCESS),
    Verb.CANCEL: ("changed", ReleaseStatus.CANCELLED),
    Verb.RETRY: ("no-op", ReleaseStatus.SUCCESS),
    Verb.ROLLBACK: ("changed", ReleaseStatus.CANCELLED),
}


# A promote applies at a pause step, not by state: tests/sim/test_strategy.py covers it.
@pytest.mark.parametrize("name", [verb for verb in Verb if verb is not Verb.PROMOTE])
async def test_every_verb_during_a_takeover(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, name: Verb
) -> None:
    """The owner dies mid-batch; the verb meets its still-live lease; another daemon takes
    over. The verb holds, nothing is dispatched while stopped, and the release ends."""
    sim = make_sim(6, behaviour=Behaviour(apply_time=(8, 12)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    good = await sim.create()
    await sim.wait_terminal(good)
    release_id = await sim.create(plan=(1, "100%"), max_parallel=2)
    await wait_count(sim, release_id, NodeStatus.RUNNING, 2)
    first.crash()

    answer = await verb(
        sim, release_id, name, **({"to_version": 1} if name is Verb.ROLLBACK else {})
    )
    stopped_at = trio.current_time()
    await sim.start_daemon("sim-b")

    changed, ending = TAKEOVER_OUTCOMES[name]
    assert answer.effect.in_effect
    assert ("changed" if answer.result.changed else "no-op") == changed
    if changed == "changed":
        assert answer.lease_expired  # the dead owner never acknowledged
    resumed_at = math.inf
    if name is Verb.PAUSE:
        await trio.sleep(60)
        resumed_at = trio.current_time()
        await verb(sim, release_id, Verb.RESUME)
    release = await sim.wait_terminal(release_id)
    assert release.status is ending
    if name in (Verb.PAUSE, Verb.CANCEL, Verb.ROLLBACK):
        nodes = await sim.store.release_nodes(release_id)
        assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at, resumed_at)
    if answer.result.rollback is not None:
        done = await sim.wait_terminal(answer.result.rollback.id)
        assert done.status is ReleaseStatus.SUCCESS
        await assert_rollback_follows_plan(sim.store, done.id)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


FAILING_OUTCOMES = {
    Verb.PAUSE: ReleaseStatus.FAILED,  # the failure ends it: nothing was left to hold
    Verb.RESUME: ReleaseStatus.FAILED,
    Verb.CANCEL: ReleaseStatus.CANCELLED,
    Verb.RETRY: ReleaseStatus.FAILED,
    Verb.ROLLBACK: ReleaseStatus.CANCELLED,
}


# A promote applies at a pause step, not by state: tests/sim/test_strategy.py covers it.
@pytest.mark.parametrize("name", [verb for verb in Verb if verb is not Verb.PROMOTE])
async def test_every_verb_while_a_batch_is_cancelled_for_a_failure(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, name: Verb
) -> None:
    """Node 3 fails; its slow siblings are being reconciled when the verb arrives."""
    sim, release_id = await failing_batch(make_sim)
    try:
        # The nodes ran no config before this release: a rollback has no good one.
        answer = await verb(sim, release_id, name)
    except Conflict as refused:
        assert name is Verb.ROLLBACK and "no good version" in str(refused)
        answer = None
    stopped_at = trio.current_time()
    release = await sim.wait_terminal(release_id)

    if answer is not None:
        assert answer.effect.in_effect
        assert release.status is FAILING_OUTCOMES[name]
    nodes = await sim.store.release_nodes(release_id)
    if name in (Verb.PAUSE, Verb.CANCEL):
        assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at)
    assert not any(node.status is NodeStatus.RUNNING for node in nodes)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


@pytest.mark.parametrize("name", [verb for verb in Verb if verb is not Verb.PROMOTE])
async def test_every_verb_on_a_release_being_cancelled(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, name: Verb
) -> None:
    """A cancel is in effect and its owner still reconciles slow agents ("cancelling")."""
    sim = make_sim(6, behaviour=Behaviour(apply_time=(30, 40), delay=3.0))
    await sim.register()
    await sim.start_daemon()
    good = await sim.create(plan=(1, "100%"))
    sim.fleet.set_behaviour(1, Behaviour(apply_time=(1, 1)))
    await sim.wait_terminal(good)
    release_id = await sim.create(plan=(1, "100%"))
    await wait_count(sim, release_id, NodeStatus.RUNNING, 3)
    await verb(sim, release_id, Verb.CANCEL)
    release = await sim.store.get_release(release_id)
    assert release is not None and release.cancelling

    try:
        answer = await verb(
            sim, release_id, name, **({"to_version": 1} if name is Verb.ROLLBACK else {})
        )
    except Conflict as refused:
        assert name in (Verb.PAUSE, Verb.RESUME, Verb.RETRY), refused
        assert "is cancelling:" in str(refused)
    else:
        assert name in (Verb.CANCEL, Verb.ROLLBACK)
        assert answer.result.changed is (name is Verb.ROLLBACK)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.CANCELLED
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)


async def test_an_owner_killed_after_acknowledging_a_pause_does_nothing_twice(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    """Killed while its in-flight nodes finish: the paused release keeps them `running`; the
    next owner, after the resume, asks their agents instead of dispatching them again."""
    sim = make_sim(8, behaviour=Behaviour(apply_time=(20, 30)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create(plan=(1, "100%"), max_parallel=3)
    await wait_count(sim, release_id, NodeStatus.RUNNING, 3)  # batch 2 in flight
    paused = await verb(sim, release_id, Verb.PAUSE)
    stopped_at = trio.current_time()
    assert paused.effect.acknowledged
    first.crash()  # before its in-flight nodes finished: no park, no final writes
    in_flight = [
        node for node in await sim.store.release_nodes(release_id)
        if node.status is NodeStatus.RUNNING
    ]  # fmt: skip
    assert in_flight

    second = await sim.start_daemon("sim-b")
    await trio.sleep(60)
    assert second.claimed == 0
    resumed_at = trio.current_time()
    resumed = await verb(sim, release_id, Verb.RESUME)
    assert resumed.effect.in_effect
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    for node in in_flight:  # asked, not sent again
        task_id = task_id_for(node.main_ip, release.version)
        assert sim.fleet.dispatch_count(node.main_ip, task_id) == 1
    nodes = await sim.store.release_nodes(release_id)
    assert_no_dispatch_while_stopped(sim.fleet, nodes, release.version, stopped_at, resumed_at)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    await assert_applied_versions(sim.store, sim.fleet)
