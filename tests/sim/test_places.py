"""Places of a batch larger than max_parallel, in simulated time: they go in the batch's row
order (the order the preview shows) whatever order trio runs ready tasks in, and no more
NodeActors exist at once than there are places.

trio runs each round of ready tasks in their order or reversed, at random; the tests seed
that choice (where this trio keeps it) with several seeds, so that each order is met."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import pairwise

import attrs
import pytest
import trio
from trio.testing import MockClock

from fleetwave.actors.messages import Failed, NodeMessage
from fleetwave.actors.node import NodeActor
from fleetwave.actors.timing import NodeTiming, PollPacer, PollShare
from fleetwave.agent.errors import FailureKind
from fleetwave.agent.protocol import AgentAddress, DispatchRequest
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import (
    NodeChange,
    NodeStatus,
    ReleaseNode,
    ReleaseSpec,
    ReleaseStatus,
    task_id_for,
)
from fleetwave.store.verbs import Verb
from tests.hostile import HOSTILE_ADDRESSES, hostile_row
from tests.invariants import assert_release_invariants, peak_in_flight
from tests.sim.conftest import Sim
from tests.sim.test_verbs import verb, wait_count, wait_status

SEEDS = (0, 1, 2, 3, 4, 5)


@contextmanager
def scheduler_seeded(seed: int) -> Iterator[None]:
    """trio's choice of task order follows ``seed`` inside the block (unseeded where this
    trio keeps that choice elsewhere: the orders are then trio's own)."""
    from trio._core import _run

    scheduler = getattr(_run, "_r", None)
    if not isinstance(scheduler, random.Random):
        yield
        return
    state = scheduler.getstate()
    scheduler.seed(seed)
    try:
        yield
    finally:
        scheduler.setstate(state)


@attrs.define(eq=False)
class NodeActorTasks(trio.abc.Instrument):
    """A trio instrument counting the NodeActor tasks alive, and the most at once."""

    alive: int = 0
    peak: int = 0

    @staticmethod
    def _is_node_actor(task: trio.lowlevel.Task) -> bool:
        return getattr(task.coro, "cr_code", None) is NodeActor.run.__code__

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self._is_node_actor(task):
            self.alive += 1
            self.peak = max(self.peak, self.alive)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        if self._is_node_actor(task):
            self.alive -= 1


@contextmanager
def counting_node_actors() -> Iterator[NodeActorTasks]:
    tasks = NodeActorTasks()
    trio.lowlevel.add_instrument(tasks)
    try:
        yield tasks
    finally:
        trio.lowlevel.remove_instrument(tasks)


def first_dispatches(sim: Sim, rows: Sequence[ReleaseNode]) -> list[float]:
    """The trio time each row's agent first received a task, in the rows' order."""
    first: dict[str, float] = {}
    for at, host, _ in sim.fleet.dispatch_log():
        first.setdefault(host, at)
    return [first[row.main_ip] for row in rows if row.main_ip in first]


def assert_row_order(times: Sequence[float]) -> None:
    """Each row's first dispatch no earlier than the one before it."""
    late = [(k, a, b) for k, (a, b) in enumerate(pairwise(times)) if b < a]
    assert not late, f"rows dispatched before the row above them (row, time, next): {late[:5]}"


