"""HTTP health checks in simulated time: a health endpoint (a real HTTP application, reached
in process through httpx's ASGI transport) turned unhealthy at a chosen moment, during a bake
or after a batch, with real supervisors and actors, MemoryStore and in-process agents."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import httpx
import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.health_sim import HealthEndpoint
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, Release, ReleaseNode, ReleaseStatus
from fleetwave.supervisor import Supervisor
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim
from tests.sim.test_strategy import batch_of, create, release_of, wait_step

INTERVAL = 10
LIMIT = 3
CHECK = {
    "name": "edge",
    "http": {"url": "http://health.sim/health?release={release}&batch={batch}"},
    "interval": INTERVAL,
    "failureLimit": LIMIT,
    "timeout": 5,
}
REASON = "edge-001 serves 5xx: 40% of its requests"
ERROR = f"health check edge failed: HTTP 503: {REASON}"


@attrs.define
class Health:
    endpoint: HealthEndpoint
    http: httpx.AsyncClient


@pytest.fixture
async def health() -> AsyncIterator[Health]:
    endpoint = HealthEndpoint()
    transport = httpx.ASGITransport(app=endpoint.app())
    async with httpx.AsyncClient(transport=transport) as http:
        yield Health(endpoint, http)


async def start_daemon(sim: Sim, health: Health, name: str = "sim-a") -> Supervisor:
    """A daemon whose health checks reach the endpoint, as `fleetwave serve`'s client would."""
    settings = attrs.evolve(sim.settings, daemon_id=name)
    supervisor = Supervisor(sim.store, sim.agents(), settings, checks_http=health.http)
    await sim.nursery.start(supervisor.run)
    return supervisor


async def good_release(sim: Sim) -> Release:
    """A first release every node applies: the config a rollback restores."""
    good = await sim.wait_terminal(await create(sim))
    assert good.status is ReleaseStatus.SUCCESS
    return good


async def rollback_of(sim: Sim, release_id: int) -> Release:
    """The rollback release onFailure created for ``release_id``, once it ended."""
    with trio.fail_after(3600):
        while True:
            releases, _ = await sim.store.list_releases()
            rollbacks = [r for r in releases if r.rollback_of == release_id]
            if rollbacks and rollbacks[0].status.terminal:
                [rollback] = rollbacks
                return rollback
            await trio.sleep(1)


async def wait_node(sim: Sim, release_id: int, batch: int, status: NodeStatus) -> None:
    """Until every node of ``batch`` is ``status``."""
    with trio.fail_after(3600):
        while True:
            nodes = batch_of(await sim.store.release_nodes(release_id), batch)
            if all(node.status is status for node in nodes):
                return
            await trio.sleep(0.5)


def applied(nodes: list[ReleaseNode]) -> set[int]:
    return {node.node_id for node in nodes if node.status is NodeStatus.SUCCESS}


async def assert_rolled_back(sim: Sim, bad: Release, good: Release, daemon: str) -> Release:
    """The rollback of ``bad`` restored ``good``'s config on exactly the nodes that had
    applied ``bad``, and every node runs it again."""
    rollback = await rollback_of(sim, bad.id)
    assert rollback.status is ReleaseStatus.SUCCESS
    assert rollback.config_version == good.version
    assert rollback.reason.startswith(
        f"rollback of version {bad.version} to config {good.version} by onFailure of daemon "
        f"{daemon}: onFailure rollback: {ERROR}"
    )
    bad_nodes = await sim.store.release_nodes(bad.id)
    rolled = await sim.store.release_nodes(rollback.id)
    assert {node.node_id for node in rolled} == applied(bad_nodes)
    assert {node.status for node in rolled} == {NodeStatus.SUCCESS}
    assert {node.applied_version for node in await sim.store.list_nodes()} == {good.version}
    await assert_release_invariants(sim.store, rollback.id, sim.fleet)
    return rollback


