"""The dashboard's side of the API: its pages, the cookie session made from a token, the CSRF
check on state-changing requests, and the fields its release page shows (liveness, who
created a release, its nodes' agents and failure kinds, the verbs it offers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import httpx
import pytest
from starlette.applications import Starlette

from fleetwave.api.auth import create_token
from fleetwave.api.dashboard import SECURITY_HEADERS, STATIC
from fleetwave.api.liveness import available_verbs, last_progress, liveness_item
from fleetwave.api.schemas import parse_release_spec
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import ReleaseStatus, Role
from tests.api.conftest import add_nodes

SESSION = "/api/v1/session"


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(SESSION, json={"token": token})


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Each Set-Cookie header of ``response`` by cookie name."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


async def test_the_pages_load_without_a_token_and_allow_only_this_origin(
    anonymous: httpx.AsyncClient,
) -> None:
    index = await anonymous.get("/")
    script = await anonymous.get("/static/js/app.js")
    missing = await anonymous.get("/static/js/nothing.js")

    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert '<script type="module" src="/static/js/app.js">' in index.text
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for answer in (index, script):
        assert (
            answer.headers["content-security-policy"] == SECURITY_HEADERS["Content-Security-Policy"]
        )
        assert "connect-src 'self'" in answer.headers["content-security-policy"]
    assert missing.status_code == 404


def test_no_static_file_loads_anything_from_another_host() -> None:
    files = [path for path in STATIC.rglob("*") if path.is_file()]
    assert {path.suffix for path in files} >= {".html", ".css", ".js"}
    for path in files:
        text = path.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path


async def test_sign_in_sets_an_httponly_strict_session_and_a_csrf_cookie(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    token = await create_token(store, "sre", role=Role.OPERATOR)

    answer = await sign_in(anonymous, token)

    assert answer.status_code == 200
    assert answer.json()["data"] == {"name": "sre", "role": "operator", "expiresAt": None}
    cookies = set_cookies(answer)
    session, csrf = cookies["fw_session"].lower(), cookies["fw_csrf"].lower()
    assert "httponly" in session and "samesite=strict" in session and "path=/" in session
    assert "httponly" not in csrf and "samesite=strict" in csrf
    assert "secure" not in session  # plain HTTP on loopback: a Secure cookie would not come back
    assert token not in answer.text  # the answer's body never repeats the token
    me = await anonymous.get(SESSION)
    assert me.json()["data"] == {"name": "sre", "role": "operator"}


async def test_over_https_the_cookies_are_secure(app: Starlette, store: MemoryStore) -> None:
    token = await create_token(store, "sre")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://api.test") as client:
        answer = await sign_in(client, token)

    cookies = set_cookies(answer)
    assert "secure" in cookies["fw_session"].lower() and "secure" in cookies["fw_csrf"].lower()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "text"),
    [
        (b'{"token": "fw_nope"}', "application/json", 401, "invalid token"),
        (b"{}", "application/json", 400, "token: is required"),
        (b'{"token": 5}', "application/json", 400, "token: is required"),
        (b"token=fw_x", "application/x-www-form-urlencoded", 400, "application/json"),
        (b'{"token": "' + b"x" * 5000 + b'"}', "application/json", 413, "larger than"),
    ],
)
async def test_a_bad_sign_in_sets_no_cookie(
    anonymous: httpx.AsyncClient, body: bytes, content_type: str, status: int, text: str
) -> None:
    answer = await anonymous.post(SESSION, content=body, headers={"content-type": content_type})

    assert answer.status_code == status and text in answer.json()["message"], answer.text
    assert answer.headers.get_list("set-cookie") == []


async def test_a_state_changing_request_by_cookie_needs_the_csrf_header(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 2)
    await sign_in(anonymous, await create_token(store, "sre", role=Role.OPERATOR))
    spec = {"target": "cdn", "reason": "from the dashboard"}

    without = await anonymous.post("/api/v1/releases", json=spec)
    wrong = await anonymous.post("/api/v1/releases", json=spec, headers={"X-CSRF-Token": "x"})
    assert [without.status_code, wrong.status_code] == [403, 403]
    assert "csrf" in without.json()["message"]
    assert await store.list_releases() == ([], 0)

    csrf = anonymous.cookies["fw_csrf"]
    created = await anonymous.post("/api/v1/releases", json=spec, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 200, created.text
    release_id = created.json()["data"]["releaseId"]
    paused = await anonymous.post(
        f"/api/v1/releases/{release_id}/pause",
        json={"reason": "looks wrong"},
        headers={"X-CSRF-Token": csrf},
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["data"]["release"]["lastVerb"] == {
        "verb": "pause",
        "by": "sre",
        "reason": "looks wrong",
    }
    # Reads need no CSRF header.
    assert (await anonymous.get(f"/api/v1/releases/{release_id}")).status_code == 200


async def test_a_viewer_session_reads_but_cannot_use_a_verb(
    anonymous: httpx.AsyncClient, store: MemoryStore, client: httpx.AsyncClient
) -> None:
    await add_nodes(store, 1)
    created = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "r"})
    release_id = created.json()["data"]["releaseId"]
    await sign_in(anonymous, await create_token(store, "watcher", role=Role.VIEWER))

    seen = await anonymous.get(f"/api/v1/releases/{release_id}")
    refused = await anonymous.post(
        f"/api/v1/releases/{release_id}/pause",
        json={"reason": "r"},
        headers={"X-CSRF-Token": anonymous.cookies["fw_csrf"]},
    )

    assert seen.status_code == 200
    assert refused.status_code == 403 and "needs the operator role" in refused.json()["message"]


async def test_a_revoked_or_expired_token_ends_its_session(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await sign_in(anonymous, await create_token(store, "sre"))
    assert (await anonymous.get("/api/v1/releases")).status_code == 200
    (stored,) = [token for token in await store.list_tokens() if token.name == "sre"]

    await store.revoke_token(stored.id)

    assert (await anonymous.get("/api/v1/releases")).status_code == 401
    short = await create_token(store, "short", expires_in=timedelta(minutes=1))
    await sign_in(anonymous, short)
    assert (await anonymous.get("/api/v1/releases")).status_code == 200


async def test_an_authorization_header_is_judged_alone_and_sign_out_clears_the_cookies(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await sign_in(anonymous, await create_token(store, "sre"))

    wrong_header = await anonymous.get(
        "/api/v1/releases", headers={"Authorization": "Bearer fw_wrong"}
    )
    out = await anonymous.delete(SESSION)

    assert wrong_header.status_code == 401
    assert out.status_code == 200
    cookies = set_cookies(out)
    assert 'fw_session=""' in cookies["fw_session"] and "max-age=0" in cookies["fw_session"].lower()
    assert (await anonymous.get("/api/v1/releases")).status_code == 401


async def test_the_release_detail_says_who_created_it_its_liveness_and_verbs(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 3)
    created = await client.post("/api/v1/releases", json={"target": "cdn", "reason": "canary"})
    release_id = created.json()["data"]["releaseId"]

    detail = (await client.get(f"/api/v1/releases/{release_id}")).json()["data"]
    listed = (await client.get("/api/v1/releases")).json()["data"]["items"]

    assert detail["release"]["createdBy"] == {"tokenName": "tests", "role": "admin"}
    assert listed[0]["createdBy"] == {"tokenName": "tests", "role": "admin"}
    assert detail["verbs"] == ["pause", "cancel"]
    liveness = detail["liveness"]
    assert liveness["owner"] is None and liveness["leaseLive"] is False
    assert liveness["lastProgressAt"] is None
    node = detail["batches"][0]["nodes"][0]
    assert node["agent"] == "127.0.0.2:8443" and node["errorKind"] is None


async def test_liveness_of_an_owned_release_tells_a_live_lease_from_an_expired_one(
    store: MemoryStore,
) -> None:
    await add_nodes(store, 2)
    created = await store.create_release(parse_release_spec({"target": "cdn", "reason": "r"}))
    release = created.release
    nodes = await store.release_nodes(release.id)
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    started = now - timedelta(seconds=40)
    finished = now - timedelta(seconds=35)
    nodes = [
        attrs.evolve(nodes[0], started_at=started, finished_at=finished),
        attrs.evolve(nodes[1], started_at=started),
    ]
    owned = attrs.evolve(
        release, lease_owner="d1", lease_expires_at=now + timedelta(seconds=5), started_at=started
    )
    lost = attrs.evolve(owned, lease_expires_at=now - timedelta(seconds=1))

    live = liveness_item(owned, nodes, now)
    dead = liveness_item(lost, nodes, now)

    assert live["owner"] == "d1" and live["leaseLive"] is True
    assert live["lastProgressAt"] == "2026-01-01T11:59:25Z"
    assert dead["leaseLive"] is False and dead["leaseExpiresAt"] == "2026-01-01T11:59:59Z"
    assert last_progress(owned, []) == started


GATED = {
    "target": "cdn",
    "reason": "r",
    "plan": [1, {"pause": 300}, "50%", {"pause": None}, "100%"],
}


async def test_promote_is_offered_only_at_a_bake_or_gate_not_yet_promoted_past(
    client: httpx.AsyncClient, store: MemoryStore
) -> None:
    await add_nodes(store, 4)
    created = await client.post("/api/v1/releases", json=GATED)
    release_id = created.json()["data"]["releaseId"]
    [claim] = await store.claim("d1", 5, 30)

    async def verbs() -> list[str]:
        answer = await client.get(f"/api/v1/releases/{release_id}")
        return answer.json()["data"]["verbs"]  # type: ignore[no-any-return]

    assert await verbs() == ["pause", "cancel", "rollback"]  # at batch 1
    assert await store.record_step(claim.lease, 1, "step 1: bake 300s", bake=300)
    assert await verbs() == ["pause", "cancel", "rollback", "promote"]
    assert await store.record_step(claim.lease, 2, "step 1: bake ended")
    assert await verbs() == ["pause", "cancel", "rollback"]  # batch 2
    assert await store.record_step(claim.lease, 3, "step 3: gate: waits for promote")
    assert await verbs() == ["pause", "cancel", "rollback", "promote"]

    release = await store.get_release(release_id)
    assert release is not None
    # Promoted past (its owner not yet passing it), paused, cancelling: no promote.
    assert "promote" not in available_verbs(attrs.evolve(release, promoted_to=4))
    assert "promote" not in available_verbs(attrs.evolve(release, status=ReleaseStatus.PAUSED))
    assert "promote" not in available_verbs(attrs.evolve(release, verb="cancel"))
    # A release without pauses has no step to promote past.
    assert "promote" not in available_verbs(attrs.evolve(release, strategy=None))
