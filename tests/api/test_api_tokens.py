"""Token expiry, listing, revocation, last use and the audit of changes."""

from __future__ import annotations

from datetime import timedelta

import attrs
import httpx
import pytest
import structlog.testing
import trio
from starlette.applications import Starlette

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token, parse_expiry
from fleetwave.api.token_use import TokenUse
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import Role
from tests.api.conftest import add_nodes


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@attrs.define
class _CountingStore(MemoryStore):
    """A MemoryStore that counts the writes of last use."""

    touches: list[list[int]] = attrs.field(factory=list)

    async def touch_tokens(self, token_ids: object) -> None:
        self.touches.append(list(token_ids))  # type: ignore[call-overload]
        await super().touch_tokens(token_ids)  # type: ignore[arg-type]


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test")


# --- expiry --------------------------------------------------------------------------------


async def test_an_expired_token_is_401_1002_saying_it_expired(autojump_clock: object) -> None:
    store = MemoryStore()
    token = await create_token(store, "temp", role=Role.VIEWER, expires_in=timedelta(hours=1))
    async with _client(create_app(store)) as client:
        before = await client.get("/api/v1/nodes", headers=bearer(token))
        await trio.sleep(3600 - 1)
        still = await client.get("/api/v1/nodes", headers=bearer(token))
        await trio.sleep(2)
        after = await client.get("/api/v1/nodes", headers=bearer(token))

    assert before.status_code == still.status_code == 200
    assert after.status_code == 401
    assert after.json()["code"] == 1002
    assert after.json()["message"].startswith("token expired at ")
    assert token not in after.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("90m", timedelta(minutes=90)), (" 12H ", timedelta(hours=12))],
)
def test_parse_expiry_reads_minutes_hours_days_weeks(text: str, expected: timedelta) -> None:
    assert parse_expiry(text) == expected
    assert parse_expiry("2w") == timedelta(weeks=2)


@pytest.mark.parametrize("text", ["", "30", "d", "0d", "-1d", "1y", "3651d", "1.5d", "999999w"])
def test_parse_expiry_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_expiry(text)


# --- list and revoke ----------------------------------------------------------------------


