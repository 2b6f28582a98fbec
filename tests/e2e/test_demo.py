"""``fleetwave demo`` from nothing: its own database, certificates, agents and daemon; every
release ends as it says (act three: a pause and resume, a rollback; act four: a bake under a
health check that fails, and the release rolls itself back), the database says the same, and
it exits 0 leaving nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from fleetwave.demo import DATABASE
from fleetwave.store.embedded import EmbeddedPostgres
from tests.e2e.harness import REPO, fleetwave, processes_using

pytestmark = pytest.mark.postgres

DEMO_LIMIT = 120.0
STOP_GRACE = 30.0


async def test_demo_runs_both_releases_and_exits_0_leaving_nothing_running(
    demo_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWAVE_")}

    async def stop(process: trio.Process) -> None:
        process.terminate()
        with trio.move_on_after(STOP_GRACE):
            await process.wait()
            return
        process.kill()

    with output.open("wb") as sink, trio.fail_after(DEMO_LIMIT + STOP_GRACE + 5):
        result = await trio.run_process(
            fleetwave("demo", "--data-dir", str(demo_dir)),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
            deliver_cancel=stop,
        )
    text = output.read_text(errors="replace")
    assert result.returncode == 0, text[-4000:]
    assert "release 1 (version 1): success  success 20/20, failed 0, skipped 0" in text, text
    assert "release 2 (version 2): failed   success 0/20, failed 1, skipped 19" in text, text
    # Act three: paused mid-batch and resumed; a bad version rolled back.
    assert "release 3 (version 3): success  success 20/20, failed 0" in text, text
    assert "pause in effect on release 3 (acknowledged by daemon" in text, text
    assert "none running; then resumed" in text, text
    assert "release 4 (version 4): failed" in text, text
    assert "release 5 (version 5): success" in text, text
    assert "the rollback of release 4, canary first" in text, text
    assert "fleet after the rollback: config 3: 20 nodes; 0 differ" in text, text
    # Act four: the canary's bake under a health check the demo turns unhealthy; the release
    # fails naming the check and rolls itself back on the one node that had applied it.
    assert "health endpoint: http://127.0.0.1:" in text, text
    assert "release 6 (version 6): failed   success 1/20, failed 0, skipped 19" in text, text
    assert f"error: {HEALTH_ERROR}" in text, text
    assert "answered healthy 3 times; now edge-001 serves 5xx" in text, text
    assert "then 3 failures in a row (failureLimit 3)" in text, text
    assert "release 7 (version 7): success  success 1/1, failed 0" in text, text
    rolled_back = "the rollback of release 6 by its onFailure, canary first; now edge-001 runs"
    assert f"{rolled_back} config 3" in text, text
    assert text.count("fleet after the rollback: config 3: 20 nodes; 0 differ") == 2, text
    assert "UNEXPECTED" not in text and "as expected: " in text, text
    assert "token: fw_" in text
    # The API was served over HTTPS with the demo's API certificate, and used so.
    assert "API:   https://127.0.0.1:" in text, text
    api = text.split("API:   ", 1)[1].split()[0]
    assert f"dashboard: {api}/ (sign in with the token" in text, text
    listening = [
        json.loads(line)
        for line in (demo_dir / "serve.log").read_text().splitlines()
        if '"api.listening"' in line
    ]
    assert [entry["url"].split(":")[0] for entry in listening] == ["https"]
    assert (demo_dir / "certs" / "api.crt").is_file()
    assert "/api/v1/events?follow=true" in text and "fleetwave release watch" in text
    assert processes_using(demo_dir) == []
    assert not EmbeddedPostgres(demo_dir / "pg").running
    await trio.to_thread.run_sync(_assert_rolled_back_in_the_database, demo_dir)


HEALTH_ERROR = (
    "health check edge failed: HTTP 503: edge-001 serves 5xx: 41% of its requests since it "
    "applied version 6"
)


def _assert_rolled_back_in_the_database(demo_dir: Path) -> None:
    """The demo's database, read after it stopped, as another program would (psql)."""
    with EmbeddedPostgres(demo_dir / "pg") as server:

        def rows(sql: str) -> list[list[str]]:
            return [line.split("|") for line in server.psql(sql, database=DATABASE).splitlines()]

        assert rows("SELECT status, error FROM release_tasks WHERE id = 6") == [
            ["failed", HEALTH_ERROR]
        ]
        nodes_of = (
            "SELECT n.name, r.status FROM release_task_nodes r JOIN nodes n ON n.id = r.node_id "
            "WHERE r.release_task_id = {} ORDER BY r.batch, n.name"
        )
        failed = rows(nodes_of.format(6))
        assert failed[0] == ["edge-001", "success"]
        assert [status for _, status in failed[1:]] == ["skipped"] * 19
        assert rows(
            "SELECT id, status, coalesce(config_version, version) FROM release_tasks "
            "WHERE rollback_of = 6"
        ) == [["7", "success", "3"]]
        assert rows(nodes_of.format(7)) == [["edge-001", "success"]]
        assert rows("SELECT DISTINCT applied_version FROM nodes") == [["3"]]
        assert rows("SELECT applied_release_version FROM nodes WHERE name = 'edge-001'") == [["7"]]


