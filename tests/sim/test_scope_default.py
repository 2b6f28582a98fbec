"""Scope default strategies in simulated time: a release created through the API with
``{"target": "cdn"}`` alone runs its scope's default (its bake holds the release), keeps it when
the default changes, and runs as the original once the default is cleared. Real supervisors and
actors, MemoryStore, in-process agents, the API app over ASGI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import trio
from trio.testing import MockClock

from fleetwave.agent.sim import Behaviour
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.models import NodeStatus, ReleaseNode, ReleaseStatus, Role
from tests.invariants import assert_release_invariants
from tests.sim.conftest import Sim
from tests.sim.test_strategy import messages, wait_step

DEFAULT = {"plan": [1, {"pause": 300}, "100%"], "onFailure": "stop"}


@pytest.fixture
async def api(sim: Sim) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(sim.store, "ops", role=Role.OPERATOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(sim.store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


@pytest.fixture
async def sim(make_sim: Callable[..., Sim]) -> Sim:
    sim = make_sim(4, behaviour=Behaviour(apply_time=(5, 10)))
    await sim.register()
    await sim.start_daemon()
    return sim


async def create(api: httpx.AsyncClient) -> int:
    answer = await api.post("/api/v1/releases", json={"target": "cdn"})
    assert answer.status_code == 200, answer.text
    release_id: int = answer.json()["data"]["releaseId"]
    return release_id


def held(nodes: list[ReleaseNode]) -> float:
    """Seconds between the canary's end and the first start of batch 2."""
    [canary] = [node for node in nodes if node.batch == 1]
    rest = [node.started_at for node in nodes if node.batch == 2 and node.started_at]
    assert canary.finished_at is not None and rest
    return (min(rest) - canary.finished_at).total_seconds()


async def test_target_alone_runs_the_scope_default_bake_even_after_the_default_changes(
    sim: Sim, api: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    assert (await api.put("/api/v1/scopes/cdn/strategy", json=DEFAULT)).status_code == 200

    release_id = await create(api)
    baking = await wait_step(sim, release_id, "bake")

    # The default changes mid-bake: the running release keeps the strategy it copied.
    assert (await api.put("/api/v1/scopes/cdn/strategy", json={"plan": ["100%"]})).is_success
    nodes = await sim.store.release_nodes(release_id)
    assert [node.status for node in nodes if node.batch == 2] == [NodeStatus.PENDING] * 3
    assert baking.step_ends_at is not None
    release = await sim.wait_terminal(release_id)
    assert release.status is ReleaseStatus.SUCCESS
    assert 300 <= held(await sim.store.release_nodes(release_id)) < 302
    events = await messages(sim, release_id)
    assert events[0].endswith("; strategy: the default of scope cdn")
    assert "step 1: bake 300s" in events and "step 1: bake ended" in events
    await assert_release_invariants(sim.store, release_id, sim.fleet)

    # The changed default applies to the next release: one batch of every node.
    second = await create(api)
    done = await sim.wait_terminal(second)
    assert done.status is ReleaseStatus.SUCCESS
    assert {node.batch for node in await sim.store.release_nodes(second)} == {1}
    await assert_release_invariants(sim.store, second, sim.fleet)


async def test_with_the_default_cleared_target_alone_runs_the_canary_then_the_rest_unheld(
    sim: Sim, api: httpx.AsyncClient, autojump_clock: MockClock
) -> None:
    await api.put("/api/v1/scopes/cdn/strategy", json=DEFAULT)
    assert (await api.delete("/api/v1/scopes/cdn/strategy")).status_code == 200

    started = trio.current_time()
    release_id = await create(api)
    release = await sim.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert (release.strategy, release.plan) == (None, (1, "100%"))
    nodes = await sim.store.release_nodes(release_id)
    assert [len([n for n in nodes if n.batch == b]) for b in (1, 2)] == [1, 3]
    assert held(nodes) < 30
    assert trio.current_time() - started < 120
    assert not any("strategy:" in message for message in await messages(sim, release_id))
    await assert_release_invariants(sim.store, release_id, sim.fleet)