async def test_an_admin_lists_tokens_with_role_and_times_never_the_hash(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    viewer = await create_token(store, "dash", role=Role.VIEWER, expires_in=timedelta(days=30))

    response = await client.get("/api/v1/tokens")

    items = response.json()["data"]["items"]
    assert [(item["name"], item["role"]) for item in items] == [
        ("tests", "admin"),
        ("dash", "viewer"),
    ]
    assert set(items[1]) == {"id", "name", "role", "createdAt", "expiresAt", "lastUsedAt"}
    assert items[0]["expiresAt"] is None and items[1]["expiresAt"] is not None
    assert viewer not in response.text
    [stored] = [t for t in await store.list_tokens() if t.name == "dash"]
    assert items[1]["id"] == stored.id


async def test_a_revoked_token_is_refused_from_then_on(
    client: httpx.AsyncClient, anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    old = await create_token(store, "old-laptop", role=Role.OPERATOR)
    [info] = [t for t in await store.list_tokens() if t.name == "old-laptop"]
    assert (await anonymous.get("/api/v1/nodes", headers=bearer(old))).status_code == 200

    with structlog.testing.capture_logs() as logs:
        revoked = await client.delete(f"/api/v1/tokens/{info.id}")

    assert revoked.status_code == 200
    assert revoked.json()["data"]["name"] == "old-laptop"
    refused = await anonymous.get("/api/v1/nodes", headers=bearer(old))
    assert refused.status_code == 401 and refused.json()["code"] == 1002
    assert [t.name for t in await store.list_tokens()] == ["tests"]
    [entry] = [e for e in logs if e["event"] == "api.token_revoked"]
    assert (entry["revoked_token"], entry["token_name"], entry["token_role"]) == (
        "old-laptop",
        "tests",
        "admin",
    )
    again = await client.delete(f"/api/v1/tokens/{info.id}")
    assert again.status_code == 404 and again.json()["code"] == 3001


# --- last use ------------------------------------------------------------------------------


async def test_last_use_is_written_at_most_once_a_minute_never_per_request(
    autojump_clock: object,
) -> None:
    store = _CountingStore()
    token = await create_token(store, "busy", role=Role.VIEWER)
    idle = await create_token(store, "idle", role=Role.VIEWER)
    token_use = TokenUse(store)
    async with trio.open_nursery() as nursery, _client(create_app(store, token_use=token_use)) as c:
        await nursery.start(token_use.run)
        for _ in range(200):  # 200 requests over 100 simulated seconds
            assert (await c.get("/api/v1/nodes", headers=bearer(token))).status_code == 200
            await trio.sleep(0.5)
        nursery.cancel_scope.cancel()

    [busy, unused] = await store.list_tokens()
    # Writes at 60 s, 120 s and the last one at shutdown; one statement each, never per request.
    assert len(store.touches) <= 3
    assert all(ids == [busy.id] for ids in store.touches)
    assert busy.last_used_at is not None and unused.last_used_at is None
    assert idle  # created, never used


async def test_last_use_survives_a_database_outage(autojump_clock: object) -> None:
    store = MemoryStore()
    await create_token(store, "ci")
    [info] = await store.list_tokens()
    token_use = TokenUse(store)
    token_use.note(info.id)

    store.unavailable = True
    with structlog.testing.capture_logs() as logs:
        await token_use.write()
    store.unavailable = False
    await token_use.write()

    assert [e["event"] for e in logs] == ["api.token_use_not_written"]
    [written] = await store.list_tokens()
    assert written.last_used_at is not None


# --- audit ---------------------------------------------------------------------------------


async def test_every_state_changing_request_is_audited_with_the_token_name_and_role(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 1)
    operator = await create_token(store, "deployer", role=Role.OPERATOR)
    admin = await create_token(store, "root", role=Role.ADMIN)

    with structlog.testing.capture_logs() as logs:
        created = await anonymous.post(
            "/api/v1/releases", json={"target": "cdn", "reason": "r"}, headers=bearer(operator)
        )
        await anonymous.post(
            "/api/v1/nodes", json={"name": "edge-9", "mainIp": "127.0.0.9"}, headers=bearer(admin)
        )
        await anonymous.patch("/api/v1/nodes/1", json={"enabled": False}, headers=bearer(operator))
        await anonymous.get("/api/v1/nodes", headers=bearer(operator))

    audits = [
        (e["method"], e["path"], e["status"], e["token_name"], e["token_role"])
        for e in logs
        if e["event"] == "api.audit"
    ]
    assert audits == [
        ("POST", "/api/v1/releases", 200, "deployer", "operator"),
        ("POST", "/api/v1/nodes", 200, "root", "admin"),
        ("PATCH", "/api/v1/nodes/1", 403, "deployer", "operator"),
    ]
    [event] = await store.release_events(created.json()["data"]["releaseId"])
    assert event.actor is not None
    assert (event.actor.token_name, event.actor.role) == ("deployer", Role.OPERATOR)
    assert operator not in repr(logs) and admin not in repr(logs)


async def test_no_token_appears_in_any_log_or_error(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    real = await create_token(store, "ci", role=Role.VIEWER)
    presented = [real, real + "x", "fw_" + "A" * 43, "not-a-token"]

    with structlog.testing.capture_logs() as logs:
        answers = [
            await anonymous.request(method, path, headers=bearer(token), json={})
            for token in presented
            for method, path in [("GET", "/api/v1/nodes"), ("POST", "/api/v1/releases")]
        ]

    assert [answer.status_code for answer in answers] == [200, 403] + [401, 401] * 3
    for token in presented:
        assert token not in repr(logs)
        assert all(token not in answer.text for answer in answers)
