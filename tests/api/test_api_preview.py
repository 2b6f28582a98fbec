"""POST /api/v1/releases?dryRun=true and ``fleetwave release plan``: a release's preview over
a MemoryStore, with creation's refusals and nothing written."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from starlette.applications import Starlette

from fleetwave.api.auth import create_token
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeStatus, Role
from tests.api.conftest import Served, add_nodes

PLAN = {"target": "cdn", "plan": [1, {"pause": 300}, "50%", {"pause": None}, "100%"]}


async def labelled(store: MemoryStore) -> None:
    nodes = await add_nodes(store, 5)
    for node, pop, region in zip(
        nodes, ["fra1", "fra1", "ams1", "iad1", "iad1"], ["eu", "eu", "eu", "us", "us"], strict=True
    ):
        await store.update_node(node.id, labels={"pop": pop, "region": region})


async def with_history(store: MemoryStore, seconds: float) -> None:
    """One finished release in which every node took ``seconds``."""
    ids = [node.id for node in await store.list_nodes()]
    release_id = store.insert_seed_release(1, [ids], status="success")
    for row in store._release_nodes[release_id]:
        row.status = NodeStatus.SUCCESS
        row.started_at = store.now()
        row.finished_at = row.started_at + timedelta(seconds=seconds)


async def test_a_dry_run_shows_the_plan_and_creates_nothing(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await labelled(store)
    await with_history(store, 30)
    before = await store.list_releases()

    response = await client.post("/api/v1/releases?dryRun=true", json=PLAN)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["dryRun"], data["totalNodes"], data["fleetMedianApplySeconds"]) == (True, 5, 30)
    assert [[node["name"] for node in batch["nodes"]] for batch in data["batches"]] == [
        ["edge-001"],
        ["edge-002", "edge-003"],
        ["edge-004", "edge-005"],
    ]
    assert data["batches"][1]["nodes"][1]["labels"] == {"pop": "ams1", "region": "eu"}
    assert data["batches"][1]["blastRadius"] == {
        "nodes": 2,
        "pops": ["ams1", "fra1"],
        "regions": ["eu"],
    }
    assert [(s["kind"], s["batch"], s.get("seconds")) for s in data["steps"]] == [
        ("batch", 1, 30),
        ("bake", 1, 300),
        ("batch", 2, 30),
        ("gate", 2, None),
        ("batch", 3, 30),
    ]
    assert (data["bakeSeconds"], data["gates"], data["predictedSeconds"]) == (300, 1, 390)
    assert await store.list_releases() == before
    assert len(await store.release_events(before[0][0].id)) == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": "cdn", "plan": [1, {"pause": None}]}, 400),
        ({"target": "cdn", "plan": [1, {"bake": 5}, 2]}, 400),
        ({"target": "cdn", "maxFailures": "2"}, 400),
        ({"target": "nowhere"}, 400),
        ({"target": "cdn", "nodeNames": ["edge-001", "missing"]}, 400),
        ({"target": "cdn", "selector": {"pop": "mars"}}, 409),
    ],
)
async def test_a_dry_run_refuses_what_creation_refuses_with_the_same_error(
    client: httpx.AsyncClient, store: MemoryStore, body: dict[str, object], status: int
) -> None:
    await labelled(store)

    previewed = await client.post("/api/v1/releases?dryRun=true", json=body)
    created = await client.post("/api/v1/releases", json=body)

    assert previewed.status_code == created.status_code == status
    assert previewed.json() == created.json()
    assert await store.list_releases() == ([], 0)


async def test_dry_run_takes_true_or_false_only(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)

    response = await client.post("/api/v1/releases?dryRun=yes", json={"target": "cdn"})

    assert response.status_code == 400
    assert response.json()["message"].startswith("dryRun: must be true or false")
    assert response.json()["code"] == 2002
    assert await store.list_releases() == ([], 0)
    created = await client.post("/api/v1/releases?dryRun=false", json={"target": "cdn"})
    assert created.status_code == 200 and "releaseId" in created.json()["data"]


async def test_a_dry_run_is_an_operator_route(app: Starlette, store: MemoryStore) -> None:
    await add_nodes(store, 2)
    token = await create_token(store, "watcher", role=Role.VIEWER)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://api.test", headers=headers
    ) as viewer:
        response = await viewer.post("/api/v1/releases?dryRun=true", json={"target": "cdn"})
    assert response.status_code == 403


async def test_release_plan_prints_the_batches_and_creates_nothing(
    served: Served, store: MemoryStore
) -> None:
    await labelled(store)
    await with_history(store, 12)
    before = await store.list_releases()

    code, out, err = await served.run(
        "release", "plan", "--reason", "r", "--plan", "1,pause=60,100%", "--max-parallel", "2"
    )

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "dry run: 5 nodes in 2 batches, nothing created"
    assert lines[1] == "batch 1: 1 nodes, pops fra1, regions eu, ~12s"
    assert "  edge-001 pop=fra1,region=eu ~12s" in lines
    # Four nodes of 12 s, two at once.
    assert "batch 2: 4 nodes, pops ams1,fra1,iad1, regions eu,us, ~24s" in lines
    assert lines[-1] == "predicted: 96s (bakes 60s)"
    assert await store.list_releases() == before


async def test_release_plan_exits_2_on_what_create_refuses(
    served: Served, store: MemoryStore
) -> None:
    await labelled(store)

    code, out, err = await served.run("release", "plan", "--reason", "r", "--plan", "1,gate")

    assert (code, out) == (2, "")
    assert err.startswith("fleetwave: plan[1]: a gate cannot be the last step")
    assert err.endswith("; nothing was planned\n")
    # Refused by the API: the same exit and message as release create.
    planned = await served.run("release", "plan", "--reason", "r", "--node", "missing")
    created = await served.run("release", "create", "--reason", "r", "--node", "missing")
    assert planned == created
    assert planned[0] == 1 and "missing" in planned[2]
    assert await store.list_releases() == ([], 0)
