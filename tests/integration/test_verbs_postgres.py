"""The verbs on PostgreSQL through the API and the CLI: a real daemon (in process), simulated
agents over mutual TLS, the API app over the same database, the CLI's commands over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus, Role
from fleetwave.store.postgres import PostgresStore
from tests.integration.test_selection_postgres import run_cli
from tests.invariants import (
    assert_applied_versions,
    assert_no_dispatch_while_stopped,
    assert_release_invariants,
    assert_rollback_follows_plan,
)
from tests.world import World, open_world

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[World]:
    async with open_world(pg_store, certs) as opened:
        await opened.serve_fleet(6, behaviour=Behaviour(apply_time=(0.6, 1.0)))
        yield opened


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(pg_store, "oncall", role=Role.OPERATOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(pg_store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    ) as client:
        yield client


async def count(world: World, release_id: int, status: NodeStatus) -> int:
    return sum(node.status is status for node in await world.store.release_nodes(release_id))


async def wait_until(predicate: Callable[[], Awaitable[bool]], limit: float = 30) -> None:
    with trio.fail_after(limit):
        while not await predicate():  # noqa: ASYNC110 - polls the database
            await trio.sleep(0.05)


async def test_pause_and_resume_through_the_api_and_the_cli(
    world: World, api: httpx.AsyncClient
) -> None:
    await world.start_daemon("it-a")
    created = await world.store.create_release(ReleaseSpec(plan=(1, "100%"), max_parallel=1))
    release_id = created.release.id

    async def two_done() -> bool:
        return await count(world, release_id, NodeStatus.SUCCESS) >= 2

    await wait_until(two_done)
    response = await api.post(f"/api/v1/releases/{release_id}/pause", json={"reason": "slow"})
    stopped_at = trio.current_time()

    data = response.json()["data"]
    assert response.status_code == 200, response.text
    assert (data["inEffect"], data["acknowledgedBy"]) == (True, "it-a")
    assert data["waitedForLeaseExpiry"] is False and data["waitedSec"] < 2.0

    async def parked() -> bool:
        release = await world.store.get_release(release_id)
        return release is not None and release.lease_owner is None

    await wait_until(parked)
    await trio.sleep(1.5)
    nodes = await world.store.release_nodes(release_id)
    assert sum(node.status is NodeStatus.PENDING for node in nodes) >= 2
    assert not any(node.status is NodeStatus.RUNNING for node in nodes)

    resumed_at = trio.current_time()  # dispatches may start before the answer returns
    code, out, err = await run_cli(api, "release", "resume", str(release_id), "--reason", "ok")
    assert code == 0, err
    assert f"resume in effect on release {release_id}" in out
    release = await world.wait_terminal(release_id)

    assert release.status is ReleaseStatus.SUCCESS
    assert_no_dispatch_while_stopped(world.fleet, nodes, release.version, stopped_at, resumed_at)
    await assert_release_invariants(world.store, release_id, world.fleet)
    events = (await api.get(f"/api/v1/releases/{release_id}/events")).json()["data"]["items"]
    verbs = [e for e in events if e["message"] in ("pause by oncall: slow", "resume by oncall: ok")]
    assert len(verbs) == 2


async def test_cancel_retry_rollback_and_the_fleet_through_the_cli(
    world: World, api: httpx.AsyncClient
) -> None:
    await world.start_daemon("it-a")
    good = await world.store.create_release(ReleaseSpec(plan=(1, "100%")))
    assert (await world.wait_terminal(good.release.id)).status is ReleaseStatus.SUCCESS
    world.fleet.set_behaviour(3, Behaviour(apply_time=(0.3, 0.3), fail="bad template"))
    bad = await world.store.create_release(ReleaseSpec(plan=(1, "100%")))
    assert (await world.wait_terminal(bad.release.id)).status is ReleaseStatus.FAILED
    bad_id = str(bad.release.id)
    # The simulated agent fails whatever it is told to apply: healthy again for the rollback.
    world.fleet.set_behaviour(3, Behaviour(apply_time=(0.6, 1.0)))

    code, out, err = await run_cli(api, "release", "rollback", bad_id, "--reason", "errors")

    assert code == 0, err
    assert "restores config 1" in out
    code, out, _ = await run_cli(api, "release", "rollback", bad_id, "--json")
    assert code == 0 and '"changed": false' in out  # already being rolled back
    releases = (await api.get("/api/v1/releases")).json()["data"]["items"]
    rollback = next(item for item in releases if item["rollbackOf"] == bad.release.id)
    done = await world.wait_terminal(rollback["id"])
    assert done.status is ReleaseStatus.SUCCESS and done.config_version == 1
    await assert_rollback_follows_plan(world.store, rollback["id"])
    await assert_applied_versions(world.store, world.fleet)

    code, out, _ = await run_cli(api, "fleet", "--json")
    assert code == 0
    assert '"differing": []' in out and '"configVersion": 1' in out
    code, out, err = await run_cli(api, "release", "retry", bad_id)
    assert code == 1 and f"superseded by version {done.version}" in err

    third = await world.store.create_release(ReleaseSpec(plan=(1, "100%"), max_parallel=1))

    async def started() -> bool:
        return await count(world, third.release.id, NodeStatus.SUCCESS) >= 1

    await wait_until(started)
    code, out, err = await run_cli(api, "release", "cancel", str(third.release.id))
    assert code == 0, err
    cancelled = await world.wait_terminal(third.release.id)
    assert cancelled.status is ReleaseStatus.CANCELLED
    code, _, err = await run_cli(api, "release", "pause", str(third.release.id))
    assert code == 1 and "is cancelled: pause is not allowed" in err

    code, out, err = await run_cli(api, "release", "retry", str(third.release.id))
    assert code == 0, err
    retried = await world.wait_terminal(third.release.id)
    assert retried.status is ReleaseStatus.SUCCESS
    await assert_release_invariants(world.store, third.release.id, world.fleet)
    await assert_applied_versions(world.store, world.fleet)


async def test_a_pause_whose_owner_died_answers_once_its_lease_expired(
    world: World, api: httpx.AsyncClient
) -> None:
    owner = await world.start_daemon("it-a")
    created = await world.store.create_release(ReleaseSpec(plan=(1, "100%"), max_parallel=1))

    async def one_done() -> bool:
        return await count(world, created.release.id, NodeStatus.SUCCESS) >= 1

    await wait_until(one_done)
    owner.crash()

    response = await api.post(f"/api/v1/releases/{created.release.id}/pause")

    data = response.json()["data"]
    assert data["inEffect"] is True and data["waitedForLeaseExpiry"] is True
    assert 0 < data["waitedSec"] <= 6  # the test daemons' lease TTL is 5 s
    assert "did not acknowledge" in data["message"]
    await world.start_daemon("it-b")
    await trio.sleep(2)
    release = await world.store.get_release(created.release.id)
    assert release is not None and release.status is ReleaseStatus.PAUSED
    await api.post(f"/api/v1/releases/{created.release.id}/resume")
    assert (await world.wait_terminal(created.release.id)).status is ReleaseStatus.SUCCESS
    await assert_release_invariants(world.store, created.release.id, world.fleet)
