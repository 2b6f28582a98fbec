"""API tokens: created once, shown once, stored as a SHA-256 hash, presented as a Bearer token.

A presented token is checked in two steps. The store finds candidates by the first
TOKEN_LOOKUP_CHARS hex characters of its SHA-256, an indexed lookup whose timing can only
tell a caller about the hash of their own guess; then the whole hash is compared with every
candidate by ``hmac.compare_digest``, in constant time, without stopping at a match.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

from fleetwave.api.envelope import ApiError, Code
from fleetwave.store.base import Store
from fleetwave.store.models import TOKEN_LOOKUP_CHARS, StoredToken

TOKEN_BYTES = 32
TOKEN_PREFIX = "fw_"
"""Marks a string as a fleetwave token (for secret scanners), and keeps it from starting with
"-", which a command line would take for an option."""
TOKEN_NAME_MAX = 64
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fleetwave"'}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_token_name(name: str) -> str:
    """A token's name as given to ``fleetwave token create``; ValueError says what is wrong."""
    cleaned = name.strip()
    if not cleaned:
        raise ValueError("a token name must not be empty")
    if len(cleaned) > TOKEN_NAME_MAX:
        raise ValueError(f"a token name must be at most {TOKEN_NAME_MAX} characters")
    if not cleaned.isprintable():
        raise ValueError("a token name must be printable text")
    return cleaned


async def create_token(store: Store, name: str) -> str:
    """Make a new token named ``name``, store its hash, and return the token itself.

    The token is returned exactly once; only its hash is kept. Raises AlreadyExists when the
    name is taken.
    """
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    await store.create_token(check_token_name(name), hash_token(token))
    return token


def presented_token(request: Request) -> str:
    """The Bearer token of a request; ApiError 401/1001 when there is none."""
    header = request.headers.get("authorization")
    if header is None or not header.strip():
        raise ApiError(
            401,
            Code.UNAUTHORIZED,
            "missing token: send Authorization: Bearer <token>",
            headers=_CHALLENGE,
        )
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            Code.UNAUTHORIZED,
            "the Authorization header must be: Bearer <token>",
            headers=_CHALLENGE,
        )
    return token.strip()


async def authenticate(store: Store, request: Request) -> str:
    """The name of the token the request carries; ApiError 401 (1001 missing, 1002 wrong)."""
    digest = hash_token(presented_token(request))
    candidates = await store.tokens_by_hash_prefix(digest[:TOKEN_LOOKUP_CHARS])
    name = matching_token(candidates, digest)
    if name is None:
        raise ApiError(401, Code.INVALID_TOKEN, "invalid token", headers=_CHALLENGE)
    return name


def matching_token(candidates: list[StoredToken], digest: str) -> str | None:
    """The name of the candidate whose hash is ``digest``, compared in constant time."""
    found = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.token_hash.encode(), digest.encode()):
            found = candidate.name
    return found
