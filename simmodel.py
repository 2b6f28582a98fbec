"""The daemon's schedule of one release, computed: what ``fleetwave simulate`` runs by default.

A release of ten thousand nodes costs the real daemon about a second and a half of CPU even in
virtual time (a task per node, a few dozen trio steps each, every status query through the
AgentClient). ``ScheduleModel`` computes the same release as a discrete-event simulation of
what those actors do, in microseconds a node, so that a hundred runs take seconds:

- a batch's nodes take ``max_parallel`` places in row order (under ``maxInFlightPer``, once
  the actors' own LabelCaps admits them); each is dispatched when it gets one, its agent
  applies for its drawn time, and it is asked for its status at the intervals a NodeActor
  waits (``PollShare.interval``, jittered by ``jittered`` with the node's own
  ``random.Random(row id)``, as the actor's), so an outcome counts when the first query after
  it is answered, and a node no query saw finish by the node deadline fails;
- a failure beyond a budget (``Strategy.release_over_budget``, the ReleaseActor's own test)
  stops the batch at that instant: nodes that never got a place stay pending (skipped), nodes
  dispatched are followed as ``ReleaseActor._reconcile`` follows them, until their agent
  finishes or the deadline (at least ``reconcile_timeout``) passes, and recorded as they ended;
- bakes hold their seconds; a gate is promoted ``gate_wait`` seconds after it was reached, as
  ``simulate``'s promoter does it;
- the outcome follows ``onFailure``: stop (failed), pause, rollback (failed, and counted).

It shares with the actors what decides (the placement, the schedule, the budgets, the caps,
the poll pacing and its jitter, the agents' draws), not their code paths:
tests/sim/test_simulate_model.py runs the real daemon on the same draws and holds the two to
the same outcome, the same nodes touched and left behind, and the same time to finish, to the
microsecond where no two events share an instant (docs/simulate.md says where trio's order
then decides).

What it leaves out, the real daemon only shows with ``--engine daemon``: agent errors and
retries (a simulated agent answers at once) and store or lease trouble. A batch larger than
``max_parallel`` takes its places in row order in both (the daemon's spawner hands them out
so, whatever order trio runs its tasks in), except under ``maxInFlightPer`` when the caps let
more of the batch in flight than ``max_parallel``: the daemon's nodes admitted together then
take their places in trio's order, and runs agree in distribution, not one by one.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Iterator, Sequence

import attrs

from fleetwave.actors.timing import NodeTiming, PollPacer, jittered
from fleetwave.actors.topology import LabelCaps, Place
from fleetwave.store.selection import Labels
from fleetwave.store.strategy import OnFailure, Strategy
from fleetwave.store.topology import Lane

_PENDING, _RUNNING, _SUCCESS, _FAILED, _CANCELLED = range(5)
_POLL, _DEADLINE = 0, 1


@attrs.frozen
class Member:
    """A node of the release: its row (whose id seeds its poll jitter) and its draws."""

    row_id: int
    draw: int
    """Its index in a run's draws (``apply_times``, ``failing``)."""
    name: str
    labels: Labels = ()


@attrs.frozen
class ModelOutcome:
    """How one modelled release ended."""

    status: str
    """success, failed, paused (the release row's words)."""
    rolled_back: bool
    """Failed, and ``onFailure: rollback`` would create the rollback release."""
    seconds: float
    """From the release's creation to its end (or its pause)."""
    touched: int
    """Nodes whose agent received the task."""
    left_old: int
    """Nodes not recorded success: on the config they ran before."""
    failed_nodes: int
    error: str | None


class _Jitter:
    """The draws of ``random.Random(row_id)``, the RNG a NodeActor (and a follow of the
    reconciliation, afresh) jitters its polls with, replayed from ``at`` on: drawn once in a
    process and read by every run."""

    __slots__ = ("_drawn", "_rng", "at")

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._drawn: list[float] = []
        self.at = 0

    def uniform(self, a: float, b: float) -> float:
        """As ``random.Random.uniform``: ``a + (b - a) * random()``, the next draw."""
        at = self.at
        drawn = self._drawn
        if at == len(drawn):
            drawn.append(self._rng.random())
        self.at = at + 1
        return a + (b - a) * drawn[at]


