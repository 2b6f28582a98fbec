"""Node endpoints: list, register, change status or enabled."""

from __future__ import annotations

import httpx
import pytest

from fleetwave.api.app import create_app
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeHealth
from tests.api.conftest import add_nodes
from tests.hostile import HOSTILE_ADDRESSES, hostile_row

NODE_ITEM_FIELDS = {
    "id",
    "name",
    "mainIp",
    "agentPort",
    "enabled",
    "status",
    "lastSeenAt",
    "labels",
    "appliedVersion",
    "appliedAt",
}


async def test_list_nodes_in_id_order(client: httpx.AsyncClient, store: MemoryStore) -> None:
    nodes = await add_nodes(store, 2)

    response = await client.get("/api/v1/nodes")

    assert response.status_code == 200
    data = response.json()["data"]
    assert data["total"] == 2
    assert [item["id"] for item in data["items"]] == [node.id for node in nodes]
    assert set(data["items"][0]) == NODE_ITEM_FIELDS
    assert data["items"][0]["mainIp"] == "127.0.0.2"


async def test_register_node_with_defaults(client: httpx.AsyncClient, store: MemoryStore) -> None:
    response = await client.post("/api/v1/nodes", json={"name": "edge-9", "mainIp": "10.0.0.9"})

    assert response.status_code == 200
    data = response.json()["data"]
    assert (data["name"], data["mainIp"], data["agentPort"]) == ("edge-9", "10.0.0.9", 8443)
    assert (data["enabled"], data["status"]) == (True, "online")
    [node] = await store.list_nodes()
    assert node.id == data["id"]


async def test_register_node_without_a_port_gets_the_daemons_agent_port(
    store: MemoryStore, token: str
) -> None:
    app = create_app(store, default_agent_port=9443)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        response = await client.post("/api/v1/nodes", json={"name": "e", "mainIp": "10.0.0.1"})

    assert response.status_code == 200
    assert response.json()["data"]["agentPort"] == 9443
    [node] = await store.list_nodes()
    assert node.agent_port == 9443


async def test_register_node_again_updates_it_by_name(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    first = await client.post("/api/v1/nodes", json={"name": "edge-9", "mainIp": "10.0.0.9"})
    again = await client.post(
        "/api/v1/nodes",
        json={
            "name": "edge-9",
            "mainIp": "2001:db8::9",
            "agentPort": 9443,
            "enabled": False,
            "status": "maintenance",
        },
    )

    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    [node] = await store.list_nodes()
    assert (node.main_ip, node.agent_port, node.enabled, node.status) == (
        "2001:db8::9",
        9443,
        False,
        NodeHealth.MAINTENANCE,
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mainIp": "10.0.0.1"}, "name"),
        ({"name": "e", "mainIp": "10.0.0.300"}, "mainIp"),
        ({"name": "e", "mainIp": "edge.example"}, "mainIp"),
        ({"name": "e", "mainIp": "10.0.0.1", "agentPort": 0}, "agentPort"),
        ({"name": "e", "mainIp": "10.0.0.1", "agentPort": 65536}, "agentPort"),
        ({"name": "e", "mainIp": "10.0.0.1", "agentPort": "8443"}, "agentPort"),
        ({"name": "e", "mainIp": "10.0.0.1", "enabled": "yes"}, "enabled"),
        ({"name": "e", "mainIp": "10.0.0.1", "status": "up"}, "status"),
        ({"name": "e", "mainIp": "10.0.0.1", "main_ip": "10.0.0.1"}, "main_ip"),
    ],
)
async def test_register_node_rejects_bad_input_naming_the_field(
    client: httpx.AsyncClient, store: MemoryStore, body: dict[str, object], field: str
) -> None:
    response = await client.post("/api/v1/nodes", json=body)

    assert response.status_code == 400
    assert response.json()["message"].startswith(f"{field}: ")
    assert await store.list_nodes() == []


@pytest.mark.parametrize("name", list(HOSTILE_ADDRESSES))
async def test_register_node_refuses_every_hostile_address_with_the_shared_check(
    client: httpx.AsyncClient, store: MemoryStore, name: str
) -> None:
    main_ip, port, words = hostile_row(name, "10.0.0.9")
    response = await client.post(
        "/api/v1/nodes", json={"name": "edge-9", "mainIp": main_ip, "agentPort": port}
    )

    assert response.status_code == 400
    assert response.json()["code"] == 2002
    message = response.json()["message"]
    assert message.startswith("agentPort: " if words.startswith("port") else "mainIp: "), message
    assert words in message
    assert await store.list_nodes() == []


async def test_patch_node_changes_status_and_enabled(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    [node] = await add_nodes(store, 1)

    response = await client.patch(
        f"/api/v1/nodes/{node.id}", json={"status": "offline", "enabled": False}
    )

    assert response.status_code == 200
    assert (response.json()["data"]["status"], response.json()["data"]["enabled"]) == (
        "offline",
        False,
    )
    [changed] = await store.list_nodes()
    assert (changed.status, changed.enabled) == (NodeHealth.OFFLINE, False)


async def test_patch_unknown_node_is_404_3001(client: httpx.AsyncClient) -> None:
    response = await client.patch("/api/v1/nodes/42", json={"enabled": False})

    assert response.status_code == 404
    assert response.json()["code"] == 3001


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/nodes/x", {"enabled": False}, "id"),
        ("/api/v1/nodes/1", {}, "body"),
        ("/api/v1/nodes/1", {"name": "other"}, "name"),
        ("/api/v1/nodes/1", {"enabled": None}, "enabled"),
    ],
)
async def test_patch_node_rejects_bad_input_and_changes_nothing(
    client: httpx.AsyncClient, store: MemoryStore, path: str, body: object, field: str
) -> None:
    before = await add_nodes(store, 1)

    response = await client.patch(path, json=body)

    assert response.status_code == 400
    assert response.json()["message"].startswith(f"{field}: ")
    assert await store.list_nodes() == before
