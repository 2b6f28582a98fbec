"""Whole releases in simulated time: MemoryStore, in-process agents, real actors."""

from __future__ import annotations

from collections.abc import Callable

import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus, task_id_for
from fleetwave.store.selection import NodeSelection
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim


async def test_three_nodes_make_canary_then_rest_and_all_succeed(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(3)
    await sim.register()
    await sim.start_daemon()
    created = await sim.store.create_release(ReleaseSpec())
    assert [len(ids) for _, ids in created.batches] == [1, 2]

    release = await sim.wait_terminal(created.release.id)

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.success_nodes, release.failed_nodes) == (3, 0)
    nodes = await sim.store.release_nodes(release.id)
    assert [node.batch for node in nodes] == [1, 2, 2]
    assert all(node.task_id == task_id_for(node.main_ip, release.version) for node in nodes)
    await assert_release_invariants(sim.store, release.id, sim.fleet)


async def test_failed_canary_skips_batch_two_and_names_the_node(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(3, overrides=[(1, Behaviour(apply_time=(3, 3), fail="nginx: [emerg] bad"))])
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    assert release.error is not None
    assert "edge-001" in release.error and "nginx: [emerg] bad" in release.error
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in nodes] == [
        NodeStatus.FAILED,
        NodeStatus.SKIPPED,
        NodeStatus.SKIPPED,
    ]
    assert "nginx: [emerg] bad" in (nodes[0].error_msg or "")
    assert (release.success_nodes, release.failed_nodes) == (0, 1)
    for host in sim.fleet.hosts[1:]:
        assert sim.fleet.task_ids(host) == set()  # batch 2 never reached its agents
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_batch_two_failure_follows_siblings_to_their_outcome(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(
        6,
        behaviour=Behaviour(apply_time=(30, 40)),
        overrides=[(1, Behaviour(apply_time=(1, 1))), (3, Behaviour(apply_time=(2, 2), fail="x"))],
    )
    await sim.register()
    await sim.start_daemon()
    started = trio.current_time()
    release_id = await sim.create(plan=(1, "100%"))

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = {node.node_name: node for node in await sim.store.release_nodes(release_id)}
    assert nodes["edge-001"].status is NodeStatus.SUCCESS
    assert nodes["edge-003"].status is NodeStatus.FAILED
    siblings = [nodes[f"edge-00{k}"] for k in (2, 4, 5, 6)]
    # Siblings were still applying when the batch stopped: they were followed until their
    # agents finished, and recorded as what the agents did.
    assert {node.status for node in siblings} == {NodeStatus.SUCCESS}
    assert (release.success_nodes, release.failed_nodes) == (5, 1)
    # The batch scope was cancelled at the failure; the release ended with the last sibling.
    assert 30 <= trio.current_time() - started < 45
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_unreachable_agent_fails_its_node_with_a_readable_reason(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(1, overrides=[(1, Behaviour(refuse=True))])
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    (node,) = await sim.store.release_nodes(release_id)
    assert node.status is NodeStatus.FAILED
    assert node.error_msg is not None
    assert "unreachable" in node.error_msg and sim.fleet.hosts[0] in node.error_msg
    assert "5 attempt(s)" in node.error_msg
    assert release.status is ReleaseStatus.FAILED
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_hung_agent_fails_its_node_exactly_at_the_deadline(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(1, overrides=[(1, Behaviour(hang=True))], flush_interval_sec=0)
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    (node,) = await sim.store.release_nodes(release_id)
    assert node.status is NodeStatus.FAILED
    assert release.started_at is not None and node.finished_at is not None
    assert (node.finished_at - release.started_at).total_seconds() == 600
    assert "within 600s" in (node.error_msg or "")
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_batch_k_plus_one_never_starts_before_batch_k_is_terminal(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(12, behaviour=Behaviour(apply_time=(1, 20)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, 2, "25%"))

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    nodes = await sim.store.release_nodes(release_id)
    sizes = [sum(node.batch == b for node in nodes) for b in range(1, 6)]
    assert sizes == [1, 2, 3, 3, 3]
    for batch in range(2, 6):
        previous_done = max(n.finished_at for n in nodes if n.batch == batch - 1 and n.finished_at)
        started = min(n.started_at for n in nodes if n.batch == batch and n.started_at)
        assert previous_done <= started
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_max_parallel_bounds_concurrency_inside_a_batch(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(9, behaviour=Behaviour(apply_time=(10, 10)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=(1, "100%"), max_parallel=2)

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    nodes = await sim.store.release_nodes(release_id)
    starts = sorted(n.started_at for n in nodes if n.batch == 2)  # type: ignore[type-var]
    # 8 nodes, 2 at a time, 10 s each: four waves.
    waves = {round((s - starts[0]).total_seconds() / 10) for s in starts}
    assert waves == {0, 1, 2, 3}
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_tolerated_failures_do_not_stop_the_release(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(5, overrides=[(3, Behaviour(apply_time=(2, 2), fail="disk full"))])
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(max_failures=1)

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.success_nodes, release.failed_nodes) == (4, 1)
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_releases_naming_one_scope_run_one_at_a_time_even_on_other_nodes(
    make_sim: Callable[..., Sim],
    autojump_clock: MockClock,
) -> None:
    sim = make_sim(3)
    nodes = await sim.register()
    first = await sim.create(scope="edge-eu", selection=NodeSelection.by_ids([nodes[0].id]))
    second = await sim.create(scope="edge-eu", selection=NodeSelection.by_ids([nodes[1].id]))
    unscoped = await sim.create(selection=NodeSelection.by_ids([nodes[2].id]))
    await sim.start_daemon()

    releases = [await sim.wait_terminal(r) for r in (first, second, unscoped)]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    one, two, other = releases
    assert one.finished_at is not None and two.started_at is not None
    assert one.finished_at <= two.started_at  # same scope: strictly after
    assert other.started_at is not None and other.started_at < one.finished_at  # no scope


async def test_writes_are_coalesced_not_one_per_node(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(200, behaviour=Behaviour(apply_time=(5, 15)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create()

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    # 200 nodes make 400 transitions; ticks of 0.2 s over ~30 s bound the transactions.
    assert sim.store.record_calls < 120
    await assert_release_invariants(sim.store, release_id, sim.fleet)
