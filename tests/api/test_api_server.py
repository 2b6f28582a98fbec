"""The API on a real socket, served by hypercorn's trio worker."""

from __future__ import annotations

from functools import partial

import httpx
import trio
from starlette.applications import Starlette

from fleetwave.api.server import serve_api


async def test_serve_api_reports_the_bound_port_answers_and_cancels_cleanly(
    app: Starlette,
) -> None:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, app, "127.0.0.1:0")
        host, _, port = address.rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0

        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            response = await client.get("/healthz")
        nursery.cancel_scope.cancel()

    assert response.status_code == 200
    assert response.json()["data"] == {"status": "alive"}


async def test_serve_api_returns_after_its_shutdown_trigger(app: Starlette) -> None:
    stopping = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(
                partial(serve_api, shutdown_trigger=stopping.wait), app, "127.0.0.1:0"
            )
            async with httpx.AsyncClient(base_url=f"http://{address}") as client:
                assert (await client.get("/readyz")).status_code == 200
            stopping.set()

    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        try:
            await client.get("/healthz")
        except httpx.ConnectError:
            refused = True
        else:
            refused = False
    assert refused
