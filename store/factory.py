"""Open the store a daemon or a command uses: the configured PostgreSQL, or the embedded one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs, unquote, urlsplit

import structlog
import trio
import trio_asyncio

from fleetwave.config import Settings
from fleetwave.store.embedded import EmbeddedPostgres
from fleetwave.store.postgres import PostgresStore, open_postgres_store

log = structlog.get_logger("fleetwave.store")

POOL_SIZE = 10


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[PostgresStore]:
    """Trio-flavored: the asyncio loop, the database and a migrated PostgresStore, for the
    life of the block.

    With no FLEETWAVE_DATABASE_URL, a PostgreSQL server is run from FLEETWAVE_DATA_DIR (or a
    running one from that directory reused) and stopped again on exit if this process
    started it.
    """
    # A daemon stopped inside a transaction must not keep its rows locked past its leases:
    # the server ends such a session after one lease TTL.
    async with (
        trio_asyncio.open_loop(),
        database_url(settings) as url,
        _logged(url, embedded=settings.database_url is None),
        open_postgres_store(
            url,
            max_size=POOL_SIZE,
            idle_in_transaction_timeout=settings.lease_ttl_sec,
            operation_timeout=settings.store_timeout_sec,
        ) as store,
    ):
        yield store


def database_address(url: str) -> dict[str, object]:
    """Where ``url`` points (host, port, database, user), never its password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    user = unquote(parts.username) if parts.username else None
    host = unquote(parts.hostname) if parts.hostname else query.get("host", ["localhost"])[0]
    port = parts.port or query.get("port", ["5432"])[0]
    database = unquote(parts.path.lstrip("/")) or query.get("dbname", [user or "postgres"])[0]
    return {"host": host, "port": port, "database": database, "user": user}


@asynccontextmanager
async def _logged(url: str, *, embedded: bool) -> AsyncIterator[None]:
    log.info("store.database", **database_address(url), embedded=embedded)
    yield


@asynccontextmanager
async def database_url(settings: Settings) -> AsyncIterator[str]:
    """Trio-flavored, inside ``trio_asyncio.open_loop()``: the configured database's URL, or
    that of the embedded server (started for the block if it was not running)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    await embedded.start_async()
    log.info("store.embedded", data_dir=str(embedded.data_dir), owned=embedded.owned)
    try:
        yield embedded.url
    finally:
        if embedded.owned:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(embedded.close)
