"""Blast-radius caps inside a batch: at most N nodes of one label value applying at once.

A strategy's ``maxInFlightPer`` (``{"pop": 1}``) gives label keys a cap. A batch's LabelCaps
counts, per lane (key, value), the nodes holding a slot: a node takes one slot per capped key
before its NodeActor runs, and gives them back when the actor ends. The actor dispatches,
follows the agent and reports the outcome inside that time, so "in flight" means dispatched
(or about to be) and not yet finished. Nodes without a capped label share one lane per key:
their value is unknown, so they might all sit in one PoP.

- A node waits only for nodes queued before it (or already in flight), in every lane, and
  takes its place in the release's pool (``max_parallel``, inside the NodeActor) only once it
  holds all its slots: no two nodes can each hold what the other waits for. A node waiting
  for a slot holds no place in the pool, so a value with more nodes than its cap never
  stalls the other values of the batch.
- Slots go in the order nodes were queued: the spawner queues a batch's nodes in their order
  (id order inside a pop), so they start in that order, whichever task trio runs first. A
  slot goes from the node that ends straight to the next one queued, never raced for.
- Nodes already running when the batch starts (a release taken over, or resumed) hold their
  slots from the start, before any other node can take one: they are in flight whatever this
  daemon does. They may be more than the cap (rows written by another program); then no new
  node of that lane starts until they fall below it.
- A waiter cancelled (the batch stopped for a failure, a cancel) leaves without a slot and
  without dispatching: its node stays pending and is skipped. A pause lets waiters through
  to their actors, which find the release paused and hold.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio

from fleetwave.actors.messages import NodeMessage
from fleetwave.store.selection import Labels
from fleetwave.store.topology import Lane, group_key


@attrs.define(eq=False)
class _Ticket:
    """A node's place in one lane's queue: set once the slot is its."""

    granted: trio.Event = attrs.field(factory=trio.Event)
    withdrawn: bool = False


@attrs.define
class _Slots:
    cap: int
    holding: int = 0
    queue: collections.deque[_Ticket] = attrs.field(factory=collections.deque)

    def grant(self) -> None:
        while self.holding < self.cap and self.queue:
            ticket = self.queue.popleft()
            if not ticket.withdrawn:
                self.holding += 1
                ticket.granted.set()


Place = tuple[tuple[Lane, _Ticket], ...]
"""A node's tickets, one per lane, in key order."""


@attrs.define
class LabelCaps:
    """The caps of one batch: ``caps`` is (label key, N) pairs sorted by key."""

    caps: tuple[tuple[str, int], ...]
    _slots: dict[Lane, _Slots] = attrs.field(factory=dict)

    def lanes(self, labels: Labels) -> tuple[Lane, ...]:
        """The lanes a node of ``labels`` takes a slot in, in key order."""
        return tuple((key, group_key(labels, key)) for key, _ in self.caps)

    def in_flight(self, lane: Lane) -> int:
        slots = self._slots.get(lane)
        return 0 if slots is None else slots.holding

    def _of(self, lane: Lane) -> _Slots:
        slots = self._slots.get(lane)
        if slots is None:
            slots = self._slots[lane] = _Slots(dict(self.caps)[lane[0]])
        return slots

    def most_in_flight(self, nodes: Iterable[Labels]) -> int:
        """The most of ``nodes`` (their labels) that can be in flight at once under the caps
        (each lane's nodes up to its cap, or up to those holding it already when more): what
        the batch's share of the poll budget counts."""
        per_lane: collections.Counter[Lane] = collections.Counter()
        for labels in nodes:
            per_lane.update(self.lanes(labels))
        most = sum(per_lane.values())
        for key, _ in self.caps:
            most = min(
                most,
                sum(
                    min(count, max(self._of(lane).cap, self.in_flight(lane)))
                    for lane, count in per_lane.items()
                    if lane[0] == key
                ),
            )
        return most

    def hold_nowait(self, labels: Labels) -> None:
        """Count a node already in flight (running when the batch starts): its slots are
        taken at once, beyond the cap if need be."""
        for lane in self.lanes(labels):
            self._of(lane).holding += 1

    def queue_nowait(self, labels: Labels) -> Place:
        """Queue a node in each of its lanes: slots go in the order nodes are queued (the
        spawner queues them in the batch's order, so a pop's nodes go in id order)."""
        place = []
        for lane in self.lanes(labels):
            slots = self._of(lane)
            ticket = _Ticket()
            slots.queue.append(ticket)
            slots.grant()
            place.append((lane, ticket))
        return tuple(place)

    async def wait_admitted(self, place: Place) -> None:
        """Wait until each ticket of ``place`` holds its slot. Cancelled while waiting, the
        node gives back the slots it got and leaves its other queues."""
        try:
            for _, ticket in place:
                await ticket.granted.wait()
        except BaseException:
            self._leave(place)
            raise

    async def acquire(self, labels: Labels) -> None:
        """Queue a node and wait for its slots (queue_nowait, then wait_admitted)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        await self.wait_admitted(self.queue_nowait(labels))

    def release(self, labels: Labels) -> None:
        """Give back a node's slots; each goes to the next node queued in its lane."""
        for lane in self.lanes(labels):
            slots = self._slots[lane]
            slots.holding -= 1
            slots.grant()

    def _leave(self, place: Place) -> None:
        for lane, ticket in place:
            slots = self._slots[lane]
            if ticket.granted.is_set():
                slots.holding -= 1
                slots.grant()
            else:
                ticket.withdrawn = True  # skipped when its turn comes: no O(n) removal

    async def run_in_lanes(
        self,
        place: Place | None,
        labels: Labels,
        run: Callable[[], Awaitable[None]],
        outbox: trio.MemorySendChannel[NodeMessage],
    ) -> None:
        """``run()`` (a NodeActor's) once the node holds its slots: queued as ``place``, or
        None for a node in flight already (see hold_nowait). The slots are given back when
        it ends. ``outbox`` (the actor's) is closed however early the batch is cancelled, as
        the actor itself would close it."""
        with outbox:
            if place is not None:
                await self.wait_admitted(place)
            try:
                await run()
            finally:
                self.release(labels)
