"""Schema migrations: numbered SQL files in store/migrations, applied in order.

Asyncio-flavored: these functions take an asyncpg connection and run inside the asyncio
island (store.postgres calls them from its own coroutines). All pending migrations are
applied in one transaction that holds a transaction-level advisory lock, so several daemons
starting at once apply each migration exactly once and none sees a half-migrated schema.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import attrs

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Executor: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]

# An arbitrary constant naming "fleetwave schema migrations" among advisory locks.
MIGRATION_LOCK_KEY = 0x666C_7477_6D69_6772

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@attrs.frozen
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in version order."""
    found: list[Migration] = []
    for entry in resources.files("fleetwave.store.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            continue
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=entry.read_text(encoding="utf-8"),
            )
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in store/migrations: {versions}")
    return tuple(found)


MIGRATIONS = load_migrations()
LATEST_VERSION = MIGRATIONS[-1].version if MIGRATIONS else 0


async def migrate(connection: Executor) -> list[int]:
    """Apply the migrations this database lacks; return their versions (empty when current).

    Asyncio-flavored. Idempotent and safe to run from several processes at once.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(_BOOTSTRAP)
        rows = await connection.fetch("SELECT version FROM schema_migrations")
        applied = {row["version"] for row in rows}
        done: list[int] = []
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            done.append(migration.version)
        return done


async def schema_version(connection: Executor) -> int:
    """The highest applied migration, 0 for a database never migrated. Asyncio-flavored."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    version = await connection.fetchval("SELECT max(version) FROM schema_migrations")
    return int(version or 0)


async def is_current(connection: Executor) -> bool:
    """True when every shipped migration is applied (a lower number shipped after a higher
    one was applied counts as missing). Asyncio-flavored."""
    if await schema_version(connection) == 0:
        return not MIGRATIONS
    rows = await connection.fetch("SELECT version FROM schema_migrations")
    applied = {row["version"] for row in rows}
    return all(migration.version in applied for migration in MIGRATIONS)
