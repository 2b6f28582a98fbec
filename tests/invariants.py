"""DESIGN.md's invariants, checked against a store (and the fleet) after every scenario."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise

from fleetwave.agent.sim import SimulatedFleet
from fleetwave.store.base import Store
from fleetwave.store.models import Event, NodeStatus, ReleaseNode, ReleaseStatus, task_id_for
from fleetwave.store.plan import assign_batches
from fleetwave.store.strategy import strategy_of

TERMINAL_NODE = {s.value for s in NodeStatus if s.terminal}
TERMINAL_RELEASE = {s.value for s in ReleaseStatus if s.terminal}
TASK_ORDER = re.compile(r"_(\d+)(?:_a(\d+))?$")
"""(release version, attempt) at the end of a task id."""


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

    # Each (release, node, attempt) is dispatched under one taskId, the deterministic one;
    # a first attempt has the original's exact format.
    for node in nodes:
        expected = task_id_for(node.main_ip, release.version, node.attempt)
        assert node.task_id in (None, expected)
        if fleet is not None and node.main_ip in fleet.hosts:
            ids = release_task_ids(fleet, node, release.version)
            attempts = {task_id_for(node.main_ip, release.version, n) for n in range(1, 99)}
            assert ids <= {t for t in attempts if _attempt(t) <= node.attempt}, ids
            # A node whose agent received the task of its attempt was touched: never
            # reported as skipped.
            if expected in ids:
                assert node.status is not NodeStatus.SKIPPED, node
            if ids and release.config_version != release.version:
                for task_id in ids:
                    assert fleet.task_version(node.main_ip, task_id) in (
                        None,
                        release.config_version,
                    ), "a rollback's agents apply its config version"

    # Retry never re-sends a succeeded node: after a node's success, no event takes it back.
    succeeded: set[int] = set()
    for event in events:
        if event.node_id is None:
            continue
        if event.node_id in succeeded:
            raise AssertionError(f"node {event.node_id} changed after its success: {event}")
        if event.to_status == NodeStatus.SUCCESS:
            succeeded.add(event.node_id)

    strategy = strategy_of(release)
    if strategy.batch_by is not None:
        assert_batched_by(nodes, strategy.batch_by)
    if fleet is not None:
        # Never more than N nodes of one label value in flight, by the agents' own record.
        for key, cap in strategy.max_in_flight_per:
            peaks = peak_in_flight(fleet, nodes, release.version, key)
            over = {value: peak for value, peak in peaks.items() if peak > cap}
            assert not over, f"maxInFlightPer {key}={cap} exceeded: {over}"


def assert_batched_by(nodes: Sequence[ReleaseNode], key: str) -> None:
    """Each batch of a release batched by label ``key`` holds one value of it (or only nodes
    without it); the values come in ascending order, each in consecutive batches, and nodes
    without the label last."""
    values: list[str | None] = []
    for batch in sorted({node.batch for node in nodes}):
        found = {dict(node.labels).get(key) for node in nodes if node.batch == batch}
        assert len(found) == 1, f"batch {batch} mixes values of {key}: {found}"
        [value] = found
        if not values or values[-1] != value:
            assert value not in values, f"{key}={value} comes back in batch {batch}"
            values.append(value)
    named = [value for value in values if value is not None]
    assert named == sorted(named)
    assert None not in values or values[-1] is None


def agent_applies(
    fleet: SimulatedFleet, nodes: Sequence[ReleaseNode], version: int
) -> list[tuple[float, float, ReleaseNode]]:
    """(start, end, node) of every apply of this release the agents hold, by their own clock:
    from the task's arrival to the end of the apply time it drew."""
    by_host = {node.main_ip: node for node in nodes}
    applies = []
    for task in fleet.task_times():
        node = by_host.get(task.host)
        if node is not None and task.task_id in release_task_ids(fleet, node, version):
            applies.append((task.dispatched_at, task.dispatched_at + task.apply_time, node))
    return applies


