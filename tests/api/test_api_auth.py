"""Bearer tokens: stored hashed, required everywhere but the health checks."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import attrs
import httpx
import pytest

from fleetwave.api.app import create_app
from fleetwave.api.auth import create_token, matching_token
from fleetwave.store.errors import AlreadyExists, StoreUnavailable
from fleetwave.store.memory import MemoryStore
from fleetwave.store.models import TOKEN_LOOKUP_CHARS, Role, StoredToken, TokenInfo


async def test_missing_token_is_401_1001(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api/v1/releases")

    assert response.status_code == 401
    assert response.json()["code"] == 1001
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_header_that_is_not_bearer_is_401_1001(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/api/v1/nodes", headers={"Authorization": "Basic dTpw"})

    assert response.status_code == 401
    assert response.json()["code"] == 1001


async def test_wrong_token_is_401_1002(anonymous: httpx.AsyncClient, token: str) -> None:
    response = await anonymous.get(
        "/api/v1/releases", headers={"Authorization": f"Bearer {token}x"}
    )

    assert response.status_code == 401
    assert response.json() == {"code": 1002, "message": "invalid token", "data": None}


async def test_writes_without_a_valid_token_change_nothing(
    anonymous: httpx.AsyncClient, store: MemoryStore
) -> None:
    await store.upsert_node("edge-1", "127.0.0.2", 8443)

    response = await anonymous.post(
        "/api/v1/releases",
        json={"target": "cdn", "reason": "r"},
        headers={"Authorization": "Bearer nope"},
    )

    assert response.status_code == 401
    assert await store.list_releases() == ([], 0)


async def test_healthz_needs_no_token(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"code": 0, "message": "success", "data": {"status": "alive"}}


async def test_readyz_needs_no_token_and_asks_the_store(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/readyz")

    assert response.status_code == 200
    assert response.json()["data"] == {"status": "ready"}


@attrs.define
class _NotReadyStore(MemoryStore):
    reason: str = "stale"

    async def ping(self) -> bool:
        if self.reason == "down":
            raise StoreUnavailable("connection refused")
        return False


@pytest.mark.parametrize("reason", ["stale", "down"])
async def test_readyz_is_503_when_the_database_is_not_ready(reason: str) -> None:
    app = create_app(_NotReadyStore(reason=reason))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api.test"
    ) as client:
        response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["code"] == 5002


async def test_create_token_stores_only_the_sha256_of_the_token(store: MemoryStore) -> None:
    token = await create_token(store, "ci")

    assert token.startswith("fw_") and len(token) >= 40
    digest = hashlib.sha256(token.encode()).hexdigest()
    [stored] = await store.tokens_by_hash_prefix(digest[:TOKEN_LOOKUP_CHARS])
    assert (stored.info.name, stored.token_hash, stored.expired) == ("ci", digest, False)
    assert await store.tokens_by_hash_prefix(token[:TOKEN_LOOKUP_CHARS]) == []


async def test_a_token_whose_hash_shares_the_lookup_prefix_is_still_refused(
    anonymous: httpx.AsyncClient, store: MemoryStore, token: str
) -> None:
    """Finding candidates by a prefix of the hash is only a lookup: the whole hash must match."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    forged = token + "-forged"
    # Store a second token whose hash begins like the forged one's, but is not its hash.
    forged_digest = hashlib.sha256(forged.encode()).hexdigest()
    near_miss = forged_digest[:TOKEN_LOOKUP_CHARS] + digest[TOKEN_LOOKUP_CHARS:]
    await store.create_token("near-miss", near_miss)

    refused = await anonymous.get("/api/v1/nodes", headers={"Authorization": f"Bearer {forged}"})
    accepted = await anonymous.get("/api/v1/nodes", headers={"Authorization": f"Bearer {token}"})

    assert refused.status_code == 401 and refused.json()["code"] == 1002
    assert accepted.status_code == 200


def test_matching_token_compares_every_candidate_in_full() -> None:
    digest = "ab" * 32

    def stored(name: str, token_hash: str) -> StoredToken:
        info = TokenInfo(1, name, Role.VIEWER, datetime.now(UTC), None, None)
        return StoredToken(info, token_hash, expired=False)

    candidates = [
        stored("prefix-only", digest[:TOKEN_LOOKUP_CHARS] + "0" * 48),
        stored("exact", digest),
        stored("longer", digest + "00"),
    ]

    assert matching_token(candidates, digest) == candidates[1]
    assert matching_token(candidates[:1], digest) is None
    assert matching_token([], digest) is None


async def test_create_token_twice_with_one_name_is_refused(store: MemoryStore) -> None:
    await create_token(store, "ci")

    with pytest.raises(AlreadyExists):
        await create_token(store, "ci")


async def test_create_token_rejects_an_empty_name(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="empty"):
        await create_token(store, "  ")
