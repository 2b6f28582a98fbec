"""Scope default strategies on PostgreSQL through the API: the default row as stored, a release
of ``{"target": "cdn"}`` copying it into its strategy column and running its bake against
simulated agents over mutual TLS, and a rejected PUT leaving the table as it was."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.sim import Behaviour
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.models import ReleaseStatus, Role
from fleetwave.store.postgres import PostgresStore
from tests.integration.conftest import run_sql
from tests.invariants import assert_release_invariants
from tests.world import World, open_world

pytestmark = pytest.mark.postgres

BAKE = 2.0
DEFAULT = {"plan": [1, {"pause": BAKE}, "100%"], "maxFailures": 0}


@pytest.fixture
async def world(pg_store: PostgresStore, certs: CertPaths) -> AsyncIterator[World]:
    async with open_world(pg_store, certs) as world:
        await world.serve_fleet(3, {k: Behaviour(apply_time=(0.1, 0.2)) for k in (1, 2, 3)})
        await world.start_daemon("it-a")
        yield world


@pytest.fixture
async def api(pg_store: PostgresStore) -> AsyncIterator[httpx.AsyncClient]:
    token = await create_token(pg_store, "sre", role=Role.OPERATOR)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(pg_store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


async def test_a_release_of_target_alone_runs_the_stored_default_over_mtls(
    world: World, api: httpx.AsyncClient, database_url: str
) -> None:
    put = await api.put("/api/v1/scopes/cdn/strategy", json=DEFAULT)
    assert put.status_code == 200, put.text
    row = await run_sql(database_url, "SELECT strategy, set_by, set_by_role FROM scope_strategies")
    stored, set_by, role = row.strip().split("|")
    assert json.loads(stored) == put.json()["data"]["strategy"]
    assert json.loads(stored)["plan"] == [1, {"pause": BAKE}, "100%"]
    assert (set_by, role) == ("sre", "operator")

    created = await api.post("/api/v1/releases", json={"target": "cdn", "reason": "tls"})
    assert created.json()["data"]["defaultScope"] == "cdn"
    release_id = created.json()["data"]["releaseId"]
    column = await run_sql(
        database_url, f"SELECT strategy FROM release_tasks WHERE id = {release_id}"
    )
    assert json.loads(column) == json.loads(stored)

    # Cleared at once: the release keeps what it copied and still bakes.
    assert (await api.delete("/api/v1/scopes/cdn/strategy")).status_code == 200
    release = await world.wait_terminal(release_id, limit=30)

    assert release.status is ReleaseStatus.SUCCESS
    nodes = await world.store.release_nodes(release_id)
    [canary] = [node for node in nodes if node.batch == 1]
    rest = [node.started_at for node in nodes if node.batch == 2 and node.started_at]
    assert canary.finished_at is not None and len(rest) == 2
    assert (min(rest) - canary.finished_at).total_seconds() >= BAKE
    messages = [event.message or "" for event in await world.store.release_events(release_id)]
    assert messages[0].endswith("; reason: tls; strategy: the default of scope cdn")
    assert f"step 1: bake {BAKE:g}s" in messages
    await assert_release_invariants(world.store, release_id, world.fleet)
    assert await run_sql(database_url, "SELECT count(*) FROM scope_strategies") == "0\n"


async def test_a_refused_default_leaves_the_table_as_it_was(
    api: httpx.AsyncClient, database_url: str
) -> None:
    await api.put("/api/v1/scopes/eu/strategy", json={"plan": ["50%"]})
    before = await run_sql(database_url, "SELECT * FROM scope_strategies")

    for body in ({"plan": [1, {"pause": None}]}, {"onFailure": "later"}, {"target": "cdn"}):
        refused = await api.put("/api/v1/scopes/eu/strategy", json=body)
        assert refused.status_code == 400, refused.text
    assert (await api.put("/api/v1/scopes/eu%00/strategy", json=DEFAULT)).status_code == 400

    assert await run_sql(database_url, "SELECT * FROM scope_strategies") == before