def peak_in_flight(
    fleet: SimulatedFleet, nodes: Sequence[ReleaseNode], version: int, key: str | None
) -> dict[str | None, int]:
    """The most applies of the release at once on the agents, per value of label ``key``
    (None: nodes without it; ``key`` None: all nodes together, under None)."""
    moments: dict[str | None, list[tuple[float, int]]] = {}
    for start, end, node in agent_applies(fleet, nodes, version):
        value = None if key is None else dict(node.labels).get(key)
        moments.setdefault(value, []).extend([(start, 1), (end, -1)])
    peaks: dict[str | None, int] = {}
    for value, changes in moments.items():
        current = peak = 0
        for _, change in sorted(changes):  # an end before a start at the same moment
            current += change
            peak = max(peak, current)
        peaks[value] = peak
    return peaks


def _attempt(task_id: str) -> int:
    match = re.search(r"_a(\d+)$", task_id)
    return int(match.group(1)) if match else 1


def release_task_ids(fleet: SimulatedFleet, node: ReleaseNode, version: int) -> set[str]:
    """The task ids of this release (any attempt) that ever reached ``node``'s agent."""
    first = task_id_for(node.main_ip, version)
    return {
        t
        for t in fleet.task_ids(node.main_ip)
        if t == first or re.fullmatch(rf"{re.escape(first)}_a\d+", t)
    }


def assert_no_dispatch_while_stopped(
    fleet: SimulatedFleet,
    nodes: list[ReleaseNode],
    version: int,
    stopped_at: float,
    until: float = math.inf,
) -> None:
    """No dispatch of the release reached an agent from the moment a pause or a cancel was
    in effect (the verb's answer, in trio time) until ``until`` (its resume)."""
    task_ids = {
        task_id_for(node.main_ip, version, attempt)
        for node in nodes
        for attempt in range(1, node.attempt + 1)
    }
    late = [
        (at, host, task_id)
        for at, host, task_id in fleet.dispatch_log()
        if task_id in task_ids and stopped_at <= at < until
    ]
    assert not late, f"dispatched after the stop at {stopped_at}: {late}"


async def assert_rollback_follows_plan(store: Store, rollback_id: int) -> None:
    """A rollback runs over the rolled-back release's nodes in that release's order, split
    by its plan (canary first) and its batchBy, under its maxInFlightPer, and applies an
    earlier config."""
    rollback = await store.get_release(rollback_id)
    assert rollback is not None and rollback.rollback_of is not None
    original = await store.get_release(rollback.rollback_of)
    assert original is not None
    assert rollback.config_version < rollback.version
    assert rollback.plan == original.plan
    order = [node.node_id for node in await store.release_nodes(original.id)]
    mine = await store.release_nodes(rollback_id)
    ids = [node.node_id for node in mine]
    assert ids == [node_id for node_id in order if node_id in set(ids)]
    topology = strategy_of(original)
    if topology.batch_by is None:
        assert [(node.node_id, node.batch) for node in mine] == assign_batches(rollback.plan, ids)
    else:
        # A rollback of a release batched by a label is batched by it too, capped the same.
        assert strategy_of(rollback).batch_by == topology.batch_by
        assert_batched_by(mine, topology.batch_by)
    assert strategy_of(rollback).max_in_flight_per == topology.max_in_flight_per