def _hint(text: str, containing: str) -> str:
    """The indented hint line that contains ``containing``, stripped."""
    for line in text.splitlines():
        if line.startswith("  ") and containing in line:
            return line.strip()
    raise AssertionError(f"no hint with {containing!r} in:\n{text}")


async def test_demo_keep_running_leaves_a_healthy_fleet_and_hints_that_run_as_printed(
    demo_dir: Path, tmp_path: Path
) -> None:
    output = tmp_path / "demo.out"
    # No venv on PATH: the hints must name the command by its path in the checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWAVE_")}
    env["PATH"] = "/usr/bin:/bin"
    with output.open("wb") as sink:
        demo = await trio.lowlevel.open_process(
            fleetwave("demo", "--agents", "3", "--keep-running", "--data-dir", str(demo_dir)),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            with trio.fail_after(DEMO_LIMIT):
                while "Ctrl-C stops" not in output.read_text(errors="replace"):
                    assert demo.poll() is None, output.read_text(errors="replace")[-4000:]
                    await trio.sleep(0.2)
            text = output.read_text(errors="replace")
            assert "release 2 (version 2): failed   success 0/3, failed 1, skipped 2" in text
            assert "release 6 (version 6): failed   success 1/3, failed 0, skipped 2" in text
            assert "rolled itself back (release 7)" in text, text
            # The health endpoint stays up, healthy again, as the hint says.
            health_url = _hint(text, "curl -s 'http://127.0.0.1:").split("'")[1]
            async with httpx.AsyncClient() as http:
                answer = await http.get(health_url)
            assert (answer.status_code, answer.json()) == (200, {"healthy": True})
            exports = _hint(text, "export FLEETWAVE_API=").removeprefix("export ")
            hinted = _hint(text, " release list; ").split(" release list")[0]
            assert hinted == ".venv/bin/fleetwave", text
            client_env = dict(env)
            for pair in exports.split():
                name, _, value = pair.partition("=")
                client_env[name] = value

            def run(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [hinted, *args],
                    cwd=REPO,
                    env=client_env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )

            created = await trio.to_thread.run_sync(
                run, "release", "create", "--reason", "after the demo", "--json"
            )
            assert created.returncode == 0, created.stderr
            release_id = str(json.loads(created.stdout)["releaseId"])
            watched = await trio.to_thread.run_sync(run, "release", "watch", release_id, "--json")
            shown = await trio.to_thread.run_sync(run, "release", "show", release_id, "--json")
            final = json.loads(shown.stdout)["release"]
        finally:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
            with trio.move_on_after(STOP_GRACE):
                await demo.wait()
            if demo.poll() is None:
                demo.kill()
                await demo.wait()

    assert watched.returncode == 0, watched.stdout[-2000:]
    assert (final["status"], final["successNodes"], final["totalNodes"]) == ("success", 3, 3)
    assert demo.returncode == 0  # both releases ended as expected before Ctrl-C
    assert processes_using(demo_dir) == []
