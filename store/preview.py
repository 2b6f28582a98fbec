"""A release's preview: the batches, steps, blast radius and predicted duration of a release
that is not created (``POST /api/v1/releases?dryRun=true``, ``fleetwave release plan``).

The stores select the nodes and batch them exactly as create_release does and read each
node's recent apply times; ``build_preview`` turns those into the preview. A node's apply time
is the median of its last RECENT_APPLIES successes (finished_at - started_at); a node with none
gets the fleet median of every such success; with no success anywhere the apply time is
unknown and so is the predicted duration.
"""

from __future__ import annotations

import collections
import heapq
import statistics
from collections.abc import Mapping, Sequence

import attrs

from fleetwave.store.models import Node, PlanStep, ReleaseSpec
from fleetwave.store.selection import Labels
from fleetwave.store.strategy import Strategy, strategy_from_json
from fleetwave.store.topology import Lane, group_key

RECENT_APPLIES = 5
"""How many of a node's latest successes predict its apply time."""
TOPOLOGY_LABELS = ("pop", "region")
DEFAULT_PARALLEL = 1000
"""Nodes at once in a batch of a release without maxParallel (the release actor's default)."""


@attrs.frozen
class PreviewNode:
    node: Node
    apply_seconds: float | None
    from_history: bool
    """True: the node's own successes; False: the fleet median (or nothing known)."""


@attrs.frozen
class PreviewBatch:
    batch: int
    nodes: tuple[PreviewNode, ...]
    pops: tuple[str, ...]
    regions: tuple[str, ...]
    predicted_seconds: float | None


@attrs.frozen
class PreviewStep:
    position: int
    kind: str
    """batch, bake or gate."""
    batch: int
    seconds: float | None
    """A batch's predicted time, a bake's length; None for a gate or an unknown batch."""


@attrs.frozen
class ReleasePreview:
    total_nodes: int
    batches: tuple[PreviewBatch, ...]
    steps: tuple[PreviewStep, ...]
    fleet_median_seconds: float | None
    bake_seconds: float
    gates: int
    predicted_seconds: float | None
    """Every batch and bake; gates wait for promote and count nothing. None: no apply time
    is known."""
    default_scope: str | None = None
    """The scope whose default strategy completed the release's (store/scopes.py), or None."""


def spec_strategy(spec: ReleaseSpec, plan: Sequence[PlanStep]) -> Strategy:
    """The strategy a release created from ``spec`` runs (as strategy_of reads it back)."""
    if spec.strategy is not None:
        return strategy_from_json(spec.strategy)
    return Strategy.of_plan(plan, spec.max_failures)


def batch_seconds(durations: Sequence[float], max_parallel: int | None) -> float:
    """The time of a batch whose nodes take ``durations`` in order, at most ``max_parallel``
    at once: each node starts when the earliest of the running ones ends."""
    width = max(1, min(max_parallel or DEFAULT_PARALLEL, len(durations)))
    lanes = [0.0] * width
    for seconds in durations:
        lane = min(range(width), key=lanes.__getitem__)
        lanes[lane] += seconds
    return max(lanes, default=0.0)


