"""Node labels, release node selection and node-level exclusion on PostgreSQL, through the API
and the CLI: a real daemon (in process), simulated agents over mutual TLS, the API app over
the same database, the CLI's commands over HTTP."""

from __future__ import annotations

import argparse
import io
from collections.abc import AsyncIterator
from itertools import pairwise

import httpx
import pytest

from fleetwave import cli
from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.api import commands
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.client import ApiClient
from fleetwave.store.models import ReleaseStatus, Role, task_id_for
from fleetwave.store.postgres import PostgresStore
from tests.invariants import assert_node_exclusion, assert_release_invariants
from tests.world import World, open_world

pytestmark = pytest.mark.postgres


@pytest.fixture
async def world(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[World]:
    async with open_world(pg_store, certs) as opened:
        await opened.serve_fleet(5, behaviour=Behaviour(apply_time=(0.8, 1.2)))
        yield opened


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[httpx.AsyncClient]:
    # Labels are changed through PATCH /api/v1/nodes/{id}, an admin route.
    token = await create_token(pg_store, "fleet-admin", role=Role.ADMIN)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(pg_store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ) as client:
        yield client


async def run_cli(api: httpx.AsyncClient, *argv: str) -> tuple[int, str, str]:
    """A ``fleetwave`` API command, its HTTP calls made to the test's API app."""
    args: argparse.Namespace = cli.build_parser().parse_args([*argv, "--token=unused"])
    out, err = io.StringIO(), io.StringIO()
    code = await commands.run(args, ApiClient(api), out, err)
    return code, out.getvalue(), err.getvalue()


async def test_labelled_nodes_selected_by_the_cli_get_the_release(
    world: World, api: httpx.AsyncClient
) -> None:
    for name in ("edge-001", "edge-003", "edge-004"):
        code, _, err = await run_cli(api, "nodes", "label", name, "region=eu", "tier=edge")
        assert (code, err) == (0, "")
    code, _, _ = await run_cli(api, "nodes", "label", "edge-004", "tier-")
    listed = (await api.get("/api/v1/nodes")).json()["data"]["items"]
    labels = {item["name"]: item["labels"] for item in listed}
    assert labels["edge-004"] == {"region": "eu"}
    assert labels["edge-002"] == {}

    await world.start_daemon("it-a")
    code, out, err = await run_cli(
        api, "release", "create", "--reason", "eu edges", "--selector", "region=eu,tier=edge"
    )
    assert (code, err) == (0, ""), err
    assert "created over 2 nodes selected by selector region=eu,tier=edge" in out
    [item] = (await api.get("/api/v1/releases")).json()["data"]["items"]
    release = await world.wait_terminal(item["id"])

    assert release.status is ReleaseStatus.SUCCESS
    assert item["selection"] == {"selector": {"region": "eu", "tier": "edge"}}
    names = [n.node_name for n in await world.store.release_nodes(release.id)]
    assert names == ["edge-001", "edge-003"]
    reached = {
        host
        for host in world.fleet.hosts
        if task_id_for(host, release.version) in world.fleet.task_ids(host)
    }
    assert reached == {world.fleet.hosts[0], world.fleet.hosts[2]}
    await assert_release_invariants(world.store, release.id, world.fleet)


async def test_overlapping_releases_wait_and_disjoint_ones_run_at_once(
    world: World, api: httpx.AsyncClient
) -> None:
    async def create(**body: object) -> int:
        answer = await api.post("/api/v1/releases", json={"target": "cdn", **body})
        assert answer.status_code == 200, answer.text
        release_id: int = answer.json()["data"]["releaseId"]
        return release_id

    # The reported scenario: three releases in three scopes over the same five nodes.
    everyone = [await create(reason=f"all {scope}", scope=scope) for scope in ("eu", "us", "asia")]
    await world.start_daemon("it-a")
    await world.start_daemon("it-b")
    waiting = (await api.get(f"/api/v1/releases/{everyone[1]}")).json()["data"]["release"]

    releases = [await world.wait_terminal(r, limit=60) for r in everyone]

    assert all(r.status is ReleaseStatus.SUCCESS for r in releases)
    for earlier, later in pairwise(releases):
        assert earlier.finished_at is not None and later.started_at is not None
        assert earlier.finished_at <= later.started_at
    # Read while the first ran: the second waited behind it, on all five nodes.
    assert waiting["status"] == "pending"
    assert waiting["waitingFor"]["releaseId"] == everyone[0]
    assert waiting["waitingFor"]["sharedNodes"] == 5
    await assert_node_exclusion(world.store, world.fleet)


async def test_a_release_over_its_own_nodes_runs_beside_a_running_one(
    world: World, api: httpx.AsyncClient
) -> None:
    nodes = (await api.get("/api/v1/nodes")).json()["data"]["items"]
    await world.start_daemon("it-a")
    for k in (1, 2, 3):
        world.fleet.set_behaviour(k, Behaviour(apply_time=(3.0, 3.0)))
    first = await api.post(
        "/api/v1/releases",
        json={"target": "cdn", "reason": "a", "nodeNames": ["edge-001", "edge-002", "edge-003"]},
    )
    second = await api.post(
        "/api/v1/releases",
        json={"target": "cdn", "reason": "b", "nodeIds": [nodes[3]["id"], nodes[4]["id"]]},
    )
    third = await api.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "c", "nodeIds": [nodes[2]["id"]]}
    )
    ids = [answer.json()["data"]["releaseId"] for answer in (first, second, third)]

    one, two, three = [await world.wait_terminal(r, limit=60) for r in ids]

    assert {one.status, two.status, three.status} == {ReleaseStatus.SUCCESS}
    assert one.finished_at is not None and two.finished_at is not None
    assert two.started_at is not None and two.started_at < one.finished_at  # disjoint
    assert three.started_at is not None and three.started_at >= one.finished_at  # edge-003
    await assert_node_exclusion(world.store, world.fleet)


async def test_labels_and_a_bad_selection_are_refused_through_the_api(
    world: World, api: httpx.AsyncClient, pg_store: PostgresStore
) -> None:
    bad = await api.patch("/api/v1/nodes/1", json={"labels": {"region": "e u"}})
    none = await api.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "r", "selector": {"region": "mars"}}
    )
    unknown = await api.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "r", "nodeNames": ["edge-404"]}
    )
    viewer = await create_token(pg_store, "viewer", role=Role.VIEWER)
    forbidden = await api.patch(
        "/api/v1/nodes/1",
        json={"labels": {"region": "eu"}},
        headers={"Authorization": f"Bearer {viewer}"},
    )

    assert (bad.status_code, bad.json()["code"]) == (400, 2002)
    assert (none.status_code, none.json()["code"]) == (409, 3003)
    assert none.json()["message"] == "no online nodes matching selector region=mars"
    assert (unknown.status_code, unknown.json()["code"]) == (400, 2002)
    assert forbidden.status_code == 403
    assert (await pg_store.list_releases()) == ([], 0)
    assert all(node.labels == () for node in await pg_store.list_nodes())
