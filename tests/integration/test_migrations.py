"""Schema migrations on a real PostgreSQL: fresh databases, repeats, concurrent daemons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio_asyncio

from fleetwave.store.migrate import LATEST_VERSION, MIGRATIONS
from fleetwave.store.postgres import migrate_database, open_postgres_store
from tests.integration.conftest import run_sql

pytestmark = pytest.mark.postgres

TABLES = {
    "nodes",
    "release_tasks",
    "release_task_nodes",
    "release_events",
    "api_tokens",
    "schema_migrations",
    "webhooks",
    "webhook_deliveries",
    "scope_strategies",
}


async def tables(url: str) -> set[str]:
    output = await run_sql(
        url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return set(output.split())


async def test_migrations_are_numbered_from_one_each_number_once() -> None:
    # Numbers are handed out ahead of the work, so one may ship before a lower one.
    versions = [migration.version for migration in MIGRATIONS]
    assert versions[0] == 1 and versions == sorted(set(versions))


async def test_a_fresh_database_is_migrated_to_the_latest_version(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        applied = await migrate_database(database_url)

    assert applied == [migration.version for migration in MIGRATIONS]
    assert await tables(database_url) == TABLES
    recorded = await run_sql(database_url, "SELECT max(version) FROM schema_migrations")
    assert int(recorded) == LATEST_VERSION


async def test_migrating_twice_changes_nothing(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        await migrate_database(database_url)
        again = await migrate_database(database_url)

    assert again == []
    count = await run_sql(database_url, "SELECT count(*) FROM schema_migrations")
    assert int(count) == len(MIGRATIONS)


async def test_concurrent_migrators_apply_each_migration_once(database_url: str) -> None:
    results: list[list[int]] = []

    async def migrator() -> None:
        results.append(await migrate_database(database_url))

    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(migrator)

    assert sorted(results, key=len) == [[], [], [], [m.version for m in MIGRATIONS]]
    assert await tables(database_url) == TABLES


async def test_ping_is_false_until_the_schema_is_current(database_url: str) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_postgres_store(database_url, apply_migrations=False) as store,
    ):
        assert await store.ping() is False
        await migrate_database(database_url)
        assert await store.ping() is True


async def test_ping_is_false_while_a_lower_numbered_migration_is_missing(
    database_url: str,
) -> None:
    async with (
        trio_asyncio.open_loop(),
        open_postgres_store(database_url, apply_migrations=False) as store,
    ):
        await migrate_database(database_url)
        await run_sql(database_url, "DELETE FROM schema_migrations WHERE version = 1")
        assert await store.ping() is False


async def test_tokens_made_before_roles_become_admin(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        await migrate_database(database_url)
    await run_sql(database_url, "DELETE FROM schema_migrations WHERE version = 5")
    for column in ("role", "expires_at", "last_used_at"):
        await run_sql(database_url, f"ALTER TABLE api_tokens DROP COLUMN {column}")
    for column in ("actor_token", "actor_role"):
        await run_sql(database_url, f"ALTER TABLE release_events DROP COLUMN {column}")
    await run_sql(
        database_url, "INSERT INTO api_tokens (name, token_hash) VALUES ('old', repeat('a', 64))"
    )

    async with trio_asyncio.open_loop():
        applied = await migrate_database(database_url)

    assert 5 in applied
    role = await run_sql(database_url, "SELECT role FROM api_tokens WHERE name = 'old'")
    assert role.strip() == "admin"


async def test_seed_columns_alone_make_a_valid_release(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        await migrate_database(database_url)
    await run_sql(
        database_url,
        "INSERT INTO nodes (name, main_ip) VALUES ('edge-1', '127.0.0.2');"
        " INSERT INTO release_tasks (type, target, version, status, total_nodes,"
        " success_nodes, failed_nodes) VALUES ('apply_config', 'cdn', 1, 'pending', 1, 0, 0);"
        " INSERT INTO release_task_nodes (release_task_id, node_id, batch, status)"
        " SELECT r.id, n.id, 1, 'pending' FROM release_tasks r, nodes n",
    )

    row = await run_sql(
        database_url,
        "SELECT scope IS NULL, plan IS NULL, max_failures, reason, lease_epoch,"
        " n.agent_port, n.enabled, n.status, t.attempts"
        " FROM release_tasks, release_task_nodes t, nodes n",
    )

    assert row.strip() == "t|t|0||0|8443|t|online|0"


def _migrate_command(database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetwave", "migrate"],
        env={"PATH": "/usr/bin:/bin", "FLEETWAVE_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


async def test_the_migrate_command_says_what_it_applied_then_that_nothing_was_to_do(
    database_url: str, tmp_path: Path
) -> None:
    first = await trio.to_thread.run_sync(_migrate_command, database_url, tmp_path)
    again = await trio.to_thread.run_sync(_migrate_command, database_url, tmp_path)

    names = ", ".join(f"{m.version:04d}_{m.name}" for m in MIGRATIONS)
    assert (first.returncode, first.stdout) == (
        0,
        f"applied {names}; schema at {LATEST_VERSION}\n",
    ), first.stderr
    assert (again.returncode, again.stdout) == (
        0,
        f"nothing to apply; schema at {LATEST_VERSION}\n",
    )


async def test_the_migrate_command_applies_only_what_is_missing(
    database_url: str, tmp_path: Path
) -> None:
    first = MIGRATIONS[0]
    await run_sql(
        database_url,
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now());"
        + first.sql
        + f"; INSERT INTO schema_migrations (version, name) VALUES (1, '{first.name}')",
    )

    result = await trio.to_thread.run_sync(_migrate_command, database_url, tmp_path)

    rest = ", ".join(f"{m.version:04d}_{m.name}" for m in MIGRATIONS[1:])
    assert result.stdout == f"applied {rest}; schema at {LATEST_VERSION}\n", result.stderr


async def test_labels_written_by_another_program_are_checked(database_url: str) -> None:
    async with trio_asyncio.open_loop():
        await migrate_database(database_url)
    await run_sql(
        database_url,
        "INSERT INTO nodes (name, main_ip) VALUES ('edge-1', '127.0.0.2');"
        ' UPDATE nodes SET labels = \'{"region": "eu"}\'',
    )
    assert (await run_sql(database_url, "SELECT labels->>'region' FROM nodes")).strip() == "eu"

    for bad in ("'{\"tier\": 1}'", "'[\"eu\"]'"):
        with pytest.raises(subprocess.CalledProcessError):
            await run_sql(database_url, f"UPDATE nodes SET labels = {bad}")
    assert (await run_sql(database_url, "SELECT labels FROM nodes")).strip() == '{"region": "eu"}'
