"""The API over a MemoryStore, reached through httpx's ASGI transport (or a real socket)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import attrs
import httpx
import pytest
import trio
from starlette.applications import Starlette

from fleetwave import cli
from fleetwave.api import commands
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.client import ApiClient, open_http
from fleetwave.api.events import EventHub
from fleetwave.api.server import serve_api
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Node, NodeHealth


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
async def hub(store: MemoryStore) -> AsyncIterator[EventHub]:
    """The event streams' fan-out over ``store``, running."""
    async with trio.open_nursery() as nursery:
        events = EventHub(store)
        await nursery.start(events.run)
        yield events
        nursery.cancel_scope.cancel()


@pytest.fixture
def app(store: MemoryStore, hub: EventHub) -> Starlette:
    return create_app(store, events=hub)


@pytest.fixture
async def token(store: MemoryStore) -> str:
    return await create_token(store, "tests")


@pytest.fixture
async def anonymous(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client


@pytest.fixture
async def client(app: Starlette, token: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://api.test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


async def add_nodes(store: MemoryStore, count: int, *, online: bool = True) -> list[Node]:
    status = NodeHealth.ONLINE if online else NodeHealth.OFFLINE
    return [
        await store.upsert_node(f"edge-{k:03d}", f"127.0.0.{k + 1}", 8443, status=status)
        for k in range(1, count + 1)
    ]


@attrs.frozen
class Served:
    url: str
    token: str

    async def run(self, *argv: str) -> tuple[int, str, str]:
        """Run one client command in-process; (exit code, stdout, stderr)."""
        args = cli.build_parser().parse_args([*argv, f"--api={self.url}", f"--token={self.token}"])
        out, err = io.StringIO(), io.StringIO()
        async with open_http(self.url, self.token) as http:
            code = await commands.run(args, ApiClient(http), out, err)
        return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def served(app: Starlette, token: str) -> AsyncIterator[Served]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        yield Served(f"http://{address}", token)
        nursery.cancel_scope.cancel()
