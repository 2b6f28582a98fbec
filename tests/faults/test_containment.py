"""Containment with real processes: no agent, no node row and no database fault stops a
daemon or a release.

Agents and node rows (this part): hostile agents over real mutual TLS (deep-nested JSON,
5,000-digit integers, NaN, wrong types, an answer above 1 MiB, an answer dripped byte by
byte, a connection cut in the middle of an answer, a certificate from another CA) and node
rows another program wrote (empty, spaces, host:port, host names, brackets, zones, port 0
or 70,000, NULL), all in one release beside healthy nodes, run by a real ``fleetwave serve``
process: every node ends terminal with a reason, the healthy ones succeed, nothing is
dialled but the rows' own addresses, and the same process runs the next release.

Database faults (this part): a network between the owner and PostgreSQL that goes silent
(a TCP proxy that stops forwarding without closing anything): the owner's watchdog stops the
release before another daemon takes it over, and no node is dispatched after it was
recorded skipped; ``pg_cancel_backend`` storms (SQLSTATE 57014) and a switch of the database
to read-only (25006) while releases run: every release completes, every daemon lives on.
Sizes come from the environment (see the constants).
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import pytest
import trio

from fleetwave.agent.certs import CertPaths
from fleetwave.agent.client import MAX_ANSWER_BYTES
from fleetwave.agent.sim import Behaviour
from fleetwave.store.models import NodeStatus, ReleaseSpec, ReleaseStatus, task_id_for
from fleetwave.store.postgres import PostgresStore, open_loop_and_store
from tests.e2e.harness import FAST
from tests.faults.daemons import Daemon, daemon_env, open_daemons
from tests.faults.proxy import open_proxy
from tests.faults.soak import database_clock
from tests.faults.test_stalled_owner import wait_claimed_by
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


# --- database faults ------------------------------------------------------------------------

PROXY_AGENTS = int(os.environ.get("FLEETWAVE_FAULTS_PROXY_AGENTS", "10"))
"""Agents of the release whose owner is cut off (one canary, then the rest two at a time)."""
STORM_RELEASES = int(os.environ.get("FLEETWAVE_FAULTS_STORM_RELEASES", "6"))
STORM_AGENTS = int(os.environ.get("FLEETWAVE_FAULTS_STORM_AGENTS", "8"))
READ_ONLY_SWITCHES = int(os.environ.get("FLEETWAVE_FAULTS_READ_ONLY_SWITCHES", "2"))
READ_ONLY_SEC = 1.5
"""How long each read-only period lasts: shorter than a lease, longer than many writes."""
CUT_TTL = 3.0
OBSERVER = "faults-observer"
"""application_name of this test's own sessions, which the faults spare."""

CUT_SETTINGS: dict[str, object] = {
    **FAST,
    "FLEETWAVE_LEASE_TTL_SEC": CUT_TTL,
    "FLEETWAVE_STORE_TIMEOUT_SEC": 1,
}


def observed(database_url: str) -> str:
    return f"{database_url}?application_name={OBSERVER}"


def logged_at(entry: dict[str, object]) -> float:
    """A log line's timestamp (ISO, UTC) in epoch seconds, the clock of the database here."""
    return datetime.fromisoformat(str(entry["timestamp"])).timestamp()


def error_lines(daemons: list[Daemon]) -> list[dict[str, object]]:
    return [e for d in daemons for e in d.logs if e.get("level") in ("error", "critical")]


def mentions(daemons: list[Daemon], text: str) -> int:
    """Log lines of ``daemons`` whose error field contains ``text``."""
    return sum(text in str(e.get("error", "")) for d in daemons for e in d.logs)


