"""What an operator asks of one node or one waiting release: GET /api/v1/nodes/{id}, a
registration that must not overwrite, and a pending release's waitingFor."""

from __future__ import annotations

import httpx
import pytest

from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeChange, NodeStatus, Outcome, ReleaseSpec, ReleaseStatus
from tests.api.conftest import add_nodes
from tests.api.test_api_nodes import NODE_ITEM_FIELDS


async def test_show_node_has_its_fields_and_latest_releases(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 2)
    first = (await store.create_release(ReleaseSpec())).release
    [claim] = await store.claim("daemon-a", 1, 30)
    canary = (await store.release_nodes(first.id))[0]
    await store.record(
        claim.lease,
        [NodeChange(canary.id, NodeStatus.FAILED, error_msg="boom", started=True, finished=True)],
        Outcome(ReleaseStatus.FAILED),
    )
    second = (await store.create_release(ReleaseSpec())).release

    response = await client.get(f"/api/v1/nodes/{nodes[0].id}")

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert set(data) == NODE_ITEM_FIELDS | {"releases", "expected", "drifting"}
    assert (data["expected"], data["drifting"]) == (None, False)  # no release succeeded
    assert (data["id"], data["name"], data["mainIp"]) == (nodes[0].id, "edge-001", "127.0.0.2")
    assert [(run["releaseId"], run["status"], run["errorMsg"]) for run in data["releases"]] == [
        (second.id, "pending", ""),
        (first.id, "failed", "boom"),
    ]
    assert data["releases"][1]["batch"] == 1
    assert data["releases"][1]["version"] == first.version


@pytest.mark.parametrize(("path", "status", "code"), [("424242", 404, 3001), ("x", 400, 2002)])
async def test_show_node_unknown_or_not_an_id(
    client: httpx.AsyncClient, path: str, status: int, code: int
) -> None:
    response = await client.get(f"/api/v1/nodes/{path}")

    assert (response.status_code, response.json()["code"]) == (status, code)


async def test_register_with_if_exists_refuse_keeps_the_existing_node(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    [node] = await add_nodes(store, 1)

    response = await client.post(
        "/api/v1/nodes?ifExists=refuse", json={"name": node.name, "mainIp": "10.9.9.9"}
    )

    assert response.status_code == 409
    assert response.json() == {
        "code": 3002,
        "message": "node 'edge-001' already exists",
        "data": None,
    }
    assert await store.list_nodes() == [node]


async def test_register_with_if_exists_refuse_creates_a_new_node(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    response = await client.post(
        "/api/v1/nodes?ifExists=refuse", json={"name": "edge-new", "mainIp": "10.9.9.9"}
    )

    assert response.status_code == 200
    assert [node.name for node in await store.list_nodes()] == ["edge-new"]


async def test_register_with_an_unknown_if_exists_is_refused(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    response = await client.post(
        "/api/v1/nodes?ifExists=maybe", json={"name": "edge-new", "mainIp": "10.9.9.9"}
    )

    assert (response.status_code, response.json()["code"]) == (400, 2002)
    assert response.json()["message"].startswith("ifExists: ")
    assert await store.list_nodes() == []


async def test_a_pending_release_says_what_it_waits_for(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    first = (await store.create_release(ReleaseSpec(scope="eu"))).release
    second = (await store.create_release(ReleaseSpec(scope="eu"))).release
    await store.claim("daemon-a", 5, 30)

    listed = (await client.get("/api/v1/releases")).json()["data"]["items"]
    detail = (await client.get(f"/api/v1/releases/{second.id}")).json()["data"]["release"]

    by_id = {item["id"]: item["waitingFor"] for item in listed}
    assert by_id[first.id] is None  # running
    assert by_id[second.id] == {
        "releaseId": first.id,
        "scope": "eu",
        "sharedNodes": 2,
        "nodeNames": ["edge-001", "edge-002"],
        "reason": f"behind release {first.id} (running) on nodes edge-001, edge-002",
    }
    assert detail["waitingFor"] == by_id[second.id]


async def test_a_pending_release_with_nothing_ahead_waits_for_a_daemon(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    release = (await store.create_release(ReleaseSpec())).release

    detail = (await client.get(f"/api/v1/releases/{release.id}")).json()["data"]["release"]

    assert detail["waitingFor"] == {
        "releaseId": None,
        "scope": None,
        "sharedNodes": 0,
        "nodeNames": [],
        "reason": "nothing ahead of it: waits for a daemon to claim it",
    }
