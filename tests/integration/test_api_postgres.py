"""The API over PostgresStore: the same answers as over MemoryStore."""

from __future__ import annotations

import httpx
import pytest

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


async def test_api_over_postgres_creates_shows_and_refuses(pg_store: PostgresStore) -> None:
    token = await create_token(pg_store, "it")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(pg_store)),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        refused = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r"})
        for k in range(1, 4):
            registered = await client.post(
                "/api/v1/nodes", json={"name": f"edge-{k}", "mainIp": f"127.0.0.{k + 1}"}
            )
            assert registered.status_code == 200
        created = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r"})
        release_id = created.json()["data"]["releaseId"]
        shown = await client.get(f"/api/v1/releases/{release_id}")
        missing = await client.get("/api/v1/releases/424242")
        ready = await client.get("/readyz")
        wrong = await client.get("/api/v1/nodes", headers={"Authorization": "Bearer fw_nope"})

    assert (refused.status_code, refused.json()["code"]) == (409, 3003)
    assert refused.json()["message"] == "no online nodes"
    assert created.json()["data"]["batches"] == [
        {"batch": 1, "nodeIds": [1]},
        {"batch": 2, "nodeIds": [2, 3]},
    ]
    release = shown.json()["data"]["release"]
    assert (release["status"], release["totalNodes"], release["currentBatch"]) == ("pending", 3, 1)
    assert release["createdAt"].endswith("Z")
    assert [node["nodeName"] for node in shown.json()["data"]["batches"][1]["nodes"]] == [
        "edge-2",
        "edge-3",
    ]
    assert (missing.status_code, missing.json()["code"]) == (404, 3001)
    assert ready.status_code == 200
    assert (wrong.status_code, wrong.json()["code"]) == (401, 1002)
