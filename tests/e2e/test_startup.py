"""Start-up as an operator meets it, with real processes: a misspelt variable, a database URL
that is not PostgreSQL's, an API port already taken each stop the program with one line and a
non-zero exit, never a traceback; a daemon that starts says which database it uses."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest

from tests.e2e.harness import Harness

pytestmark = pytest.mark.postgres


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    text = result.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "closest"),
    [
        ("FLEETWAVE_DATABSE_URL", "FLEETWAVE_DATABASE_URL"),
        ("FLEETWAVE_LEASE_TTL", "FLEETWAVE_LEASE_TTL_SEC"),
        ("FLEETWAVE_TOKENS", "FLEETWAVE_TOKEN"),
    ],
)
async def test_an_unknown_fleetwave_variable_stops_every_command_naming_the_closest(
    harness: Harness, variable: str, closest: str
) -> None:
    for command in (("migrate",), ("token", "create", "ci", "--role", "admin"), ("serve",)):
        result = await harness.run(*command, env={variable: "x"})

        assert result.returncode == 2, result.stderr
        assert one_line(result) == (
            f"fleetwave: setting {variable}: is not a known setting (did you mean {closest}?)"
        )
    # Nothing was written on the way: no token exists.
    listed = await harness.run("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("127.0.0.1:5432", "'127.0.0.1:5432'"),
        ("mysql://admin:hunter2@db.example:3306/cmdb", "'mysql://admin:***@db.example:3306/cmdb'"),
        ("postgresql://admin:hunter2@127.0.0.1:99999/x", "'postgresql://admin:***@127.0.0.1:99999"),
    ],
)
async def test_a_database_url_postgresql_cannot_use_is_one_line_without_its_password(
    harness: Harness, url: str, shown: str
) -> None:
    for command in (("serve",), ("migrate",)):
        result = await harness.run(*command, env={"FLEETWAVE_DATABASE_URL": url})

        assert result.returncode == 2
        line = one_line(result)
        assert line.startswith("fleetwave: setting FLEETWAVE_DATABASE_URL: "), line
        assert shown in line and "hunter2" not in line, line


async def test_an_api_port_already_in_use_is_one_line_and_a_failure(harness: Harness) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = await harness.run("serve", env={"FLEETWAVE_API_BIND": f"127.0.0.1:{port}"})

    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith(f"fleetwave: cannot listen on 127.0.0.1:{port} for the API: "), line
    assert "in use" in line, line


async def test_the_daemon_logs_which_database_it_uses_without_a_password(
    harness: Harness, database_url: str
) -> None:
    host, port = database_url.split("@", 1)[1].split("/", 1)[0].split(":")
    database = database_url.rsplit("/", 1)[1]

    daemon = await harness.serve("d1")
    await daemon.stop()

    logged = [json.loads(line) for line in daemon.log_path.read_text().splitlines()]
    [entry] = [entry for entry in logged if entry.get("event") == "store.database"]
    assert (entry["host"], entry["port"], entry["database"]) == (host, int(port), database)
    assert entry["embedded"] is False
    # The URL itself, and so any password in it, is never logged.
    assert "postgresql://" not in daemon.log_path.read_text()
