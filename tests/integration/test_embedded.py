"""The embedded PostgreSQL server: first start, reuse, restart with data kept, and a store
that rides out the database going away and coming back."""

from __future__ import annotations

import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from fleetwave.store.embedded import EmbeddedPostgres, EmbeddedPostgresError, free_port
from fleetwave.store.errors import StoreUnavailable
from fleetwave.store.models import ReleaseSpec
from fleetwave.store.postgres import open_loop_and_store
from tests.integration.conftest import PSQL, TEST_SERVER_SETTINGS, run_sql, server_directory

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
    password = server.password_path.read_text().strip()
    assert len(password) >= 32
    assert server.url == (
        f"postgresql://postgres:{password}@127.0.0.1:{server.actual_port}/postgres"
    )
    assert (server.data_dir / "PG_VERSION").exists()
    assert server.psql("SELECT current_setting('listen_addresses')").strip() == "127.0.0.1"


def passwordless(server: EmbeddedPostgres) -> str:
    """Try to log in over TCP without the password, as another user of the machine would;
    psql's error."""
    url = f"postgresql://postgres@127.0.0.1:{server.actual_port}/postgres"
    result = subprocess.run(
        [PSQL, "-X", "-w", "-d", url, "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0, result.stdout
    return result.stderr


def hba_methods(server: EmbeddedPostgres) -> set[str]:
    lines = (server.data_dir / "pg_hba.conf").read_text().splitlines()
    return {line.split()[-1] for line in lines if line.strip() and not line.startswith("#")}


def test_only_the_password_in_the_data_directory_lets_anyone_in(server: EmbeddedPostgres) -> None:
    assert "no password supplied" in passwordless(server)
    assert hba_methods(server) == {"scram-sha-256"}
    assert stat.S_IMODE(server.password_path.stat().st_mode) == 0o600
    wrong = server.url.replace(server.password, "0" * 48)
    with pytest.raises(EmbeddedPostgresError, match="password authentication failed"):
        server._psql_at(wrong, "SELECT 1")
    assert server.psql("SELECT current_user").strip() == "postgres"


def test_a_data_directory_that_trusted_everyone_gets_a_password_and_keeps_its_data(
    server: EmbeddedPostgres,
) -> None:
    # What an older fleetwave left: trust in pg_hba.conf, no password anywhere.
    server.psql("CREATE TABLE kept (value text); INSERT INTO kept VALUES ('still here')")
    server.psql("ALTER ROLE postgres PASSWORD NULL")
    hba = server.data_dir / "pg_hba.conf"
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    server.stop()
    server.password_path.unlink()

    again = EmbeddedPostgres(server.data_dir, port=free_port(), settings=TEST_SERVER_SETTINGS)
    with again:
        assert again.password_path.exists()
        assert hba_methods(again) == {"scram-sha-256"}
        assert "no password supplied" in passwordless(again)
        assert again.psql("SELECT value FROM kept").strip() == "still here"


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
