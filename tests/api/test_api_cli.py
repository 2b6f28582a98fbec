"""The client commands of ``fleetwave`` against the API served on loopback."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import os
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
import structlog.testing
import trio

from fleetwave import cli
from fleetwave.api import commands
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.client import ApiClient, ApiUnreachable, open_http
from fleetwave.api.server import serve_api
from fleetwave.config import load_settings
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import (
    TOKEN_LOOKUP_CHARS,
    NodeChange,
    NodeStatus,
    Outcome,
    ReleaseSpec,
    ReleaseStatus,
    Role,
)
from tests.api.conftest import Served, add_nodes

FLEETWAVE = Path(sys.executable).with_name("fleetwave")


async def finish(store: MemoryStore, outcome: ReleaseStatus) -> None:
    """Drive the oldest pending release to ``outcome`` the way an executor would."""
    [claim] = await store.claim("daemon-a", 1, 30)
    nodes = await store.release_nodes(claim.release.id)
    status = NodeStatus.SUCCESS if outcome is ReleaseStatus.SUCCESS else NodeStatus.FAILED
    changes = [NodeChange(node.id, status, started=True, finished=True) for node in nodes[:1]]
    if outcome is ReleaseStatus.SUCCESS:
        changes += [
            NodeChange(node.id, NodeStatus.SUCCESS, started=True, finished=True)
            for node in nodes[1:]
        ]
    await store.record(claim.lease, changes, Outcome(outcome))


async def test_release_create_prints_the_release_and_its_batches(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 5)

    code, out, err = await served.run(
        "release", "create", "--reason", "v7", "--plan", "1,50%", "--max-parallel", "2",
        "--max-failures", "1", "--scope", "eu",
    )  # fmt: skip

    assert (code, err) == (0, "")
    assert out == "release 6 (version 1) created over 5 nodes; batch 1: 1, batch 2: 2, batch 3: 2\n"
    release = await store.get_release(6)
    assert release is not None
    assert (release.plan, release.max_parallel, release.max_failures, release.scope) == (
        (1, "50%"),
        2,
        1,
        "eu",
    )


async def test_release_create_json_is_the_api_data(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 1)

    code, out, _ = await served.run("release", "create", "--reason", "r", "--json")

    assert code == 0
    assert json.loads(out) == {
        "releaseId": 2,
        "version": 1,
        "totalNodes": 1,
        "batches": [{"batch": 1, "nodeIds": [1]}],
        "selection": None,
        "defaultScope": None,
    }


async def test_release_create_refused_prints_message_and_code(
    served: Served, store: MemoryStore
) -> None:
    code, out, err = await served.run("release", "create", "--reason", "r")

    assert (code, out) == (1, "")
    assert err == "fleetwave: no online nodes (code 3003)\n"


async def test_release_create_bad_plan_names_the_step(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 1)

    code, _, err = await served.run("release", "create", "--reason", "r", "--plan", "1,250%")

    # Checked before anything is sent, as the API checks it: exit 2, naming the step.
    assert code == 2
    assert err == "fleetwave: plan[1]: must be above 0% and at most 100%; nothing was created\n"
    assert await store.list_releases() == ([], 0)


async def test_release_list_is_a_table(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 3)
    await store.create_release(ReleaseSpec(reason="one"))
    await store.create_release(ReleaseSpec(reason="two"))

    code, out, _ = await served.run("release", "list")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "VERSION", "STATUS", "TARGET", "SCOPE", "DONE", "FAILED", "SKIPPED", "BATCH",
        "CREATED",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["8", "2", "pending", "cdn", "-", "0/3"]
    assert lines[-1] == "page 1 of 1, 2 releases"


async def test_release_list_json_passes_status_and_paging(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    for _ in range(3):
        await store.create_release(ReleaseSpec())

    code, out, _ = await served.run(
        "release", "list", "--status", "pending", "--page", "2", "--page-size", "2", "--json"
    )

    data = json.loads(out)
    assert code == 0
    assert (data["total"], data["page"], data["pageSize"], len(data["items"])) == (3, 2, 2, 1)


async def test_release_show_lists_nodes_by_batch(served: Served, store: MemoryStore) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec(reason="why"))

    code, out, _ = await served.run("release", "show", str(created.release.id))

    assert code == 0
    assert out.startswith(f"release {created.release.id}  version 1  status pending\n")
    assert "reason: why" in out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["1"], ["2"])]
    assert [(row[0], row[2], row[3]) for row in rows] == [
        ("1", "edge-001", "pending"),
        ("2", "edge-002", "pending"),
        ("2", "edge-003", "pending"),
    ]


async def test_release_show_unknown_id_prints_the_envelope_message(served: Served) -> None:
    code, _, err = await served.run("release", "show", "999")

    assert code == 1
    assert err == "fleetwave: release 999 not found (code 3001)\n"


async def test_nodes_add_then_list(served: Served, store: MemoryStore) -> None:
    code, out, _ = await served.run("nodes", "add", "edge-7", "10.1.2.3", "--port", "9443")
    assert code == 0
    assert out == "node 1 edge-7 at 10.1.2.3:9443 (online, enabled)\n"

    code, out, _ = await served.run("nodes", "list")

    assert code == 0
    row = ["1", "edge-7", "10.1.2.3", "9443", "yes", "online", "-", "-", "-", "-"]
    assert out.splitlines()[1].split() == row
    code, out, _ = await served.run("nodes", "list", "--json")
    assert json.loads(out)["items"][0]["mainIp"] == "10.1.2.3"


async def test_nodes_add_without_a_port_leaves_it_to_the_daemon(
    store: MemoryStore, token: str
) -> None:
    # A daemon whose agent_port setting is 9443: the CLI must not send a port of its own.
    app = create_app(store, default_agent_port=9443)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        code, out, _ = await Served(f"http://{address}", token).run(
            "nodes", "add", "edge-8", "10.1.2.4"
        )
        nursery.cancel_scope.cancel()

    assert code == 0
    assert out == "node 1 edge-8 at 10.1.2.4:9443 (online, enabled)\n"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["10.1.2"], "argument IP: address '10.1.2' is not an IPv4 or IPv6 address"),
        ([" 10.1.2.3"], "argument IP: address ' 10.1.2.3' has spaces in it"),
        (["10.1.2.3:8443"], "is not an IPv4 or IPv6 address (brackets or a port?"),
        (["edge.example"], "(a host name? names are not resolved)"),
        (["10.1.2.3", "--port", "0"], "argument --port: port must be from 1 to 65535, got 0"),
        (["10.1.2.3", "--port", "70000"], "port must be from 1 to 65535, got 70000"),
    ],
)
async def test_nodes_add_bad_address_exits_2_before_any_request(
    served: Served, argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        await served.run("nodes", "add", "edge-7", *argv)

    assert exited.value.code == 2
    assert words in capsys.readouterr().err
    code, out, _ = await served.run("nodes", "list", "--json")
    assert (code, json.loads(out)["total"]) == (0, 0)


class _Screen(io.StringIO):
    """Captured output that tells when something was first shown."""

    def __init__(self) -> None:
        super().__init__()
        self.shown = trio.Event()

    def write(self, text: str) -> int:
        self.shown.set()
        return super().write(text)


async def _watch(
    served: Served, release_id: int, out: io.StringIO, result: list[int], *, as_json: bool = False
) -> None:
    async with open_http(served.url, served.token) as http:
        result.append(
            await commands.watch(ApiClient(http), release_id, out, io.StringIO(), as_json=as_json)
        )


@pytest.mark.parametrize(
    ("outcome", "exit_code"), [(ReleaseStatus.SUCCESS, 0), (ReleaseStatus.FAILED, 1)]
)
async def test_watch_prints_each_event_as_a_line_and_a_summary_at_the_end(
    served: Served, store: MemoryStore, outcome: ReleaseStatus, exit_code: int
) -> None:
    await add_nodes(store, 3)
    created = await store.create_release(ReleaseSpec())
    release_id = created.release.id
    out = _Screen()
    result: list[int] = []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, served, release_id, out, result)
            await out.shown.wait()
            await finish(store, outcome)

    assert result == [exit_code]
    lines = out.getvalue().splitlines()
    assert f"release {release_id}: - -> pending: created" in lines[0]
    assert f"release {release_id}: pending -> running: claimed by daemon-a" in lines[1]
    if outcome is ReleaseStatus.SUCCESS:
        assert lines[-1] == (
            f"release {release_id} (version 1) success"
            + lines[-1].split("success", 1)[1].split(":")[0]
            + ": 3 succeeded, 0 failed, 0 skipped, 0 cancelled"
        )
        assert sum(" -> success" in line for line in lines) == 4
    else:
        assert lines[-3].startswith(f"release {release_id} (version 1) failed")
        assert lines[-3].endswith(": 0 succeeded, 1 failed, 2 skipped, 0 cancelled")
        assert lines[-2] == "error: release failed"
        assert lines[-1] == "  failed: edge-001 (batch 1): no reason given"
        assert sum(" -> skipped" in line for line in lines) == 2


async def test_watch_json_prints_the_events_as_json_lines(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec())
    out = _Screen()
    result: list[int] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(_watch, served, created.release.id, out, result, as_json=True)
            )
            await out.shown.wait()
            await finish(store, ReleaseStatus.SUCCESS)

    events = [json.loads(line) for line in out.getvalue().splitlines()]
    stored = await store.release_events(created.release.id)
    assert [event["id"] for event in events] == [event.id for event in stored]
    assert events[-1]["toStatus"] == "success" and events[-1]["nodeId"] is None
    assert result == [0]


async def test_watch_gives_up_when_the_api_stays_unreachable() -> None:
    err = io.StringIO()
    async with open_http("http://127.0.0.1:9", "t") as http:
        with pytest.raises(ApiUnreachable):
            await commands.watch(ApiClient(http), 1, io.StringIO(), err, patience=0.05)
    assert "retrying for up to 0.05s" in err.getvalue()


# --- the installed `fleetwave` program ----------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWAVE_")}
    env.update(extra)
    return env


async def test_program_watch_exits_1_when_the_release_fails(
    served: Served, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(ReleaseSpec())
    done: list[subprocess.CompletedProcess[bytes]] = []

    async def watch() -> None:
        done.append(
            await trio.run_process(
                [str(FLEETWAVE), "release", "watch", str(created.release.id)],
                env=_env(FLEETWAVE_API=served.url, FLEETWAVE_TOKEN=served.token),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        )

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            # Whether the watcher sees "pending" first or only the end, it must exit 1.
            await trio.sleep(1.0)
            await finish(store, ReleaseStatus.FAILED)

    [process] = done
    assert process.returncode == 1, process.stderr
    summary = process.stdout.decode().splitlines()[-3]
    assert summary.startswith(f"release {created.release.id} (version 1) failed")


async def test_program_without_a_token_exits_2_naming_fleetwave_token() -> None:
    process = await trio.run_process(
        [str(FLEETWAVE), "release", "list"],
        env=_env(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )

    assert process.returncode == 2
    assert b"FLEETWAVE_TOKEN" in process.stderr
    assert process.stdout == b""


async def test_program_says_when_the_api_is_unreachable() -> None:
    process = await trio.run_process(
        [str(FLEETWAVE), "nodes", "list"],
        env=_env(FLEETWAVE_API="http://127.0.0.1:9", FLEETWAVE_TOKEN="t"),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )

    assert process.returncode == 1
    assert process.stderr.decode() == (
        "fleetwave: cannot reach the API at http://127.0.0.1:9: "
        "connection refused or host unknown\n"
    )


# --- token create -------------------------------------------------------------------------


@pytest.fixture
def cli_store(monkeypatch: pytest.MonkeyPatch) -> MemoryStore:
    """The store the token commands open, in place of the database they are configured for."""
    store = MemoryStore()

    @contextlib.asynccontextmanager
    async def open_store(settings: object) -> AsyncIterator[MemoryStore]:
        yield store

    factory = types.ModuleType("fleetwave.store.factory")
    factory.open_store = open_store  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fleetwave.store.factory", factory)
    return store


async def test_token_create_prints_only_the_token_and_stores_its_hash(
    cli_store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cli_store
    with structlog.testing.capture_logs() as logs:
        code = await cli._token_create(load_settings(environ={}), "ci", Role.OPERATOR, None)

    captured = capsys.readouterr()
    [token] = captured.out.splitlines()
    assert code == 0 and captured.out == token + "\n"
    [created] = [entry for entry in logs if entry["event"] == "token.created"]
    assert (created["token_name"], created["token_role"]) == ("ci", "operator")
    assert token not in repr(logs)
    digest = hashlib.sha256(token.encode()).hexdigest()
    [stored] = await store.tokens_by_hash_prefix(digest[:TOKEN_LOOKUP_CHARS])
    assert (stored.info.name, stored.info.role, stored.token_hash) == ("ci", "operator", digest)
    assert await cli._token_create(load_settings(environ={}), "ci", Role.ADMIN, None) == 1
    assert "already exists" in capsys.readouterr().err


# --- token list and revoke ---------------------------------------------------------------


async def test_token_list_shows_role_creation_expiry_and_last_use(
    cli_store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_token(cli_store, "root")
    secret = await create_token(
        cli_store, "dash", role=Role.VIEWER, expires_in=datetime.timedelta(days=30)
    )
    await cli_store.touch_tokens([1])

    assert await cli._token_list(load_settings(environ={}), False) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST", "USED"]
    root, dash = (line.split() for line in lines[1:])
    assert root[:3] == ["1", "root", "admin"] and root[5] == "never" and root[-1] != "never"
    assert dash[:3] == ["2", "dash", "viewer"] and dash[5] != "never" and dash[-1] == "never"
    assert secret not in "\n".join(lines)


async def test_token_list_json_has_the_api_fields(
    cli_store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    await create_token(cli_store, "root", role=Role.OPERATOR)

    assert await cli._token_list(load_settings(environ={}), True) == 0

    data = json.loads(capsys.readouterr().out)
    assert data["total"] == 1
    assert data["items"][0]["name"] == "root" and data["items"][0]["role"] == "operator"
    assert "tokenHash" not in data["items"][0]


@pytest.mark.parametrize("key", [1, "old"])
async def test_token_revoke_by_id_or_name(
    cli_store: MemoryStore, capsys: pytest.CaptureFixture[str], key: int | str
) -> None:
    await create_token(cli_store, "old", role=Role.VIEWER)

    with structlog.testing.capture_logs() as logs:
        assert await cli._token_revoke(load_settings(environ={}), key) == 0

    assert capsys.readouterr().out == "revoked token old (id 1, viewer)\n"
    assert [(e["event"], e["token_name"], e["token_role"]) for e in logs] == [
        ("token.revoked", "old", "viewer")
    ]
    assert await cli_store.list_tokens() == []
    assert await cli._token_revoke(load_settings(environ={}), key) == 1
    assert "no token" in capsys.readouterr().err


def test_token_create_needs_a_role_and_a_valid_expiry() -> None:
    parser = cli.build_parser()
    parsed = parser.parse_args(["token", "create", "ci", "--role", "viewer", "--expires", "2w"])
    assert (parsed.role, parsed.expires) == ("viewer", datetime.timedelta(weeks=2))
    for argv in (
        ["token", "create", "ci"],
        ["token", "create", "ci", "--role", "root"],
        ["token", "create", "ci", "--role", "admin", "--expires", "forever"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2


def test_token_names_that_are_all_digits_are_refused_as_ids() -> None:
    assert cli.main(["token", "create", "42", "--role", "admin"]) == 2


# --- HTTPS options ------------------------------------------------------------------------


def test_a_client_certificate_without_its_key_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["nodes", "list", "--token", "t", "--cert", "client.crt"]) == 2
    assert "give both --cert and --key" in capsys.readouterr().err


def test_a_ca_file_that_cannot_be_loaded_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.crt"
    code = cli.main(["nodes", "list", "--token", "t", "--ca", str(missing)])

    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith(f"fleetwave: cannot load the API's CA {missing} (FLEETWAVE_API_CA)")