class _Admission:
    """The nodes of a batch that may take a place in the pool, in the order they may: all of
    them in row order, or under ``maxInFlightPer`` as the actors' own LabelCaps admits them
    (a node once it holds a slot in each of its lanes, slots given in queue order)."""

    def __init__(self, caps: tuple[tuple[str, int], ...], members: Sequence[Member]) -> None:
        self.ready = deque[int]()
        self._caps = LabelCaps(caps) if caps else None
        self._labels = {member.draw: member.labels for member in members}
        self._places: dict[int, Place] = {}
        self._waiting: dict[Lane, deque[int]] = {}
        self._admitted: set[int] = set()
        for member in members:
            if self._caps is None:
                self.ready.append(member.draw)
                continue
            place = self._places[member.draw] = self._caps.queue_nowait(member.labels)
            self._admit(member.draw)
            for lane, ticket in place:
                if not ticket.granted.is_set():
                    self._waiting.setdefault(lane, deque()).append(member.draw)

    @property
    def bound(self) -> int | None:
        """At most this many of the batch in flight at once (what its poll share counts)."""
        return None if self._caps is None else self._caps.most_in_flight(self._labels.values())

    def _admit(self, draw: int) -> None:
        if draw not in self._admitted and all(t.granted.is_set() for _, t in self._places[draw]):
            self._admitted.add(draw)
            self.ready.append(draw)

    def release(self, draw: int) -> None:
        """A node ended: its slots go to the next nodes queued in its lanes."""
        if self._caps is None:
            return
        labels = self._labels[draw]
        self._caps.release(labels)
        for lane in self._caps.lanes(labels):
            waiting = self._waiting.get(lane)
            while waiting and dict(self._places[waiting[0]])[lane].granted.is_set():
                self._admit(waiting.popleft())


@attrs.define
class ScheduleModel:
    """One release of a fixed set of batches under ``strategy``, run by ``run`` as often as
    wanted, each time with new draws."""

    strategy: Strategy
    batches: tuple[tuple[Member, ...], ...]
    """The release's batches in order, each in row order (as the store placed them)."""
    timing: NodeTiming
    poll_rate: float
    max_parallel: int
    reconcile_timeout: float
    gate_wait: float | None = None
    failure: str = "failed"
    """The lastError a failing agent reports."""
    _jitters: dict[int, _Jitter] = attrs.field(factory=dict, init=False)
    _holds: dict[int, list[float]] = attrs.field(factory=dict, init=False)
    """Seconds the bakes and gates after each batch hold (from the schedule, read once:
    computing it is quadratic in the plan's steps)."""

    def __attrs_post_init__(self) -> None:
        for batch in self.batches:
            for member in batch:
                self._jitters[member.draw] = _Jitter(member.row_id)
        for step in self.strategy.schedule_batches(len(self.batches)):
            if step.pause is None:
                continue
            if step.pause.seconds is not None:
                seconds = step.pause.seconds
            else:
                assert self.gate_wait is not None, "a gate is refused without a gate wait"
                seconds = self.gate_wait
            self._holds.setdefault(step.batch, []).append(seconds)

    def run(self, apply_times: Sequence[float], failing: Sequence[bool]) -> ModelOutcome:
        """The release with each node's agent taking ``apply_times[draw]`` seconds and failing
        where ``failing[draw]``."""
        return _Run(self, apply_times, failing).release()


