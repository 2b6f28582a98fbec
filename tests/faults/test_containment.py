"""Containment with real processes: no agent and no node row stops a daemon or a release.

Agents and node rows (this part): hostile agents over real mutual TLS (deep-nested JSON,
5,000-digit integers, NaN, wrong types, an answer above 1 MiB, an answer dripped byte by
byte, a connection cut in the middle of an answer, a certificate from another CA) and node
rows another program wrote (empty, spaces, host:port, host names, brackets, zones, port 0
or 70,000, NULL), all in one release beside healthy nodes, run by a real ``fleetwave serve``
process: every node ends terminal with a reason, the healthy ones succeed, nothing is
dialled but the rows' own addresses, and the same process runs the next release.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.client import MAX_ANSWER_BYTES
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus
from fleetwave.store.postgres import open_loop_and_store
from tests.e2e.harness import FAST
from tests.faults.daemons import daemon_env, open_daemons
from tests.hostile import HOSTILE_ADDRESSES, hostile_row
from tests.integration.conftest import run_sql
from tests.invariants import assert_release_invariants
from tests.world import open_world

pytestmark = pytest.mark.postgres

# --- hostile agents and node rows -----------------------------------------------------------

AGENT_TIMEOUT = 1.0
AGENT_DEADLINE = 8.0
AGENT_SETTINGS: dict[str, object] = {
    **FAST,
    "FLEETWAVE_AGENT_REQUEST_TIMEOUT_SEC": AGENT_TIMEOUT,
    "FLEETWAVE_AGENT_CONNECT_TIMEOUT_SEC": AGENT_TIMEOUT,
    "FLEETWAVE_NODE_DEADLINE_SEC": AGENT_DEADLINE,
}

HOSTILE_AGENTS: dict[str, tuple[Behaviour, str]] = {
    "deep-nesting": (Behaviour(body=b"[" * 200_000), "sent invalid JSON"),
    "5000-digit-int": (
        Behaviour(body=b'{"code": ' + b"9" * 5000 + b', "message": "ok", "data": null}'),
        "a number of more than 4300 digits",
    ),
    "nan": (Behaviour(body=b'{"code": NaN, "message": "ok", "data": null}'), "NaN is not"),
    "wrong-types": (
        Behaviour(body=b'{"code": 0, "message": "ok", "data": {"taskId": 7, "status": [1]}}'),
        "taskId must be non-empty text, got 7",
    ),
    "huge-body": (
        Behaviour(body=b" " * (MAX_ANSWER_BYTES + 1)),
        f"answer larger than {MAX_ANSWER_BYTES} bytes",
    ),
    "dripping-body": (Behaviour(drip=0.05), f"did not answer within {AGENT_TIMEOUT:g}s"),
    "reset-mid-answer": (Behaviour(reset=True), "connection lost in the middle of its answer"),
}
FOREIGN_CA_WORDS = "certificate verify failed"


def _sql_text(value: str | None) -> str:
    return "NULL" if value is None else "$q$" + value + "$q$"


async def test_hostile_agents_and_rows_fail_only_their_nodes_and_the_daemon_runs_on(
    database_url: str, certs: CertPaths, foreign_certs: CertPaths, tmp_path: Path
) -> None:
    async with (
        open_loop_and_store(database_url, max_size=4) as store,
        open_world(store, certs) as world,
        open_daemons(daemon_env(certs, database_url, **AGENT_SETTINGS), tmp_path) as daemons,
    ):
        healthy = await world.serve_fleet(3, first_host="127.0.0.2", prefix="healthy")
        names = list(HOSTILE_AGENTS)
        hostile = await world.serve_fleet(
            len(names),
            {k: HOSTILE_AGENTS[name][0] for k, name in enumerate(names, start=1)},
            first_host="127.0.0.10",
            prefix="agent",
        )
        await world.serve_fleet(
            1, first_host="127.0.0.20", certs_dir=foreign_certs.directory, prefix="foreign-ca"
        )
        # A live agent no valid row names: every hostile row is "almost" its address.
        spare = await world.serve_fleet(1, first_host="127.0.0.30", prefix="spare")
        near = spare.hosts[0]
        # Another program's schema (the original's table had no such checks) and rows.
        await run_sql(
            database_url,
            "ALTER TABLE nodes ALTER COLUMN main_ip DROP NOT NULL,"
            " ALTER COLUMN agent_port DROP NOT NULL,"
            " DROP CONSTRAINT IF EXISTS nodes_agent_port_check;"
            f" UPDATE nodes SET enabled = false WHERE main_ip = '{near}';"
            " INSERT INTO nodes (name, main_ip, agent_port) VALUES "
            # A valid IPv6 row: dialled at its own address (nothing listens there).
            f"('row-ipv6', '::1', {spare.address(1).port}), "
            + ", ".join(
                f"('row-{name}', {_sql_text(main_ip)}, {'NULL' if port is None else port})"
                for name in HOSTILE_ADDRESSES
                for main_ip, port, _ in [hostile_row(name, near)]
            ),
        )
        daemon = await daemons.start("contain-agents")
        hostile_count = len(names) + 1 + len(HOSTILE_ADDRESSES) + 1
        created = await store.create_release(
            ReleaseSpec(reason="hostile inputs", plan=("100%",), max_failures=hostile_count)
        )

        release = await world.wait_terminal(created.release.id, limit=AGENT_DEADLINE + 40)

        nodes = {node.node_name: node for node in await store.release_nodes(release.id)}
        assert len(nodes) == 3 + hostile_count
        assert all(node.status.terminal for node in nodes.values())
        for k in (1, 2, 3):
            assert nodes[f"healthy-{k:03d}"].status is NodeStatus.SUCCESS
        for k, name in enumerate(names, start=1):
            node = nodes[f"agent-{k:03d}"]
            assert node.status is NodeStatus.FAILED, (name, node)
            assert HOSTILE_AGENTS[name][1] in (node.error_msg or ""), (name, node.error_msg)
        assert FOREIGN_CA_WORDS in (nodes["foreign-ca-001"].error_msg or "")
        for name in HOSTILE_ADDRESSES:
            node = nodes[f"row-{name}"]
            assert node.status is NodeStatus.FAILED, (name, node)
            assert (node.error_msg or "").startswith("invalid agent address: "), node
            assert HOSTILE_ADDRESSES[name][2] in (node.error_msg or ""), (name, node.error_msg)
            assert (node.attempts, node.task_id) == (0, None)
        ipv6 = nodes["row-ipv6"]
        assert ipv6.status is NodeStatus.FAILED
        assert f"agent [::1]:{spare.address(1).port} unreachable" in (ipv6.error_msg or ""), ipv6
        assert spare.requests == 0 and spare.task_ids(near) == set()
        assert release.status is ReleaseStatus.SUCCESS, release.error
        assert (release.success_nodes, release.failed_nodes) == (3, hostile_count)
        await assert_release_invariants(store, release.id, healthy)
        await assert_release_invariants(store, release.id, hostile)

        # The same process, still alive, runs the next release on the healthy nodes.
        assert daemon.alive, daemon.stderr()
        await run_sql(database_url, "UPDATE nodes SET enabled = name LIKE 'healthy-%'")
        following = await store.create_release(ReleaseSpec(reason="after the hostile inputs"))
        after = await world.wait_terminal(following.release.id, limit=30)
        assert after.status is ReleaseStatus.SUCCESS, after.error
        assert daemon.alive, daemon.stderr()
        assert len(daemon.events("release.claimed")) == 2
        assert daemon.events("release.crashed") == []
        errors = [e for e in daemon.logs if e.get("level") in ("error", "critical")]
        assert errors == [], errors
        assert not [e for e in daemon.logs if e.get("event") == "<not json>"]
