"""API tokens: created once, shown once, stored as a SHA-256 hash, presented as a Bearer token.

The store is asked for the token by the SHA-256 of what was presented, never by the secret
itself: whatever the timing of that lookup reveals is about the hash of the caller's own
guess, which does not help to find a valid token. Nothing else compares token material.
"""

from __future__ import annotations

import hashlib
import secrets

from starlette.requests import Request

from api.envelope import ApiError, Code
from store.base import Store

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
    name = await store.token_name(digest)
    if name is None:
        raise ApiError(401, Code.INVALID_TOKEN, "invalid token", headers=_CHALLENGE)
    return name
