"""Requests exactly as the original system's UI and scripts send them (their lenient inputs,
seed REFERENCE "Lenient inputs of the original"), and what they get back."""

from __future__ import annotations

import httpx
import pytest

from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeChange, NodeStatus
from tests.api.conftest import add_nodes

JSON = {"Content-Type": "application/json"}


async def post_raw(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/api/v1/releases", content=body, headers=JSON)


async def test_target_cdn_alone_creates_a_release_without_reason(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 3)

    response = await post_raw(client, b'{"target":"cdn"}')

    assert response.status_code == 200, response.text
    assert response.json()["code"] == 0
    release = await store.get_release(response.json()["data"]["releaseId"])
    assert release is not None and (release.target, release.reason) == ("cdn", "")


async def test_one_online_node_makes_only_batch_1(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    (node,) = await add_nodes(store, 1)

    response = await post_raw(client, b'{"target":"cdn"}')

    assert response.json()["data"]["batches"] == [{"batch": 1, "nodeIds": [node.id]}]


@pytest.mark.parametrize(
    "body",
    [b'{"target":"cnd"}', b'{"target":"CDN","reason":"x"}', b'{"reason":"x"}', b"{}", b""],
)
async def test_missing_or_unknown_target_is_400_code_2002_and_writes_nothing(
    client: httpx.AsyncClient, store: MemoryStore, body: bytes
) -> None:
    await add_nodes(store, 3)

    response = await post_raw(client, body)

    assert response.status_code == 400
    envelope = response.json()
    assert (envelope["code"], envelope["data"]) == (2002, None)
    assert envelope["message"].startswith("target: "), envelope["message"]
    assert await store.list_releases() == ([], 0)


async def test_protective_checks_stay_errors(client: httpx.AsyncClient, store: MemoryStore) -> None:
    await add_nodes(store, 3)

    unknown = await post_raw(client, b'{"target":"cdn","batchSize":5}')
    wrong_type = await post_raw(client, b'{"target":"cdn","reason":42}')
    too_long = await post_raw(client, b'{"target":"cdn","reason":"' + b"r" * 1001 + b'"}')

    assert (unknown.status_code, unknown.json()["code"]) == (400, 2003)
    assert (wrong_type.status_code, wrong_type.json()["code"]) == (400, 2002)
    assert (too_long.status_code, too_long.json()["code"]) == (400, 2002)
    assert await store.list_releases() == ([], 0)


async def _releases(client: httpx.AsyncClient, store: MemoryStore, count: int) -> None:
    await add_nodes(store, 2)
    for _ in range(count):
        assert (await post_raw(client, b'{"target":"cdn"}')).status_code == 200


@pytest.mark.parametrize(
    ("query", "page", "page_size"),
    [
        ("status=&page=1&pageSize=200", 1, 100),
        ("pageSize=101", 1, 100),
        ("pageSize=99999999999999999999999999", 1, 100),
        ("page=0&pageSize=0", 1, 20),
        ("page=-3&pageSize=-1", 1, 20),
        ("page=&pageSize=", 1, 20),
    ],
)
async def test_page_and_page_size_out_of_range_are_clamped_not_refused(
    client: httpx.AsyncClient, store: MemoryStore, query: str, page: int, page_size: int
) -> None:
    await _releases(client, store, 3)

    response = await client.get(f"/api/v1/releases?{query}")

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["page"], data["pageSize"], data["total"]) == (page, page_size, 3)
    assert len(data["items"]) == 3


async def test_page_size_above_100_serves_100_items(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await _releases(client, store, 101)

    data = (await client.get("/api/v1/releases?status=&page=1&pageSize=200")).json()["data"]

    assert (len(data["items"]), data["pageSize"], data["total"]) == (100, 100, 101)


async def test_a_huge_page_is_an_empty_page_not_an_error(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await _releases(client, store, 1)

    response = await client.get("/api/v1/releases?page=" + "9" * 5000)

    assert response.status_code == 200
    assert response.json()["data"]["items"] == []


async def test_list_is_newest_first(client: httpx.AsyncClient, store: MemoryStore) -> None:
    await _releases(client, store, 3)

    data = (await client.get("/api/v1/releases?status=&page=1&pageSize=20")).json()["data"]

    ids = [item["id"] for item in data["items"]]
    assert ids == sorted(ids, reverse=True)
    assert [item["version"] for item in data["items"]] == [3, 2, 1]


async def test_error_msg_is_empty_string_not_null_and_times_null_until_they_happen(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await _releases(client, store, 1)
    (claim,) = await store.claim("daemon-a", 1, 30)
    canary = (await store.release_nodes(claim.release.id))[0]
    await store.record(
        claim.lease,
        [NodeChange(canary.id, NodeStatus.SUCCESS, task_id="t", started=True, finished=True)],
    )

    data = (await client.get(f"/api/v1/releases/{claim.release.id}")).json()["data"]

    done, waiting = data["batches"][0]["nodes"][0], data["batches"][1]["nodes"][0]
    assert (done["status"], done["errorMsg"]) == ("success", "")
    assert done["startedAt"] is not None and done["finishedAt"] is not None
    assert (waiting["status"], waiting["errorMsg"]) == ("pending", "")
    assert waiting["startedAt"] is None and waiting["finishedAt"] is None


async def test_detail_by_query_is_the_same_as_by_path(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await _releases(client, store, 1)
    (item,) = (await client.get("/api/v1/releases")).json()["data"]["items"]

    by_query = await client.get(f"/api/v1/releases/detail?id={item['id']}")
    by_path = await client.get(f"/api/v1/releases/{item['id']}")

    assert by_query.status_code == 200
    assert by_query.json() == by_path.json()


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [("?id=999", 404, 3001), ("?id=abc", 400, 2002), ("", 400, 2001), ("?id=", 400, 2001)],
)
async def test_detail_by_query_refuses_what_the_path_form_refuses(
    client: httpx.AsyncClient, query: str, status: int, code: int
) -> None:
    response = await client.get(f"/api/v1/releases/detail{query}")

    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.json()["message"].startswith(("id: ", "release 999")), response.json()


async def test_detail_by_query_needs_a_token(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api/v1/releases/detail?id=1")

    assert (response.status_code, response.json()["code"]) == (401, 1001)
