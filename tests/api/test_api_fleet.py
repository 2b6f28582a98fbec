"""GET /api/v1/fleet over a MemoryStore: releases created through the API with a scope and
a node selection, run by the executor's writes; drift is judged per node against the newest
successful release that included it, and grouped per scope."""

from __future__ import annotations

import re
from typing import Any

import httpx

from fleetwave.api.fleet import SCOPE_DIFFERING_SHOWN
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Node, NodeChange, NodeStatus, Outcome, ReleaseStatus
from tests.api.conftest import Served, add_nodes


async def release(
    client: httpx.AsyncClient,
    store: MemoryStore,
    nodes: list[Node],
    succeeding: int,
    *,
    scope: str | None = None,
) -> int:
    """A release of ``nodes`` asked through the API, whose first ``succeeding`` nodes succeed
    and the rest fail; it ends success within a tolerance of every failure."""
    body: dict[str, Any] = {
        "target": "cdn",
        "nodeNames": [node.name for node in nodes],
        "maxFailures": len(nodes),
        "plan": ["100%"],
    }
    if scope is not None:
        body["scope"] = scope
    created = await client.post("/api/v1/releases", json=body)
    assert created.status_code == 200, created.text
    [claim] = await store.claim("daemon", 1, 30)
    rows = await store.release_nodes(claim.release.id)
    changes = [
        NodeChange(
            row.id,
            NodeStatus.SUCCESS if k < succeeding else NodeStatus.FAILED,
            started=True,
            finished=True,
        )
        for k, row in enumerate(rows)
    ]
    assert await store.record(claim.lease, changes, Outcome(ReleaseStatus.SUCCESS))
    return claim.release.id


async def fleet(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/fleet")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


async def test_nodes_outside_a_scoped_release_do_not_drift(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 5)
    eu = await release(client, store, nodes[:2], 2, scope="cdn-eu")
    us = await release(client, store, nodes[2:4], 2, scope="cdn-us")

    data = await fleet(client)

    # The newest success (cdn-us) never touched cdn-eu's nodes, nor edge-005.
    assert data["newestSucceeded"] == {"releaseId": us, "version": 2, "configVersion": 2}
    assert data["differing"] == []
    assert data["unreleasedNodes"] == 1
    assert data["versions"] == [
        {"configVersion": 2, "nodes": 2},
        {"configVersion": 1, "nodes": 2},
        {"configVersion": None, "nodes": 1},
    ]
    assert data["byScope"] == [
        {
            "scope": "cdn-eu",
            "releases": 1,
            "newestSucceeded": {"releaseId": eu, "version": 1, "configVersion": 1},
            "releaseNodes": 2,
            "runningConfig": 2,
            "expectedNodes": 2,
            "differingNodes": 0,
            "differing": [],
        },
        {
            "scope": "cdn-us",
            "releases": 1,
            "newestSucceeded": {"releaseId": us, "version": 2, "configVersion": 2},
            "releaseNodes": 2,
            "runningConfig": 2,
            "expectedNodes": 2,
            "differingNodes": 0,
            "differing": [],
        },
    ]


async def test_a_node_that_failed_in_its_newest_success_drifts_under_that_scope(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)
    await release(client, store, nodes, 3, scope="cdn-eu")
    newer = await release(client, store, nodes, 2)  # no scope; edge-003 fails

    data = await fleet(client)

    [drift] = data["differing"]
    assert drift["nodeName"] == "edge-003" and drift["appliedVersion"] == 1
    assert drift["expectedVersion"] == 2
    assert drift["expectedRelease"] == {"releaseId": newer, "version": 2, "scope": None}
    eu, unscoped = data["byScope"]
    # cdn-eu's release set no node's expectation any more: a newer success included them all.
    assert (eu["scope"], eu["releaseNodes"], eu["runningConfig"]) == ("cdn-eu", 3, 1)
    assert (eu["expectedNodes"], eu["differingNodes"]) == (0, 0)
    assert unscoped["scope"] is None
    assert (unscoped["expectedNodes"], unscoped["differingNodes"]) == (3, 1)
    assert unscoped["differing"] == [drift]


async def test_a_scope_names_its_first_drifting_nodes_and_counts_them_all(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    many = SCOPE_DIFFERING_SHOWN + 5
    nodes = await add_nodes(store, many + 1)
    await release(client, store, nodes, many + 1, scope="cdn-eu")
    await release(client, store, nodes, 1, scope="cdn-eu")  # only the first one succeeds

    data = await fleet(client)

    [eu] = data["byScope"]
    assert (eu["releases"], eu["expectedNodes"], eu["differingNodes"]) == (2, many + 1, many)
    assert eu["runningConfig"] == 1
    assert [n["nodeId"] for n in eu["differing"]] == [
        node.id for node in nodes[1 : SCOPE_DIFFERING_SHOWN + 1]
    ]
    assert len(data["differing"]) == many


async def test_fleetwave_fleet_prints_the_scopes_and_the_drifting_node(
    served: Served, client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)
    eu = await release(client, store, nodes[:1], 1, scope="cdn-eu")
    unscoped = await release(client, store, nodes[1:], 1)

    code, out, err = await served.run("fleet")

    assert (code, err) == (0, "")
    lines = out.splitlines()
    scopes = [re.split(r"\s{2,}", line) for line in lines if line.startswith(("cdn", "(no"))]
    assert scopes == [
        ["cdn-eu", "1", f"release {eu}", "1", "1/1", "0"],
        ["(no scope)", "1", f"release {unscoped}", "2", "1/2", "1"],
    ]
    assert "1 node(s) drift from their newest successful release:" in lines
    [row] = [line for line in lines if "edge-003" in line]
    assert row.split()[:6] == ["3", "edge-003", "-", "2", "release", str(unscoped)]


async def test_a_node_shows_what_it_is_expected_to_run_and_whether_it_drifts(
    served: Served, client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)
    eu = await release(client, store, nodes[:2], 1, scope="cdn-eu")  # edge-002 fails

    drifting = (await client.get(f"/api/v1/nodes/{nodes[1].id}")).json()["data"]
    running = (await client.get(f"/api/v1/nodes/{nodes[0].id}")).json()["data"]
    alone = (await client.get(f"/api/v1/nodes/{nodes[2].id}")).json()["data"]

    expected = {"configVersion": 1, "releaseId": eu, "version": 1, "scope": "cdn-eu"}
    assert (drifting["expected"], drifting["drifting"]) == (expected, True)
    assert (running["expected"], running["drifting"]) == (expected, False)
    assert (alone["expected"], alone["drifting"]) == (None, False)
    _, shown, _ = await served.run("nodes", "show", "edge-002")
    assert f"expected config 1 (release {eu}, scope cdn-eu): DRIFTING, runs -" in shown
    _, shown, _ = await served.run("nodes", "show", "edge-003")
    assert "expects nothing: no successful release included it" in shown
