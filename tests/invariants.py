"""DESIGN.md's invariants, checked against a store (and the fleet) after every scenario."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

from fleetwave.agent.sim import SimulatedFleet
from fleetwave.store.base import Store
from fleetwave.store.models import NodeStatus, ReleaseStatus, task_id_for

TERMINAL_NODE = {s.value for s in NodeStatus if s.terminal}
TERMINAL_RELEASE = {s.value for s in ReleaseStatus if s.terminal}


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


async def assert_node_exclusion(store: Store, fleet: SimulatedFleet | None = None) -> None:
    """Across every release of ``store``: no node is in two active releases, releases sharing
    a node ran in version order, and (with ``fleet``) each agent received its tasks one at a
    time in version order: a node never receives an older config after a newer one."""
    releases, _ = await store.list_releases(limit=1_000_000)
    spans: dict[int, tuple[int, int, int]] = {}
    nodes_of: dict[int, set[int]] = {}
    for release in releases:
        events = await store.release_events(release.id, limit=1_000_000)
        claims = [e.id for e in events if e.node_id is None and e.to_status == "running"]
        if not claims:
            continue
        ends = [e.id for e in events if e.node_id is None and e.to_status in TERMINAL_RELEASE]
        spans[release.id] = (release.version, claims[0], ends[-1] if ends else 1 << 62)
        nodes_of[release.id] = {node.node_id for node in await store.release_nodes(release.id)}
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    for index, (first, (version, _, first_end)) in enumerate(ordered):
        for second, (later_version, second_start, _) in ordered[index + 1 :]:
            shared = nodes_of[first] & nodes_of[second]
            if shared:
                assert first_end < second_start, (
                    f"release {second} (version {later_version}) started while release {first}"
                    f" (version {version}) was active over nodes {sorted(shared)}"
                )
    if fleet is None:
        return
    by_host: dict[str, list[tuple[float, float, int]]] = {}
    for task in fleet.task_times():
        version = int(task.task_id.rsplit("_", 1)[1])
        finished = task.dispatched_at + task.apply_time
        by_host.setdefault(task.host, []).append((task.dispatched_at, finished, version))
    for host, tasks in by_host.items():
        tasks.sort()
        for (_, finished, version), (received, _, later) in pairwise(tasks):
            assert version < later, f"{host} received version {later} after version {version}"
            assert finished <= received, (
                f"{host} received version {later} while still applying version {version}"
            )
