"""Release endpoints: the original's envelope, codes and camelCase fields."""

from __future__ import annotations

import json

import httpx
import pytest

from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeChange, NodeStatus, Outcome, ReleaseStatus
from tests.api.conftest import add_nodes

RELEASE_ITEM_FIELDS = {
    "id",
    "type",
    "target",
    "scope",
    "version",
    "status",
    "totalNodes",
    "successNodes",
    "failedNodes",
    "skippedNodes",
    "cancelledNodes",
    "currentBatch",
    "createdAt",
    "updatedAt",
    "startedAt",
    "finishedAt",
    "error",
    "reason",
    "maxParallel",
    "maxFailures",
    "plan",
    "waitingFor",
    "selection",
    "configVersion",
    "rollbackOf",
    "heldFor",
    "cancelling",
    "lastVerb",
    "createdBy",
    "strategy",
    "step",
}
NODE_FIELDS = {
    "nodeId",
    "nodeName",
    "status",
    "errorMsg",
    "errorKind",
    "agent",
    "attempt",
    "taskId",
    "startedAt",
    "finishedAt",
}


async def snapshot(store: MemoryStore) -> tuple[object, ...]:
    releases, total = await store.list_releases(limit=1000)
    events = [await store.release_events(release.id) for release in releases]
    return total, releases, events, await store.list_nodes()


async def create(client: httpx.AsyncClient, **body: object) -> dict[str, object]:
    response = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r", **body})
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()["data"]
    return data


async def test_create_release_answers_id_version_and_batches(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)

    response = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "v42"})

    assert response.status_code == 200
    body = response.json()
    assert body["code"] == 0 and body["message"] == "success"
    data = body["data"]
    assert set(data) == {
        "releaseId",
        "version",
        "totalNodes",
        "batches",
        "selection",
        "defaultScope",
    }
    assert data["selection"] is None
    assert data["version"] == 1
    assert data["totalNodes"] == 3
    assert data["batches"] == [
        {"batch": 1, "nodeIds": [nodes[0].id]},
        {"batch": 2, "nodeIds": [nodes[1].id, nodes[2].id]},
    ]
    release = await store.get_release(data["releaseId"])
    assert release is not None and release.reason == "v42"


async def test_create_release_takes_plan_tolerance_and_scope(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 10)

    data = await create(client, plan=[1, "30%"], maxParallel=2, maxFailures=1, scope="edge-eu")

    assert [len(batch["nodeIds"]) for batch in data["batches"]] == [1, 3, 3, 3]  # type: ignore[attr-defined]
    release = await store.get_release(data["releaseId"])  # type: ignore[arg-type]
    assert release is not None
    assert (release.max_parallel, release.max_failures, release.scope) == (2, 1, "edge-eu")
    assert release.plan == (1, "30%")


async def test_create_release_without_online_nodes_is_409_3003(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2, online=False)

    response = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r"})

    assert response.status_code == 409
    assert response.json() == {"code": 3003, "message": "no online nodes", "data": None}
    assert await store.list_releases() == ([], 0)


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"reason": "r"}, "target", 2002),
        ({"target": "cnd", "reason": "r"}, "target", 2002),
        ({"target": "cdn", "reason": 7}, "reason", 2002),
        ({"target": "cdn", "reason": "r" * 1001}, "reason", 2002),
        ({"target": "cdn", "reason": "r", "colour": "blue"}, "colour", 2003),
        ({"target": 7, "reason": "r"}, "target", 2002),
        ({"target": "cdn", "reason": "r", "maxParallel": "3"}, "maxParallel", 2002),
        ({"target": "cdn", "reason": "r", "maxParallel": 0}, "maxParallel", 2002),
        ({"target": "cdn", "reason": "r", "maxFailures": -1}, "maxFailures", 2002),
        ({"target": "cdn", "reason": "r", "maxFailures": True}, "maxFailures", 2002),
        ({"target": "cdn", "reason": "r", "plan": []}, "plan", 2002),
        ({"target": "cdn", "reason": "r", "plan": [1, "150%"]}, "plan", 2002),
        ({"target": "cdn", "reason": "r", "plan": [0]}, "plan", 2002),
        ({"target": "cdn", "reason": "r", "plan": "1,100%"}, "plan", 2002),
        ({"target": "cdn", "reason": "r", "scope": ""}, "scope", 2002),
        ([1, 2], "body", 2002),
    ],
)
async def test_create_release_rejects_bad_input_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient, store: MemoryStore, body: object, field: str, code: int
) -> None:
    await add_nodes(store, 3)
    before = await snapshot(store)

    response = await client.post("/api/v1/releases", json=body)

    assert response.status_code == 400
    envelope = response.json()
    assert envelope["code"] == code
    assert envelope["message"].startswith(f"{field}: ") or envelope["message"].startswith(
        f"{field}["
    ), envelope["message"]
    assert envelope["data"] is None
    assert await snapshot(store) == before


