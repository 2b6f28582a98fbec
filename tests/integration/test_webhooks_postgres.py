"""Webhooks of strategies on PostgreSQL: a daemon runs a release over the in-process fleet,
migration 0009's trigger queues the deliveries with the events, and its delivery service POSTs
them signed to a real HTTP receiver on loopback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from fleetwave.agent.client import AgentClient
from fleetwave.agent.sim import Behaviour, SimulatedFleet
from fleetwave.api.schemas import parse_release_spec
from fleetwave.api.server import serve_api
from fleetwave.config import load_settings
from fleetwave.store.models import Actor, ReleaseStatus, Role
from fleetwave.store.postgres import PostgresStore
from fleetwave.store.webhooks import WebhookSpec
from fleetwave.supervisor import Supervisor
from fleetwave.webhooks.delivery import DeliveryService
from tests.api.test_webhooks import Receiver, wait_for
from tests.waiting import wait_terminal

pytestmark = pytest.mark.postgres

SECRET = "gate-hook-secret-value"
OPS = Actor("ops", Role.OPERATOR)


@pytest.fixture
async def receiver(pg_store: PostgresStore) -> AsyncIterator[tuple[Receiver, str]]:
    """A receiver on loopback, a fleet of 3 (edge-002 fails), a daemon delivering hooks."""
    receiver = Receiver(secret=SECRET)
    fleet = SimulatedFleet(3, behaviour=Behaviour(apply_time=(0.05, 0.1)))
    fleet.set_behaviour(2, Behaviour(apply_time=(0.05, 0.05), fail="nginx: [emerg] bad"))
    for k, host in enumerate(fleet.hosts, start=1):
        await pg_store.upsert_node(f"edge-{k:03d}", host, fleet.address(k).port)
    settings = load_settings(environ={}, interval_sec=0.2, daemon_id="gates", log_format="json")
    async with (
        httpx.AsyncClient(transport=fleet.transport()) as agents,
        httpx.AsyncClient() as hooks,
        trio.open_nursery() as nursery,
    ):
        address = await nursery.start(partial(serve_api, receiver.app(), "127.0.0.1:0"))
        service = DeliveryService(pg_store, hooks, "gates", poll_interval=0.1, retry_max=1.0)
        supervisor = Supervisor(
            pg_store, AgentClient(agents, request_timeout=5), settings, webhooks=service
        )
        await nursery.start(supervisor.run)
        yield receiver, f"http://{address}/hook"
        nursery.cancel_scope.cancel()


def bodies(receiver: Receiver, kind: str) -> list[dict[str, Any]]:
    return [
        json.loads(r["body"])
        for r in receiver.received
        if json.loads(r["body"])["kind"] == kind and r["valid"]
    ]


async def test_a_release_waiting_at_a_gate_is_delivered_signed(
    pg_store: PostgresStore, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    await pg_store.create_webhook(WebhookSpec(url, ("release.gate", "release.finished"), SECRET))
    created = await pg_store.create_release(
        parse_release_spec({"target": "cdn", "plan": [1, {"pause": None}, "100%"]})
    )
    release_id = created.release.id

    await wait_for(lambda: bodies(hook, "release.gate"))
    [gate] = bodies(hook, "release.gate")
    assert (gate["releaseId"], gate["releaseStatus"]) == (release_id, "running")
    assert gate["message"] == "step 1: gate: waits for promote"
    assert gate["node"] is None
    [arrived] = [r for r in hook.received if json.loads(r["body"])["kind"] == "release.gate"]
    assert arrived["headers"]["x-fleetwave-event"] == "release.gate"
    assert arrived["headers"]["idempotency-key"] == gate["idempotencyKey"]
    assert not bodies(hook, "release.finished")  # it waits

    await pg_store.promote(release_id, by=OPS, reason="canary fine")
    await wait_for(lambda: bodies(hook, "release.finished"))
    release = await wait_terminal(pg_store, release_id, limit=20, step=0.05)
    assert release.status is ReleaseStatus.FAILED  # edge-002 of batch 2 fails
    assert len(bodies(hook, "release.gate")) == 1  # once per gate
    assert all(r["valid"] for r in hook.received)


async def test_on_failure_pause_is_delivered_as_release_paused(
    pg_store: PostgresStore, receiver: tuple[Receiver, str]
) -> None:
    hook, url = receiver
    queued = await pg_store.create_webhook(
        WebhookSpec(url, ("release.paused", "release.gate"), SECRET)
    )
    created = await pg_store.create_release(
        parse_release_spec({"target": "cdn", "plan": [2, "100%"], "onFailure": "pause"})
    )

    await wait_for(lambda: bodies(hook, "release.paused"))
    release = await pg_store.get_release(created.release.id)
    with trio.fail_after(10):
        while release is None or release.lease_owner is not None:
            await trio.sleep(0.05)
            release = await pg_store.get_release(created.release.id)
    # The owner's lease release (paused -> paused) is committed by now, with its deliveries.
    deliveries = await pg_store.webhook_deliveries(queued.id)
    assert [d.kind for d in deliveries] == ["release.paused"]  # once: that is not a pause
    [paused] = bodies(hook, "release.paused")
    assert (paused["releaseId"], paused["toStatus"]) == (created.release.id, "paused")
    assert release.status is ReleaseStatus.PAUSED
    assert release.verb_by == "onFailure of daemon gates"
    assert not bodies(hook, "release.gate")  # no gate in this strategy