class _Run:
    """One release's state while it is modelled (times in seconds from its creation)."""

    def __init__(
        self, model: ScheduleModel, apply_times: Sequence[float], failing: Sequence[bool]
    ) -> None:
        self.model = model
        self.timing = model.timing
        self.apply_times = apply_times
        self.failing = failing
        size = len(apply_times)
        self.status = [_PENDING] * size
        self.since = [0.0] * size
        self.done_at = [0.0] * size
        self.pacer = PollPacer(rate=model.poll_rate)
        self.failed: dict[int, int] = {}
        self.sizes = {number: len(batch) for number, batch in enumerate(model.batches, 1)}
        self.error: str | None = None
        for jitter in model._jitters.values():
            jitter.at = 0

    def _next_poll(self, draw: int, now: float, limit: float) -> tuple[float, int, int]:
        """The event after a query at ``now`` that found the task unfinished: the next query,
        or ``limit`` (the deadline) when that comes first."""
        age = now - self.since[draw]
        interval = self.pacer.interval(age, self.timing)
        at = now + jittered(interval, self.timing, self.model._jitters[draw])
        return (at, _POLL, draw) if at < limit else (limit, _DEADLINE, draw)

    def release(self) -> ModelOutcome:
        model = self.model
        now = 0.0
        stopped = False
        for number, batch in enumerate(model.batches, 1):
            now, stopped = self._batch(number, batch, now)
            if stopped:
                break
            now = self._pauses_after(number, now)
        status = "success"
        if stopped:
            status = "paused" if model.strategy.on_failure is OnFailure.PAUSE else "failed"
        counts = [self.status.count(kind) for kind in range(5)]
        return ModelOutcome(
            status=status,
            rolled_back=stopped and model.strategy.on_failure is OnFailure.ROLLBACK,
            seconds=now,
            touched=len(self.status) - counts[_PENDING],
            left_old=len(self.status) - counts[_SUCCESS],
            failed_nodes=counts[_FAILED],
            # A paused release's cause is the reason its pause records (as the daemon's verb).
            error=f"onFailure pause: {self.error}" if status == "paused" else self.error,
        )

    def _batch(self, number: int, members: Sequence[Member], start: float) -> tuple[float, bool]:
        """Run batch ``number`` from ``start``: (when it ended, whether a failure stopped it)."""
        model = self.model
        deadline = self.timing.deadline
        status, since, done_at = self.status, self.since, self.done_at
        admission = _Admission(model.strategy.max_in_flight_per, members)
        waiting = admission.ready
        events: list[tuple[float, int, int]] = []
        limits: dict[int, float] = {}
        now = start
        places = model.max_parallel

        def dispatch(at: float) -> None:
            draw = waiting.popleft()
            status[draw] = _RUNNING
            since[draw] = at
            done_at[draw] = at + self.apply_times[draw]
            limits[draw] = at + deadline
            heapq.heappush(events, self._next_poll(draw, at, limits[draw]))

        with self.pacer.share(len(members), bound=admission.bound) as share:
            while waiting and places:
                dispatch(start)
                places -= 1
            stopped = False
            while events and not stopped:
                # Every node ending at this instant is handled before a place it gives back is
                # used (the daemon's spawner runs after the collector has read them all).
                now = events[0][0]
                while events and events[0][0] == now:
                    _, kind, draw = heapq.heappop(events)
                    if kind == _POLL and now < done_at[draw]:
                        heapq.heappush(events, self._next_poll(draw, now, limits[draw]))
                        continue
                    share.finished()
                    if not self._ended(number, kind, draw):
                        why = model.strategy.release_over_budget(self.failed, self.sizes)
                        if why is not None:
                            self.error = self._failure(number, draw, kind, why)
                            stopped = True
                            break
                    # Its place in the pool goes first, then its slots (the actor leaves the
                    # pool before its lanes): a node admitted now queues behind those waiting.
                    places += 1
                    admission.release(draw)
                while waiting and places and not stopped:
                    dispatch(now)
                    places -= 1
            if not stopped:
                return now, False
            # What ended at the instant the batch stopped counts (the ReleaseActor drains
            # what its NodeActors sent): nodes dispatched together reach their deadline
            # together.
            while events and events[0][0] == now:
                _, kind, draw = heapq.heappop(events)
                if kind == _DEADLINE or now >= done_at[draw]:
                    share.finished()
                    self._ended(number, kind, draw)
        running = [draw for draw in limits if status[draw] == _RUNNING]
        return self._reconcile(running, now), True

    def _ends(
        self, events: list[tuple[float, int, int]], limits: dict[int, float]
    ) -> Iterator[tuple[float, int, int]]:
        """``events`` in time order, each node's polls followed until one finds its task
        finished or its limit comes: (when, _POLL or _DEADLINE, draw) of each node's end."""
        done_at = self.done_at
        while events:
            now, kind, draw = heapq.heappop(events)
            if kind == _POLL and now < done_at[draw]:
                heapq.heappush(events, self._next_poll(draw, now, limits[draw]))
                continue
            yield now, kind, draw

    def _ended(self, number: int, kind: int, draw: int) -> bool:
        """Record how a node of batch ``number`` ended; False: it failed (counted)."""
        ok = kind == _POLL and not self.failing[draw]
        self.status[draw] = _SUCCESS if ok else _FAILED
        if not ok:
            self.failed[number] = self.failed.get(number, 0) + 1
        return ok

    def _reconcile(self, running: Sequence[int], stopped_at: float) -> float:
        """Follow the dispatched, unfinished nodes of a stopped batch until their agents
        finish or their deadline passes (at least ``reconcile_timeout``): when the last
        follow ended. What a follow finds is recorded; not counted against a budget."""
        since = self.since
        limits = {
            draw: max(since[draw] + self.timing.deadline, stopped_at + self.model.reconcile_timeout)
            for draw in running
        }
        events = [(stopped_at, _POLL, draw) for draw in running]
        for draw in running:
            self.model._jitters[draw].at = 0  # each follow jitters with a Random of its own
        end = stopped_at
        with self.pacer.share(len(running)) as share:
            for now, kind, draw in self._ends(events, limits):
                share.finished()
                end = max(end, now)
                if kind == _DEADLINE:
                    self.status[draw] = _CANCELLED
                else:
                    self.status[draw] = _FAILED if self.failing[draw] else _SUCCESS
        return end

    def _pauses_after(self, number: int, now: float) -> float:
        """Hold the bakes and gates that follow batch ``number``: when the next batch starts."""
        for seconds in self.model._holds.get(number, ()):
            now += seconds
        return now

    def _failure(self, number: int, draw: int, kind: int, why: str) -> str:
        """The release's error: the node whose failure stopped it, and why."""
        name = next(m.name for m in self.model.batches[number - 1] if m.draw == draw)
        if kind == _DEADLINE:
            cause = f"no result from its agent within {self.timing.deadline:g}s"
        else:
            cause = f"its agent reported failure: {self.model.failure!r}"
        return f"node {name} failed: {cause} ({why})"