async def test_a_check_unhealthy_mid_bake_fails_the_release_and_rollback_restores_the_canary(
    health: Health, make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(6, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await start_daemon(sim, health)
    good = await good_release(sim)
    bad_id = await create(
        sim,
        plan=[1, {"pause": 600}, "50%", {"pause": 600}, "100%"],
        healthChecks=[CHECK],
        onFailure="rollback",
    )

    await wait_step(sim, bad_id, "bake")
    await trio.sleep(100)  # healthy for a while: the check is asked every interval
    turned_at = trio.current_time()
    health.endpoint.turn_unhealthy(REASON)
    bad = await sim.wait_terminal(bad_id)

    assert bad.status is ReleaseStatus.FAILED
    assert bad.error == ERROR
    probes = health.endpoint.of(bad_id)
    assert {probe.batch for probe in probes} == {"1"}
    healthy = [probe for probe in probes if probe.healthy]
    unhealthy = [probe for probe in probes if not probe.healthy]
    assert len(healthy) >= 100 // INTERVAL
    # Failed at its limit of consecutive failures, long before the bake's 600 s were up.
    assert len(unhealthy) == LIMIT
    assert (LIMIT - 1) * INTERVAL <= unhealthy[-1].at - turned_at <= LIMIT * INTERVAL
    nodes = await sim.store.release_nodes(bad_id)
    # The canary's agent did apply: it stays success; no later batch was dispatched.
    assert [node.status for node in batch_of(nodes, 1)] == [NodeStatus.SUCCESS]
    later = [node for node in nodes if node.batch > 1]
    assert [node.status for node in later] == [NodeStatus.SKIPPED] * 5
    assert all(node.started_at is None for node in later)
    await assert_release_invariants(sim.store, bad_id, sim.fleet)

    await assert_rolled_back(sim, bad, good, "sim-a")
    # The rollback carries no checks of its own: the endpoint was not asked for it.
    assert len(health.endpoint.probes) == len(probes)


async def test_a_check_turning_unhealthy_while_a_batch_applies_fails_in_the_watch_after_it(
    health: Health, make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(30, 30)))
    await sim.register()
    await start_daemon(sim, health)
    release_id = await create(sim, plan=[1, "100%"], healthChecks=[CHECK])

    await wait_node(sim, release_id, 1, NodeStatus.RUNNING)
    turned_at = trio.current_time()
    health.endpoint.turn_unhealthy(REASON)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.FAILED
    assert release.error == ERROR
    probes = health.endpoint.of(release_id)
    # No bake: nothing was asked while the canary applied, only once its batch was done.
    assert [(probe.batch, probe.healthy) for probe in probes] == [("1", False)] * LIMIT
    assert probes[0].at - turned_at >= 25
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in batch_of(nodes, 1)] == [NodeStatus.SUCCESS]
    assert [node.status for node in batch_of(nodes, 2)] == [NodeStatus.SKIPPED] * 3
    # onFailure stop (the default): nothing is rolled back.
    releases, _ = await sim.store.list_releases()
    assert [r.id for r in releases if r.rollback_of is not None] == []
    await assert_release_invariants(sim.store, release_id, sim.fleet)


async def test_a_check_turning_unhealthy_after_the_last_batch_rolls_back_every_node(
    health: Health, make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(5, behaviour=Behaviour(apply_time=(20, 30)))
    await sim.register()
    await start_daemon(sim, health)
    good = await good_release(sim)
    bad_id = await create(sim, plan=[1, "100%"], healthChecks=[CHECK], onFailure="rollback")

    # Healthy after the canary: the watch ends at its first success and batch 2 goes on.
    await wait_node(sim, bad_id, 2, NodeStatus.RUNNING)
    assert [(p.batch, p.healthy) for p in health.endpoint.of(bad_id)] == [("1", True)]
    health.endpoint.turn_unhealthy(REASON)
    bad = await sim.wait_terminal(bad_id)

    assert bad.status is ReleaseStatus.FAILED
    assert bad.error == ERROR
    assert [(p.batch, p.healthy) for p in health.endpoint.of(bad_id, 2)] == [("2", False)] * LIMIT
    # Every agent applied it: every node stays success in the failed release.
    assert (bad.success_nodes, bad.failed_nodes, bad.skipped_nodes) == (5, 0, 0)
    rollback = await assert_rolled_back(sim, bad, good, "sim-a")
    assert rollback.total_nodes == 5
    await assert_release_invariants(sim.store, bad_id, sim.fleet)


async def test_a_new_owner_watches_the_check_for_the_rest_of_a_bake_it_took_over(
    health: Health, make_sim: Callable[..., Sim], autojump_clock: MockClock
) -> None:
    sim = make_sim(3, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    first = await start_daemon(sim, health, "sim-a")
    good = await good_release(sim)
    bad_id = await create(
        sim, plan=[1, {"pause": 1000}, "100%"], healthChecks=[CHECK], onFailure="rollback"
    )
    await wait_step(sim, bad_id, "bake")
    await trio.sleep(100)
    first.crash()  # gone without a word: the next owner claims it once the lease expires
    crashed_at = trio.current_time()
    await start_daemon(sim, health, "sim-b")

    with trio.fail_after(3600):
        while (await release_of(sim, bad_id)).lease_owner != "sim-b":  # noqa: ASYNC110
            await trio.sleep(0.5)
    with trio.fail_after(3600):
        await health.endpoint.wait_for(lambda probes: probes[-1].at > crashed_at + 60)
    health.endpoint.turn_unhealthy(REASON)
    bad = await sim.wait_terminal(bad_id)

    assert bad.status is ReleaseStatus.FAILED
    assert bad.error == ERROR
    after_crash = [p for p in health.endpoint.of(bad_id, 1) if p.at > crashed_at]
    assert [p.healthy for p in after_crash][-LIMIT:] == [False] * LIMIT
    assert any(p.healthy for p in after_crash)  # the new owner watched the bake healthy first
    nodes = await sim.store.release_nodes(bad_id)
    assert [node.status for node in batch_of(nodes, 2)] == [NodeStatus.SKIPPED] * 2
    await assert_rolled_back(sim, bad, good, "sim-b")
