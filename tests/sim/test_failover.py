"""Several daemons on one store: no release runs twice, a dead one is replaced, stale writes
change nothing."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from trio.testing import MockClock

from fleetwave.actors.release import LeaseLost, ReleaseActor, ReleaseConfig
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, ReleaseStatus, task_id_for
from fleetwave.store.selection import NodeSelection
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim


async def test_two_supervisors_never_run_one_release_twice(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6, behaviour=Behaviour(apply_time=(1, 5)))
    nodes = await sim.register()
    # Three lanes of two nodes each: a lane's releases wait for each other, lanes run at once.
    lanes = [NodeSelection.by_ids([n.id for n in nodes[k::3]]) for k in range(3)]
    release_ids = [await sim.create(selection=lanes[k % 3]) for k in range(9)]
    daemons = [
        await sim.start_daemon("sim-a", max_releases=2),
        await sim.start_daemon("sim-b", max_releases=2),
    ]

    releases = [await sim.wait_terminal(r) for r in release_ids]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    assert sum(d.claimed for d in daemons) == len(release_ids)  # each claimed exactly once
    assert all(d.claimed > 0 for d in daemons)  # and the work was shared
    for release in releases:
        for node in await sim.store.release_nodes(release.id):
            host = node.main_ip
            assert sim.fleet.dispatch_count(host, task_id_for(host, release.version)) == 1
        await assert_release_invariants(sim.store, release.id, sim.fleet)


async def test_dead_supervisor_is_replaced_and_the_release_completes(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(6, behaviour=Behaviour(apply_time=(20, 40)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create()
    # Wait until the canary is done and batch 2 is applying.
    await sim.wait_for(lambda: sum(len(sim.fleet.task_ids(h)) for h in sim.fleet.hosts) == 6)
    await trio.sleep(1)
    before = {n.node_id: n for n in await sim.store.release_nodes(release_id)}
    assert [n.status for n in before.values()].count(NodeStatus.SUCCESS) == 1

    first.crash()  # gone without a word: no hand-back, no final write
    crashed_at = trio.current_time()
    second = await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert second.claimed == 1
    assert release.lease_epoch == 2
    after = {n.node_id: n for n in await sim.store.release_nodes(release_id)}
    canary = next(n for n in before.values() if n.status is NodeStatus.SUCCESS)
    assert after[canary.node_id].finished_at == canary.finished_at  # finished node untouched
    for node in after.values():
        # Taken-over nodes were asked, not re-dispatched: one dispatch, one taskId each.
        assert sim.fleet.dispatch_count(node.main_ip, node.task_id or "") == 1
        assert sim.fleet.task_ids(node.main_ip) == {task_id_for(node.main_ip, release.version)}
    # The takeover waited for the lease to expire, and no longer than ttl + one poll interval.
    claimed = [
        e for e in await sim.store.release_events(release_id) if "sim-b" in (e.message or "")
    ]
    assert claimed
    assert release.finished_at is not None
    await assert_release_invariants(sim.store, release_id, sim.fleet)
    assert trio.current_time() - crashed_at < 30 + 5 + 45


async def dispatch_then_crash(sim: Sim, watched: float) -> int:
    """A one-node release whose daemon dispatches, watches ``watched`` seconds and dies."""
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create()
    await sim.wait_for(lambda: sim.fleet.task_ids(sim.fleet.hosts[0]))
    await trio.sleep(watched)
    first.crash()
    return release_id


async def test_the_node_deadline_runs_from_the_first_dispatch_across_a_takeover(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    # An agent that accepts the task and never finishes it.
    sim = make_sim(1, behaviour=Behaviour(apply_time=(5000, 5000)), flush_interval_sec=0)
    release_id = await dispatch_then_crash(sim, watched=400)

    second = await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert second.claimed == 1
    (node,) = await sim.store.release_nodes(release_id)
    assert node.status is NodeStatus.FAILED
    assert "within 600s" in (node.error_msg or "")
    assert node.started_at is not None and node.finished_at is not None
    # 600 s after the first dispatch, not 600 s after the second daemon took it over (~430 s
    # in): the first daemon's watch counts.
    assert 600 <= (node.finished_at - node.started_at).total_seconds() <= 601
    assert sim.fleet.dispatch_count(node.main_ip, node.task_id or "") == 1
    assert release.status is ReleaseStatus.FAILED
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_node_taken_over_after_its_deadline_is_asked_once_before_it_fails(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    """No daemon watched while the deadline passed: the agent may have finished meanwhile."""
    # Each answer takes a second, as over a network: the look is not instantaneous.
    behaviour = Behaviour(apply_time=(650, 650), delay=1.0)
    sim = make_sim(1, behaviour=behaviour, flush_interval_sec=0)
    release_id = await dispatch_then_crash(sim, watched=100)
    await trio.sleep(600)  # no daemon at all, and the agent finishes at 650 s

    await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_stopping_a_supervisor_hands_its_release_to_another_at_once(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(3, behaviour=Behaviour(apply_time=(50, 60)))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    second = await sim.start_daemon("sim-b", executor_enabled=False)
    release_id = await sim.create()
    await sim.wait_for(lambda: first.owned == {release_id})

    second.settings = sim.settings  # the second daemon may now claim
    first.stop()
    stopped_at = trio.current_time()
    await sim.wait_for(lambda: second.owned == {release_id})

    assert trio.current_time() - stopped_at < 0.5  # woken by the hand-back, not the poll
    release = await sim.wait_terminal(release_id)
    assert release.status is ReleaseStatus.SUCCESS
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_stale_lease_holder_writes_change_nothing(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(3, behaviour=Behaviour(apply_time=(20, 20)))
    await sim.register()
    release_id = await sim.create()
    (stale_claim,) = await sim.store.claim("stalled", 1, ttl=5)
    # The stalled daemon's actor runs, but its lease is never renewed.
    stale = ReleaseActor(
        stale_claim, sim.store, sim.agents(), ReleaseConfig(daemon_id="stalled", flush_interval=0)
    )
    outcome: list[BaseException] = []

    async def run_stale() -> None:
        try:
            await stale.run()
        except LeaseLost as error:
            outcome.append(error)

    sim.nursery.start_soon(run_stale)
    await trio.sleep(1)
    successor = await sim.start_daemon("sim-b")

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert successor.claimed == 1
    assert len(outcome) == 1  # the stale actor learnt it lost the lease and stopped
    events = await sim.store.release_events(release_id)
    taken_over = next(e.id for e in events if "sim-b" in (e.message or ""))
    assert not [e for e in events if e.daemon_id == "stalled" and e.id > taken_over]
    await assert_release_invariants(sim.store, release_id, sim.fleet)


@pytest.mark.parametrize("seed_status", ["pending"])
async def test_release_written_with_seed_columns_only_is_executed(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, seed_status: str
) -> None:
    sim = make_sim(3)
    nodes = await sim.register()
    release_id = sim.store.insert_seed_release(
        41, [[nodes[0].id], [nodes[1].id, nodes[2].id]], status=seed_status
    )
    await sim.start_daemon()

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert release.success_nodes == 3
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_short_database_outage_delays_writes_but_loses_nothing(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(10, 20)))
    await sim.register()
    daemon = await sim.start_daemon()
    release_id = await sim.create()
    await trio.sleep(12)  # the canary is done, batch 2 is applying

    sim.store.unavailable = True
    await trio.sleep(8)  # shorter than the lease TTL (30 s)
    sim.store.unavailable = False
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert daemon.claimed == 1  # the same daemon carried on; nothing was abandoned
    assert release.lease_epoch == 1
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_long_database_outage_hands_the_release_to_the_next_claim(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(10, 20)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()
    await trio.sleep(12)

    sim.store.unavailable = True
    await trio.sleep(90)  # far past the lease TTL: the actor gives up its writes
    sim.store.unavailable = False
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert release.lease_epoch == 2  # claimed again once the database was back
    for node in await sim.store.release_nodes(release_id):
        # Resumed by asking the agents: nothing dispatched twice.
        assert sim.fleet.dispatch_count(node.main_ip, node.task_id or "") == 1
    await assert_release_invariants(sim.store, release_id, sim.fleet)