async def test_create_release_rejects_malformed_json(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)

    response = await client.post(
        "/api/v1/releases",
        content=b'{"target": "cdn", "reason": ',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert response.json()["code"] == 2002
    assert response.json()["message"].startswith("body: malformed JSON at line 1 column")
    assert await store.list_releases() == ([], 0)


async def test_create_release_rejects_a_body_over_one_mebibyte(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    body = json.dumps({"target": "cdn", "reason": "x" * (1024 * 1024)}).encode()

    response = await client.post("/api/v1/releases", content=body)

    assert response.status_code == 413
    assert response.json()["message"] == "body: larger than 1048576 bytes"
    assert await store.list_releases() == ([], 0)


async def test_list_releases_has_the_original_item_fields_and_paging(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    for _ in range(3):
        await create(client)

    response = await client.get("/api/v1/releases")

    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["total"], data["page"], data["pageSize"]) == (3, 1, 20)
    assert [item["version"] for item in data["items"]] == [3, 2, 1]
    item = data["items"][0]
    assert set(item) == RELEASE_ITEM_FIELDS
    assert item["type"] == "apply_config"
    assert item["status"] == "pending"
    assert item["currentBatch"] == 1
    assert item["createdAt"].endswith("Z")


async def test_list_releases_pages_and_filters_by_status(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    for _ in range(3):
        await create(client)
    await store.claim("daemon-a", 1, 30)

    page2 = (await client.get("/api/v1/releases", params={"page": 2, "pageSize": 2})).json()
    running = (await client.get("/api/v1/releases", params={"status": "running"})).json()
    unfiltered = (await client.get("/api/v1/releases?status=&page=1&pageSize=20")).json()

    assert [item["version"] for item in page2["data"]["items"]] == [1]
    assert page2["data"]["total"] == 3
    assert [item["status"] for item in running["data"]["items"]] == ["running"]
    assert unfiltered["data"]["total"] == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("pageSize=ten", "pageSize"),
        ("pageSize=1e2", "pageSize"),
        ("page=1.5", "page"),
        ("status=done", "status"),
    ],
)
async def test_list_releases_rejects_bad_query_naming_the_parameter(
    client: httpx.AsyncClient, query: str, field: str
) -> None:
    response = await client.get(f"/api/v1/releases?{query}")

    assert response.status_code == 400
    assert response.json()["code"] == 2002
    assert response.json()["message"].startswith(f"{field}: ")


async def test_show_release_has_release_and_batches_of_nodes(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)
    release_id = (await create(client))["releaseId"]

    response = await client.get(f"/api/v1/releases/{release_id}")

    assert response.status_code == 200
    data = response.json()["data"]
    assert set(data) == {"release", "batches", "liveness", "verbs"}
    assert set(data["release"]) == RELEASE_ITEM_FIELDS
    assert [batch["batch"] for batch in data["batches"]] == [1, 2]
    first = data["batches"][0]["nodes"][0]
    assert set(first) == NODE_FIELDS
    assert (first["nodeId"], first["nodeName"], first["status"]) == (
        nodes[0].id,
        "edge-001",
        "pending",
    )
    assert [len(batch["nodes"]) for batch in data["batches"]] == [1, 2]


async def test_show_release_reports_progress_written_by_the_executor(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 3)
    release_id = (await create(client))["releaseId"]
    [claim] = await store.claim("daemon-a", 1, 30)
    first = (await store.release_nodes(claim.release.id))[0]
    await store.record(
        claim.lease,
        [NodeChange(first.id, NodeStatus.FAILED, "agent unreachable", started=True, finished=True)],
        Outcome(ReleaseStatus.FAILED, "batch 1 failed"),
    )

    data = (await client.get(f"/api/v1/releases/{release_id}")).json()["data"]

    release = data["release"]
    assert (release["status"], release["failedNodes"], release["skippedNodes"]) == ("failed", 1, 2)
    assert release["error"] == "batch 1 failed"
    assert release["finishedAt"].endswith("Z")
    node = data["batches"][0]["nodes"][0]
    assert (node["status"], node["errorMsg"]) == ("failed", "agent unreachable")
    assert node["startedAt"].endswith("Z") and node["finishedAt"].endswith("Z")
    assert {n["status"] for n in data["batches"][1]["nodes"]} == {"skipped"}


async def test_show_unknown_release_is_404_3001(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/releases/999")

    assert response.status_code == 404
    assert response.json() == {"code": 3001, "message": "release 999 not found", "data": None}


@pytest.mark.parametrize("bad_id", ["abc", "1.5", "-3", "0", "99999999999999999999"])
async def test_show_release_rejects_a_non_integer_id(
    client: httpx.AsyncClient, bad_id: str
) -> None:
    response = await client.get(f"/api/v1/releases/{bad_id}")

    assert response.status_code == 400
    assert response.json()["code"] == 2002
    assert response.json()["message"].startswith("id: ")


async def test_release_events_are_the_audit_trail_after_an_id(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    release_id = (await create(client))["releaseId"]
    await store.claim("daemon-a", 1, 30)

    everything = (await client.get(f"/api/v1/releases/{release_id}/events")).json()["data"]
    first_id = everything["items"][0]["id"]
    rest = (
        await client.get(f"/api/v1/releases/{release_id}/events", params={"afterId": first_id})
    ).json()["data"]

    assert [e["toStatus"] for e in everything["items"]] == ["pending", "running"]
    assert set(everything["items"][0]) == {
        "id",
        "releaseId",
        "nodeId",
        "batch",
        "fromStatus",
        "toStatus",
        "message",
        "daemonId",
        "actor",
        "createdAt",
    }
    # The creation names the token that asked (conftest's admin token "tests"); the claim, a
    # daemon's doing, names none.
    assert [e["actor"] for e in everything["items"]] == [
        {"tokenName": "tests", "role": "admin"},
        None,
    ]
    assert everything["nextAfterId"] == everything["items"][-1]["id"]
    assert [e["toStatus"] for e in rest["items"]] == ["running"]
    assert rest["items"][0]["daemonId"] == "daemon-a"


async def test_release_events_of_unknown_release_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/releases/77/events")

    assert response.status_code == 404
    assert response.json()["code"] == 3001


async def test_release_events_rejects_limit_out_of_range(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/releases/1/events?limit=0")

    assert response.status_code == 400
    assert response.json()["message"].startswith("limit: ")
