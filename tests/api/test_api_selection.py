"""Node labels and release node selection through the API and the CLI."""

from __future__ import annotations

import httpx
import pytest

from fleetwave import cli
from fleetwave.store.memory import MemoryStore
from fleetwave.store.selection import NodeSelection
from tests.api.conftest import Served, add_nodes


async def label(client: httpx.AsyncClient, node_id: int, labels: object) -> httpx.Response:
    return await client.patch(f"/api/v1/nodes/{node_id}", json={"labels": labels})


async def test_patch_labels_merges_and_null_removes(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    [node] = await add_nodes(store, 1)

    first = await label(client, node.id, {"region": "eu", "pop": "fra1"})
    second = await label(client, node.id, {"pop": None, "tier": "edge"})

    assert first.status_code == 200 and first.json()["data"]["labels"] == {
        "region": "eu",
        "pop": "fra1",
    }
    assert second.json()["data"]["labels"] == {"region": "eu", "tier": "edge"}
    [stored] = await store.list_nodes()
    assert stored.labels == (("region", "eu"), ("tier", "edge"))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["region=eu"], "labels: must be an object of labels, got a list"),
        ({"region": 1}, "labels: label region: the value must be a string, got 1"),
        ({"bad key": "x"}, "labels: label key 'bad key'"),
        ({"region": "e u"}, "labels: label region: value 'e u'"),
    ],
)
async def test_patch_bad_labels_is_a_400_naming_the_problem(
    client: httpx.AsyncClient, store: MemoryStore, labels: object, message: str
) -> None:
    [node] = await add_nodes(store, 1)

    response = await client.patch(
        f"/api/v1/nodes/{node.id}", json={"labels": labels, "enabled": False}
    )

    assert response.status_code == 400
    assert response.json()["code"] == 2002
    assert response.json()["message"].startswith(message)
    [stored] = await store.list_nodes()
    assert (stored.labels, stored.enabled) == ((), True)


async def test_create_release_by_selector_answers_what_was_selected(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 4)
    for node in nodes[1:3]:
        await store.update_node(node.id, labels={"region": "eu"})

    response = await client.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "eu", "selector": {"region": "eu"}}
    )

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["selection"] == {"selector": {"region": "eu"}}
    assert data["totalNodes"] == 2
    assert data["batches"] == [
        {"batch": 1, "nodeIds": [nodes[1].id]},
        {"batch": 2, "nodeIds": [nodes[2].id]},
    ]
    shown = (await client.get(f"/api/v1/releases/{data['releaseId']}")).json()["data"]
    assert shown["release"]["selection"] == {"selector": {"region": "eu"}}


@pytest.mark.parametrize("field", ["nodeIds", "nodeNames"])
async def test_create_release_by_ids_or_names(
    client: httpx.AsyncClient, store: MemoryStore, field: str
) -> None:
    nodes = await add_nodes(store, 3)
    chosen = [nodes[2], nodes[0]]
    values = [n.id if field == "nodeIds" else n.name for n in chosen]

    response = await client.post(
        "/api/v1/releases", json={"target": "cdn", "reason": "r", field: values}
    )

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["selection"] == {field: values}
    assert data["batches"] == [
        {"batch": 1, "nodeIds": [nodes[0].id]},
        {"batch": 2, "nodeIds": [nodes[2].id]},
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"nodeIds": [1], "selector": {"a": "b"}}, 400, 2002, "nodeIds, selector: give only one"),
        ({"nodeIds": []}, 400, 2002, "nodeIds: must be a non-empty list"),
        ({"nodeIds": ["1"]}, 400, 2002, "nodeIds: node ids are positive integers, got '1'"),
        ({"nodeIds": [True]}, 400, 2002, "nodeIds: node ids are positive integers"),
        ({"nodeNames": [""]}, 400, 2002, "nodeNames: node names are non-empty strings"),
        ({"selector": {}}, 400, 2002, "selector: must be a non-empty object"),
        ({"selector": {"a": 1}}, 400, 2002, "selector: label a: the value must be a string"),
        ({"nodeIds": [999]}, 400, 2002, "nodeIds: no such node(s): 999"),
        ({"nodeNames": ["edge-404"]}, 400, 2002, "nodeNames: no such node(s): edge-404"),
        ({"selector": {"region": "mars"}}, 409, 3003, "no online nodes matching selector"),
        ({"nodeNames": ["edge-002"]}, 409, 3003, "no online nodes: selected node(s) not"),
    ],
)
async def test_bad_or_empty_selection_is_refused_and_writes_nothing(
    client: httpx.AsyncClient,
    store: MemoryStore,
    body: dict[str, object],
    status: int,
    code: int,
    message: str,
) -> None:
    nodes = await add_nodes(store, 2)
    await store.update_node(nodes[1].id, enabled=False)

    response = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r", **body})

    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["message"].startswith(message)
    assert await store.list_releases() == ([], 0)


async def test_cli_nodes_label_sets_and_removes(
    served: Served,
    store: MemoryStore,
) -> None:
    [node] = await add_nodes(store, 1)
    await store.update_node(node.id, labels={"tier": "edge"})

    code, out, err = await served.run("nodes", "label", node.name, "region=eu", "pop=fra1", "tier-")

    assert (code, err) == (0, "")
    assert out == f"node {node.id} {node.name}: labels pop=fra1,region=eu\n"
    code, out, _ = await served.run("nodes", "list")
    assert out.splitlines()[1].split()[-1] == "pop=fra1,region=eu"


async def test_cli_nodes_label_of_an_unknown_node_fails(
    served: Served,
    store: MemoryStore,
) -> None:
    code, out, err = await served.run("nodes", "label", "edge-404", "region=eu")

    assert (code, out) == (2, "")
    assert err.startswith("fleetwave: no node named edge-404")


@pytest.mark.parametrize("change", ["region", "=eu", "region=", "-"])
def test_cli_nodes_label_bad_change_is_a_usage_error(
    change: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["nodes", "label", "edge-1", change])

    assert exit_info.value.code == 2
    assert "expected KEY=VALUE or KEY-" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "selection"),
    [
        (
            ["--selector", "region=eu,pop=fra1"],
            NodeSelection.by_selector({"region": "eu", "pop": "fra1"}),
        ),
        (
            ["--node", "edge-003", "--node", "edge-001"],
            NodeSelection.by_names(["edge-003", "edge-001"]),
        ),
        (["--node-id", "3"], NodeSelection.by_ids([3])),
    ],
)
async def test_cli_release_create_selects_nodes(
    served: Served,
    store: MemoryStore,
    flags: list[str],
    selection: NodeSelection,
) -> None:
    nodes = await add_nodes(store, 3)
    for node in nodes:
        await store.update_node(node.id, labels={"region": "eu", "pop": "fra1"})

    code, out, err = await served.run("release", "create", "--reason", "r", *flags)

    assert (code, err) == (0, ""), err
    assert "selected by" in out
    [release], _ = await store.list_releases()
    assert release.selection == selection


def test_cli_release_create_takes_one_kind_of_selection(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(
            ["release", "create", "--reason", "r", "--node", "a", "--selector", "a=b"]
        )

    assert "not allowed with argument" in capsys.readouterr().err
