"""DESIGN.md's invariants, checked against a store (and the fleet) after every scenario."""

from __future__ import annotations

from collections import Counter

from fleetwave.agent.sim import SimulatedFleet
from fleetwave.store.base import Store
from fleetwave.store.models import NodeStatus, task_id_for

TERMINAL_NODE = {s.value for s in NodeStatus if s.terminal}


async def assert_release_invariants(
    store: Store, release_id: int, fleet: SimulatedFleet | None = None
) -> None:
    release = await store.get_release(release_id)
    assert release is not None
    nodes = await store.release_nodes(release_id)
    statuses = Counter(node.status for node in nodes)

    # Counters agree with node rows, and statuses add up to total_nodes.
    assert release.success_nodes == statuses[NodeStatus.SUCCESS]
    assert release.failed_nodes == statuses[NodeStatus.FAILED]
    assert release.skipped_nodes == statuses[NodeStatus.SKIPPED]
    assert sum(statuses.values()) == release.total_nodes == len(nodes)

    # A terminal release has no node pending or running.
    if release.status.terminal:
        assert statuses[NodeStatus.PENDING] == 0, statuses
        assert statuses[NodeStatus.RUNNING] == 0, statuses

    # No node of batch k+1 starts before every node of batch k is terminal.
    events = await store.release_events(release_id, limit=1_000_000)
    last_terminal: dict[int, int] = {}
    first_start: dict[int, int] = {}
    for event in events:
        if event.node_id is None or event.batch is None:
            continue
        if event.to_status in TERMINAL_NODE and event.to_status != NodeStatus.SKIPPED:
            last_terminal[event.batch] = max(last_terminal.get(event.batch, 0), event.id)
        if event.to_status == NodeStatus.RUNNING:
            first_start.setdefault(event.batch, event.id)
    for batch, started in first_start.items():
        for earlier in range(1, batch):
            assert last_terminal.get(earlier, 0) < started, (
                f"batch {batch} started before batch {earlier} finished"
            )

    # Each (release, node) is dispatched under one taskId, the deterministic one.
    for node in nodes:
        expected = task_id_for(node.main_ip, release.version)
        assert node.task_id in (None, expected)
        if fleet is not None and node.main_ip in fleet.hosts:
            ids = {t for t in fleet.task_ids(node.main_ip) if t.endswith(f"_{release.version}")}
            assert ids <= {expected}, ids
            # A node whose agent received the task was touched: never reported as skipped.
            if ids:
                assert node.status is not NodeStatus.SKIPPED, node