def capped_batch_seconds(
    nodes: Sequence[tuple[float, Labels]],
    max_parallel: int | None,
    caps: Sequence[tuple[str, int]],
) -> float:
    """The time of a batch whose nodes ((seconds, labels) in order) run at most
    ``max_parallel`` at once and at most N of one value of each capped label (maxInFlightPer):
    whenever a node ends, the first waiting nodes that fit start (actors/topology.py)."""
    width = max(1, min(max_parallel or DEFAULT_PARALLEL, len(nodes)))
    limit = dict(caps)
    groups: dict[tuple[Lane, ...], collections.deque[int]] = {}
    for index, (_, labels) in enumerate(nodes):
        lanes = tuple((key, group_key(labels, key)) for key, _ in caps)
        groups.setdefault(lanes, collections.deque()).append(index)
    sharing: dict[Lane, list[tuple[Lane, ...]]] = {}
    for lanes in groups:
        for lane in lanes:
            sharing.setdefault(lane, []).append(lanes)
    holding: collections.Counter[Lane] = collections.Counter()
    ready = [(queue[0], lanes) for lanes, queue in groups.items()]
    heapq.heapify(ready)
    running: list[tuple[float, int, tuple[Lane, ...]]] = []
    now = 0.0
    while True:
        while ready and len(running) < width:
            head, lanes = heapq.heappop(ready)
            queue = groups[lanes]
            if not queue or queue[0] != head:
                continue  # an entry left behind by an earlier start
            if any(holding[lane] >= limit[lane[0]] for lane in lanes):
                continue  # back in when one of its lanes frees a slot
            queue.popleft()
            holding.update(lanes)
            heapq.heappush(running, (now + nodes[head][0], head, lanes))
            if queue:
                heapq.heappush(ready, (queue[0], lanes))
        if not running:
            return now
        now, _, lanes = heapq.heappop(running)
        holding.subtract(lanes)
        for lane in lanes:
            if holding[lane] != limit[lane[0]] - 1:
                continue  # it was below its cap: it held nothing back
            for waiting in sharing[lane]:
                if groups[waiting]:
                    heapq.heappush(ready, (groups[waiting][0], waiting))


def build_preview(
    spec: ReleaseSpec,
    plan: Sequence[PlanStep],
    placed: Sequence[tuple[int, int]],
    nodes: Mapping[int, Node],
    recent: Mapping[int, Sequence[float]],
) -> ReleasePreview:
    """The preview of ``placed`` ((node id, batch) as assign_batches gives them), with each
    node's row in ``nodes`` and the recent apply times of the fleet's nodes in ``recent``."""
    samples = [seconds for durations in recent.values() for seconds in durations]
    fleet = statistics.median(samples) if samples else None
    strategy = spec_strategy(spec, plan)
    by_batch: dict[int, list[PreviewNode]] = {}
    for node_id, batch in placed:
        own = recent.get(node_id)
        seconds = statistics.median(own) if own else fleet
        entry = PreviewNode(nodes[node_id], seconds, bool(own))
        by_batch.setdefault(batch, []).append(entry)
    batches = []
    for batch, entries in sorted(by_batch.items()):
        times = [entry.apply_seconds for entry in entries]
        known = [seconds for seconds in times if seconds is not None]
        labels = [dict(entry.node.labels) for entry in entries]
        pops, regions = (
            tuple(sorted({found[key] for found in labels if key in found}))
            for key in TOPOLOGY_LABELS
        )
        predicted = None
        if len(known) == len(times) and strategy.max_in_flight_per:
            predicted = capped_batch_seconds(
                [
                    (seconds, entry.node.labels)
                    for seconds, entry in zip(known, entries, strict=True)
                ],
                spec.max_parallel,
                strategy.max_in_flight_per,
            )
        elif len(known) == len(times):
            predicted = batch_seconds(known, spec.max_parallel)
        batches.append(PreviewBatch(batch, tuple(entries), pops, regions, predicted))
    by_number = {batch.batch: batch for batch in batches}
    steps: list[PreviewStep] = []
    schedule = (
        strategy.schedule(len(placed))
        if strategy.batch_by is None
        else strategy.schedule_batches(len(batches))
    )
    for step in schedule:
        if step.pause is None:
            seconds = by_number[step.batch].predicted_seconds
        else:
            seconds = step.pause.seconds
        steps.append(PreviewStep(step.position, step.kind, step.batch, seconds))
    bake = sum(step.seconds or 0.0 for step in steps if step.kind == "bake")
    batch_times = [batch.predicted_seconds for batch in batches]
    total = None if None in batch_times else bake + sum(t or 0.0 for t in batch_times)
    return ReleasePreview(
        total_nodes=len(placed),
        batches=tuple(batches),
        steps=tuple(steps),
        fleet_median_seconds=fleet,
        bake_seconds=bake,
        gates=sum(1 for step in steps if step.kind == "gate"),
        predicted_seconds=total,
    )
