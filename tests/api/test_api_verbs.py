"""The verb endpoints and GET /api/v1/fleet over a MemoryStore (no daemon: a release nobody
holds takes a verb at once)."""

from __future__ import annotations

import attrs
import httpx
import pytest
from starlette.applications import Starlette

from fleetwave.api.auth import create_token
from fleetwave.api.verbs import VerbAnswer
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import (
    Actor,
    NodeChange,
    NodeStatus,
    Outcome,
    ReleaseSpec,
    ReleaseStatus,
    Role,
)
from fleetwave.store.verbs import Verb
from tests.api.conftest import add_nodes


async def post(client: httpx.AsyncClient, path: str, body: object = None) -> httpx.Response:
    return await client.post(path, json=body) if body is not None else await client.post(path)


async def test_pause_then_resume_of_a_pending_release(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec())
    release_id = created.release.id

    paused = await post(client, f"/api/v1/releases/{release_id}/pause", {"reason": "hold on"})

    assert paused.status_code == 200, paused.text
    data = paused.json()["data"]
    assert (data["verb"], data["changed"], data["inEffect"]) == ("pause", True, True)
    assert data["release"]["status"] == "paused"
    assert data["release"]["lastVerb"] == {"verb": "pause", "by": "tests", "reason": "hold on"}
    assert "no daemon held its lease" in data["message"]
    repeat = (await post(client, f"/api/v1/releases/{release_id}/pause")).json()["data"]
    assert repeat["changed"] is False and "already in effect" in repeat["message"]
    events = (await client.get(f"/api/v1/releases/{release_id}/events")).json()["data"]
    [event] = [e for e in events["items"] if e["message"] == "pause by tests: hold on"]
    assert event["createdAt"]

    resumed = (await post(client, f"/api/v1/releases/{release_id}/resume")).json()["data"]
    assert resumed["release"]["status"] == "pending"


async def test_a_verb_refused_in_the_state_is_409_3003_naming_state_and_allowed(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())

    response = await post(client, f"/api/v1/releases/{created.release.id}/retry")

    assert response.status_code == 409
    body = response.json()
    assert body["code"] == 3003
    assert "is pending: retry is not allowed; allowed in pending: pause, cancel" in body["message"]


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("/api/v1/releases/{id}/pause", {"toVersion": 3}, "toVersion: unknown field"),
        ("/api/v1/releases/{id}/rollback", {"toVersion": "3"}, "toVersion: must be an integer"),
        ("/api/v1/releases/{id}/rollback", {"toVersion": 0}, "toVersion: must be between"),
        ("/api/v1/releases/{id}/cancel", {"reason": 5}, "reason: must be a string"),
        ("/api/v1/releases/{id}/cancel", [1], "body: must be a JSON object"),
        ("/api/v1/releases/x/cancel", {}, "id"),
    ],
)
async def test_bad_verb_input_is_a_400_and_changes_nothing(
    client: httpx.AsyncClient, store: MemoryStore, path: str, body: object, problem: str
) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())

    response = await post(client, path.format(id=created.release.id), body)

    assert response.status_code == 400, response.text
    assert problem in response.json()["message"]
    release = await store.get_release(created.release.id)
    assert release is not None and release.status is ReleaseStatus.PENDING and release.verb_seq == 0


async def test_a_verb_on_a_missing_release_is_404(client: httpx.AsyncClient) -> None:
    response = await post(client, "/api/v1/releases/99/cancel")
    assert response.status_code == 404 and response.json()["code"] == 3001


async def test_verbs_need_an_operator_token(app: Starlette, store: MemoryStore) -> None:
    await add_nodes(store, 1)
    created = await store.create_release(ReleaseSpec())
    token = await create_token(store, "watcher", role=Role.VIEWER)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://test",
        headers={"Authorization": f"Bearer {token}"},
    ) as viewer:
        refused = await viewer.post(f"/api/v1/releases/{created.release.id}/cancel")
        fleet = await viewer.get("/api/v1/fleet")

    assert refused.status_code == 403
    assert fleet.status_code == 200
    release = await store.get_release(created.release.id)
    assert release is not None and release.status is ReleaseStatus.PENDING


async def test_fleet_counts_config_versions_and_names_nodes_that_differ(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)
    for node, region in zip(nodes, ("eu", "us", "eu"), strict=True):
        await store.update_node(node.id, labels={"region": region})
    await store.create_release(ReleaseSpec())
    [claim] = await store.claim("d", 1, 30)
    rows = await store.release_nodes(claim.release.id)
    changes = [NodeChange(row.id, NodeStatus.SUCCESS, started=True, finished=True) for row in rows]
    assert await store.record(claim.lease, changes[:2], Outcome(ReleaseStatus.SUCCESS))

    data = (await client.get("/api/v1/fleet")).json()["data"]

    assert data["totalNodes"] == 3
    assert data["versions"] == [
        {"configVersion": 1, "nodes": 2},
        {"configVersion": None, "nodes": 1},
    ]
    assert data["newestSucceeded"] == {
        "releaseId": claim.release.id,
        "version": 1,
        "configVersion": 1,
    }
    assert [n["nodeName"] for n in data["differing"]] == [nodes[2].name]
    listed = (await client.get("/api/v1/nodes")).json()["data"]["items"]
    assert [n["appliedVersion"] for n in listed] == [1, 1, None]
    assert listed[0]["appliedAt"] is not None


async def test_a_stop_that_meets_the_end_of_the_release_says_so(store: MemoryStore) -> None:
    await add_nodes(store, 1)
    await store.create_release(ReleaseSpec())
    [claim] = await store.claim("d", 1, 30)
    paused = await store.steer(claim.release.id, Verb.PAUSE, by=Actor("ops", Role.OPERATOR))
    [row] = await store.release_nodes(claim.release.id)
    done = NodeChange(row.id, NodeStatus.SUCCESS, started=True, finished=True)
    # The owner records the end before it reads the pause: nothing was left to stop.
    assert await store.record(claim.lease, [done], Outcome(ReleaseStatus.SUCCESS))
    ended = await store.get_release(claim.release.id)
    assert ended is not None
    effect = await store.verb_effect(claim.release.id, paused.release.verb_seq)

    answer = VerbAnswer(attrs.evolve(paused, release=ended), effect, 0.1, "d")

    assert effect.in_effect and not effect.acknowledged
    assert answer.message == (
        f"release {ended.id} ended success before the pause took effect: nothing was left to stop"
    )
