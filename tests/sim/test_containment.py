"""Containment in simulation: a defect in one release's actors ends that release's actors
only; a takeover past the tolerance asks the agents first; a daemon cut off from its
database stops a release before another daemon can take it over."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import trio
from structlog.testing import capture_logs
from trio.testing import MockClock

from fleetwave.agent.client import AgentClient
from fleetwave.agent.protocol import DISPATCH_PATH
from fleetwave.agent.sim import Behaviour
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, ReleaseStatus, task_id_for
from fleetwave.supervisor import Supervisor
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim


class InjectedDefect(Exception):
    """What a bug inside the daemon would raise: no fleetwave code expects it."""


class PoisonedTransport(httpx.AsyncBaseTransport):
    """The fleet's own transport, except that every dispatch of one release version raises
    InjectedDefect after the agent has received it."""

    def __init__(self, inner: httpx.AsyncBaseTransport, version: int) -> None:
        self._inner = inner
        self._suffix = f"_{version}"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.url.path == DISPATCH_PATH:
            task_id = json.loads(request.content)["taskId"]
            if task_id.endswith(self._suffix):
                await response.aclose()
                raise InjectedDefect(f"defect while dispatching {task_id}")
        return response


async def test_a_defect_in_one_release_leaves_its_sibling_alone_and_fails_it_after_n_crashes(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 15)), crash_backoff_sec=10)
    await sim.register()
    # One node at a time, so that each claim of the poisoned release dispatches one new node.
    poisoned = await sim.create(scope="poisoned", max_parallel=1)
    sibling = await sim.create(scope="healthy")
    version = (await sim.store.get_release(poisoned)).version  # type: ignore[union-attr]
    http = httpx.AsyncClient(transport=PoisonedTransport(sim.fleet.transport(), version))
    agents = AgentClient(http, request_timeout=sim.settings.agent_request_timeout_sec)
    daemon = Supervisor(sim.store, agents, sim.settings)

    with capture_logs() as logs:
        await sim.nursery.start(daemon.run)
        healthy = await sim.wait_terminal(sibling)
        failed = await sim.wait_terminal(poisoned)
    await http.aclose()

    assert healthy.status is ReleaseStatus.SUCCESS
    assert healthy.crash_count == 0
    assert failed.status is ReleaseStatus.FAILED
    assert failed.crash_count == 3  # the default max_crashes
    assert failed.error is not None
    assert "crashed 3 times" in failed.error
    assert "InjectedDefect: defect while dispatching" in failed.error
    crashed = [
        e
        for e in await sim.store.release_events(poisoned)
        if (e.message or "").startswith("release.crashed")
    ]
    assert [e.message.split(":")[0] for e in crashed if e.message] == [
        "release.crashed (crash 1, claimable again in 10.0 s)",
        "release.crashed (crash 2, claimable again in 20.0 s)",
        "release.crashed (crash 3, claimable again in 0.0 s)",
    ]
    # Each crash held the release back by its backoff before the next claim.
    claims = [
        e.created_at
        for e in await sim.store.release_events(poisoned)
        if (e.message or "").startswith("claimed by ")
    ]
    assert len(claims) == 4
    assert (claims[1] - crashed[0].created_at).total_seconds() >= 10
    assert (claims[2] - crashed[1].created_at).total_seconds() >= 20
    # Every node that received the task was reconciled, not skipped; the one never
    # dispatched was skipped.
    nodes = await sim.store.release_nodes(poisoned)
    for node in nodes:
        received = sim.fleet.dispatch_count(node.main_ip, task_id_for(node.main_ip, version))
        if received:
            assert node.status in (NodeStatus.SUCCESS, NodeStatus.CANCELLED), node
        else:
            assert node.status is NodeStatus.SKIPPED, node
    assert [n.status for n in nodes].count(NodeStatus.SKIPPED) == 1
    assert nodes[0].status is NodeStatus.SUCCESS  # the canary, dispatched in the first claim
    # The crash was logged with its traceback, three times; the daemon kept running.
    crash_logs = [entry for entry in logs if entry["event"] == "release.crashed"]
    assert len(crash_logs) == 3
    assert all(entry.get("exc_info") for entry in crash_logs)
    assert daemon._scope is not None and not daemon._scope.cancel_called
    for release_id in (poisoned, sibling):
        await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_takeover_past_the_tolerance_asks_the_agents_before_recording_the_outcome(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    """The owner dies while it reconciles a failed batch: the nodes it dispatched were
    applied by their agents, and the new owner records that, not skipped or cancelled."""
    sim = make_sim(6, behaviour=Behaviour(apply_time=(10, 20)), flush_interval_sec=0)
    sim.fleet.set_behaviour(1, Behaviour(apply_time=(3, 3), fail="disk full"))
    await sim.register()
    first = await sim.start_daemon("sim-a")
    release_id = await sim.create(plan=["100%"])
    await sim.wait_for(lambda: all(sim.fleet.task_ids(host) for host in sim.fleet.hosts))
    for k in range(2, 7):  # the healthy agents now answer slowly: reconciling takes 5 s
        sim.fleet.set_behaviour(k, Behaviour(apply_time=(10, 20), delay=5))

    async def failed_recorded() -> bool:
        nodes = await sim.store.release_nodes(release_id)
        return any(node.status is NodeStatus.FAILED for node in nodes)

    with trio.fail_after(60):
        while not await failed_recorded():  # noqa: ASYNC110
            await trio.sleep(0.1)  # the state is in the store
    await trio.sleep(1)  # the owner is asking the agents now
    first.crash()
    await sim.start_daemon("sim-b")
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    nodes = await sim.store.release_nodes(release_id)
    assert [n.status for n in nodes] == [NodeStatus.FAILED] + [NodeStatus.SUCCESS] * 5
    assert release.error is not None and "disk full" in release.error
    await assert_release_invariants(sim.store, release_id, sim.fleet)


class StallingStore:
    """One daemon's view of a MemoryStore that can stop answering without failing, as a
    database behind a network that drops packets: every call waits while it is stalled."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._resumed = trio.Event()
        self._resumed.set()

    def stall(self) -> None:
        self._resumed = trio.Event()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if name == "listen_releases" or not inspect.iscoroutinefunction(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self._resumed.wait()
            return await method(*args, **kwargs)

        return call


async def test_a_daemon_cut_off_from_its_database_stops_before_another_takes_over(
    make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(8, behaviour=Behaviour(apply_time=(20, 30)), lease_ttl_sec=30)
    await sim.register()
    view = StallingStore(sim.store)
    cut_off = Supervisor(view, sim.agents(), sim.settings)  # type: ignore[arg-type]
    await sim.nursery.start(cut_off.run)
    release_id = await sim.create(plan=[1, "100%"], max_parallel=2)
    await sim.wait_for(lambda: sum(bool(sim.fleet.task_ids(h)) for h in sim.fleet.hosts) >= 3)

    view.stall()
    stalled_at = trio.current_time()
    other = await sim.start_daemon("sim-b")
    await sim.wait_for(lambda: not cut_off.owned)
    stopped_at = trio.current_time()
    dispatched_when_stopped = {h: sim.fleet.task_ids(h) for h in sim.fleet.hosts}
    await sim.wait_for(lambda: other.owned == {release_id})
    taken_over_at = trio.current_time()
    release = await sim.wait_terminal(release_id)

    assert stopped_at < taken_over_at
    assert stopped_at - stalled_at <= 30  # at most one TTL after the last renewal
    # Nothing was dispatched by the cut-off daemon once the database stopped answering:
    # every later dispatch is the new owner's, one per node.
    assert release.status is ReleaseStatus.SUCCESS
    for host in sim.fleet.hosts:
        task_id = task_id_for(host, release.version)
        assert sim.fleet.dispatch_count(host, task_id) == 1, (host, dispatched_when_stopped)
    await assert_release_invariants(sim.store, release_id, sim.fleet)
