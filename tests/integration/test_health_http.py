"""The HTTP health check against a real HTTP server on loopback that the test controls, in
real time: a release with a bake, watched by its check, on MemoryStore and the in-process
simulated fleet driven by a real Supervisor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.schemas import parse_release_spec
from fleetwave.api.server import serve_api
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, Release, ReleaseStatus
from fleetwave.supervisor import Supervisor
from tests.sim.conftest import sim_settings
from tests.waiting import wait_terminal

FAST = {
    "interval_sec": 0.2,
    "poll_initial_sec": 0.05,
    "poll_max_sec": 0.2,
    "flush_interval_sec": 0.05,
}


@attrs.define
class HealthServer:
    """Answers GET /health/... with what the test says, and keeps the paths it was asked."""

    healthy: bool = True
    reason: str = ""
    status: int = 200
    paths: list[str] = attrs.field(factory=list)
    url: str = ""

    async def answer(self, request: Request) -> Response:
        self.paths.append(request.url.path + "?" + request.url.query)
        return JSONResponse(
            {"healthy": self.healthy, "reason": self.reason}, status_code=self.status
        )


@attrs.define
class World:
    store: MemoryStore
    server: HealthServer

    async def release(self, **fields: object) -> Release:
        created = await self.store.create_release(parse_release_spec({"target": "cdn", **fields}))
        return created.release

    def check(self, **overrides: object) -> dict[str, object]:
        return {
            "name": "edge",
            "http": {"url": self.server.url + "/health/{release}/{version}/{batch}?scope={scope}"},
            "interval": 0.1,
            "failureLimit": 2,
            "timeout": 1,
            **overrides,
        }


@pytest.fixture
async def world() -> AsyncIterator[World]:
    server = HealthServer()
    app = Starlette(routes=[Route("/health/{rest:path}", server.answer)])
    fleet = SimulatedFleet(4, behaviour=Behaviour(apply_time=(0.05, 0.1)))
    store = MemoryStore()
    async with (
        trio.open_nursery() as nursery,
        httpx.AsyncClient(transport=fleet.transport()) as agents_http,
        httpx.AsyncClient() as checks_http,
    ):
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        server.url = f"http://{address}"
        for k, host in enumerate(fleet.hosts, start=1):
            await store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
        settings = sim_settings(**FAST)
        agents = AgentClient(agents_http, request_timeout=settings.agent_request_timeout_sec)
        supervisor = Supervisor(store, agents, settings, checks_http=checks_http)
        await nursery.start(supervisor.run)
        yield World(store, server)
        nursery.cancel_scope.cancel()


async def test_a_healthy_check_is_asked_during_the_bake_and_after_the_last_batch(
    world: World,
) -> None:
    release = await world.release(
        plan=[1, {"pause": 1}, "100%"], healthChecks=[world.check()], reason="r"
    )

    done = await wait_terminal(world.store, release.id, limit=30, step=0.05)

    assert done.status is ReleaseStatus.SUCCESS, done.error
    during_bake = f"/health/{release.id}/{release.version}/1?scope="
    after_last = f"/health/{release.id}/{release.version}/2?scope="
    # Every interval of the one-second bake, and after the last batch until it passed once.
    assert world.server.paths.count(during_bake) >= 5
    assert after_last in world.server.paths


async def test_a_check_turning_unhealthy_mid_bake_fails_the_release_with_its_reason(
    world: World,
) -> None:
    release = await world.release(
        plan=[1, {"pause": 60}, "100%"], healthChecks=[world.check()], scope="eu west"
    )
    with trio.fail_after(30):
        while not world.server.paths:  # noqa: ASYNC110 - the server task appends
            await trio.sleep(0.05)
    world.server.healthy, world.server.reason = False, "5xx ratio 0.4 on edge-001"

    done = await wait_terminal(world.store, release.id, limit=30, step=0.05)

    assert done.status is ReleaseStatus.FAILED
    assert done.error == "health check edge failed: 5xx ratio 0.4 on edge-001"
    nodes = await world.store.release_nodes(release.id)
    assert [node.status for node in nodes] == [NodeStatus.SUCCESS] + [NodeStatus.SKIPPED] * 3
    assert world.server.paths[0] == f"/health/{release.id}/{release.version}/1?scope=eu%20west"


async def test_an_unhealthy_check_with_on_failure_rollback_rolls_the_release_back(
    world: World,
) -> None:
    good = await world.release(reason="good")
    assert (await wait_terminal(world.store, good.id, limit=30, step=0.05)).status is (
        ReleaseStatus.SUCCESS
    )
    world.server.status, world.server.reason = 503, "overloaded"
    bad = await world.release(
        plan=[1, {"pause": 60}, "100%"], healthChecks=[world.check()], onFailure="rollback"
    )

    done = await wait_terminal(world.store, bad.id, limit=30, step=0.05)

    assert done.status is ReleaseStatus.FAILED
    assert done.error == "health check edge failed: HTTP 503: overloaded"
    with trio.fail_after(30):
        while True:
            releases, _ = await world.store.list_releases()
            [rollback] = [r for r in releases if r.rollback_of == bad.id] or [None]
            if rollback is not None and rollback.status.terminal:
                break
            await trio.sleep(0.05)
    assert rollback.status is ReleaseStatus.SUCCESS
    assert {node.applied_version for node in await world.store.list_nodes()} == {good.version}
