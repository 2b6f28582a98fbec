"""Node rows another program wrote, inside a release beside healthy nodes (simulated time):
each hostile row fails its node with "invalid agent address: ..." before anything is sent,
nothing is dialled but the rows' own addresses, the healthy nodes succeed."""

from __future__ import annotations

from collections.abc import Callable

from trio.testing import MockClock

from fleetwave.store.models import NodeStatus, ReleaseStatus
from tests.hostile import HOSTILE_ADDRESSES, hostile_row
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim

HEALTHY = 3


async def test_hostile_rows_fail_their_nodes_and_the_healthy_ones_succeed(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # Agent HEALTHY+1 is live but registered under no valid row: the hostile rows are all
    # "almost" its address, and it must never be asked anything.
    sim = make_sim(HEALTHY + 1)
    near = sim.fleet.hosts[HEALTHY]
    for k in range(1, HEALTHY + 1):
        await sim.store.upsert_node(f"ok-{k}", sim.fleet.hosts[k - 1], sim.fleet.port)
    expected: dict[str, str] = {}
    for name in HOSTILE_ADDRESSES:
        main_ip, port, words = hostile_row(name, near)
        sim.store.insert_foreign_node(f"bad-{name}", main_ip, port)
        expected[f"bad-{name}"] = words
    supervisor = await sim.start_daemon()
    # Every node in one batch: the hostile ones fail beside the healthy ones.
    release_id = await sim.create(plan=["100%"], max_failures=len(HOSTILE_ADDRESSES))

    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS, release.error
    nodes = {node.node_name: node for node in await sim.store.release_nodes(release_id)}
    for k in range(1, HEALTHY + 1):
        assert nodes[f"ok-{k}"].status is NodeStatus.SUCCESS
    for name, words in expected.items():
        node = nodes[name]
        assert node.status is NodeStatus.FAILED, node
        assert node.error_msg is not None and node.error_msg.startswith(
            "invalid agent address: "
        ), node.error_msg
        assert words in node.error_msg, node.error_msg
        assert (node.attempts, node.task_id, node.started_at) == (0, None, None)
    assert sim.fleet.task_ids(near) == set()
    assert all(len(sim.fleet.task_ids(host)) == 1 for host in sim.fleet.hosts[:HEALTHY])
    await assert_release_invariants(sim.store, release_id, sim.fleet)

    # The same daemon runs the next release.
    for name in expected:
        node_id = next(n.node_id for n in nodes.values() if n.node_name == name)
        await sim.store.update_node(node_id, enabled=False)
    following = await sim.wait_terminal(await sim.create())
    assert following.status is ReleaseStatus.SUCCESS
    assert supervisor.claimed == 2


async def test_a_hostile_row_as_the_canary_fails_the_release_naming_it(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(2)
    await sim.store.upsert_node("bad", sim.fleet.hosts[1] + ":8443", sim.fleet.port)
    await sim.store.upsert_node("ok", sim.fleet.hosts[0], sim.fleet.port)
    await sim.start_daemon()

    release = await sim.wait_terminal(await sim.create())

    assert release.status is ReleaseStatus.FAILED
    assert release.error is not None
    assert release.error.startswith(
        f"node bad ('{sim.fleet.hosts[1]}:8443') failed: invalid agent address: "
    ), release.error
    statuses = [node.status for node in await sim.store.release_nodes(release.id)]
    assert statuses == [NodeStatus.FAILED, NodeStatus.SKIPPED]
    assert all(sim.fleet.task_ids(host) == set() for host in sim.fleet.hosts)
