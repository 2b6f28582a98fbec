"""Which nodes a release runs on, one release at a time per node, and the true outcome of
nodes a stopped batch had dispatched. Simulated time, MemoryStore, in-process agents."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.api.verbs import steer
from fleetwave.store.models import Actor, NodeStatus, ReleaseStatus, Role, task_id_for
from fleetwave.store.selection import NodeSelection
from fleetwave.store.verbs import Verb
from tests.invariants import assert_node_exclusion, assert_release_invariants
from tests.sim.conftest import Sim


def failing_batch(make_sim: Callable[..., Sim], slow: Behaviour, **settings: object) -> Sim:
    """Three nodes: a quick canary, node 2 as ``slow``, node 3 failing 2 s into batch 2."""
    return make_sim(
        3,
        overrides=[
            (1, Behaviour(apply_time=(1, 1))),
            (2, slow),
            (3, Behaviour(apply_time=(2, 2), fail="x")),
        ],
        **settings,
    )


async def test_three_releases_in_three_scopes_on_five_nodes_run_one_at_a_time(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # The reported scenario: before, these ran at once and one node ended on version 3
    # while release 4 reported it a success.
    sim = make_sim(5, behaviour=Behaviour(apply_time=(5, 15)))
    await sim.register()
    release_ids = [await sim.create(scope=scope) for scope in ("eu", "us", "asia")]
    await sim.start_daemon()

    releases = [await sim.wait_terminal(r) for r in release_ids]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    for earlier, later in pairwise(releases):
        assert earlier.finished_at is not None and later.started_at is not None
        assert earlier.finished_at <= later.started_at
    for release in releases:
        await assert_release_invariants(sim.store, release.id, sim.fleet)
    await assert_node_exclusion(sim.store, sim.fleet)


async def test_releases_created_while_others_run_keep_version_order_per_node(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # Overlapping node sets created at random moments by several daemons: every node still
    # receives its releases one at a time, oldest first.
    sim = make_sim(6, behaviour=Behaviour(apply_time=(2, 9)))
    nodes = await sim.register()
    await sim.start_daemon("sim-a", max_releases=2)
    await sim.start_daemon("sim-b", max_releases=2)
    selections = [
        NodeSelection.by_ids([n.id for n in nodes[0:3]]),
        NodeSelection.by_ids([n.id for n in nodes[2:5]]),
        NodeSelection.by_ids([n.id for n in nodes[4:6]]),
        NodeSelection.by_ids([nodes[0].id, nodes[5].id]),
        None,
    ]
    release_ids = []
    for k in range(10):
        release_ids.append(await sim.create(selection=selections[k % len(selections)]))
        await trio.sleep(3 * (k % 3))

    releases = [await sim.wait_terminal(r) for r in release_ids]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    await assert_node_exclusion(sim.store, sim.fleet)


async def test_disjoint_releases_run_at_once(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(10, 10)))
    nodes = await sim.register()
    first = await sim.create(selection=NodeSelection.by_ids([nodes[0].id, nodes[1].id]))
    second = await sim.create(selection=NodeSelection.by_ids([nodes[2].id, nodes[3].id]))
    started = trio.current_time()
    await sim.start_daemon()

    releases = [await sim.wait_terminal(r) for r in (first, second)]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    one, two = releases
    assert one.finished_at is not None and two.started_at is not None
    assert two.started_at < one.finished_at
    # Two batches of 10 s each, side by side: far less than the 40 s of running in turn.
    assert trio.current_time() - started < 30
    await assert_node_exclusion(sim.store, sim.fleet)


async def test_a_release_runs_only_on_the_nodes_it_selected(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6)
    nodes = await sim.register()
    for node in nodes[::2]:
        await sim.store.update_node(node.id, labels={"region": "eu"})
    await sim.start_daemon()
    by_selector = await sim.create(selection=NodeSelection.by_selector({"region": "eu"}))
    by_names = await sim.create(selection=NodeSelection.by_names([nodes[1].name]))
    by_ids = await sim.create(selection=NodeSelection.by_ids([nodes[3].id, nodes[5].id]))

    releases = {r: await sim.wait_terminal(r) for r in (by_selector, by_names, by_ids)}

    expected = {
        by_selector: {nodes[0].main_ip, nodes[2].main_ip, nodes[4].main_ip},
        by_names: {nodes[1].main_ip},
        by_ids: {nodes[3].main_ip, nodes[5].main_ip},
    }
    for release_id, hosts in expected.items():
        release = releases[release_id]
        assert release.status is ReleaseStatus.SUCCESS
        reached = {
            host
            for host in sim.fleet.hosts
            if task_id_for(host, release.version) in sim.fleet.task_ids(host)
        }
        assert reached == hosts
        await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_node_finishing_after_the_batch_failed_is_recorded_as_it_ended(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # Node 3 fails at 2 s; nodes 2 and 4 finish 25 s and 40 s later, long after the 10 s the
    # stopped batch used to wait. They applied the config: the record says so.
    sim = make_sim(
        4,
        overrides=[
            (1, Behaviour(apply_time=(1, 1))),
            (2, Behaviour(apply_time=(27, 27))),
            (3, Behaviour(apply_time=(2, 2), fail="nginx -t failed")),
            (4, Behaviour(apply_time=(42, 42), fail="disk full")),
        ],
    )
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-002"].status is NodeStatus.SUCCESS
    assert nodes["edge-003"].status is NodeStatus.FAILED
    assert nodes["edge-004"].status is NodeStatus.FAILED
    assert "disk full" in (nodes["edge-004"].error_msg or "")
    assert (release.success_nodes, release.failed_nodes) == (2, 2)
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_an_agent_away_after_the_batch_stopped_is_asked_again_until_it_answers(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = failing_batch(make_sim, Behaviour(apply_time=(20, 20)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()
    # Once the batch has stopped, agent 2 is unreachable for a minute, then back.
    await sim.wait_for(lambda: sim.fleet.task_ids(sim.fleet.hosts[2]))
    await trio.sleep(3)
    sim.fleet.set_behaviour(2, Behaviour(refuse=True))
    await trio.sleep(60)
    sim.fleet.set_behaviour(2, Behaviour(apply_time=(20, 20)))

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-002"].status is NodeStatus.SUCCESS


async def test_an_agent_still_applying_at_its_deadline_ends_cancelled(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = failing_batch(make_sim, Behaviour(apply_time=(5000, 5000)), node_deadline_sec=120)
    await sim.register()
    await sim.start_daemon()
    started = trio.current_time()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-002"].status is NodeStatus.CANCELLED
    assert "node deadline (120s)" in (nodes["edge-002"].error_msg or "")
    assert "still applying" in (nodes["edge-002"].error_msg or "")
    # Followed until the deadline from its dispatch (at about 1 s), not beyond.
    assert 120 <= trio.current_time() - started < 130
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_takeover_while_a_stopped_batch_is_followed_follows_it_on(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = failing_batch(make_sim, Behaviour(apply_time=(90, 90)), flush_interval_sec=0)
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create()
    await sim.wait_for(lambda: sim.fleet.task_ids(sim.fleet.hosts[2]))
    await trio.sleep(20)  # the batch stopped at the failure; node 2 is being followed
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-003"].status is NodeStatus.FAILED
    assert nodes["edge-002"].status is NodeStatus.RUNNING

    first.crash()
    await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    assert release.lease_epoch == 2
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-002"].status is NodeStatus.SUCCESS
    host = nodes["edge-002"].main_ip
    assert sim.fleet.dispatch_count(host, task_id_for(host, release.version)) == 1
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_the_next_release_over_a_followed_node_waits_for_its_outcome(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # The failed release keeps its nodes until their agents answered: the next release over
    # them cannot send a newer config to a node still applying the older one.
    sim = failing_batch(make_sim, Behaviour(apply_time=(60, 60)))
    await sim.register()
    await sim.start_daemon()
    failing = await sim.create()
    await sim.wait_for(lambda: sim.fleet.task_ids(sim.fleet.hosts[2]))
    sim.fleet.set_behaviour(3, Behaviour(apply_time=(2, 2)))
    following = await sim.create()

    releases = [await sim.wait_terminal(r) for r in (failing, following)]

    assert [r.status for r in releases] == [ReleaseStatus.FAILED, ReleaseStatus.SUCCESS]
    await assert_node_exclusion(sim.store, sim.fleet)


async def test_a_node_finishing_after_a_cancel_is_recorded_as_it_ended(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # Cancelled 5 s into batch 2, while node 2 applies for 30 s: its agent finishes 25 s
    # later, past the 10 s the stopped batch used to wait; it runs the config, so the record
    # and its applied_version say so.
    sim = failing_batch(make_sim, Behaviour(apply_time=(30, 30)))
    sim.fleet.set_behaviour(3, Behaviour(apply_time=(30, 30)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()
    await sim.wait_for(lambda: sim.fleet.task_ids(sim.fleet.hosts[2]))
    await trio.sleep(5)

    answer = await steer(sim.store, release_id, Verb.CANCEL, by=Actor("ops", Role.OPERATOR))
    release = await sim.wait_terminal(release_id)

    assert answer.result.changed
    assert release.status is ReleaseStatus.CANCELLED
    nodes = {n.node_name: n for n in await sim.store.release_nodes(release_id)}
    assert nodes["edge-002"].status is NodeStatus.SUCCESS
    assert nodes["edge-003"].status is NodeStatus.SUCCESS
    applied = {node.name: node.applied_version for node in await sim.store.list_nodes()}
    assert applied == {"edge-001": release.version, "edge-002": release.version,
                       "edge-003": release.version}  # fmt: skip
    await assert_release_invariants(sim.store, release_id, sim.fleet)
