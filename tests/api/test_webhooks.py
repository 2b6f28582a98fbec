"""Webhooks end to end in one process: the API registers hooks, a daemon runs releases over
the in-process fleet, its delivery service POSTs to a real HTTP receiver on loopback (one
that is up, one that is down for a while, one that answers slowly), and the API shows how
each delivery went."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetwave import cli
from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api import commands
from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token
from fleetwave.api.client import ApiClient, open_http
from fleetwave.api.server import serve_api
from fleetwave.config import load_settings
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import ReleaseSpec
from fleetwave.store.webhooks import WEBHOOK_KINDS
from fleetwave.supervisor import Supervisor
from fleetwave.webhooks.delivery import DeliveryService
from fleetwave.webhooks.signing import verify
from tests.waiting import wait_terminal


@attrs.define
class Receiver:
    """An HTTP endpoint taking deliveries: it can answer slowly or with an error."""

    secret: str = ""
    delay: float = 0.0
    status: int = 200
    received: list[dict[str, Any]] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)

    def app(self) -> Starlette:
        async def take(request: Request) -> Response:
            body = await request.body()
            await trio.sleep(self.delay)
            self.received.append(
                {
                    "headers": dict(request.headers),
                    "body": body,
                    "valid": verify(
                        self.secret,
                        body,
                        request.headers.get("x-fleetwave-timestamp"),
                        request.headers.get("x-fleetwave-signature"),
                        now=time.time(),
                    ),
                    "answered": self.status,
                }
            )
            self.arrived.set()
            return Response("ok" if self.status < 400 else "receiver trouble", self.status)

        return Starlette(routes=[Route("/hook", take, methods=["POST"])])

    def keys(self) -> set[str]:
        return {
            json.loads(r["body"])["idempotencyKey"] for r in self.received if r["answered"] < 300
        }

    def kinds(self) -> list[str]:
        return [json.loads(r["body"])["kind"] for r in self.received if r["answered"] < 300]


@attrs.define
class World:
    store: MemoryStore
    api: httpx.AsyncClient
    nursery: trio.Nursery
    fleet: SimulatedFleet
    service: DeliveryService | None = None

    async def register(self, url: str, events: list[str]) -> dict[str, Any]:
        answer = await self.api.post("/api/v1/webhooks", json={"url": url, "events": events})
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        return data

    async def start_daemon(self, *, answer_within: float = 2.0) -> None:
        settings = load_settings(environ={}, interval_sec=0.2, daemon_id="hooks", log_format="json")
        http = httpx.AsyncClient(transport=self.fleet.transport())
        hooks = httpx.AsyncClient()
        self.service = DeliveryService(
            self.store, hooks, "hooks", poll_interval=0.1, timeout=answer_within, retry_max=1.0
        )
        supervisor = Supervisor(
            self.store, AgentClient(http, request_timeout=5), settings, webhooks=self.service
        )
        await self.nursery.start(supervisor.run)

    async def serve(self, receiver: Receiver, port: int = 0) -> str:
        address = await self.nursery.start(partial(serve_api, receiver.app(), f"127.0.0.1:{port}"))
        return f"http://{address}/hook"


@pytest.fixture
async def world() -> AsyncIterator[World]:
    store = MemoryStore()
    fleet = SimulatedFleet(3, behaviour=Behaviour(apply_time=(0.05, 0.1)))
    fleet.set_behaviour(1, Behaviour(apply_time=(0.05, 0.05), fail="nginx: [emerg] bad"))
    for k, host in enumerate(fleet.hosts, start=1):
        await store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
    token = await create_token(store, "hooks")
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(store)),
            base_url="http://api.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as api,
        trio.open_nursery() as nursery,
    ):
        yield World(store, api, nursery, fleet)
        nursery.cancel_scope.cancel()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_for(condition: Any, limit: float = 20) -> None:
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110 - state of other tasks, no event to wait on
            await trio.sleep(0.05)


async def test_a_failed_canary_is_reported_signed_to_a_receiver(world: World) -> None:
    receiver = Receiver()
    url = await world.serve(receiver)
    hook = await world.register(url, list(WEBHOOK_KINDS))
    receiver.secret = hook["secret"]
    await world.start_daemon()
    created = await world.store.create_release(ReleaseSpec(reason="hooks"))
    await wait_terminal(world.store, created.release.id, limit=20, step=0.05)
    await wait_for(lambda: len(receiver.received) >= 5)

    # Sent concurrently: in no particular order.
    assert sorted(receiver.kinds()) == sorted(
        ["release.started", "batch.finished", "node.failed", "release.finished", "release.failed"]
    )
    assert all(r["valid"] for r in receiver.received)
    by_kind = {json.loads(r["body"])["kind"]: r for r in receiver.received}
    first = by_kind["release.started"]
    payload = json.loads(first["body"])
    assert first["headers"]["idempotency-key"] == payload["idempotencyKey"]
    assert first["headers"]["x-fleetwave-event"] == "release.started"
    assert first["headers"]["content-type"] == "application/json"
    failed_node = json.loads(by_kind["node.failed"]["body"])
    assert failed_node["node"]["name"] == "edge-001"
    assert "nginx: [emerg] bad" in failed_node["message"]
    shown = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"]
    assert {d["status"] for d in shown["deliveries"]} == {"delivered"}
    assert shown["recentFailures"] == []
    # A signature made with another secret, or over another body, does not verify.
    assert not verify("another-secret-value", first["body"], first["headers"]
                      ["x-fleetwave-timestamp"], first["headers"]["x-fleetwave-signature"],
                      now=time.time())  # fmt: skip


async def test_a_receiver_down_for_a_while_gets_every_delivery_once_it_is_back(
    world: World,
) -> None:
    port = free_port()
    receiver = Receiver()
    hook = await world.register(f"http://127.0.0.1:{port}/hook", ["release.started", "node.failed"])
    receiver.secret = hook["secret"]
    await world.start_daemon()
    created = await world.store.create_release(ReleaseSpec(reason="receiver down"))
    await wait_terminal(world.store, created.release.id, limit=20, step=0.05)

    # Nothing listens: attempts fail and are retried; the API says why.
    async def attempts() -> list[int]:
        shown = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"]
        return [d["attempts"] for d in shown["deliveries"]]

    with trio.fail_after(20):
        while len(tried := await attempts()) < 2 or min(tried) < 2:  # noqa: ASYNC110
            await trio.sleep(0.1)
    shown = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"]
    assert {d["status"] for d in shown["deliveries"]} == {"pending"}
    assert all(d["attempts"] >= 2 for d in shown["deliveries"])
    assert len(shown["recentFailures"]) == 2
    assert "ConnectError" in shown["recentFailures"][0]["lastError"]

    await world.serve(receiver, port)
    await wait_for(lambda: len(receiver.keys()) == 2)
    await wait_for(lambda: world.service is not None and world.service.delivered == 2)
    shown = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"]
    assert {d["status"] for d in shown["deliveries"]} == {"delivered"}
    assert all(r["valid"] for r in receiver.received)


async def test_a_slow_receiver_is_retried_and_every_delivery_arrives(world: World) -> None:
    receiver = Receiver(delay=1.5)
    url = await world.serve(receiver)
    hook = await world.register(url, ["release.finished"])
    receiver.secret = hook["secret"]
    await world.start_daemon(answer_within=0.5)
    created = await world.store.create_release(ReleaseSpec(reason="slow receiver"))
    await wait_terminal(world.store, created.release.id, limit=20, step=0.05)
    await wait_for(lambda: receiver.received)
    shown = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"]
    [delivery] = shown["deliveries"]
    assert delivery["status"] == "pending"
    assert delivery["lastError"] == "no answer within 0.5s"

    receiver.delay = 0.0
    await wait_for(lambda: world.service is not None and world.service.delivered == 1)
    [delivery] = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"][
        "deliveries"
    ]
    assert delivery["status"] == "delivered" and delivery["attempts"] >= 2
    # At least once: the receiver may have seen the slow attempt too, with the same key.
    assert receiver.keys() == {delivery["idempotencyKey"]}


async def test_an_error_answer_is_retried_until_the_attempts_run_out(world: World) -> None:
    receiver = Receiver(status=500)
    url = await world.serve(receiver)
    hook = await world.register(url, ["release.started"])
    await world.start_daemon()
    assert world.service is not None
    world.service.attempts = 3
    await world.store.create_release(ReleaseSpec(reason="receiver error"))
    await wait_for(lambda: len(receiver.received) >= 3)
    await trio.sleep(1.5)
    [delivery] = (await world.api.get(f"/api/v1/webhooks/{hook['id']}")).json()["data"][
        "deliveries"
    ]
    assert len(receiver.received) == 3
    assert (delivery["status"], delivery["attempts"], delivery["lastStatus"]) == ("failed", 3, 500)
    assert delivery["lastError"] == "HTTP 500: receiver trouble"


async def test_the_api_refuses_bad_hooks_never_lists_secrets_and_removes(world: World) -> None:
    bad_url = await world.api.post(
        "/api/v1/webhooks", json={"url": "ftp://x", "events": ["node.failed"]}
    )
    bad_kind = await world.api.post(
        "/api/v1/webhooks", json={"url": "https://x.example/h", "events": ["node.exploded"]}
    )
    not_a_list = await world.api.post(
        "/api/v1/webhooks", json={"url": "https://x.example/h", "events": "node.failed"}
    )
    unknown_field = await world.api.post(
        "/api/v1/webhooks", json={"url": "https://x.example/h", "events": [], "colour": "red"}
    )
    hook = await world.register("https://x.example/h", ["node.failed"])
    listed = (await world.api.get("/api/v1/webhooks")).json()["data"]
    removed = await world.api.delete(f"/api/v1/webhooks/{hook['id']}")
    gone = await world.api.get(f"/api/v1/webhooks/{hook['id']}")

    assert (bad_url.status_code, bad_kind.status_code, not_a_list.status_code) == (400, 400, 400)
    assert "url" in bad_url.json()["message"] and "node.exploded" in bad_kind.json()["message"]
    assert unknown_field.json()["code"] == 2003
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert listed["total"] == 1 and "secret" not in listed["items"][0]
    assert removed.json()["data"] == {"id": hook["id"], "deleted": True}
    assert (gone.status_code, gone.json()["code"]) == (404, 3001)
    assert await world.store.list_webhooks() == []


async def test_the_webhook_commands_add_list_show_and_remove(world: World) -> None:
    token = await create_token(world.store, "cli")
    async with trio.open_nursery() as nursery:
        address = await nursery.start(serve_api, create_app(world.store), "127.0.0.1:0")
        url = f"http://{address}"

        async def run(*argv: str) -> tuple[int, str, str]:
            args = cli.build_parser().parse_args([*argv, f"--api={url}", f"--token={token}"])
            out, err = io.StringIO(), io.StringIO()
            async with open_http(url, token) as http:
                code = await commands.run(args, ApiClient(http), out, err)
            return code, out.getvalue(), err.getvalue()

        added = await run("webhook", "add", "https://chat.example/h", "--events", "all")
        hook_id = added[1].split()[1]
        listed = await run("webhook", "list")
        shown = await run("webhook", "show", hook_id)
        removed = await run("webhook", "remove", hook_id)
        missing = await run("webhook", "remove", hook_id)
        nursery.cancel_scope.cancel()

    assert added[0] == 0 and f"webhook {hook_id} sends release.started" in added[1]
    assert added[1].splitlines()[-1].startswith("whsec_")
    assert listed[1].splitlines()[1].split()[:2] == [hook_id, "https://chat.example/h"]
    assert "whsec_" not in listed[1]
    assert shown[0] == 0 and shown[1].startswith(f"webhook {hook_id}: release.started")
    assert removed == (0, f"webhook {hook_id} removed\n", "")
    assert missing[0] == 1 and f"webhook {hook_id} does not exist" in missing[2]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["webhook", "add", "https://x", "--events", "node.boom"])


async def test_webhooks_need_an_admin_token_and_streams_and_metrics_a_viewer(
    world: World,
) -> None:
    from fleetwave.store.models import Role

    viewer = await create_token(world.store, "grafana", role=Role.VIEWER)
    operator = await create_token(world.store, "deployer", role=Role.OPERATOR)
    app = create_app(world.store)

    async def call(token: str, method: str, path: str, **kwargs: Any) -> int:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api.test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            return (await client.request(method, path, **kwargs)).status_code

    hook = {"url": "https://x.example/h", "events": ["node.failed"]}
    assert await call(viewer, "GET", "/metrics") == 200
    assert await call(viewer, "GET", "/api/v1/events?afterId=0") == 200
    assert await call(viewer, "GET", "/api/v1/webhooks") == 403
    assert await call(operator, "POST", "/api/v1/webhooks", json=hook) == 403
    assert await world.store.list_webhooks() == []
