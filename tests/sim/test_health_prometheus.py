"""Prometheus health checks in simulated time: real supervisors and ReleaseActors on
MemoryStore and the in-process fleet, the check asking a scripted Prometheus API in process
(tests/prometheus_api.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import attrs
import httpx
import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, Release, ReleaseStatus
from fleetwave.supervisor import Supervisor
from tests.prometheus_api import URL, ScriptedPrometheus, create_checked, rejected, vector
from tests.sim.conftest import Sim

QUERY = 'max by (node) (edge_errors_ratio{node=~"{nodes}", release="{release}"})'


@attrs.define
class World:
    sim: Sim
    prometheus: ScriptedPrometheus

    async def release(self, **fields: object) -> Release:
        check = {"prometheus": {"url": URL, "query": QUERY}, "interval": 15, "timeout": 5}
        return await create_checked(self.sim.store, check, **fields)


@pytest.fixture
async def world(make_sim: Callable[..., Sim]) -> AsyncIterator[World]:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    prometheus = ScriptedPrometheus()
    async with httpx.AsyncClient(transport=prometheus.transport()) as checks_http:
        supervisor = Supervisor(sim.store, sim.agents(), sim.settings, checks_http=checks_http)
        await sim.nursery.start(supervisor.run)
        yield World(sim, prometheus)
        supervisor.stop()


async def test_a_rejected_query_fails_the_release_at_its_start_and_nothing_is_dispatched(
    world: World, autojump_clock: MockClock
) -> None:
    world.prometheus.answer(rejected('1:30: parse error: unexpected "}"'), status=400)
    release = await world.release(plan=[1, {"pause": 300}, "100%"], onFailure="rollback")

    done = await world.sim.wait_terminal(release.id)

    assert done.status is ReleaseStatus.FAILED
    assert done.error == 'health check 5xx: query rejected: 1:30: parse error: unexpected "}"'
    assert world.sim.fleet.dispatch_log() == []
    nodes = await world.sim.store.release_nodes(release.id)
    assert {node.status for node in nodes} == {NodeStatus.SKIPPED}
    # Asked once, as after the canary: its node's name and the release filled in.
    assert world.prometheus.queries == [
        ("GET", f'max by (node) (edge_errors_ratio{{node=~"edge-001", release="{release.id}"}})')
    ]
    # Nothing was applied: onFailure rollback has nothing to undo.
    releases, _ = await world.sim.store.list_releases()
    assert [r.id for r in releases] == [release.id]


async def test_a_healthy_query_lets_the_release_through_its_bake(
    world: World, autojump_clock: MockClock
) -> None:
    world.prometheus.answer(vector({"edge-001": 0.0}))
    release = await world.release(plan=[1, {"pause": 110}, "100%"])

    done = await world.sim.wait_terminal(release.id)

    assert done.status is ReleaseStatus.SUCCESS, done.error
    asked = [query for _, query in world.prometheus.queries]
    canary = f'max by (node) (edge_errors_ratio{{node=~"edge-001", release="{release.id}"}})'
    rest = f'edge_errors_ratio{{node=~"edge-002|edge-003|edge-004", release="{release.id}"}}'
    # Once before the canary, every 15 s of the 110 s bake, once after the last batch.
    assert asked.count(canary) == 1 + 8
    assert asked[-1] == f"max by (node) ({rest})"


async def test_a_series_above_max_mid_bake_fails_the_release_naming_it(
    world: World, autojump_clock: MockClock
) -> None:
    world.prometheus.answer(vector({"edge-001": 0.0}))
    release = await world.release(plan=[1, {"pause": 600}, "100%"])
    await world.sim.wait_for(lambda: len(world.prometheus.queries) >= 3)
    world.prometheus.answer(vector({"edge-001": 0.25}))
    flipped = trio.current_time()

    done = await world.sim.wait_terminal(release.id)

    assert done.status is ReleaseStatus.FAILED
    assert done.error == (
        'health check 5xx failed: edge_errors_ratio{node="edge-001"} = 0.25 (above max 0.01)'
    )
    # failureLimit 2 at an interval of 15 s: caught within two probes, not at the bake's end.
    assert trio.current_time() - flipped <= 2 * 15 + 5
    nodes = await world.sim.store.release_nodes(release.id)
    assert [node.status for node in nodes] == [NodeStatus.SUCCESS] + [NodeStatus.SKIPPED] * 3


async def test_an_empty_result_is_unhealthy(world: World, autojump_clock: MockClock) -> None:
    world.prometheus.answer(vector({}))
    release = await world.release(plan=[1, "100%"])

    done = await world.sim.wait_terminal(release.id)

    assert done.status is ReleaseStatus.FAILED
    assert done.error == (
        "health check 5xx failed: the query returned no series (an empty result is unhealthy)"
    )


async def test_a_range_vector_query_is_rejected_at_the_start_too(
    world: World, autojump_clock: MockClock
) -> None:
    world.prometheus.answer({"status": "success", "data": {"resultType": "matrix", "result": []}})
    release = await world.release(plan=[1, "100%"])

    done = await world.sim.wait_terminal(release.id)

    assert done.error == (
        "health check 5xx: query rejected: the query returns a range vector (matrix); a check "
        "needs an instant vector or a scalar"
    )
    assert world.sim.fleet.dispatch_log() == []


async def test_prometheus_unavailable_at_the_start_is_left_to_the_watch_and_its_limit(
    world: World, autojump_clock: MockClock
) -> None:
    world.prometheus.answer({"status": "error", "errorType": "unavailable"}, status=503)
    release = await world.release(plan=[1, {"pause": 300}, "100%"])

    done = await world.sim.wait_terminal(release.id)

    # The canary went out (a passing outage does not stop a release before it starts); the
    # bake's probes then failed past the limit.
    assert done.error == "health check 5xx failed: HTTP 503: unavailable"
    nodes = await world.sim.store.release_nodes(release.id)
    assert [node.status for node in nodes] == [NodeStatus.SUCCESS] + [NodeStatus.SKIPPED] * 3
    assert len(world.prometheus.queries) == 1 + 2