async def assert_applied_versions(store: Store, fleet: SimulatedFleet | None = None) -> None:
    """Every node's applied_version is the config of its last recorded success, and (with
    the fleet) the version its agent was told to apply in that task."""
    releases, _ = await store.list_releases(limit=100_000)
    by_id = {release.id: release for release in releases}
    last: dict[int, tuple[int, int]] = {}
    for release in releases:
        for event in await store.release_events(release.id, limit=1_000_000):
            if event.node_id is None or event.to_status != NodeStatus.SUCCESS:
                continue
            if event.node_id not in last or last[event.node_id][0] < event.id:
                last[event.node_id] = (event.id, release.id)
    for node in await store.list_nodes():
        if node.id not in last:
            assert node.applied_version is None, node
            continue
        release = by_id[last[node.id][1]]
        assert node.applied_version == release.config_version, (node, release)
        assert node.applied_release_version == release.version, (node, release)
        if fleet is not None and node.main_ip in fleet.hosts:
            [row] = [n for n in await store.release_nodes(release.id) if n.node_id == node.id]
            task_id = task_id_for(node.main_ip, release.version, row.attempt)
            assert fleet.task_version(node.main_ip, task_id) in (None, node.applied_version)


async def assert_node_exclusion(store: Store, fleet: SimulatedFleet | None = None) -> None:
    """Across every release of ``store``: no node is in two active releases, releases sharing
    a node started in version order (but for rollbacks, which run ahead of the releases they
    hold), and (with ``fleet``) each agent received its tasks one at a time in version order:
    a node never receives an older config after a newer one, but from a rollback (a newer
    release restoring an older config)."""
    releases, _ = await store.list_releases(limit=1_000_000)
    spans: dict[int, list[tuple[int, int]]] = {}
    nodes_of: dict[int, set[int]] = {}
    version_of: dict[int, int] = {}
    rollbacks = {release.id for release in releases if release.rollback_of is not None}
    for release in releases:
        events = await store.release_events(release.id, limit=1_000_000)
        spans[release.id] = _active_spans(events)
        nodes_of[release.id] = {node.node_id for node in await store.release_nodes(release.id)}
        version_of[release.id] = release.version
    ordered = sorted(spans, key=version_of.__getitem__)
    for index, first in enumerate(ordered):
        for second in ordered[index + 1 :]:
            shared = nodes_of[first] & nodes_of[second]
            if not shared:
                continue
            for start, end in spans[first]:
                for other_start, other_end in spans[second]:
                    assert end < other_start or other_end < start, (
                        f"releases {first} (version {version_of[first]}) and {second} (version"
                        f" {version_of[second]}) were active at once over nodes {sorted(shared)}"
                    )
            # A rollback may run before older releases it held: version order is theirs only.
            if spans[first] and spans[second] and not rollbacks & {first, second}:
                assert spans[first][0][0] < spans[second][0][0], (
                    f"release {second} started before the older release {first} over"
                    f" nodes {sorted(shared)}"
                )
    if fleet is None:
        return
    # Task ids carry the release's own version (a rollback is a newer release) and a retry's
    # attempt: per node they only grow, a retry following its own earlier attempt.
    by_host: dict[str, list[tuple[float, float, tuple[int, int]]]] = {}
    for task in fleet.task_times():
        match = TASK_ORDER.search(task.task_id)
        assert match is not None, task.task_id
        order = (int(match.group(1)), int(match.group(2) or 1))
        finished = task.dispatched_at + task.apply_time
        by_host.setdefault(task.host, []).append((task.dispatched_at, finished, order))
    for host, tasks in by_host.items():
        tasks.sort()
        for (_, finished, earlier), (received, _, later) in pairwise(tasks):
            assert earlier < later, f"{host} received {later} after {earlier} (version, attempt)"
            assert finished <= received, f"{host} received {later} while still applying {earlier}"


def _active_spans(events: list[Event]) -> list[tuple[int, int]]:
    """(first, last) event ids of each time a release was active: from a claim (into
    running) until it ended; a retry opens a new span, an event between two terminal
    statuses (a rollback of a cancelled release) none."""
    spans: list[tuple[int, int]] = []
    start: int | None = None
    for event in events:
        if event.node_id is not None:
            continue
        if start is None and event.to_status == "running":
            start = event.id
        elif start is not None and event.to_status in TERMINAL_RELEASE:
            spans.append((start, event.id))
            start = None
    if start is not None:
        spans.append((start, 1 << 62))
    return spans
