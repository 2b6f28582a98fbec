"""The original system's acceptance (14 SQL and 10 curl checks), with real processes:
``fleetwave serve`` and ``fleetwave agent-sim`` over mutual TLS, the API over HTTP, the
database read with SQL by another program (psql).

Nodes are registered by ``agent-sim --register`` in agent order, so node ids follow the
agents: the first agent's node is the canary (alone in batch 1) of every release.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.conftest import Sql
from tests.e2e.harness import Daemon, Harness

pytestmark = pytest.mark.postgres

RELEASES = "/api/v1/releases"
TERMINAL = {"success", "failed", "cancelled"}


@asynccontextmanager
async def api(daemon: Daemon, token: str | None) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=daemon.api, headers=headers, timeout=10) as http:
        yield http


def data(response: httpx.Response) -> Any:
    document = response.json()
    assert response.status_code == 200 and document["code"] == 0, document
    return document["data"]


async def create_release(http: httpx.AsyncClient, **spec: object) -> Any:
    return data(await http.post(RELEASES, json={"target": "cdn", "reason": "e2e", **spec}))


async def follow(http: httpx.AsyncClient, release_id: int, limit: float = 30) -> list[str]:
    """The release statuses seen by polling the API, in order, until it is terminal."""
    seen: list[str] = []
    with trio.fail_after(limit):
        while not seen or seen[-1] not in TERMINAL:
            status = data(await http.get(f"{RELEASES}/{release_id}"))["release"]["status"]
            if not seen or seen[-1] != status:
                seen.append(status)
            await trio.sleep(0.05)
    return seen


def rows(text: str) -> list[list[str]]:
    return [line.split("|") for line in text.splitlines()]


async def test_a_release_over_three_online_nodes_runs_the_canary_then_the_rest_to_success(
    harness: Harness, sql: Sql
) -> None:
    await harness.agent_sim(3)
    # An API-only daemon first: the release is seen pending until an executor starts.
    front = await harness.serve("api-only", RELEASE_EXECUTOR_ENABLED="0")
    token = await harness.token()
    node_ids = [int(n) for n in (await sql("SELECT id FROM nodes ORDER BY id")).split()]
    assert len(node_ids) == 3
    async with api(front, token) as http:
        created = await create_release(http)
        release_id = created["releaseId"]
        assert created["totalNodes"] == 3
        assert created["batches"] == [
            {"batch": 1, "nodeIds": node_ids[:1]},
            {"batch": 2, "nodeIds": node_ids[1:]},
        ]
        by_batch = await sql(
            "SELECT batch, count(*) FROM release_task_nodes"
            f" WHERE release_task_id = {release_id} GROUP BY batch ORDER BY batch"
        )
        assert rows(by_batch) == [["1", "1"], ["2", "2"]]

        await trio.sleep(1.0)  # two claim intervals of a daemon that would claim
        detail = data(await http.get(f"{RELEASES}/{release_id}"))
        assert detail["release"]["status"] == "pending"
        assert {n["status"] for b in detail["batches"] for n in b["nodes"]} == {"pending"}
        assert await sql(f"SELECT status FROM release_tasks WHERE id = {release_id}") == "pending"

        await harness.serve("executor")
        seen = await follow(http, release_id)
        assert seen in (["running", "success"], ["pending", "running", "success"]), seen
        listed = data(await http.get(RELEASES))["items"]
    assert [(i["id"], i["successNodes"], i["failedNodes"], i["currentBatch"]) for i in listed] == [
        (release_id, 3, 0, 0)
    ]

    release = await sql(
        "SELECT status, total_nodes, success_nodes, failed_nodes,"
        " (SELECT count(*) FROM release_task_nodes"
        f"  WHERE release_task_id = {release_id} AND status = 'success')"
        f" FROM release_tasks WHERE id = {release_id}"
    )
    assert rows(release) == [["success", "3", "3", "0", "3"]]
    transitions = await sql(
        "SELECT string_agg(to_status, ',' ORDER BY id) FROM release_events"
        f" WHERE release_task_id = {release_id} AND node_id IS NULL"
    )
    assert transitions == "pending,running,success"
    node_transitions = await sql(
        "SELECT node_id, string_agg(coalesce(from_status, '') || '>' || to_status, ','"
        " ORDER BY id) FROM release_events"
        f" WHERE release_task_id = {release_id} AND node_id IS NOT NULL"
        " GROUP BY node_id ORDER BY node_id"
    )
    assert rows(node_transitions) == [
        [str(node), "pending>running,running>success"] for node in node_ids
    ]
    # Batch 2 started only once batch 1 had ended.
    ordered = await sql(
        "SELECT (SELECT max(finished_at) FROM release_task_nodes"
        f"        WHERE release_task_id = {release_id} AND batch = 1)"
        "    <= (SELECT min(started_at) FROM release_task_nodes"
        f"        WHERE release_task_id = {release_id} AND batch = 2)"
    )
    assert ordered == "t"


async def test_a_failing_canary_fails_the_release_and_batch_two_is_skipped(
    harness: Harness, sql: Sql
) -> None:
    await harness.agent_sim(3, fail=[1])
    daemon = await harness.serve("executor")
    token = await harness.token()
    async with api(daemon, token) as http:
        release_id = (await create_release(http))["releaseId"]
        seen = await follow(http, release_id)
        detail = data(await http.get(f"{RELEASES}/{release_id}"))
    assert seen[-1] == "failed", seen
    summary = detail["release"]
    assert (summary["successNodes"], summary["failedNodes"], summary["skippedNodes"]) == (0, 1, 2)
    assert "reported failure: 'simulated failure'" in summary["error"]
    [canary] = detail["batches"][0]["nodes"]
    assert canary["status"] == "failed"
    assert "reported failure: 'simulated failure'" in canary["errorMsg"]
    assert [n["status"] for n in detail["batches"][1]["nodes"]] == ["skipped", "skipped"]

    release = await sql(
        "SELECT status, success_nodes, failed_nodes,"
        " (SELECT count(*) FROM release_task_nodes"
        f"  WHERE release_task_id = {release_id} AND status = 'failed')"
        f" FROM release_tasks WHERE id = {release_id}"
    )
    assert rows(release) == [["failed", "0", "1", "1"]]
    nodes = await sql(
        "SELECT batch, status, task_id IS NULL, started_at IS NULL, error_msg LIKE '%simulated%'"
        f" FROM release_task_nodes WHERE release_task_id = {release_id} ORDER BY batch, id"
    )
    # Batch 2 was never dispatched: no task id, never started.
    assert rows(nodes) == [
        ["1", "failed", "f", "f", "t"],
        ["2", "skipped", "t", "t", ""],
        ["2", "skipped", "t", "t", ""],
    ]
    skipped_events = await sql(
        "SELECT DISTINCT from_status || '>' || to_status FROM release_events"
        f" WHERE release_task_id = {release_id} AND batch = 2"
    )
    assert skipped_events == "pending>skipped"
    transitions = await sql(
        "SELECT string_agg(to_status, ',' ORDER BY id) FROM release_events"
        f" WHERE release_task_id = {release_id} AND node_id IS NULL"
    )
    assert transitions == "pending,running,failed"


async def test_the_api_answers_404_for_an_unknown_release_and_401_without_a_valid_token(
    harness: Harness,
) -> None:
    daemon = await harness.serve("api")
    token = await harness.token()
    async with api(daemon, token) as http:
        unknown = await http.get(f"{RELEASES}/999")
        no_nodes = await http.post(RELEASES, json={"target": "cdn", "reason": "e2e"})
        listed = await http.get(RELEASES)
    async with api(daemon, None) as http:
        missing = await http.get(RELEASES)
    async with api(daemon, "fw_not-a-token") as http:
        wrong = await http.get(RELEASES)

    assert (unknown.status_code, unknown.json()["code"]) == (404, 3001)
    assert (missing.status_code, missing.json()["code"]) == (401, 1001)
    assert (wrong.status_code, wrong.json()["code"]) == (401, 1002)
    assert (no_nodes.status_code, no_nodes.json()["code"]) == (409, 3003)
    assert no_nodes.json()["message"] == "no online nodes"
    assert data(listed) == {"items": [], "total": 0, "page": 1, "pageSize": 20}


async def test_two_daemons_on_one_database_run_every_release_exactly_once(
    harness: Harness, sql: Sql
) -> None:
    await harness.agent_sim(4, apply_time="0.2..0.5")
    first = await harness.serve("daemon-a")
    second = await harness.serve("daemon-b")
    token = await harness.token()
    count = 6
    async with api(first, token) as http:
        # Each release in a scope of its own, so both daemons may claim at once.
        ids = [(await create_release(http, scope=f"edge-{i}"))["releaseId"] for i in range(count)]
        with trio.fail_after(40):
            while True:
                items = data(await http.get(RELEASES))["items"]
                if len(items) == count and all(i["status"] in TERMINAL for i in items):
                    break
                await trio.sleep(0.1)
    assert {i["status"] for i in items} == {"success"}

    claimed = [e["release_id"] for d in (first, second) for e in d.events("release.claimed")]
    assert sorted(claimed) == sorted(ids)
    leases = await sql(
        "SELECT r.id, r.lease_epoch, count(e.id),"
        " bool_and(e.daemon_id IN ('daemon-a', 'daemon-b'))"
        " FROM release_tasks r JOIN release_events e"
        "   ON e.release_task_id = r.id AND e.node_id IS NULL AND e.to_status = 'running'"
        " GROUP BY r.id ORDER BY r.id"
    )
    assert rows(leases) == [[str(i), "1", "1", "t"] for i in ids]
    tasks = await sql(
        "SELECT count(*), count(DISTINCT (n.release_task_id, n.task_id)),"
        " count(*) FILTER (WHERE n.task_id = 'apply_config_' || d.main_ip || '_' || r.version)"
        " FROM release_task_nodes n JOIN nodes d ON d.id = n.node_id"
        " JOIN release_tasks r ON r.id = n.release_task_id"
    )
    assert rows(tasks) == [[str(count * 4)] * 3]
    dispatched_twice = await sql(
        "SELECT count(*) FROM (SELECT 1 FROM release_events WHERE to_status = 'running'"
        " AND node_id IS NOT NULL GROUP BY release_task_id, node_id HAVING count(*) > 1) x"
    )
    assert dispatched_twice == "0"
    assert await second.stop() == 0
    assert await first.stop() == 0


async def test_an_agent_that_never_answers_fails_its_node_after_the_deadline(
    harness: Harness, sql: Sql
) -> None:
    await harness.agent_sim(3, hang=[3])
    daemon = await harness.serve(
        "executor", FLEETWAVE_NODE_DEADLINE_SEC="3", FLEETWAVE_AGENT_REQUEST_TIMEOUT_SEC="1"
    )
    token = await harness.token()
    async with api(daemon, token) as http:
        release_id = (await create_release(http))["releaseId"]
        seen = await follow(http, release_id)
    assert seen[-1] == "failed", seen

    nodes = await sql(
        "SELECT d.main_ip, n.status, n.error_msg FROM release_task_nodes n"
        f" JOIN nodes d ON d.id = n.node_id WHERE n.release_task_id = {release_id}"
        " ORDER BY n.id"
    )
    (ip1, status1, _), (ip2, status2, _), (ip3, status3, error) = rows(nodes)
    assert (ip1, status1, ip2, status2, ip3, status3) == (
        "127.0.0.2",
        "success",
        "127.0.0.3",
        "success",
        "127.0.0.4",
        "failed",
    )
    assert error.startswith("no result from agent 127.0.0.4:"), error
    assert "within 3s" in error and "did not answer within 1s" in error, error
    counters = await sql(
        f"SELECT success_nodes, failed_nodes FROM release_tasks WHERE id = {release_id}"
    )
    assert rows(counters) == [["2", "1"]]
