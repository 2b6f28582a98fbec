"""Event streams over a real socket: the API served by hypercorn on loopback, a MemoryStore,
a daemon driving the in-process simulated fleet, and httpx clients reading SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.events import EventHub, EventStream
from fleetwave.api.server import serve_api
from fleetwave.api.sse import Message, messages
from fleetwave.config import load_settings
from fleetwave.store.memory import MemoryStore
from fleetwave.store.metered import metered
from fleetwave.store.models import ReleaseSpec
from fleetwave.supervisor import Supervisor
from tests.waiting import wait_terminal


@attrs.define
class Served:
    store: MemoryStore
    hub: EventHub
    base: str
    token: str
    nursery: trio.Nursery
    fleet: SimulatedFleet

    def client(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.token}", **headers},
            timeout=httpx.Timeout(30),
        )

    async def start_daemon(self) -> None:
        settings = load_settings(
            environ={}, interval_sec=0.2, daemon_id="events-test", log_format="json"
        )
        http = httpx.AsyncClient(transport=self.fleet.transport())
        agents = AgentClient(http, request_timeout=5)
        self.nursery.start_soon(Supervisor(self.store, agents, settings).run)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    store = MemoryStore()
    fleet = SimulatedFleet(4, behaviour=Behaviour(apply_time=(0.05, 0.15)))
    for k, host in enumerate(fleet.hosts, start=1):
        await store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
    token = await create_token(store, "events")
    hub = EventHub(store, poll_interval=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        address = await nursery.start(
            partial(serve_api, create_app(store, events=hub), "127.0.0.1:0")
        )
        yield Served(store, hub, f"http://{address}", token, nursery, fleet)
        nursery.cancel_scope.cancel()


async def follow(
    client: httpx.AsyncClient, path: str, *, until_end: bool = True, count: int | None = None
) -> list[Message]:
    """Messages of one stream until its ``end`` (or ``count`` events)."""
    got: list[Message] = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for message in messages(response.aiter_lines()):
            got.append(message)
            if message.kind == "end" and until_end:
                break
            if count is not None and len([m for m in got if m.kind == "message"]) >= count:
                break
    return got


def event_ids(got: list[Message]) -> list[int]:
    return [message.data["id"] for message in got if message.kind == "message"]


async def test_a_release_stream_runs_from_creation_to_the_end_and_closes(served: Served) -> None:
    await served.start_daemon()
    created = await served.store.create_release(ReleaseSpec(reason="stream"))
    release_id = created.release.id
    with trio.fail_after(20):
        async with served.client() as client:
            got = await follow(client, f"/api/v1/releases/{release_id}/events?follow=true")

    events = [message.data for message in got if message.kind == "message"]
    stored = await served.store.release_events(release_id)
    assert [event["id"] for event in events] == [event.id for event in stored]
    assert events[0]["toStatus"] == "pending" and events[0]["message"].startswith("created")
    assert {event["nodeId"] for event in events if event["nodeId"]} == {
        node.id for node in await served.store.list_nodes()
    }
    assert got[-1].kind == "end"
    assert got[-1].data == {"reason": "the release ended", "status": "success"}
    # The SSE id of the last event is its own id (no transaction was left behind).
    assert [m.id for m in got if m.kind == "message"][-1] == str(events[-1]["id"])


async def test_a_stream_resumed_with_last_event_id_loses_and_repeats_nothing(
    served: Served,
) -> None:
    created = await served.store.create_release(ReleaseSpec(reason="resume"))
    release_id = created.release.id
    path = f"/api/v1/releases/{release_id}/events?follow=true"
    with trio.fail_after(20):
        async with served.client() as client:
            first = await follow(client, path, until_end=False, count=1)
        await served.start_daemon()
        await wait_terminal(served.store, release_id, limit=15, step=0.05)
        resume_at = [m.id for m in first if m.kind == "message"][-1]
        assert resume_at is not None
        async with served.client(**{"Last-Event-ID": resume_at}) as client:
            rest = await follow(client, path)

    stored = [event.id for event in await served.store.release_events(release_id)]
    assert event_ids(first) + event_ids(rest) == stored
    assert rest[-1].kind == "end"


async def test_the_all_releases_stream_starts_now_and_shows_every_release(served: Served) -> None:
    before = await served.store.create_release(ReleaseSpec(reason="before"))
    async with served.client() as client, trio.open_nursery() as nursery:
        got: list[Message] = []

        async def read() -> None:
            got.extend(await follow(client, "/api/v1/events?follow=true", count=6))

        nursery.start_soon(read)
        while served.hub.followers == 0:  # noqa: ASYNC110 - the server's state, no event
            await trio.sleep(0.01)
        await served.start_daemon()
        with trio.fail_after(20):
            while len(event_ids(got)) < 6:  # noqa: ASYNC110
                await trio.sleep(0.05)
    releases = {message.data["releaseId"] for message in got if message.kind == "message"}
    assert releases == {before.release.id}
    # It started after "created": the first event seen is the claim.
    first = next(message.data for message in got if message.kind == "message")
    assert first["fromStatus"] == "pending" and first["toStatus"] == "running"
    assert first["id"] > 1


async def test_hundreds_of_followers_cost_the_store_no_more_reads_than_one(
    served: Served,
) -> None:
    followers = 200
    served.hub.store = metered(served.store)
    created = await served.store.create_release(ReleaseSpec(reason="fan-out"))
    release_id = created.release.id
    path = f"/api/v1/releases/{release_id}/events?follow=true"
    results: list[list[Message]] = []
    limits = httpx.Limits(max_connections=followers + 10)

    async with httpx.AsyncClient(
        base_url=served.base,
        headers={"Authorization": f"Bearer {served.token}"},
        timeout=httpx.Timeout(60),
        limits=limits,
    ) as client:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:

                async def one() -> None:
                    results.append(await follow(client, path))

                for _ in range(followers):
                    nursery.start_soon(one)
                while served.hub.followers < followers:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                reads_before = served.hub.reads
                statements_before = len(await served.store.events_since(0))
                await served.start_daemon()

    stored = [event.id for event in await served.store.release_events(release_id)]
    assert len(results) == followers
    assert all(event_ids(result) == stored for result in results)
    assert all(result[-1].kind == "end" for result in results)
    # The hub read the store once per wake-up, whatever the number of followers: at most
    # once per event appended (each store call that appends events wakes it once).
    reads = served.hub.reads - reads_before
    assert 1 <= reads <= len(stored) - statements_before
    assert served.hub.followers == 0


async def test_follow_refuses_bad_input_with_the_envelope(served: Served) -> None:
    async with served.client() as client:
        bad_follow = await client.get("/api/v1/releases/1/events?follow=maybe")
        missing = await client.get("/api/v1/releases/4242/events?follow=true")
        bad_resume = await client.get(
            "/api/v1/events?follow=true", headers={"Last-Event-ID": "yesterday"}
        )
        page = await client.get("/api/v1/events?afterId=0&limit=2")
    assert (bad_follow.status_code, bad_follow.json()["code"]) == (400, 2002)
    assert "follow" in bad_follow.json()["message"]
    assert (missing.status_code, missing.json()["code"]) == (404, 3001)
    assert (bad_resume.status_code, bad_resume.json()["code"]) == (400, 2002)
    assert "Last-Event-ID" in bad_resume.json()["message"]
    assert page.status_code == 200 and page.json()["data"]["items"] == []


async def test_without_a_hub_a_stream_is_a_503(served: Served) -> None:
    app = create_app(served.store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {served.token}"},
    ) as client:
        answer = await client.get("/api/v1/events?follow=true")
    assert answer.status_code == 503


async def test_closing_the_hub_ends_every_stream_with_a_reason(served: Served) -> None:
    async with served.client() as client, trio.open_nursery() as nursery:
        got: list[Message] = []

        async def read() -> None:
            got.extend(await follow(client, "/api/v1/events?follow=true"))

        nursery.start_soon(read)
        while served.hub.followers == 0:  # noqa: ASYNC110
            await trio.sleep(0.01)
        served.hub.close()
    assert got[-1].kind == "end"
    assert got[-1].data == {"reason": "the server is stopping"}


async def _read_slowly_while_a_release_runs(
    served: Served, stream: EventStream
) -> list[dict[str, Any]]:
    """The data of every frame of ``stream``, read slowly (a follower that falls behind)
    while the daemon runs the release, until the stream ends."""
    got: list[dict[str, Any]] = []

    async def read() -> None:
        async for chunk in stream.frames():
            for line in chunk.decode().splitlines():
                if line.startswith("data: "):
                    got.append(json.loads(line[6:]))
            await trio.sleep(0.05)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            while served.hub.followers == 0:  # noqa: ASYNC110
                await trio.sleep(0.01)
            await served.start_daemon()
    return got


async def test_a_follower_that_falls_behind_catches_up_from_the_table(
    served: Served,
) -> None:
    served.hub.buffer = 2
    created = await served.store.create_release(ReleaseSpec(reason="slow reader"))
    release_id = created.release.id
    stream = EventStream(served.hub, served.store, release_id, None, max_resumes=1000)
    got = await _read_slowly_while_a_release_runs(served, stream)
    stored = [event.id for event in await served.store.release_events(release_id)]
    assert [item["id"] for item in got if "toStatus" in item] == stored
    assert got[-1] == {"reason": "the release ended", "status": "success"}
    assert stream.resumed >= 1


async def test_a_follower_too_slow_too_often_is_ended_with_a_reason(served: Served) -> None:
    served.hub.buffer = 1
    created = await served.store.create_release(ReleaseSpec(reason="too slow"))
    stream = EventStream(served.hub, served.store, created.release.id, None, max_resumes=0)
    got = await _read_slowly_while_a_release_runs(served, stream)
    assert "reads more slowly" in got[-1]["reason"]
