"""Event streams over PostgreSQL: one LISTEN for any number of followers, and events whose
transactions commit out of id order still reach every follower."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import httpx
import pytest
import trio

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.events import EventHub
from fleetwave.api.server import serve_api
from fleetwave.api.sse import Message, messages
from fleetwave.config import load_settings
from fleetwave.store.models import ReleaseSpec
from fleetwave.store.postgres import PostgresStore
from fleetwave.supervisor import Supervisor
from tests.integration.conftest import PSQL, run_sql
from tests.waiting import wait_terminal

pytestmark = pytest.mark.postgres

_LISTENERS = "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%fleetwave_event%'"


async def _serve(store: PostgresStore, nursery: trio.Nursery) -> tuple[EventHub, str]:
    hub = EventHub(store, poll_interval=60)
    await nursery.start(hub.run)
    address = await nursery.start(partial(serve_api, create_app(store, events=hub), "127.0.0.1:0"))
    return hub, f"http://{address}"


async def _read(
    client: httpx.AsyncClient, path: str, into: list[Message], *, count: int | None = None
) -> None:
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for message in messages(response.aiter_lines()):
            into.append(message)
            if message.kind == "end":
                return
            if count is not None and sum(m.kind == "message" for m in into) >= count:
                return


@pytest.fixture
async def nursery(pg_store: PostgresStore) -> AsyncIterator[trio.Nursery]:
    """Tasks over ``pg_store``, cancelled before the store (and its asyncio loop) closes."""
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_many_followers_share_one_listen_and_one_read_per_notification(
    pg_store: PostgresStore, database_url: str, nursery: trio.Nursery
) -> None:
    followers = 150
    fleet = SimulatedFleet(3, behaviour=Behaviour(apply_time=(0.05, 0.1)))
    for k, host in enumerate(fleet.hosts, start=1):
        await pg_store.upsert_node(f"edge-{k}", host, fleet.address(k).port)
    token = await create_token(pg_store, "followers")
    hub, base = await _serve(pg_store, nursery)
    created = await pg_store.create_release(ReleaseSpec(reason="fan-out"))
    release_id = created.release.id
    results: list[list[Message]] = [[] for _ in range(followers)]
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx.Timeout(60),
        limits=httpx.Limits(max_connections=followers + 10),
    ) as client:
        with trio.fail_after(90):
            async with trio.open_nursery() as readers:
                for result in results:
                    readers.start_soon(
                        _read, client, f"/api/v1/releases/{release_id}/events?follow=true", result
                    )
                while hub.followers < followers:  # noqa: ASYNC110 - server state, no event
                    await trio.sleep(0.05)
                listening = int(await run_sql(database_url, _LISTENERS))
                reads_before = hub.reads
                settings = load_settings(environ={}, interval_sec=0.2, daemon_id="pg-events")
                http = httpx.AsyncClient(transport=fleet.transport())
                nursery.start_soon(
                    Supervisor(pg_store, AgentClient(http, request_timeout=5), settings).run
                )
                await wait_terminal(pg_store, release_id, limit=60, step=0.1)
    stored = [event.id for event in await pg_store.release_events(release_id)]

    assert listening == 1
    assert all([m.data["id"] for m in r if m.kind == "message"] == stored for r in results)
    assert all(r[-1].kind == "end" for r in results)
    # One read per NOTIFY at most (each statement appending events sends one), not one per
    # follower: 150 followers of a release of a few dozen events.
    assert 1 <= hub.reads - reads_before <= len(stored)


async def test_an_event_committed_after_a_later_one_still_reaches_the_stream(
    pg_store: PostgresStore, database_url: str, nursery: trio.Nursery
) -> None:
    await pg_store.upsert_node("edge-1", "127.0.0.2", 8443)
    token = await create_token(pg_store, "gaps")
    created = await pg_store.create_release(ReleaseSpec(reason="gaps"))
    release_id = created.release.id
    hub, base = await _serve(pg_store, nursery)
    insert = (
        "INSERT INTO release_events (release_task_id, from_status, to_status, message)"
        f" VALUES ({release_id}, 'pending', 'pending', '{{}}')"
    )
    got: list[Message] = []
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30)
    ) as client:
        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(partial(_read, client, "/api/v1/events?follow=true", got, count=2))
                while hub.followers == 0:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                # A takes the lower id and holds its transaction open; B commits a higher one.
                slow = [
                    PSQL,
                    "-X",
                    "-qAt",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-d",
                    database_url,
                    "-c",
                    f"BEGIN; {insert.format('slow')}; SELECT pg_sleep(2); COMMIT;",
                ]
                inner.start_soon(partial(trio.run_process, slow, capture_stdout=True))
                sleeping = (
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(2)%'"
                    " AND pid <> pg_backend_pid()"
                )
                while not int(await run_sql(database_url, sleeping)):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                await run_sql(database_url, insert.format("quick"))
                while not got or got[-1].kind != "message":  # noqa: ASYNC110
                    await trio.sleep(0.02)
                first = got[-1]
    events = [m for m in got if m.kind == "message"]
    assert [m.data["message"] for m in events] == ["quick", "slow"]
    quick_id, slow_id = events[0].data["id"], events[1].data["id"]
    assert slow_id < quick_id
    # The quick event's resume point stays below the id still in flight; after the slow one
    # arrives it moves past both.
    assert first.id is not None and int(first.id) < slow_id
    assert events[1].id is not None and int(events[1].id) == quick_id