async def test_an_owner_cut_off_by_a_silent_network_stops_before_another_takes_over(
    database_url: str, certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failing = PROXY_AGENTS - 3  # fails late, so that the nodes after it are skipped
    overrides = {failing: Behaviour(apply_time=(0.5, 0.5), fail="disk full")}
    async with (
        open_loop_and_store(observed(database_url), max_size=4) as store,
        open_world(store, certs) as world,
        open_proxy(database_url) as proxy,
        open_daemons(daemon_env(certs, database_url, **CUT_SETTINGS), tmp_path) as daemons,
    ):
        fleet = await world.serve_fleet(
            PROXY_AGENTS, overrides, behaviour=Behaviour(apply_time=(1.0, 2.0))
        )
        cut = await daemons.start("cut-a", FLEETWAVE_DATABASE_URL=proxy.url(database_url))
        created = await store.create_release(ReleaseSpec(reason="silent network", max_parallel=2))
        release_id = created.release.id
        await cut.wait_logged(
            lambda: (
                sum(
                    e.get("batch") == 2 and e.get("status") == "running"
                    for e in cut.events("node.transition")
                )
                >= 2
            )
        )

        proxy.freeze()  # nothing is forwarded any more; every socket stays open
        frozen_at = await database_clock(database_url)
        other = await daemons.start("other-b")
        claim = await wait_claimed_by(store, release_id, other.daemon_id, limit=CUT_TTL + 15)
        release = await world.wait_terminal(release_id, limit=60)
        await cut.wait_event("release.lease_unproven")

        [stopped] = cut.events("release.lease_unproven")
        stopped_at = logged_at(stopped)
        taken_over_at = claim.created_at.timestamp()
        nodes = await store.release_nodes(release_id)
        skipped = [n for n in nodes if n.status is NodeStatus.SKIPPED]
        dispatches = {
            n.main_ip: fleet.dispatch_count(n.main_ip, task_id_for(n.main_ip, release.version))
            for n in nodes
        }
        with capsys.disabled():
            print(
                f"\nsilent network: owner stopped {stopped_at - frozen_at:.2f} s after the"
                f" freeze, {taken_over_at - stopped_at:.2f} s before the takeover"
                f" ({taken_over_at - frozen_at:.2f} s after the freeze; TTL {CUT_TTL:g} s);"
                f" {len(skipped)} node(s) skipped, none dispatched;"
                f" {sum(dispatches.values())} dispatches for {len(nodes)} nodes"
            )

        assert stopped["release_id"] == release_id
        assert stopped_at < taken_over_at
        assert release.status is ReleaseStatus.FAILED
        assert release.error is not None and "disk full" in release.error
        assert skipped, "the failure came too late to skip anything"
        for node in skipped:
            assert dispatches[node.main_ip] == 0, node  # never dispatched, by either daemon
        assert max(dispatches.values()) == 1  # the cut-off owner and its successor never overlap
        await assert_release_invariants(store, release_id, fleet)
        assert cut.alive, cut.stderr()
        assert proxy.frozen


async def _wait_all_succeeded(
    store: PostgresStore, release_ids: list[int], limit: float
) -> list[ReleaseStatus]:
    with trio.fail_after(limit):
        while True:
            statuses = []
            for release_id in release_ids:
                release = await store.get_release(release_id)
                assert release is not None
                statuses.append(release.status)
            if all(status.terminal for status in statuses):
                return statuses
            await trio.sleep(0.2)


async def test_pg_cancel_backend_storms_during_releases_end_no_release_and_no_daemon(
    database_url: str, certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storm_sql = (
        "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        f" AND state = 'active' AND application_name <> '{OBSERVER}'"
    )
    async with (
        open_loop_and_store(observed(database_url), max_size=4) as store,
        open_loop_and_store(observed(database_url), max_size=1) as storm,
        open_world(store, certs) as world,
        open_daemons(daemon_env(certs, database_url, **FAST), tmp_path) as group,
    ):
        fleet = await world.serve_fleet(STORM_AGENTS, behaviour=Behaviour(apply_time=(0.5, 1.5)))
        daemons = [await group.start("storm-a"), await group.start("storm-b")]
        signals = 0
        release_ids = [
            (await store.create_release(ReleaseSpec(reason="storm", scope=f"lane-{k}"))).release.id
            for k in range(STORM_RELEASES)
        ]
        async with trio.open_nursery() as nursery:

            async def rage() -> None:
                nonlocal signals
                while True:
                    record = await storm._call(storm._fetchrow, storm_sql)
                    assert record is not None
                    signals += int(record[0])
                    await trio.sleep(0.002)

            nursery.start_soon(rage)
            statuses = await _wait_all_succeeded(store, release_ids, limit=120)
            nursery.cancel_scope.cancel()

        cancelled = mentions(daemons, "canceling statement due to user request")
        # A write cancelled at every try for a whole lease TTL abandons its release to the next
        # claim (logged as an error); it then completes all the same.
        abandoned = [e for e in error_lines(daemons) if e["event"] == "release.abandoned"]
        with capsys.disabled():
            print(
                f"\npg_cancel_backend storm: {signals} cancel signals sent to daemon sessions,"
                f" {cancelled} daemon statements cancelled (57014) and retried,"
                f" {len(abandoned)} release(s) abandoned to a later claim;"
                f" {statuses.count(ReleaseStatus.SUCCESS)} of {len(release_ids)} releases"
                " succeeded"
            )
        assert statuses == [ReleaseStatus.SUCCESS] * len(release_ids)
        assert cancelled > 0, "the storm cancelled no statement of a daemon"
        for release_id in release_ids:
            await assert_release_invariants(store, release_id, fleet)
        assert all(d.alive for d in daemons), [d.stderr() for d in daemons]
        assert [e for e in error_lines(daemons) if e not in abandoned] == []


async def test_a_database_switched_to_read_only_during_releases_ends_no_release(
    database_url: str, certs: CertPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = database_url.rsplit("/", 1)[1]
    # A session of its own that stays writable, to switch the database back.
    writable = f"{database_url}?options=-c%20default_transaction_read_only%3Doff"
    # Sessions keep the setting they started with: the daemons' are ended so that they
    # reconnect into the new one, as after a failover to a standby.
    reconnect = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        f" AND application_name NOT IN ('{OBSERVER}', 'psql')"
    )
    async with (
        open_loop_and_store(observed(database_url), max_size=4) as store,
        open_world(store, certs) as world,
        open_daemons(daemon_env(certs, database_url, **FAST), tmp_path) as group,
    ):
        fleet = await world.serve_fleet(STORM_AGENTS, behaviour=Behaviour(apply_time=(1.0, 2.0)))
        daemons = [await group.start("ro-a"), await group.start("ro-b")]
        release_ids = [
            (
                await store.create_release(ReleaseSpec(reason="read-only", scope=f"ro-{k}"))
            ).release.id
            for k in range(STORM_RELEASES)
        ]
        ended = 0
        for _ in range(READ_ONLY_SWITCHES):
            await trio.sleep(1.0)
            await run_sql(
                database_url, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
            )
            ended += int(await run_sql(database_url, reconnect))
            await trio.sleep(READ_ONLY_SEC)
            await run_sql(
                writable, f'ALTER DATABASE "{database}" RESET default_transaction_read_only'
            )
            ended += int(await run_sql(database_url, reconnect))
        statuses = await _wait_all_succeeded(store, release_ids, limit=120)

        refused = mentions(daemons, "read-only transaction")
        with capsys.disabled():
            print(
                f"\nread-only switch: {READ_ONLY_SWITCHES} x {READ_ONLY_SEC:g} s read-only,"
                f" {ended} daemon sessions ended to reconnect, {refused} writes refused"
                f" (25006) and retried; {statuses.count(ReleaseStatus.SUCCESS)} of"
                f" {len(release_ids)} releases succeeded"
            )
        assert statuses == [ReleaseStatus.SUCCESS] * len(release_ids)
        assert refused > 0, "no write of a daemon met the read-only database"
        for release_id in release_ids:
            await assert_release_invariants(store, release_id, fleet)
        assert all(d.alive for d in daemons), [d.stderr() for d in daemons]
        assert error_lines(daemons) == []
