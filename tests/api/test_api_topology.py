"""batchBy and maxInFlightPer through POST /api/v1/releases (and its dry run) and the
``release create|plan`` commands, over a MemoryStore."""

from __future__ import annotations

import httpx
import pytest

from fleetwave.api import render
from fleetwave.store.memory import MemoryStore
from fleetwave.store.strategy import validate_strategy
from tests.api.conftest import Served, add_nodes
from tests.api.test_api_preview import with_history

POPS = [("fra1", "eu"), ("ams1", "eu"), ("fra1", "eu"), ("iad1", "us"), ("iad1", "us"), None]


async def labelled(store: MemoryStore) -> None:
    for node, labels in zip(await add_nodes(store, len(POPS)), POPS, strict=True):
        if labels is not None:
            await store.update_node(node.id, labels={"pop": labels[0], "region": labels[1]})


async def test_a_release_batched_by_pop_shows_its_topology(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await labelled(store)
    body = {"target": "cdn", "batchBy": "pop", "maxInFlightPer": {"pop": 1}}

    response = await client.post("/api/v1/releases", json=body)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    release = (await client.get(f"/api/v1/releases/{data['releaseId']}")).json()["data"]
    assert release["release"]["strategy"]["batchBy"] == "pop"
    assert release["release"]["strategy"]["maxInFlightPer"] == {"pop": 1}
    batches = [[node["nodeName"] for node in batch["nodes"]] for batch in release["batches"]]
    assert batches == [
        ["edge-002"],  # ams1, the canary
        ["edge-001", "edge-003"],  # fra1
        ["edge-004", "edge-005"],  # iad1
        ["edge-006"],  # no pop label
    ]


async def test_a_dry_run_shows_the_batches_by_pop_and_each_blast_radius(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await labelled(store)
    body = {"target": "cdn", "plan": [1, {"pause": 60}, "100%"], "batchBy": "pop"}

    response = await client.post("/api/v1/releases?dryRun=true", json=body)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [batch["blastRadius"] for batch in data["batches"]] == [
        {"nodes": 1, "pops": ["ams1"], "regions": ["eu"]},
        {"nodes": 2, "pops": ["fra1"], "regions": ["eu"]},
        {"nodes": 2, "pops": ["iad1"], "regions": ["us"]},
        {"nodes": 1, "pops": [], "regions": []},
    ]
    assert [(step["kind"], step["batch"]) for step in data["steps"]] == [
        ("batch", 1),
        ("bake", 1),
        ("batch", 2),
        ("batch", 3),
        ("batch", 4),
    ]
    assert await store.list_releases() == ([], 0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batchBy": 1}, "batchBy: must be a label key"),
        ({"batchBy": "pop=fra1"}, "batchBy: must be a label key"),
        ({"maxInFlightPer": 1}, "maxInFlightPer: must be an object of label key -> nodes"),
        ({"maxInFlightPer": {"pop": 0}}, "maxInFlightPer.pop: must be a whole number of nodes"),
        ({"maxInFlightPer": {"pop": "2"}}, "maxInFlightPer.pop: must be a whole number of nodes"),
        ({"batchBy": "rack"}, "batchBy: no node of the release has the label 'rack'"),
        ({"maxInFlightPer": {"site": 2}}, "maxInFlightPer.site: no node of the release has"),
        (
            {"selector": {"pop": "fra1"}, "maxInFlightPer": {"rack": 1}},
            "maxInFlightPer.rack: no node of the release has the label 'rack' "
            "(their labels: pop, region)",
        ),
    ],
)
async def test_a_bad_topology_is_400_2002_naming_the_field_in_creation_and_dry_run(
    client: httpx.AsyncClient, store: MemoryStore, fields: dict[str, object], message: str
) -> None:
    await labelled(store)
    body = {"target": "cdn", **fields}

    created = await client.post("/api/v1/releases", json=body)
    previewed = await client.post("/api/v1/releases?dryRun=true", json=body)

    assert created.status_code == previewed.status_code == 400
    assert created.json() == previewed.json()
    assert created.json()["code"] == 2002
    assert created.json()["message"].startswith(message), created.json()["message"]
    assert await store.list_releases() == ([], 0)


async def test_release_plan_takes_batch_by_and_max_in_flight_per(
    served: Served, store: MemoryStore
) -> None:
    await labelled(store)

    code, out, err = await served.run(
        "release", "plan", "--reason", "r", "--batch-by", "pop", "--max-in-flight-per", "pop=1"
    )

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "dry run: 6 nodes in 4 batches, nothing created"
    assert "batch 2: 2 nodes, pops fra1, regions eu, ~unknown" in lines
    code, out, err = await served.run(
        "release", "create", "--reason", "r", "--batch-by", "pop", "--max-in-flight-per", "pop=1"
    )
    assert (code, err) == (0, "")
    [release], _ = await store.list_releases()
    assert release.strategy is not None
    assert (release.strategy["batchBy"], release.strategy["maxInFlightPer"]) == ("pop", {"pop": 1})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-by", "pop=x"], "fleetwave: batchBy: must be a label key"),
        (["--max-in-flight-per", "pop=0"], "fleetwave: maxInFlightPer.pop: must be a whole"),
        # Refused by the API for the nodes it selects: the same exit as a refusal here.
        (["--batch-by", "rack"], "fleetwave: batchBy: no node of the release has the label"),
    ],
)
async def test_release_create_and_plan_exit_2_on_a_bad_topology(
    served: Served, store: MemoryStore, options: list[str], message: str
) -> None:
    await labelled(store)

    for action, verb in (("plan", "planned"), ("create", "created")):
        code, out, err = await served.run("release", action, "--reason", "r", *options)
        assert (code, out) == (2, ""), err
        assert err.startswith(message), err
        assert err.endswith(f"; nothing was {verb}\n")
    assert await store.list_releases() == ([], 0)


async def test_max_in_flight_per_takes_label_equals_count_pairs(served: Served) -> None:
    with pytest.raises(SystemExit) as refused:
        await served.run("release", "plan", "--reason", "r", "--max-in-flight-per", "pop")
    assert refused.value.code == 2


async def test_a_dry_run_predicts_each_batch_under_its_caps(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await labelled(store)
    await with_history(store, 30)
    body = {"target": "cdn", "plan": [1, "100%"], "maxInFlightPer": {"pop": 1}}

    capped = (await client.post("/api/v1/releases?dryRun=true", json=body)).json()["data"]
    del body["maxInFlightPer"]
    uncapped = (await client.post("/api/v1/releases?dryRun=true", json=body)).json()["data"]

    # Batch 2 after the canary (edge-001): one node of ams1, fra1 and no pop each, two of
    # iad1, which go one after the other under the cap.
    assert [batch["predictedSeconds"] for batch in capped["batches"]] == [30, 60]
    assert [batch["predictedSeconds"] for batch in uncapped["batches"]] == [30, 30]
    assert (capped["predictedSeconds"], uncapped["predictedSeconds"]) == (90, 60)


def test_a_strategy_line_names_its_topology() -> None:
    strategy = validate_strategy(batch_by="pop", max_in_flight_per={"pop": 1, "region": 4})
    line = render.scope_strategy_set({"scope": "edge", "strategy": strategy.to_json()})
    assert "checks -; batch by pop; in flight at most pop=1,region=4; releases created" in line
    plain = render.scope_strategy_set({"scope": "edge", "strategy": validate_strategy().to_json()})
    assert "batch by" not in plain and "in flight" not in plain
