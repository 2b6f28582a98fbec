"""What an operator reaches for at the command line: nodes show|enable|disable|maintenance,
nodes add without overwriting, release events, and what a pending release waits for."""

from __future__ import annotations

import json

from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import NodeHealth, ReleaseSpec, ReleaseStatus
from tests.api.conftest import Served, add_nodes
from tests.api.test_api_cli import finish


async def test_nodes_disable_enable_and_maintenance_change_each_named_node(
    served: Served, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 3)

    disabled = await served.run("nodes", "disable", "edge-001", "edge-003")
    after_disable = await store.list_nodes()
    maintenance = await served.run("nodes", "maintenance", "edge-002")
    after_maintenance = await store.get_node(nodes[1].id)
    enabled = await served.run("nodes", "enable", "edge-001", "edge-002", "edge-003")

    assert disabled == (
        0,
        f"node {nodes[0].id} edge-001: disabled, online\n"
        f"node {nodes[2].id} edge-003: disabled, online\n",
        "",
    )
    assert [node.enabled for node in after_disable] == [False, True, False]
    assert maintenance == (0, f"node {nodes[1].id} edge-002: enabled, maintenance\n", "")
    assert after_maintenance is not None and after_maintenance.status is NodeHealth.MAINTENANCE
    assert enabled[0] == 0
    assert [(node.enabled, node.status) for node in await store.list_nodes()] == [
        (True, NodeHealth.ONLINE)
    ] * 3


async def test_nodes_enable_leaves_an_offline_node_offline(
    served: Served, store: MemoryStore
) -> None:
    [node] = await add_nodes(store, 1, online=False)
    await store.update_node(node.id, enabled=False)

    code, out, _ = await served.run("nodes", "enable", "edge-001", "--json")

    assert code == 0
    assert [(item["enabled"], item["status"]) for item in json.loads(out)["items"]] == [
        (True, "offline")
    ]


async def test_nodes_disable_with_an_unknown_name_changes_nothing_and_exits_2(
    served: Served, store: MemoryStore
) -> None:
    before = await add_nodes(store, 2)

    code, out, err = await served.run("nodes", "disable", "edge-001", "edge-404", "edge-405")

    assert (code, out) == (2, "")
    assert err == (
        "fleetwave: no node named edge-404, edge-405 (fleetwave nodes list shows them);"
        " nothing changed\n"
    )
    assert await store.list_nodes() == before


async def test_nodes_take_ids_too_and_each_node_once(served: Served, store: MemoryStore) -> None:
    nodes = await add_nodes(store, 2)

    code, out, _ = await served.run("nodes", "disable", str(nodes[1].id), "edge-002")

    assert code == 0
    assert out == f"node {nodes[1].id} edge-002: disabled, online\n"


async def test_nodes_show_has_the_node_and_its_latest_releases(
    served: Served, store: MemoryStore
) -> None:
    nodes = await add_nodes(store, 2)
    failed = (await store.create_release(ReleaseSpec())).release
    await finish(store, ReleaseStatus.FAILED)
    pending = (await store.create_release(ReleaseSpec())).release

    code, out, _ = await served.run("nodes", "show", "edge-002")
    json_code, json_out, _ = await served.run("nodes", "show", "edge-002", "--json")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"node {nodes[1].id} edge-002 at 127.0.0.3:8443  status online")
    assert lines[1] == "expects nothing: no successful release included it"
    assert lines[2] == "latest releases:"
    assert lines[3].split() == [
        "RELEASE", "VERSION", "BATCH", "STATUS", "STARTED", "FINISHED", "ERROR",
    ]  # fmt: skip
    assert [line.split()[:4] for line in lines[4:]] == [
        [str(pending.id), "2", "2", "pending"],
        [str(failed.id), "1", "2", "skipped"],
    ]
    data = json.loads(json_out)
    assert json_code == 0
    assert (data["id"], len(data["releases"])) == (nodes[1].id, 2)


async def test_nodes_show_of_a_node_in_no_release(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 1)

    code, out, _ = await served.run("nodes", "show", "edge-001")

    assert code == 0
    assert out.splitlines()[1:] == [
        "expects nothing: no successful release included it",
        "in no release yet",
    ]


async def test_nodes_show_unknown_exits_2(served: Served, store: MemoryStore) -> None:
    code, _, err = await served.run("nodes", "show", "edge-404")

    assert code == 2
    assert err == "fleetwave: no node named edge-404 (fleetwave nodes list shows them)\n"


async def test_nodes_add_refuses_to_overwrite_an_existing_node(
    served: Served, store: MemoryStore
) -> None:
    before = await add_nodes(store, 1)

    code, out, err = await served.run("nodes", "add", "edge-001", "10.9.9.9")

    assert (code, out) == (1, "")
    assert err == (
        "fleetwave: node 'edge-001' already exists (code 3002); nothing changed"
        " (--update replaces it)\n"
    )
    assert await store.list_nodes() == before


async def test_nodes_add_update_replaces_the_address(served: Served, store: MemoryStore) -> None:
    [node] = await add_nodes(store, 1)

    code, out, _ = await served.run("nodes", "add", "edge-001", "10.9.9.9", "--update")

    assert code == 0
    assert out == f"node {node.id} edge-001 at 10.9.9.9:8443 (online, enabled)\n"
    assert [n.main_ip for n in await store.list_nodes()] == ["10.9.9.9"]


async def test_release_events_lists_every_transition_oldest_first(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    release = (await store.create_release(ReleaseSpec(reason="why"))).release
    await finish(store, ReleaseStatus.SUCCESS)
    stored = await store.release_events(release.id)

    code, out, _ = await served.run("release", "events", str(release.id))
    json_code, json_out, _ = await served.run("release", "events", str(release.id), "--json")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["EVENT", "TIME", "BATCH", "NODE", "TRANSITION", "MESSAGE"]
    assert [int(line.split()[0]) for line in lines[1:]] == [event.id for event in stored]
    assert "- -> pending" in lines[1] and "created" in lines[1]
    assert "running -> success" in lines[-1]
    assert json_code == 0
    assert [item["id"] for item in json.loads(json_out)["items"]] == [e.id for e in stored]


async def test_release_events_pages_through_more_than_one_page(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 1100)
    release = (await store.create_release(ReleaseSpec())).release
    await finish(store, ReleaseStatus.SUCCESS)
    stored = await store.release_events(release.id, limit=10_000)

    code, out, _ = await served.run("release", "events", str(release.id), "--json")

    assert code == 0 and len(stored) > 1000
    assert [item["id"] for item in json.loads(out)["items"]] == [e.id for e in stored]


async def test_release_events_of_an_unknown_release(served: Served) -> None:
    code, _, err = await served.run("release", "events", "999")

    assert code == 1
    assert err == "fleetwave: release 999 not found (code 3001)\n"


async def test_release_show_says_what_a_pending_release_waits_for(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    first = (await store.create_release(ReleaseSpec(scope="eu"))).release
    second = (await store.create_release(ReleaseSpec(scope="eu"))).release
    await store.claim("daemon-a", 5, 30)

    code, out, _ = await served.run("release", "show", str(second.id))
    _, running, _ = await served.run("release", "show", str(first.id))

    assert code == 0
    assert f"waiting: behind release {first.id} (running) on nodes edge-001, edge-002\n" in out
    assert "waiting:" not in running