@pytest.mark.parametrize("seed", SEEDS)
async def test_places_go_in_row_order_and_actors_never_outnumber_them(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, seed: int
) -> None:
    sim = make_sim(300, behaviour=Behaviour(apply_time=(1, 4)))
    await sim.register()
    with scheduler_seeded(seed), counting_node_actors() as actors:
        await sim.start_daemon()
        release_id = await sim.create(plan=("100%",), max_parallel=7)
        release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 300
    rows = await sim.store.release_nodes(release_id)
    times = first_dispatches(sim, rows)
    assert len(times) == 300
    assert_row_order(times)
    # The first seven places at once, at the start; the eighth only once a node finished.
    assert times[0] == times[6] < times[7]
    assert peak_in_flight(sim.fleet, rows, release.version, None) == {None: 7}
    assert actors.peak == 7
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_batch_far_larger_than_max_parallel_keeps_that_many_actors_at_most(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(1000, behaviour=Behaviour(apply_time=(1, 2)))
    await sim.register()
    with counting_node_actors() as actors:
        await sim.start_daemon()
        release_id = await sim.create(plan=(1, "100%"), max_parallel=10)
        release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 1000
    assert actors.peak == 10
    rows = await sim.store.release_nodes(release_id)
    assert_row_order(first_dispatches(sim, rows))
    assert peak_in_flight(sim.fleet, rows, release.version, None) == {None: 10}


@pytest.mark.parametrize("seed", SEEDS[:3])
async def test_a_failure_while_nodes_wait_for_places_leaves_the_rows_after_it_undispatched(
    make_sim: Callable[..., Sim], autojump_clock: MockClock, seed: int
) -> None:
    # Row 20 fails; the batch stops when its failure arrives, with 5 places: what was
    # dispatched by then is the rows above it and a few just after, never a later row.
    sim = make_sim(
        60,
        behaviour=Behaviour(apply_time=(2, 3)),
        overrides=[(20, Behaviour(apply_time=(2, 2), fail="nginx: [emerg] bad"))],
    )
    await sim.register()
    with scheduler_seeded(seed), counting_node_actors() as actors:
        await sim.start_daemon()
        release_id = await sim.create(plan=("100%",), max_parallel=5)
        release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    assert release.error is not None and "edge-020" in release.error
    rows = await sim.store.release_nodes(release_id)
    reached = [bool(sim.fleet.task_ids(row.main_ip)) for row in rows]
    touched = reached.index(False)
    assert 20 <= touched < 30
    assert not any(reached[touched:]), "a row below the stop was dispatched"
    statuses = [row.status for row in rows]
    assert statuses[touched:] == [NodeStatus.SKIPPED] * (60 - touched)
    assert actors.peak <= 5
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_pause_while_nodes_wait_for_places_resumes_in_row_order(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(40, behaviour=Behaviour(apply_time=(2, 6)))
    await sim.register()
    await sim.start_daemon()
    release_id = await sim.create(plan=("100%",), max_parallel=3)
    await wait_count(sim, release_id, NodeStatus.SUCCESS, 10)

    await verb(sim, release_id, Verb.PAUSE, reason="look first")
    await wait_status(sim, release_id, ReleaseStatus.PAUSED)
    statuses = [row.status for row in await sim.store.release_nodes(release_id)]
    done = statuses.count(NodeStatus.SUCCESS)
    # In-flight nodes finished; the ones waiting for a place were never started.
    assert 10 <= done <= 16
    assert statuses == [NodeStatus.SUCCESS] * done + [NodeStatus.PENDING] * (40 - done)

    await verb(sim, release_id, Verb.RESUME)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 40
    rows = await sim.store.release_nodes(release_id)
    assert_row_order(first_dispatches(sim, rows))
    assert peak_in_flight(sim.fleet, rows, release.version, None) == {None: 3}
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_nodes_running_when_a_release_is_taken_over_get_the_first_places(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # An owner that dispatched in another order (rows 28-30, still applying) died; the next
    # owner counts them in flight first and dispatches no row above them until one ends.
    sim = make_sim(
        30,
        behaviour=Behaviour(apply_time=(1, 2)),
        overrides=[(k, Behaviour(apply_time=(40, 40))) for k in (28, 29, 30)],
    )
    await sim.register()
    release_id = await sim.create(plan=("100%",), max_parallel=3)
    (claim,) = await sim.store.claim("gone", 1, ttl=5)
    rows = await sim.store.release_nodes(release_id)
    version = claim.release.version
    running = rows[-3:]
    changes = [
        NodeChange(
            row.id,
            NodeStatus.RUNNING,
            task_id=task_id_for(row.main_ip, version),
            attempts=1,
            started=True,
        )
        for row in running
    ]
    assert await sim.store.record(claim.lease, changes, daemon_id="gone")
    for row in running:
        request = DispatchRequest(task_id=task_id_for(row.main_ip, version), version=version)
        await sim.agents().dispatch(AgentAddress(row.main_ip, row.agent_port), request)

    await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS and release.success_nodes == 30
    assert peak_in_flight(sim.fleet, rows, version, None) == {None: 3}
    times = first_dispatches(sim, rows)
    assert min(times[:27]) >= 40  # once the first of the three finished its 40 s
    assert_row_order(times[:27])
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_rows_that_fail_before_dispatch_give_their_places_back(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    # One place: a hostile row that kept it would hold every row after it back for good.
    sim = make_sim(3)
    names = []
    for name in HOSTILE_ADDRESSES:
        main_ip, port, _ = hostile_row(name, sim.fleet.hosts[2])
        sim.store.insert_foreign_node(f"bad-{name}", main_ip, port)
        names.append(f"bad-{name}")
    for k in (1, 2):
        await sim.store.upsert_node(f"ok-{k}", sim.fleet.hosts[k - 1], sim.fleet.port)
    await sim.start_daemon()
    release_id = await sim.create(
        plan=("100%",), max_parallel=1, max_failures=len(HOSTILE_ADDRESSES)
    )

    release = await sim.wait_terminal(release_id, limit=600)

    assert release.status is ReleaseStatus.SUCCESS, release.error
    assert (release.success_nodes, release.failed_nodes) == (2, len(HOSTILE_ADDRESSES))
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_an_actor_given_its_place_gives_it_back_however_it_ends(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(1)
    await sim.register()
    created = await sim.store.create_release(ReleaseSpec(plan=("100%",)))
    [row] = await sim.store.release_nodes(created.release.id)
    limiter = trio.CapacityLimiter(1)

    def actor(
        node: ReleaseNode, outbox: trio.MemorySendChannel[NodeMessage], *, held: bool = True
    ) -> NodeActor:
        """An actor of ``node`` given a place taken for it (``held``), or none."""
        if held:
            limiter.acquire_on_behalf_of_nowait(node.id)
        return NodeActor(
            node=node,
            version=created.release.version,
            agents=sim.agents(),
            timing=NodeTiming(),
            outbox=outbox,
            limiter=limiter,
            pacer=PollShare(PollPacer(), 1),
            held_place=node.id if held else None,
        )

    # Cancelled before its first checkpoint: nothing sent, the place back.
    send, receive = trio.open_memory_channel[NodeMessage](4)
    with trio.CancelScope() as scope:
        scope.cancel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor(row, send.clone()).run)
    assert limiter.borrowed_tokens == 0
    assert sim.fleet.task_ids(row.main_ip) == set()

    # An address that is none: it fails without dialling and gives its place back.
    bad = attrs.evolve(row, main_ip="")
    await actor(bad, send.clone()).run()
    assert limiter.borrowed_tokens == 0
    message = receive.receive_nowait()
    assert isinstance(message, Failed) and message.kind is FailureKind.INVALID_ADDRESS

    # Without a place given, it takes its own: it waits while another holds the only one.
    limiter.acquire_on_behalf_of_nowait("another")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(actor(row, send.clone(), held=False).run)
        await trio.sleep(60)
        assert limiter.statistics().tasks_waiting == 1
        nursery.cancel_scope.cancel()
    limiter.release_on_behalf_of("another")
    assert limiter.borrowed_tokens == 0
    assert sim.fleet.task_ids(row.main_ip) == set()
