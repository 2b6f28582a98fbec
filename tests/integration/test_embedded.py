"""The embedded PostgreSQL server: first start, reuse, restart with data kept, and a store
that rides out the database going away and coming back."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fleetwave.store.embedded import EmbeddedPostgres, free_port
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import ReleaseSpec
from fleetwave.store.postgres import open_loop_and_store
from tests.integration.conftest import TEST_SERVER_SETTINGS, run_sql, server_directory

pytestmark = pytest.mark.postgres


@pytest.fixture
def directory() -> Iterator[Path]:
    path = server_directory()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(directory: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(
        directory / "data", port=free_port(), settings=TEST_SERVER_SETTINGS
    ) as started:
        yield started


def test_first_start_initialises_and_serves_on_loopback(server: EmbeddedPostgres) -> None:
    assert server.running and server.owned
    assert server.url == f"postgresql://postgres@127.0.0.1:{server.actual_port}/postgres"
    assert (server.data_dir / "PG_VERSION").exists()
    assert server.psql("SELECT current_setting('listen_addresses')").strip() == "127.0.0.1"


def test_restart_keeps_the_data(server: EmbeddedPostgres) -> None:
    server.psql("CREATE TABLE kept (value text); INSERT INTO kept VALUES ('still here')")

    server.restart()

    assert server.running
    assert server.psql("SELECT value FROM kept").strip() == "still here"


def test_a_second_handle_reuses_the_server_and_leaves_it_running(
    server: EmbeddedPostgres,
) -> None:
    other = EmbeddedPostgres(server.data_dir)

    other.start()
    other.close()

    assert not other.owned
    assert other.actual_port == server.actual_port
    assert server.running


def test_stop_is_idempotent(server: EmbeddedPostgres) -> None:
    server.stop()
    server.stop()

    assert not server.running
    server.start()
    assert server.running


async def test_url_serves_a_store(server: EmbeddedPostgres) -> None:
    async with open_loop_and_store(server.url) as store:
        assert await store.ping() is True
        node = await store.upsert_node("edge-1", "127.0.0.2", 8443)
        assert (await store.list_nodes()) == [node]
    assert int(await run_sql(server.url, "SELECT count(*) FROM nodes")) == 1


async def test_store_and_notifications_survive_a_database_restart(
    server: EmbeddedPostgres,
) -> None:
    wakes = 0
    woken = trio.Event()

    def wake() -> None:
        nonlocal wakes, woken
        wakes += 1
        woken.set()

    async with open_loop_and_store(server.url) as store, trio.open_nursery() as nursery:
        await store.upsert_node("edge-1", "127.0.0.2", 8443)
        await nursery.start(store.listen_releases, wake)

        await server.stop_async()
        assert await store.ping() is False
        with pytest.raises(StoreUnavailable):
            await store.list_nodes()
        await server.start_async()

        with trio.fail_after(20):
            await woken.wait()  # the listener reconnected and said so
            woken = trio.Event()
            assert await store.ping() is True
            await store.create_release(ReleaseSpec())
            await woken.wait()
        assert wakes >= 2
        nursery.cancel_scope.cancel()
