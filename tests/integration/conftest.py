"""Integration fixtures: one embedded PostgreSQL per test session, a fresh database per test.

``postgres_server``  the session's EmbeddedPostgres (fsync off: throwaway data).
``database_url``     URL of a new, empty database, dropped after the test.
``pg_store``         a PostgresStore on that database (migrated), inside its own asyncio loop.
``store``            parametrized: the same tests run on a PostgresStore and a MemoryStore.
``seed_release``     inserts a release the way another program would (original columns only).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from fleetwave.agent.certs import CertPaths, init_certs
from fleetwave.store.base import Store
from fleetwave.store.embedded import POSTGRES_BIN_PATH, EmbeddedPostgres
from fleetwave.store.memory import MemoryStore
from fleetwave.store.postgres import PostgresStore, open_loop_and_store

# Durability is pointless for test data; these make commits and CREATE DATABASE cheap.
TEST_SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}

PSQL = str(Path(POSTGRES_BIN_PATH) / "psql")

SeedRelease = Callable[[int, Sequence[Sequence[int]]], Awaitable[int]]


def server_directory() -> Path:
    """A private directory for a throwaway server. Not under pytest's tmp_path: pytest makes
    its base directory owner-only at every session start, which would lock the server's
    own system user out of its data while it runs."""
    return Path(tempfile.mkdtemp(prefix="fleetwave-pg-"))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    """Development certificates for a CA, the daemon and 16 loopback agents (127.0.0.2..)."""
    return init_certs(tmp_path_factory.mktemp("certs"), agents=16)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[EmbeddedPostgres]:
    directory = server_directory()
    try:
        with EmbeddedPostgres(directory / "data", settings=TEST_SERVER_SETTINGS) as server:
            yield server
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: EmbeddedPostgres) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@pytest.fixture
async def pg_store(database_url: str) -> AsyncIterator[PostgresStore]:
    async with open_loop_and_store(database_url, max_size=8) as store:
        yield store


async def run_sql(url: str, sql: str) -> str:
    """Run SQL as another program would (the bundled psql); return unaligned output."""
    result = await trio.run_process(
        [PSQL, "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
        capture_stdout=True,
        capture_stderr=True,
    )
    return result.stdout.decode()


@pytest.fixture(params=["postgres", "memory"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def store_database_url(store_kind: str, request: pytest.FixtureRequest) -> str | None:
    if store_kind != "postgres":
        return None
    url: str = request.getfixturevalue("database_url")
    return url


@pytest.fixture
async def store(store_database_url: str | None) -> AsyncIterator[Store]:
    if store_database_url is None:
        yield MemoryStore()
        return
    async with open_loop_and_store(store_database_url, max_size=8) as postgres:
        yield postgres


@pytest.fixture
def seed_release(store: Store, store_database_url: str | None) -> SeedRelease:
    """Insert a pending release with the original system's columns only; return its id."""

    async def insert(version: int, batches: Sequence[Sequence[int]]) -> int:
        if isinstance(store, MemoryStore):
            return store.insert_seed_release(version, batches)
        assert store_database_url is not None
        total = sum(len(batch) for batch in batches)
        rows = ", ".join(
            f"((SELECT id FROM r), {node_id}, {number}, 'pending')"
            for number, batch in enumerate(batches, start=1)
            for node_id in batch
        )
        output = await run_sql(
            store_database_url,
            "WITH r AS (INSERT INTO release_tasks (type, target, version, status, total_nodes,"
            " success_nodes, failed_nodes)"
            f" VALUES ('apply_config', 'cdn', {version}, 'pending', {total}, 0, 0)"
            " RETURNING id),"
            " n AS (INSERT INTO release_task_nodes (release_task_id, node_id, batch, status)"
            f" VALUES {rows})"
            " SELECT id FROM r",
        )
        return int(output.strip())

    return insert
